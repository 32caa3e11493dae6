#!/usr/bin/env bash
# Runs the Python client suites (tests/python) against a freshly built holdfast binary.
# Exits non-zero on any failure; pytest's summary line is the last line printed.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-test-deps.sh
cargo build -p holdfast
export HOLDFAST_BIN="$PWD/target/debug/holdfast"
set +e
.venv/bin/python -m pytest tests/python -q -rs -p no:cacheprovider -W ignore::DeprecationWarning "$@"
rc=$?
set -e
exit $rc
