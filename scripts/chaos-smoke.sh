#!/usr/bin/env bash
# Chaos smoke test: a short seeded run of each fault scenario against a real holdfast broker
# (each must PASS the history checker) and the negative control, a power-cut run against a
# broker that acknowledges before fsync (it must FAIL with lost acknowledged writes, or the
# harness proves nothing), and a kill run against a broker without producer deduplication (it
# must FAIL with duplicates). The consumer-group workload (--groups) runs under kill and power
# cut, and its negative control, a power-cut run against a broker that acknowledges OffsetCommit
# before fsync, must FAIL with group-offset-regressed. Two cluster runs (3 nodes, replication
# factor 3, min.insync.replicas 2): node kills, coordinated power cuts of every node at once,
# network partitions between nodes (each node in its own network namespace, root only), and
# corruption of one node's segments (it must repair from the leader).
# Clock jumps (libfaketime): the wall clock of the broker, or of one node, steps by seconds to
# an hour and back; nothing may be lost, and in a cluster no ISR shrink or fencing may follow
# (timeouts run on a clock that never steps); the control measures them on the wall clock.
# Cluster controls (issue #7): acks=1 producers under leader kills (followers lagging) must
# lose acknowledged writes, and so must an unclean leader election; a broker reading one
# offset past the last stable offset must show read_committed readers uncommitted data. Each
# runs beside the same scenario and seed without the control (which must pass).
# A second client library (issue #7): runs with --java-producers 1 add a producer of Apache
# Kafka's Java client (kafka-clients) to the same history; a kill run against a broker without
# producer deduplication must FAIL with duplicates of the Java producer's values, and an acks=1
# kill-leader run must lose writes the Java producer saw acknowledged.
# Two lanes run at once (single-node runs; cluster runs and net-txn); each lane runs one scenario at a
# time, so a lane's results never depend on the other's network namespaces or ports.
# Exits 0 only if every expectation holds. About 6 minutes.
#
#   scripts/chaos-smoke.sh            # CHAOS_OUT=DIR keeps the reports (default: a temp dir)
#
# Power-cut and disk-full need root (loop-mounted ext4 images); without root they are
# reported as skipped.
set -uo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p holdfast -p holdfast-chaos || { echo "chaos: build failed"; exit 1; }
BIN="${CARGO_TARGET_DIR:-target}/debug"
OUT="${CHAOS_OUT:-$(mktemp -d /tmp/chaos-smoke.XXXXXX)}"
KEEP="${CHAOS_OUT:+1}"
mkdir -p "$OUT"
# The Java producer (--java-producers) is compiled with the other Java test programs; without
# Java or its jars the script says SKIPPED and those runs are skipped (exit 3).
scripts/setup-java-deps.sh >"$OUT/setup-java-deps.log" 2>&1 || {
    cat "$OUT/setup-java-deps.log"
    echo "chaos: scripts/setup-java-deps.sh failed"
    exit 1
}
passed=0
failed=0
skipped=0

# expect NAME pass|fail:CLASS ARGS...: run one scenario and compare the verdict; a run
# expected to fail must fail with anomalies of CLASS. With EXPECT_ALSO=REGEX in its
# environment, the report must also have a line matching REGEX (grep -E).
expect() {
    local name=$1 want=${2%%:*} class=${2#*:} also=${EXPECT_ALSO:-}
    shift 2
    local log="$OUT/$name.txt"
    timeout -k 20 150 "$BIN/holdfast-chaos" run "$@" --out "$OUT/$name" >"$log" 2>&1
    local rc=$?
    local got
    case $rc in
        0) got=pass ;;
        1) got=fail ;;
        3) got=skipped ;;
        *) got="harness-error(rc=$rc)" ;;
    esac
    local lost
    lost=$(grep -m1 '^acknowledged writes lost' "$log" || true)
    lost="$lost; anomalies: $(grep -m1 '^anomalies:' "$log" | cut -d' ' -f2)"
    local coord
    coord=$(grep -m1 '^coordinated power cuts' "$log" | cut -d';' -f1 || true)
    [ -n "$coord" ] && lost="$lost; $coord"
    [ "$want" = fail ] && lost="$lost; $class: $(grep -m1 "^  $class: " "$log" | cut -d: -f2 | tr -d ' ')"
    local java
    java=$(grep -m1 '^  java: ' "$log" | sed 's/^  //' || true)
    [ -n "$java" ] && lost="$lost; $(grep -m1 '^  rdkafka: ' "$log" | sed 's/^  //'); $java"
    if [ "$got" = skipped ]; then
        skipped=$((skipped + 1))
        echo "chaos: $name SKIPPED: $(grep -m1 SKIPPED "$log")"
        return
    fi
    if [ "$got" = "$want" ] && { [ "$want" = pass ] || grep -q "^  $class: [1-9]" "$log"; } &&
        { [ -z "$also" ] || grep -Eq "$also" "$log"; }; then
        passed=$((passed + 1))
        echo "chaos: $name: expected $want, got $got ($lost)"
    else
        failed=$((failed + 1))
        echo "chaos: $name: expected $want, got $got ($lost); report follows"
        grep -v '^      {' "$log" | head -60
    fi
}

