#!/bin/bash
# Cluster-start check for openraft's "follower log reversion" leader panic (docs/cluster.md,
# "Fixed: Raft leader panic at cluster start"). Each run formats a new three-node cluster (new
# cluster id, same ports), starts it, creates two RF-3 topics right away and prints PANIC if a
# node logged "log reversion", else ok.
#
# Like the original script (which ran `pkill` and slept 0.5 s), a run only SIGTERMs the
# previous run's nodes and sleeps 0.5 s; it does not wait for them to exit. A node in
# controlled shutdown can live on for seconds, so a leader of the previous cluster may still
# be replicating to the ports the new nodes now own: that is what made the leader panic in
# about 1 of 4 runs before the quorum handshake (the new nodes now refuse it). Runs where a
# node could not bind its port show that overlap.
#
#   H=target/debug/holdfast RUNS=12 scripts/repro-raft-reversion.sh
# RP_DIR: data/log path prefix (default /tmp/rp); RP_PORT: port infix (default 709: nodes
# listen on n7092 and n7093). Only the processes this script started are signalled (by pid).
H=${H:-/work/main/target/debug/holdfast}
RUNS=${RUNS:-1}
D=${RP_DIR:-/tmp/rp}
P=${RP_PORT:-709}
V=1@127.0.0.1:1${P}3,2@127.0.0.1:2${P}3,3@127.0.0.1:3${P}3
PIDS=()
ALL=()
trap 'kill "${ALL[@]}" 2>/dev/null; wait "${ALL[@]}" 2>/dev/null' EXIT
panics=0
overlaps=0
for i in $(seq 1 "$RUNS"); do
  if [ ${#PIDS[@]} -gt 0 ]; then kill "${PIDS[@]}" 2>/dev/null; fi
  sleep 0.5
  rm -rf "$D"1 "$D"2 "$D"3 2>/dev/null
  ID=$($H random-uuid)
  for n in 1 2 3; do
    $H format --data-dir "$D$n" --node-id $n --cluster-id="$ID" $([ $n = 1 ] && echo --bootstrap) >/dev/null
  done
  PIDS=()
  for n in 1 2 3; do
    $H serve --data-dir "$D$n" --node-id $n --listen 127.0.0.1:$n${P}2 --controller-quorum-voters $V > "$D$n.log" 2>&1 &
    PIDS+=($!)
    ALL+=($!)
  done
  sleep 3
  $H topic create t1 -b 127.0.0.1:1${P}2 -p 6 -r 3 >/dev/null 2>&1
  $H topic create t2 -b 127.0.0.1:2${P}2 -p 6 -r 3 >/dev/null 2>&1
  sleep 2
  # -a: a node of the previous run still writes into the log file the new run truncated.
  unbound=$(grep -la "Address already in use" "$D"1.log "$D"2.log "$D"3.log | wc -l)
  [ "$unbound" -gt 0 ] && overlaps=$((overlaps + 1))
  # Connections the quorum handshake refused (another cluster's node calling).
  refused=$(cat "$D"1.log "$D"2.log "$D"3.log | grep -ac "quorum connection refused")
  if grep -qa "log reversion" "$D"1.log "$D"2.log "$D"3.log; then
    panics=$((panics + 1))
    echo "run $i: PANIC (nodes that could not bind: $unbound; handshakes refused: $refused)"
  else
    echo "run $i: ok (nodes that could not bind: $unbound; handshakes refused: $refused)"
  fi
done
echo "TOTAL: $panics PANIC of $RUNS runs ($overlaps runs overlapped a previous cluster)"
