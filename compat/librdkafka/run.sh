#!/usr/bin/env bash
# Run librdkafka's own integration test suite (tests/ of librdkafka 2.12.1, as
# shipped in the rdkafka-sys crate) against a single-node Holdfast broker.
#
#   compat/librdkafka/run.sh            run the tests in allowlist.txt; exit 1 if any fails
#   compat/librdkafka/run.sh --survey   run every test; write build/survey.tsv
#   compat/librdkafka/run.sh 0001 0012  run just these tests (same output as the allow-list)
#
# Environment:
#   HOLDFAST_BIN        broker binary (default target/release/holdfast, else target/debug/holdfast;
#                       building it is the caller's job)
#   LIBRDKAFKA_SRC      librdkafka source tree (default: the rdkafka-sys 4.10.0+2.12.1 crate
#                       in ~/.cargo/registry; `cargo fetch` puts it there)
#   TEST_TIMEOUT        seconds per test before it is killed (default 90; --survey: 60)
#   TEST_KAFKA_VERSION  broker version the tests assume (default 4.0.0)
#   SURVEY_FROM=NNNN    --survey: resume at test NNNN, keeping earlier rows of survey.tsv
#   JOBS                tests run at once, each against its own broker (default 3; --survey: 1).
#                       Most tests spend their time waiting on timers, not CPU.
#
# Per-test logs (test-runner and broker) are kept in build/logs/.
#
# librdkafka and its test-runner are built once and cached in
# ${HOLDFAST_CACHE:-~/.cache/holdfast}/librdkafka-2.12.1 (delete it to rebuild). Each test gets
# a fresh broker and data directory.
# No errexit: a grep that finds nothing while summarising a log must not end the run.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BUILD="$HERE/build"
# The built library and test-runner are kept outside the checkout (like cargo's registry), so
# a fresh clone does not rebuild them; the build is moved into place only once complete.
RDK_CACHE="${HOLDFAST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/holdfast}"
RDK="$RDK_CACHE/librdkafka-2.12.1"
LOGS="$BUILD/logs"
ALLOWLIST="$HERE/allowlist.txt"

MODE=allowlist
TESTS_ARG=()
for a in "$@"; do
    case "$a" in
        --survey) MODE=survey ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        [0-9][0-9][0-9][0-9]) MODE=explicit; TESTS_ARG+=("$a") ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

if [[ $MODE == survey ]]; then
    TEST_TIMEOUT="${TEST_TIMEOUT:-60}"
else
    TEST_TIMEOUT="${TEST_TIMEOUT:-90}"
fi
export TEST_KAFKA_VERSION="${TEST_KAFKA_VERSION:-4.0.0}"

# ---------------------------------------------------------------- setup (once)
setup() {
    if [[ -x "$RDK/tests/test-runner" ]]; then
        return
    fi
    local src="${LIBRDKAFKA_SRC:-}"
    if [[ -z $src ]]; then
        src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-4.10.0+2.12.1/librdkafka 2>/dev/null | head -1 || true)"
    fi
    if [[ -z $src || ! -f $src/configure ]]; then
        echo "librdkafka sources not found; fetching crates (cargo fetch)" >&2
        (cd "$ROOT" && cargo fetch)
        src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-4.10.0+2.12.1/librdkafka | head -1)"
    fi
    # Compression libraries: zlib and zstd are linked from the system (lz4 and snappy are
    # built in). Install the -dev packages when apt is available and they are missing.
    if command -v apt-get >/dev/null && [[ ! -f /usr/include/zstd.h || ! -f /usr/include/zlib.h ]]; then
        echo "installing zlib1g-dev libzstd-dev" >&2
        apt-get install -y zlib1g-dev libzstd-dev >/dev/null || echo "apt-get failed; building without them" >&2
    fi
    # RapidJSON (headers only) lets 0053_stats, 0098, 0101 and 0110 run instead of skipping.
    if command -v apt-get >/dev/null && [[ ! -f /usr/include/rapidjson/schema.h ]]; then
        apt-get install -y rapidjson-dev >/dev/null || echo "no rapidjson-dev; 4 tests will skip" >&2
    fi
    echo "building librdkafka from $src into $RDK (a few minutes)" >&2
    local tmp="$RDK.partial.$$"
    rm -rf "$tmp"
    mkdir -p "$BUILD" "$RDK_CACHE"
    cp -a "$src" "$tmp" || exit 2
    (
        cd "$tmp" &&
            ./configure --disable-ssl --disable-gssapi --disable-curl --disable-lz4-ext \
                >"$BUILD/configure.log" 2>&1 &&
            make -j2 libs >"$BUILD/make-libs.log" 2>&1 &&
            make -C tests -j2 build >"$BUILD/make-tests.log" 2>&1
    ) || { echo "librdkafka build failed; see $BUILD/*.log" >&2; rm -rf "$tmp"; exit 2; }
    rm -rf "$RDK"
    mv "$tmp" "$RDK" || exit 2
}