# A run with --java-producers proves something about the Java client only if it acknowledged
# sends (its JVM may start slowly on a loaded machine).
JAVA_ACKED='^  java: [0-9]+ sent, [1-9][0-9]* acknowledged'

# A negative control must be caught. A run in which the injected bug happened not to bite
# (it can: an unsynced ack is lost only if a cut lands before writeback) is retried with the
# next seed, at most three; a control never caught fails the smoke.
expect_caught() {
    local name=$1 class=$2 seeds=$3
    shift 3
    local seed before
    for seed in $seeds; do
        before=$failed
        expect "$name" "fail:$class" --seed "$seed" "$@"
        [ "$failed" -eq "$before" ] && return
        if [ "$seed" != "${seeds##* }" ]; then
            failed=$before
            echo "chaos: $name: not caught with seed $seed; retrying with the next seed"
        fi
    done
}

# One lane: its expectations in order, then its counts (read back by the caller).
lane_single() {
    expect kill pass --scenario kill --seed 1 --seconds 12
    expect kill-txn-copy pass --scenario kill --seed 3 --seconds 15 --copy
    expect pause pass --scenario pause --seed 4 --seconds 15
    expect disk-full pass --scenario disk-full --seed 1 --seconds 12
    expect power-cut pass --scenario power-cut --seed 2 --seconds 25 --rate 2000
    expect fsync-eio pass --scenario fsync-eio --seed 1 --seconds 15
    expect kill-groups pass --scenario kill --seed 1 --seconds 12 --groups
    EXPECT_ALSO=$JAVA_ACKED expect kill-java pass --scenario kill --seed 1 --seconds 12 --java-producers 1
    EXPECT_ALSO=$JAVA_ACKED expect pause-client-java pass --scenario pause-client --seed 1 --seconds 15 --java-producers 1
    expect power-cut-groups pass --scenario power-cut --seed 7 --seconds 15 --rate 2000 --groups
    expect clock-groups-txn pass --scenario clock --seed 2 --seconds 15 --groups --txn
    expect_caught power-cut-ack-before-fsync lost-acknowledged-write "2 7 11" --scenario power-cut --seconds 25 --rate 2000 --unsafe-ack-before-fsync
    expect_caught kill-no-dedup duplicate "1 3 5" --scenario kill --seconds 15 --rate 1500 --unsafe-no-dedup
    # The Java sends are checked: duplicates of java-0's values (the per-client line).
    EXPECT_ALSO='^  java: .*, [1-9][0-9]* duplicated\)' expect_caught kill-no-dedup-java duplicate "1 3 5" --scenario kill --seconds 15 --rate 1500 --unsafe-no-dedup --java-producers 1
    expect_caught power-cut-groups-offsets-no-fsync group-offset-regressed "7 2 11" --scenario power-cut --seconds 15 --rate 2000 --groups --unsafe-offsets-no-fsync
    expect_caught kill-txn-abort-as-commit txn-aborted-visible "3 4 5" --scenario kill --seconds 12 --txn --unsafe-abort-as-commit
    expect_caught kill-txn-lso-off-by-one txn-uncommitted-read "3 4 5" --scenario kill --seconds 12 --txn --unsafe-lso-off-by-one
    expect_caught kill-copy-txn-offsets-eager copy-offsets-after-abort "3 4 5" --scenario kill --seconds 12 --copy --unsafe-txn-offsets-eager
    echo "$passed $failed $skipped" >"$OUT/lane-single.counts"
}

