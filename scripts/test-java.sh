#!/usr/bin/env bash
# Runs the Java client and Apache Kafka command-line tool tests (tests/python/test_java.py)
# against a freshly built holdfast binary. Exits non-zero on any failure; pytest's summary line is
# the last line printed. Without Java/Maven/Maven Central the tests skip (visibly), they do not fail.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import pytest" 2>/dev/null; then
    ./scripts/setup-test-deps.sh
fi
./scripts/setup-java-deps.sh
cargo build -p holdfast
export HOLDFAST_BIN="$PWD/target/debug/holdfast"
set +e
.venv/bin/python -m pytest tests/python/test_java.py -q -rsx -p no:cacheprovider -W ignore::DeprecationWarning "$@"
rc=$?
set -e
exit $rc
