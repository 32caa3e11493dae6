#!/usr/bin/env bash
# A longer chaos campaign than the CI smoke (docs/chaos.md, "Campaign of session 8"): every
# fault family, both producer libraries, transactions and groups, single-node and 3-node
# clusters, coordinated power cuts. About 12 minutes on 2 cores; needs root for power cuts,
# network namespaces and loop-mounted images (runs that cannot be done are SKIPPED).
#
#   scripts/chaos-campaign.sh [OUT_DIR]     # default: chaos-campaign/ ; prints one line per run
#
# Exits 1 if any run fails. Each run is reproduced by its arguments (same fault schedule).
set -uo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p holdfast -p holdfast-chaos || exit 2
./scripts/setup-java-deps.sh >/dev/null
OUT="${1:-chaos-campaign}"
mkdir -p "$OUT"
BIN="${CARGO_TARGET_DIR:-target}/debug/holdfast-chaos"
C3="--nodes 3 --replication-factor 3"
runs=(
    "clock-cluster-41|--scenario clock $C3 --seed 41 --seconds 60 --txn --groups --java-producers 1"
    "cluster-all-txn-42|--scenario cluster-all $C3 --seed 42 --seconds 90 --txn --java-producers 1"
    "power-cut-all-43|--scenario power-cut-all $C3 --seed 43 --seconds 60 --rate 1000 --java-producers 1"
    "cluster-all-groups-44|--scenario cluster-all $C3 --seed 44 --seconds 90 --groups --java-producers 1"
    "mixed-45|--scenario mixed --seed 45 --seconds 60 --txn --groups --java-producers 1"
    "clock-46|--scenario clock --seed 46 --seconds 60 --txn --groups --java-producers 1"
    "kill-leader-47|--scenario kill-leader $C3 --seed 47 --seconds 60 --java-producers 2"
)
failed=0
for r in "${runs[@]}"; do
    name=${r%%|*}
    # shellcheck disable=SC2086
    "$BIN" run ${r#*|} --out "$OUT/$name" >"$OUT/$name.txt" 2>&1
    rc=$?
    faults=$(grep -cE '^ +[0-9.]+ s \.\. ' "$OUT/$name.txt")
    echo "$name rc=$rc faults=$faults | $(grep -m1 '^acknowledged writes lost' "$OUT/$name.txt") | $(grep -m1 '^acknowledged sends by client' "$OUT/$name.txt") | $(grep -m1 '^coordinated power cuts' "$OUT/$name.txt") | anomalies $(grep -m1 '^anomalies:' "$OUT/$name.txt" | cut -d' ' -f2) | $(grep -m1 '^note: transactions' "$OUT/$name.txt" | cut -c7-60)"
    [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || failed=$((failed + 1))
done
echo "campaign: ${#runs[@]} runs, $failed failed"
[ "$failed" -eq 0 ]