lane_cluster() {
    # A single-node run, here to balance the lanes' durations.
    expect net-txn-copy pass --scenario net --seed 6 --seconds 24 --copy
    expect cluster-kill-node-copy pass --scenario kill-node --nodes 3 --replication-factor 3 --seed 1 --seconds 15 --copy
    expect cluster-kill-leader pass --scenario kill-leader --nodes 3 --replication-factor 3 --seed 3 --seconds 12
    EXPECT_ALSO=$JAVA_ACKED expect cluster-kill-leader-java pass --scenario kill-leader --nodes 3 --replication-factor 3 --seed 3 --seconds 12 --java-producers 1
    expect cluster-unclean pass --scenario unclean --nodes 3 --replication-factor 2 --min-insync-replicas 1 --seed 1 --seconds 15
    expect cluster-power-cut-all pass --scenario power-cut-all --nodes 3 --replication-factor 3 --seed 1 --seconds 10 --rate 1000
    expect cluster-partitions pass --scenario cluster-partitions --nodes 3 --replication-factor 3 --seed 2 --seconds 25
    expect cluster-corrupt-node pass --scenario corrupt-node --nodes 3 --replication-factor 3 --seed 1 --seconds 15
    expect cluster-clock pass --scenario clock --nodes 3 --replication-factor 3 --seed 8 --seconds 20
    expect_caught cluster-kill-leader-acks-1 lost-acknowledged-write "3 2 4" --scenario kill-leader --nodes 3 --replication-factor 3 --seconds 12 --acks 1
    # The Java producer honours --acks too: its acknowledged writes must be lost as well.
    EXPECT_ALSO='^  java: [0-9]+ sent, [0-9]+ acknowledged \([1-9][0-9]* lost' expect_caught cluster-kill-leader-acks-1-java lost-acknowledged-write "3 2 4" --scenario kill-leader --nodes 3 --replication-factor 3 --seconds 12 --acks 1 --java-producers 1
    expect_caught cluster-unclean-election lost-acknowledged-write "1 2 3" --scenario unclean --nodes 3 --replication-factor 2 --min-insync-replicas 1 --seconds 15 --unsafe-unclean-election
    expect_caught cluster-clock-wall-timers clock-spurious-timeout "8 12 5" --scenario clock --nodes 3 --replication-factor 3 --seconds 20 --unsafe-wall-clock-timers
    # The cluster's negative control (about 80 s, so not in the default smoke): coordinated power
    # cuts of nodes that acknowledge before fsync must lose acknowledged writes.
    if [ -n "${CHAOS_CLUSTER_CONTROL:-}" ]; then
        expect_caught cluster-power-cut-all-ack-before-fsync lost-acknowledged-write "2 3 4" --scenario power-cut-all --nodes 3 --seconds 20 --rate 2000 --unsafe-ack-before-fsync
    fi
    echo "$passed $failed $skipped" >"$OUT/lane-cluster.counts"
}

lane_single >"$OUT/lane-single.log" 2>&1 &
single_pid=$!
lane_cluster >"$OUT/lane-cluster.log" 2>&1 &
cluster_pid=$!
trap 'kill $single_pid $cluster_pid 2>/dev/null; exit 130' INT TERM
wait $single_pid
wait $cluster_pid
passed=0
failed=0
skipped=0
for lane in single cluster; do
    cat "$OUT/lane-$lane.log"
    if [ -f "$OUT/lane-$lane.counts" ]; then
        read -r p f s <"$OUT/lane-$lane.counts"
        passed=$((passed + p))
        failed=$((failed + f))
        skipped=$((skipped + s))
    else
        echo "chaos: lane $lane ended without its counts"
        failed=$((failed + 1))
    fi
done

[ "$skipped" -gt 0 ] && echo "chaos: $skipped scenario(s) SKIPPED (not root: no loop-mounted ext4)"
if [ "$failed" -eq 0 ] && [ -z "$KEEP" ]; then
    rm -rf "$OUT"
    echo "chaos: reports removed (set CHAOS_OUT=DIR to keep them)"
else
    echo "chaos: reports in $OUT"
fi
echo "chaos: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