# ---------------------------------------------------------------- broker
find_bin() {
    if [[ -n ${HOLDFAST_BIN:-} ]]; then
        echo "$HOLDFAST_BIN"
    elif [[ -x $ROOT/target/release/holdfast ]]; then
        echo "$ROOT/target/release/holdfast"
    elif [[ -x $ROOT/target/debug/holdfast ]]; then
        echo "$ROOT/target/debug/holdfast"
    else
        echo "no holdfast binary: build it (cargo build --release -p holdfast) or set HOLDFAST_BIN" >&2
        exit 2
    fi
}

BROKER_PID=
PORT=
DATA=
stop_broker() {
    if [[ -n $BROKER_PID ]]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
    fi
    if [[ -n $DATA ]]; then
        rm -rf "$DATA"
        DATA=
    fi
}
trap stop_broker EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_broker <logfile>
start_broker() {
    local log="$1" i
    DATA="$(mktemp -d "${TMPDIR:-/tmp}/holdfast-rdk.XXXXXX")"
    for i in 1 2 3 4 5; do
        PORT="$(free_port)"
        # The log of the previous run of this test must not answer the readiness check
        # below before the new broker has truncated it.
        rm -f "$log"
        "$BIN" serve --data-dir "$DATA/data" --listen "127.0.0.1:$PORT" \
            --set num.partitions=4 >"$log" 2>&1 &
        BROKER_PID=$!
        local n
        for n in $(seq 1 100); do
            if grep -q "holdfast listening on 127.0.0.1:$PORT" "$log" 2>/dev/null; then
                return 0
            fi
            if ! kill -0 "$BROKER_PID" 2>/dev/null; then
                break
            fi
            sleep 0.1
        done
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
    done
    echo "holdfast did not start; see $log" >&2
    exit 2
}

