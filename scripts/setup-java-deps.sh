#!/usr/bin/env bash
# Idempotent installer of the Java side of the compatibility tests:
#   * kafka-clients and Apache Kafka's command-line tools (kafka-tools, and kafka_2.13 for
#     kafka-configs, with what they need at run
#     time) from Maven Central into .deps/java/lib (tests/java/pom.xml names them, one version);
#   * the test program tests/java/src/** compiled with javac into .deps/java/classes.
# Tools then run as: java -cp '.deps/java/lib/*' org.apache.kafka.tools.TopicCommand ...
# Without Java or Maven, or when Maven Central cannot be reached, it prints "SKIPPED: ..." and
# exits 0: tests/python/test_java.py then skips, and the rest of the suite still runs.
set -uo pipefail
cd "$(dirname "$0")/.."

DEPS=.deps/java
LIB=$DEPS/lib
CLASSES=$DEPS/classes
POM=tests/java/pom.xml
SRC=tests/java/src/main/java

skip() {
    echo "setup-java-deps: SKIPPED: $* (the Java compatibility tests will be skipped)" >&2
    exit 0
}

command -v java >/dev/null 2>&1 || skip "java not found"
command -v javac >/dev/null 2>&1 || skip "javac not found (install a JDK 17)"

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

pom_stamp=$(stamp_of "$POM")
if [ -f "$LIB/.stamp" ] && [ "$(cat "$LIB/.stamp")" = "$pom_stamp" ]; then
    :
else
    command -v mvn >/dev/null 2>&1 || skip "mvn not found"
    echo "setup-java-deps: fetching $(grep -o '<kafka.version>[^<]*' "$POM" | cut -d'>' -f2) jars with mvn dependency:copy-dependencies"
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-java-lib.XXXXXX")
    # HOLDFAST_MVN_FLAGS: extra flags for mvn (e.g. -o, -Dmaven.repo.local=...).
    # shellcheck disable=SC2086
    if ! mvn -B -q ${HOLDFAST_MVN_FLAGS:-} -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$tmp" >"$tmp.log" 2>&1; then
        tail -20 "$tmp.log" >&2
        rm -rf "$tmp" "$tmp.log"
        skip "mvn could not fetch the Kafka jars (is Maven Central reachable?)"
    fi
    rm -f "$tmp.log"
    rm -rf "$LIB"
    mkdir -p "$DEPS"
    mv "$tmp" "$LIB"
    echo "$pom_stamp" >"$LIB/.stamp"
    rm -rf "$CLASSES" # compiled against the previous jars
fi

src_stamp=$( (find "$SRC" -name '*.java' | sort | xargs cat; cat "$LIB/.stamp") | sha256sum | cut -d' ' -f1)
if [ ! -f "$CLASSES/.stamp" ] || [ "$(cat "$CLASSES/.stamp")" != "$src_stamp" ]; then
    echo "setup-java-deps: compiling the Java test program"
    rm -rf "$CLASSES"
    mkdir -p "$CLASSES"
    find "$SRC" -name '*.java' >"$DEPS/sources.txt"
    if ! javac -Xlint:deprecation -nowarn --release 17 -cp "$LIB/*" -d "$CLASSES" @"$DEPS/sources.txt"; then
        rm -rf "$CLASSES"
        echo "setup-java-deps: ERROR: javac failed" >&2
        exit 1
    fi
    echo "$src_stamp" >"$CLASSES/.stamp"
fi

echo "setup-java-deps: $(java -version 2>&1 | head -1); $(ls "$LIB" | grep -E '^kafka-(clients|tools)-[0-9]' | tr '\n' ' ')"
