#!/usr/bin/env bash
# A longer chaos campaign than the CI smoke (docs/chaos.md, "Campaign of session 9"): every
# fault family, both producer libraries, transactions with the consume-transform-produce
# copier, groups, client pauses, single-node and 3-node
# clusters, coordinated power cuts. About 18 minutes on 2 cores; needs root for power cuts,
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
    "cluster-all-copy-51|--scenario cluster-all $C3 --seed 51 --seconds 90 --copy --java-producers 1"
    "power-cut-all-52|--scenario power-cut-all $C3 --seed 52 --seconds 60 --rate 1000 --java-producers 1"
    "cluster-all-groups-53|--scenario cluster-all $C3 --seed 53 --seconds 90 --groups --java-producers 1"
    "mixed-copy-54|--scenario mixed --seed 54 --seconds 60 --copy --groups --java-producers 1"
    "net-copy-55|--scenario net --seed 55 --seconds 60 --copy --java-producers 1"
    "clock-cluster-copy-56|--scenario clock $C3 --seed 56 --seconds 60 --copy --groups --java-producers 1"
    "pause-client-57|--scenario pause-client $C3 --seed 57 --seconds 45 --copy --java-producers 2"
    "kill-leader-58|--scenario kill-leader $C3 --seed 58 --seconds 60 --java-producers 2"
)
failed=0
for r in "${runs[@]}"; do
    name=${r%%|*}
    # shellcheck disable=SC2086
    "$BIN" run ${r#*|} --out "$OUT/$name" >"$OUT/$name.txt" 2>&1
    rc=$?
    faults=$(grep -cE '^ +[0-9.]+ s \.\. ' "$OUT/$name.txt")
    echo "$name rc=$rc faults=$faults | $(grep -m1 '^acknowledged writes lost' "$OUT/$name.txt") | $(grep -m1 '^acknowledged sends by client' "$OUT/$name.txt") | $(grep -m1 '^coordinated power cuts' "$OUT/$name.txt") | anomalies $(grep -m1 '^anomalies:' "$OUT/$name.txt" | cut -d' ' -f2) | $(grep -m1 '^note: transactions' "$OUT/$name.txt" | cut -c7-60) | $(grep -m1 '^note: copier: [0-9]' "$OUT/$name.txt" | cut -c7-80) | $(grep -m1 '^note: duplicates by' "$OUT/$name.txt" | cut -c7-)"
    [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || failed=$((failed + 1))
done
echo "campaign: ${#runs[@]} runs, $failed failed"
[ "$failed" -eq 0 ]
