#!/usr/bin/env bash
# Benchmark: a three-node Holdfast cluster (release build, three processes on this machine,
# three data directories under $BENCH_DIR) and holdfast-loadgen producing to an RF 3 topic
# with acks=all (fsync before acknowledgement, the default) at 1 KiB. Prints throughput and
# produce-latency percentiles. Not part of the test suite: figures, not assertions.
#   scripts/bench-cluster.sh [extra loadgen args, e.g. --seconds 20 --partitions 6]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin holdfast --bin holdfast-loadgen
BIN=$PWD/target/release/holdfast
LOADGEN=$PWD/target/release/holdfast-loadgen
DIR=${BENCH_DIR:-$(mktemp -d /tmp/holdfast-bench-cluster-XXXX)}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ID=$("$BIN" random-uuid)
declare -a LISTEN
V=""
for i in 1 2 3; do
  LISTEN[$i]=127.0.0.1:$(port)
  V="$V${V:+,}$i@127.0.0.1:$(port)"
done
for i in 1 2 3; do
  extra=(); [ "$i" = 1 ] && extra=(--bootstrap)
  "$BIN" format --data-dir "$DIR/n$i" --node-id "$i" --cluster-id "$ID" "${extra[@]}" >/dev/null
done
for i in 1 2 3; do
  "$BIN" serve --data-dir "$DIR/n$i" --node-id "$i" --listen "${LISTEN[$i]}" \
    --controller-quorum-voters "$V" >"$DIR/n$i.log" 2>&1 &
  pids+=($!)
done
# Wait until every node has registered (the cluster description lists three brokers).
for _ in $(seq 1 600); do
  n=$("$BIN" cluster describe -b "${LISTEN[1]}" --format json --timeout-ms 1000 2>/dev/null \
    | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("brokers", [])))' 2>/dev/null || echo 0)
  [ "$n" = 3 ] && break
  sleep 0.1
done
[ "$n" = 3 ] || { echo "cluster did not form; logs in $DIR" >&2; trap - EXIT; exit 1; }
echo "cluster: 3 nodes (${LISTEN[*]}), data in $DIR, fsync before ack (default)"
"$LOADGEN" --bootstrap "${LISTEN[1]}" --replication-factor 3 --acks all --sizes 1024 \
  --partitions 6 --seconds 20 "$@"
