#!/usr/bin/env bash
# Runs a cargo-fuzz target (needs the nightly toolchain; installs cargo-fuzz if missing).
#   scripts/fuzz.sh [validate_batches|recover_segment|decode_request|decode_txn_state|decode_quorum] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-validate_batches}
seconds=${2:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
cd fuzz
cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