# ---------------------------------------------------------------- one test
# run_one <NNNN> [quick] [consumer] -> sets RESULT (PASSED|FAILED|TIMEOUT|SKIPPED), DETAIL, SECS
# "consumer": the test's group consumers use group.protocol=consumer (KIP-848), through
# librdkafka's TEST_CONSUMER_GROUP_PROTOCOL.
run_one() {
    local num="$1" quick= protocol="${TEST_CONSUMER_GROUP_PROTOCOL:-}"
    [[ ${2:-} == quick ]] && quick=-Q
    [[ ${3:-} == consumer ]] && protocol=consumer
    local log="$LOGS/$num${protocol:+.$protocol}.log" blog="$LOGS/$num${protocol:+.$protocol}.broker.log"
    start_broker "$blog"
    local conf="$BUILD/test.${WORKER:-0}.conf"
    cat >"$conf" <<EOF
bootstrap.servers=127.0.0.1:$PORT
EOF
    local t0 rc=0
    t0=$(date +%s.%N)
    # -L: skip local (broker-less, mock-cluster) tests: they do not talk to Holdfast.
    # -p1: one test function at a time. No -Q by default: quick mode silently skips every
    # SUB_TEST not marked quick and the test then reports PASSED having done nothing
    # (0018_cgrp_term "passes" in 0.000s that way); allowlist.txt may opt a test into -Q.
    {
        (
            cd "$RDK/tests"
            export LD_LIBRARY_PATH="../src:../src-cpp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            if [[ -n $protocol ]]; then
                export TEST_CONSUMER_GROUP_PROTOCOL="$protocol"
            fi
            RDKAFKA_TEST_CONF="$conf" TESTS="$num" TEST_LEVEL=2 \
                exec timeout -s KILL "$TEST_TIMEOUT" ./test-runner -L -p1 $quick
        ) >"$log" 2>&1
    } 2>/dev/null || rc=$?
    SECS=$(python3 -c "import time; print(f'{time.time()-$t0:.1f}')")
    local broker_alive=1
    kill -0 "$BROKER_PID" 2>/dev/null || broker_alive=0
    stop_broker
    # Summary rows look like "| 0001_multiobj   |     PASSED |   1.2s |" (ANSI colours stripped).
    local rows
    rows="$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^\| [0-9]{4}_' | grep -v '^| 0000_' || true)"
    local npass nfail nskip
    npass=$(grep -c '| *PASSED |' <<<"$rows" || true)
    nfail=$(grep -c '| *FAILED |' <<<"$rows" || true)
    nskip=$(grep -c '| *SKIPPED |' <<<"$rows" || true)
    DETAIL=
    local clean
    clean="$(sed 's/\x1b\[[0-9;]*m//g' "$log")"
    if grep -q 'timed out (timeout set to' <<<"$clean"; then
        RESULT=TIMEOUT
        DETAIL="$(grep -oE 'Test [0-9]{4}_[^ ]* (\([^)]*\) )?timed out \(timeout set to [0-9]+ seconds\)' <<<"$clean" | head -1); last error: $(grep -E 'FAIL|rror' <<<"$clean" | grep -v 'timed out' | tail -1 | cut -c1-200)"
    elif [[ $rc -eq 137 ]]; then
        RESULT=TIMEOUT
        DETAIL="killed by run.sh after ${TEST_TIMEOUT}s; last error: $(grep -E 'FAIL|rror' <<<"$clean" | tail -1 | cut -c1-200)"
    elif [[ $rc -ne 0 ]]; then
        RESULT=FAILED
        # librdkafka prints '### Test "<name> (<subtest>)" failed at <file:line:func>() at <date>: ###'
        # followed by the failure message; keep the first one.
        DETAIL="$(awk '/^### Test "/ {n=$0; sub(/^### Test "/, "", n); sub(/" failed at .*/, "", n); getline m; print n ": " m; exit}' <<<"$clean" | cut -c1-300)"
        [[ -z $DETAIL ]] && DETAIL="exit $rc; $(grep -E 'FAIL|assert|Assert|signal|Abort' <<<"$clean" | head -2 | tr '\n' ' ' | cut -c1-300)"
    elif [[ $npass -eq 0 ]]; then
        RESULT=SKIPPED
        # Rows skipped by -L ("negative test flags") are the local variants; report why the
        # others were skipped (test scenario, missing RapidJSON, quick mode, ...).
        DETAIL="$(grep SKIPPED <<<"$rows" | grep -v 'negative test flags' | head -2 | sed -E 's/^\| *([^ |]+) *\| *SKIPPED *\| *[0-9.]+s *\| */\1: /' | tr '\n' ' ' | cut -c1-200)"
        if [[ -z $DETAIL ]]; then
            DETAIL="local-only test (mock cluster or client-side; does not use the broker)"
        elif [[ $DETAIL =~ ^[0-9a-z_]+:\ *$ ]]; then
            DETAIL="$DETAIL silent skip: needs another test scenario (-s noautocreate)"
        fi
    else
        RESULT=PASSED
        [[ $nskip -gt 0 ]] && DETAIL="$npass passed, $nskip skipped"
    fi
    if [[ $broker_alive -eq 0 ]]; then
        DETAIL="BROKER EXITED; $DETAIL"
        [[ $RESULT == PASSED ]] && RESULT=FAILED
    fi
    return 0
}

# ---------------------------------------------------------------- main
setup
BIN="$(find_bin)"
mkdir -p "$LOGS"

case $MODE in
    allowlist)
        # "NNNN", "NNNN quick" (run with -Q) or "NNNN consumer" (KIP-848 group protocol) per
        # line; '#' starts a comment.
        mapfile -t TESTS_LIST < <(sed -e 's/#.*//' "$ALLOWLIST" | awk 'NF && $1 ~ /^[0-9][0-9][0-9][0-9]$/ {print $1 ($2=="quick" || $3=="quick" ? ":quick" : "") ($2=="consumer" || $3=="consumer" ? ":consumer" : "")}')
        ;;
    explicit)
        TESTS_LIST=("${TESTS_ARG[@]}")
        ;;
    survey)
        mapfile -t TESTS_LIST < <(grep -oE '_TEST\([0-9]{4}_' "$RDK/tests/test.c" \
            | grep -oE '[0-9]{4}' | grep -vE '^(0000|8[0-9]{3})$' | sort -u)
        SURVEY="$BUILD/survey.tsv"
        if [[ -n ${SURVEY_FROM:-} ]]; then
            # Resume an interrupted survey: keep the rows before SURVEY_FROM.
            mapfile -t TESTS_LIST < <(printf '%s\n' "${TESTS_LIST[@]}" | awk -v f="$SURVEY_FROM" '$1 >= f')
            awk -F'\t' -v f="$SURVEY_FROM" 'NR == 1 || $1 < f' "$SURVEY" >"$SURVEY.tmp" 2>/dev/null || true
            mv "$SURVEY.tmp" "$SURVEY"
        else
            printf 'test\tresult\tsecs\tdetail\n' >"$SURVEY"
        fi
        ;;
