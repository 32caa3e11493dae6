#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Python clients in
# .venv, kcat and file-system tools from apt), checks formatting and lints, builds once, runs
# the Rust tests (log property/crash/power-cut tests, rdkafka integration tests) and the
# client suites (confluent-kafka, kafka-python, kcat, the Java client and Apache Kafka's
# command-line tools from Maven Central) against a real holdfast process.
set -euo pipefail
cd "$(dirname "$0")/.."

T0=$(date +%s)
say() { printf '\n=== %s (at %ds)\n' "$*" "$(($(date +%s) - T0))"; }

say "setup: test dependencies"
./scripts/setup-test-deps.sh
./scripts/setup-java-deps.sh

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "cargo build"
cargo build --workspace --all-targets --quiet

say "cargo test"
cargo test --workspace --quiet 2>&1 | tee target/cargo-test.log
# Surface skipped environment-dependent tests so a skip is never silent.
grep -h "SKIPPED" target/cargo-test.log || true

say "python and java client suites"
./scripts/test-python.sh

say "librdkafka's own test suite (allow-listed tests, compat/librdkafka)"
HOLDFAST_BIN="$PWD/target/debug/holdfast" ./compat/librdkafka/run.sh

say "chaos smoke: seeded fault scenarios and negative controls"
./scripts/chaos-smoke.sh

say "all passed"
