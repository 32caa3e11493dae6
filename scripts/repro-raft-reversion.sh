#!/bin/bash
# Reproduces an open finding (docs/cluster.md, "Open finding: Raft leader panic"): starts three
# cluster nodes, creates two RF-3 topics right away and reports whether openraft panicked with
# "follower log reversion". About 1 start in 4 panicked on a loaded 2-core machine.
#   H=target/debug/holdfast scripts/repro-raft-reversion.sh
H=${H:-/work/main/target/debug/holdfast}
pkill -f "data-dir /tmp/rp" ; sleep 0.5
rm -rf /tmp/rp1 /tmp/rp2 /tmp/rp3
ID=$($H random-uuid)
for n in 1 2 3; do $H format --data-dir /tmp/rp$n --node-id $n --cluster-id $ID $([ $n = 1 ] && echo --bootstrap) >/dev/null; done
V=1@127.0.0.1:17093,2@127.0.0.1:27093,3@127.0.0.1:37093
for n in 1 2 3; do $H serve --data-dir /tmp/rp$n --node-id $n --listen 127.0.0.1:${n}7092 --controller-quorum-voters $V > /tmp/rp$n.log 2>&1 & done
sleep 3
$H topic create t1 -b 127.0.0.1:17092 -p 6 -r 3 >/dev/null 2>&1
$H topic create t2 -b 127.0.0.1:27092 -p 6 -r 3 >/dev/null 2>&1
sleep 2
grep -l "log reversion" /tmp/rp*.log && echo PANIC || echo ok
pkill -f "data-dir /tmp/rp"; sleep 0.5
