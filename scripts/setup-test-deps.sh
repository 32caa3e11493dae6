#!/usr/bin/env bash
# Idempotent installer of the third-party clients the tests drive:
#   .venv with confluent-kafka, kafka-python (+ codec packages) and pytest; kcat and faketime
#   (libfaketime, for the chaos clock-jump fault) via apt.
# Only package registries are contacted (PyPI, the distribution's apt mirrors).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup-test-deps: creating .venv"
    "$PY" -m venv .venv
fi
# Codec packages kafka-python needs: lz4, cramjam (snappy), zstandard; gzip is stdlib.
# prometheus-client parses /metrics scrapes (tests/python/test_ops_metrics.py).
PKGS="confluent-kafka kafka-python pytest lz4 cramjam python-snappy zstandard prometheus-client"
missing=0
for mod in confluent_kafka kafka pytest lz4 cramjam snappy zstandard prometheus_client; do
    .venv/bin/python -c "import $mod" 2>/dev/null || missing=1
done
if [ "$missing" = 1 ]; then
    echo "setup-test-deps: pip install $PKGS"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet --upgrade $PKGS
fi
.venv/bin/python - <<'PY'
import confluent_kafka, kafka
print("setup-test-deps: confluent-kafka %s (librdkafka %s), kafka-python %s"
      % (confluent_kafka.version()[0], confluent_kafka.libversion()[0], kafka.__version__))
PY

# apt_install PACKAGE WHAT-IS-SKIPPED: installs with apt-get (running `apt-get update` once if
# the first try fails); a failure is a warning, and the tests that need it are skipped (said).
apt_install() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
    echo "setup-test-deps: installing $1 with apt-get"
    if ! $sudo apt-get install -y -q "$1" >/dev/null 2>&1; then
        if ! { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q "$1" >/dev/null 2>&1; }; then
            echo "setup-test-deps: WARNING: could not install $1; $2" >&2
        fi
    fi
}

if ! command -v kcat >/dev/null 2>&1 && ! command -v kafkacat >/dev/null 2>&1; then
    apt_install kcat "kcat tests will be skipped"
fi
if command -v kcat >/dev/null 2>&1; then
    echo "setup-test-deps: $(kcat -V 2>&1 | head -1)"
fi

# libfaketime: the chaos harness's clock-jump fault runs brokers under it (LD_PRELOAD).
FAKETIME_LIB=$(ls /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketimeMT.so.1 2>/dev/null | head -1 || true)
if [ -z "$FAKETIME_LIB" ]; then
    apt_install faketime "chaos clock scenarios will be SKIPPED"
fi