esac

echo "librdkafka 2.12.1 test suite vs $BIN (TEST_KAFKA_VERSION=$TEST_KAFKA_VERSION, timeout ${TEST_TIMEOUT}s, logs in $LOGS)"
passed=0
failed=0
skipped=0
start=$(date +%s)
JOBS="${JOBS:-$([[ $MODE == survey ]] && echo 1 || echo 3)}"
RESULTS="$BUILD/results"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"

# One worker: entries WORKER, WORKER+jobs, ... of the list given, one line per test to stdout
# and to the worker's results file.
worker() {
    WORKER=$1
    local jobs=$2
    shift 2
    local list=("$@")
    trap stop_broker EXIT
    trap 'exit 130' INT TERM
    local i entry t line
    for ((i = WORKER; i < ${#list[@]}; i += jobs)); do
        entry="${list[$i]}"
        t="${entry%%:*}"
        run_one "$t" "$([[ $entry == *:quick* ]] && echo quick || true)" \
            "$([[ $entry == *:consumer ]] && echo consumer || true)"
        line="$(printf '%s %-8s %6ss  %s' "$t$([[ $entry == *:consumer ]] && echo /consumer || true)" "$RESULT" "$SECS" "$DETAIL")"
        echo "$line"
        printf '%s\t%s\t%s\t%s\n' "$t" "$RESULT" "$SECS" "$DETAIL" >>"$RESULTS/$WORKER.tsv"
    done
}

# Runs the entries given with `jobs` workers at once and waits for them.
run_list() {
    local jobs=$1
    shift
    [[ $# -eq 0 ]] && return
    pids=()
    for ((w = 0; w < jobs; w++)); do
        worker "$w" "$jobs" "$@" &
        pids+=($!)
    done
    trap 'kill "${pids[@]}" 2>/dev/null; exit 130' INT TERM
    for pid in "${pids[@]}"; do
        wait "$pid"
    done
}

# Tests of the KIP-848 `consumer` protocol run one at a time after the others: with three
# tests at once, 0045/consumer (rapid subscription changes) once waited past its 30 s for an
# assignment (1 CI run, and 1 of 15 local runs three at a time; never when run alone). Left
# open in docs/compat/librdkafka.md.
parallel=()
sequential=()
for entry in "${TESTS_LIST[@]}"; do
    if [[ $entry == *:consumer || -n ${TEST_CONSUMER_GROUP_PROTOCOL:-} ]]; then
        sequential+=("$entry")
    else
        parallel+=("$entry")
    fi
done
run_list "$JOBS" "${parallel[@]}"
run_list 1 "${sequential[@]}"
while IFS=$'\t' read -r t result secs detail; do
    case $result in
        PASSED) passed=$((passed + 1)) ;;
        # An allow-listed test that skips proves nothing: it counts as failed.
        SKIPPED) if [[ $MODE == survey ]]; then skipped=$((skipped + 1)); else failed=$((failed + 1)); fi ;;
        *) failed=$((failed + 1)) ;;
    esac
    if [[ $MODE == survey ]]; then
        printf '%s\t%s\t%s\t%s\n' "$t" "$result" "$secs" "$detail" >>"$SURVEY"
    fi
done < <(cat "$RESULTS"/*.tsv 2>/dev/null | sort)
ran=$(cat "$RESULTS"/*.tsv 2>/dev/null | wc -l)
if [[ $ran -ne ${#TESTS_LIST[@]} ]]; then
    echo "librdkafka: only $ran of ${#TESTS_LIST[@]} tests reported a result" >&2
    failed=$((failed + ${#TESTS_LIST[@]} - ran))
fi
echo "($(( $(date +%s) - start ))s, $skipped skipped)"
[[ $MODE == survey ]] && echo "survey table: $SURVEY"
echo "librdkafka: $passed passed, $failed failed"
if [[ $MODE == survey ]]; then
    exit 0
fi
[[ $failed -eq 0 ]]
