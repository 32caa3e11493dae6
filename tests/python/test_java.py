"""The Java client (kafka-clients) and Apache Kafka's own command-line tools against holdfast.

The jars come from scripts/setup-java-deps.sh (into .deps/java); without them every test here
skips with the reason printed. Each tool runs as `java -cp '.deps/java/lib/*' <main class>`,
exactly what bin/kafka-*.sh would run. Consumers are assign-based (`--partition N --offset
earliest`, or assign() in the Java program) except the group tests at the end.

With HOLDFAST_JAVA_VERSIONS=FILE, the request versions each tool sent (read from the client's
DEBUG log of NetworkClient) are appended to FILE: docs/compat/java.md was written from that.
"""
import glob
import json
import os
import queue
import re
import shutil
import subprocess
import threading

import pytest

from conftest import ROOT, Broker, unique_topic

DEPS = os.path.join(ROOT, ".deps", "java")
LIB = os.path.join(DEPS, "lib")
CLASSES = os.path.join(DEPS, "classes")
JAVA = shutil.which("java")
TOOL_TIMEOUT = 180  # seconds for one JVM run; every run below ends by itself far sooner

TOPICS = "org.apache.kafka.tools.TopicCommand"
CONSOLE_PRODUCER = "org.apache.kafka.tools.ConsoleProducer"
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
VERIFIABLE_PRODUCER = "org.apache.kafka.tools.VerifiableProducer"
PRODUCER_PERF = "org.apache.kafka.tools.ProducerPerformance"
CLIENT_CHECK = "dev.holdfast.compat.JavaClientCheck"


def _missing():
    if JAVA is None:
        return "java not on PATH"
    if not glob.glob(os.path.join(LIB, "kafka-clients-*.jar")) or not glob.glob(os.path.join(LIB, "kafka-tools-*.jar")):
        return "no Kafka jars in %s (run scripts/setup-java-deps.sh)" % LIB
    if not os.path.exists(os.path.join(CLASSES, "dev", "holdfast", "compat", "JavaClientCheck.class")):
        return "Java test program not compiled in %s (run scripts/setup-java-deps.sh)" % CLASSES
    return None


_MISSING = _missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason="SKIPPED Java tests: %s" % _MISSING)

_SENT = re.compile(r"Sending (\w+) request with header RequestHeader\(apiKey=(\w+), apiVersion=(\d+)")


def java_cmd(main, args):
    return [
        JAVA,
        "-Xss1m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",  # 2 shared cores: start fast
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
        "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients.NetworkClient=debug",
        "-cp", os.path.join(LIB, "*") + os.pathsep + CLASSES,
        main,
    ] + list(args)


def java(main, args, stdin=None, what=None, timeout=TOOL_TIMEOUT):
    """Runs one JVM; returns CompletedProcess. Client logs go to stderr (slf4j-simple, WARN),
    plus NetworkClient at DEBUG so the request versions sent can be read back."""
    cmd = java_cmd(main, args)
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    versions = sorted({"%s v%s" % (m.group(2), m.group(3)) for m in _SENT.finditer(p.stderr)})
    record = os.environ.get("HOLDFAST_JAVA_VERSIONS")
    if record:
        with open(record, "a") as f:
            f.write("%s: %s\n" % (what or main.rsplit(".", 1)[-1], ", ".join(versions)))
    return p


def fail_text(p):
    """The tool's output minus the DEBUG lines, for assertion messages."""
    err = "\n".join(l for l in p.stderr.splitlines() if " DEBUG " not in l)
    return "rc=%s\nstdout:\n%s\nstderr:\n%s" % (p.returncode, p.stdout[-4000:], err[-4000:])


def topics(broker, *args, what=None):
    return java(TOPICS, ["--bootstrap-server", broker.bootstrap] + list(args), what=what or "kafka-topics " + args[0])


# ------------------------------------------------------------------ the Java client directly

CLIENT_CHECKS = [
    "produce-consume-none",
    "produce-consume-gzip",
    "produce-consume-snappy",
    "produce-consume-lz4",
    "produce-consume-zstd",
    "bulk-multipartition",
    "admin",
    "offsets-for-times",
    "delete-records",
]


@pytest.mark.parametrize("check", CLIENT_CHECKS)
def test_java_client(broker, check):
    p = java(CLIENT_CHECK, [broker.bootstrap, check], what="kafka-clients " + check)
    assert p.returncode == 0 and ("PASS " + check) in p.stdout, fail_text(p)


# ------------------------------------------------------------------ kafka-topics

DESCRIBE_TOPIC_LINE = re.compile(
    r"^Topic: (?P<topic>\S+)\tTopicId: (?P<id>\S+)\tPartitionCount: (?P<n>\d+)\t"
    r"ReplicationFactor: (?P<rf>\d+)\tConfigs: (?P<configs>.*)$", re.M)
DESCRIBE_PARTITION_LINE = re.compile(
    r"^\tTopic: (?P<topic>\S+)\tPartition: (?P<p>\d+)\tLeader: (?P<leader>-?\d+)\t"
    r"Replicas: (?P<replicas>[\d,]+)\tIsr: (?P<isr>[\d,]*)", re.M)


def describe(broker, topic):
    p = topics(broker, "--describe", "--topic", topic)
    assert p.returncode == 0, fail_text(p)
    head = DESCRIBE_TOPIC_LINE.search(p.stdout)
    assert head, "unexpected --describe output:\n" + fail_text(p)
    parts = [m.groupdict() for m in DESCRIBE_PARTITION_LINE.finditer(p.stdout)]
    return head.groupdict(), parts, p.stdout


def test_topics_create_list_describe(broker):
    topic = unique_topic("jtopics")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "3", "--replication-factor", "1",
               "--config", "retention.ms=86400000", "--config", "max.message.bytes=2000000")
    assert p.returncode == 0, fail_text(p)
    assert "Created topic %s." % topic in p.stdout, fail_text(p)

    p = topics(broker, "--list")
    assert p.returncode == 0, fail_text(p)
    assert topic in p.stdout.split(), fail_text(p)

    head, parts, out = describe(broker, topic)
    assert head["topic"] == topic
    assert head["n"] == "3" and head["rf"] == "1", out
    assert head["id"] not in ("AAAAAAAAAAAAAAAAAAAAAA", ""), out
    configs = dict(kv.split("=", 1) for kv in head["configs"].split(",") if kv)
    assert configs.get("retention.ms") == "86400000", out
    assert configs.get("max.message.bytes") == "2000000", out
    assert sorted(int(x["p"]) for x in parts) == [0, 1, 2], out
    for x in parts:
        assert x["topic"] == topic
        assert int(x["leader"]) >= 0, out
        assert x["replicas"] == x["leader"] and x["isr"] == x["leader"], out


def test_topics_describe_by_topic_id(broker):
    """--topic-id goes through Admin.describeTopics(TopicCollection.ofTopicIds): Metadata v12
    with the id set and the name "" (regression: holdfast looked up the name "")."""
    topic = unique_topic("jbyid")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "2")
    assert p.returncode == 0, fail_text(p)
    head, _, _ = describe(broker, topic)
    p = topics(broker, "--describe", "--topic-id", head["id"], what="kafka-topics --describe --topic-id")
    assert p.returncode == 0, fail_text(p)
    m = DESCRIBE_TOPIC_LINE.search(p.stdout)
    assert m and m.group("topic") == topic and m.group("id") == head["id"] and m.group("n") == "2", fail_text(p)


def test_topics_create_existing(broker):
    topic = unique_topic("jexists")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "1")
    assert p.returncode == 0, fail_text(p)
    p = topics(broker, "--create", "--topic", topic, "--partitions", "1", what="kafka-topics --create (existing)")
    assert p.returncode != 0
    assert "Topic '%s' already exists." % topic in p.stdout + p.stderr, fail_text(p)
    p = topics(broker, "--create", "--if-not-exists", "--topic", topic, "--partitions", "1",
               what="kafka-topics --create --if-not-exists")
    assert p.returncode == 0, fail_text(p)


def test_topics_alter_partitions(broker):
    topic = unique_topic("jalter")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "1", "--replication-factor", "1")
    assert p.returncode == 0, fail_text(p)
    p = topics(broker, "--alter", "--topic", topic, "--partitions", "4")
    assert p.returncode == 0, fail_text(p)
    head, parts, out = describe(broker, topic)
    assert head["n"] == "4", out
    assert sorted(int(x["p"]) for x in parts) == [0, 1, 2, 3], out
    # Shrinking is refused, as by Kafka.
    p = topics(broker, "--alter", "--topic", topic, "--partitions", "2", what="kafka-topics --alter (shrink)")
    assert p.returncode != 0, fail_text(p)
    assert "InvalidPartitionsException" in p.stdout + p.stderr, fail_text(p)


def test_topics_delete(broker):
    topic = unique_topic("jdelete")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "2")
    assert p.returncode == 0, fail_text(p)
    p = topics(broker, "--delete", "--topic", topic)
    assert p.returncode == 0, fail_text(p)
    p = topics(broker, "--list")
    assert p.returncode == 0, fail_text(p)
    assert topic not in p.stdout.split(), fail_text(p)
    p = topics(broker, "--describe", "--topic", topic, what="kafka-topics --describe (deleted)")
    assert p.returncode != 0
    assert "does not exist" in p.stdout + p.stderr, fail_text(p)


# ------------------------------------------------------------------ console producer / consumer

@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_console_producer_then_consumer(broker, codec):
    topic = unique_topic("jconsole")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "1")
    assert p.returncode == 0, fail_text(p)
    n = 200
    lines = ["key-%d:value %d with spaces, tabs\tand unicode \u00e9\u4e2d" % (i, i) for i in range(n)]
    p = java(CONSOLE_PRODUCER, [
        "--bootstrap-server", broker.bootstrap, "--topic", topic, "--compression-codec", codec,
        "--reader-property", "parse.key=true", "--reader-property", "key.separator=:",
        "--request-required-acks", "all",
    ], stdin="\n".join(lines) + "\n", what="kafka-console-producer --compression-codec " + codec)
    assert p.returncode == 0, fail_text(p)

    p = java(CONSOLE_CONSUMER, [
        "--bootstrap-server", broker.bootstrap, "--topic", topic, "--partition", "0",
        "--offset", "earliest", "--max-messages", str(n), "--timeout-ms", "60000",
        "--formatter-property", "print.key=true", "--formatter-property", "key.separator=:",
        "--formatter-property", "print.offset=true",
    ], what="kafka-console-consumer --partition 0 --offset earliest")
    assert p.returncode == 0, fail_text(p)
    got = p.stdout.splitlines()
    # In 4.x key.separator also separates the offset column.
    want = ["Offset:%d:%s" % (i, line) for i, line in enumerate(lines)]
    assert got == want, fail_text(p)
    assert "Processed a total of %d messages" % n in p.stderr, fail_text(p)


def test_console_consumer_offset_in_the_middle(broker):
    topic = unique_topic("jmiddle")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "1")
    assert p.returncode == 0, fail_text(p)
    p = java(CONSOLE_PRODUCER, ["--bootstrap-server", broker.bootstrap, "--topic", topic],
             stdin="".join("m%d\n" % i for i in range(10)), what="kafka-console-producer")
    assert p.returncode == 0, fail_text(p)
    p = java(CONSOLE_CONSUMER, [
        "--bootstrap-server", broker.bootstrap, "--topic", topic, "--partition", "0",
        "--offset", "7", "--max-messages", "3", "--timeout-ms", "60000",
    ], what="kafka-console-consumer --offset 7")
    assert p.returncode == 0, fail_text(p)
    assert p.stdout.splitlines() == ["m7", "m8", "m9"], fail_text(p)


# ------------------------------------------------------------------ verifiable producer, perf test

def test_verifiable_producer_all_acked(broker):
    topic = unique_topic("jverif")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "3")
    assert p.returncode == 0, fail_text(p)
    n = 5000
    p = java(VERIFIABLE_PRODUCER, [
        "--bootstrap-server", broker.bootstrap, "--topic", topic,
        "--max-messages", str(n), "--acks", "-1",
    ], what="kafka-verifiable-producer --acks -1")
    assert p.returncode == 0, fail_text(p)
    events = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    by_name = {}
    for e in events:
        by_name.setdefault(e["name"], []).append(e)
    assert not by_name.get("producer_send_error"), by_name.get("producer_send_error")[:5]
    successes = by_name.get("producer_send_success", [])
    assert len(successes) == n, fail_text(p)
    assert sorted(int(e["value"]) for e in successes) == list(range(n))
    # Offsets per partition are dense from 0: nothing acked twice, nothing skipped.
    per_part = {}
    for e in successes:
        per_part.setdefault(e["partition"], []).append(e["offset"])
    for part, offs in per_part.items():
        assert sorted(offs) == list(range(len(offs))), "partition %s offsets not dense" % part
    tool_data = by_name.get("tool_data")
    assert tool_data and tool_data[-1]["sent"] == n and tool_data[-1]["acked"] == n, tool_data
    assert by_name.get("shutdown_complete"), fail_text(p)

    # Every acked record is readable.
    total = 0
    for part in sorted(per_part):
        c = java(CONSOLE_CONSUMER, [
            "--bootstrap-server", broker.bootstrap, "--topic", topic, "--partition", str(part),
            "--offset", "earliest", "--max-messages", str(len(per_part[part])), "--timeout-ms", "60000",
        ], what="kafka-console-consumer")
        assert c.returncode == 0, fail_text(c)
        total += len(c.stdout.splitlines())
    assert total == n


def test_producer_perf_test(broker):
    topic = unique_topic("jperf")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "2")
    assert p.returncode == 0, fail_text(p)
    n = 50000
    p = java(PRODUCER_PERF, [
        "--topic", topic, "--num-records", str(n), "--record-size", "200", "--throughput", "-1",
        "--producer-props", "bootstrap.servers=" + broker.bootstrap, "acks=all", "compression.type=lz4",
        "linger.ms=5",
    ], what="kafka-producer-perf-test")
    assert p.returncode == 0, fail_text(p)
    # Final summary: "50000 records sent, N records/sec (...), ... ms avg latency, ..."
    assert re.search(r"^%d records sent, [\d.]+ records/sec" % n, p.stdout, re.M), fail_text(p)


# ------------------------------------------------------------------ other admin tools

GET_OFFSETS = "org.apache.kafka.tools.GetOffsetShell"
DELETE_RECORDS = "org.apache.kafka.tools.DeleteRecordsCommand"
LOG_DIRS = "org.apache.kafka.tools.LogDirsCommand"
API_VERSIONS = "org.apache.kafka.tools.BrokerApiVersionsCommand"
CONSUMER_GROUPS = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


def test_broker_api_versions(broker):
    p = java(API_VERSIONS, ["--bootstrap-server", broker.bootstrap], what="kafka-broker-api-versions")
    assert p.returncode == 0, fail_text(p)
    usable = dict(re.findall(r"\t(\w+)\(\d+\): \d+ to \d+ \[usable: (\d+)\]", p.stdout))
    # What the Java client and the tools above rely on, at the 4.x clients' newest versions.
    for api, v in [("Produce", "12"), ("Fetch", "16"), ("ListOffsets", "8"), ("Metadata", "12"),
                   ("ApiVersions", "4"), ("CreateTopics", "7"), ("DeleteTopics", "6"),
                   ("InitProducerId", "4"), ("DeleteRecords", "2"), ("CreatePartitions", "3"),
                   ("DescribeConfigs", "4"), ("DescribeCluster", "1"), ("DescribeLogDirs", "4")]:
        assert usable.get(api) == v, "%s usable %s, expected %s\n%s" % (api, usable.get(api), v, p.stdout)


def produce_lines(broker, topic, lines, what="kafka-console-producer"):
    p = java(CONSOLE_PRODUCER, ["--bootstrap-server", broker.bootstrap, "--topic", topic],
             stdin="".join(l + "\n" for l in lines), what=what)
    assert p.returncode == 0, fail_text(p)


def test_get_offsets_and_delete_records(broker, tmp_path):
    topic = unique_topic("jget")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "1")
    assert p.returncode == 0, fail_text(p)
    produce_lines(broker, topic, ["r%d" % i for i in range(20)])

    def offsets(*extra):
        p = java(GET_OFFSETS, ["--bootstrap-server", broker.bootstrap, "--topic", topic] + list(extra),
                 what="kafka-get-offsets " + " ".join(extra))
        assert p.returncode == 0, fail_text(p)
        return p.stdout.split()

    assert offsets() == ["%s:0:20" % topic]                   # latest (default)
    assert offsets("--time", "-2") == ["%s:0:0" % topic]      # earliest
    # Max timestamp (ListOffsets v7+): as in Kafka, the first offset carrying the largest
    # timestamp; several console-produced records share a millisecond, so read them.
    p = java(CONSOLE_CONSUMER, [
        "--bootstrap-server", broker.bootstrap, "--topic", topic, "--partition", "0",
        "--offset", "earliest", "--max-messages", "20", "--timeout-ms", "60000",
        "--formatter-property", "print.timestamp=true", "--formatter-property", "print.offset=true",
        "--formatter-property", "print.value=false",
    ], what="kafka-console-consumer --formatter-property print.timestamp=true")
    assert p.returncode == 0, fail_text(p)
    stamps = [(int(ts), int(off)) for ts, off in re.findall(r"CreateTime:(\d+)\s+Offset:(\d+)", p.stdout)]
    assert len(stamps) == 20, fail_text(p)
    top = max(ts for ts, _ in stamps)
    first_top = min(off for ts, off in stamps if ts == top)
    assert offsets("--time", "-3") == ["%s:0:%d" % (topic, first_top)]

    spec = tmp_path / "delete.json"
    spec.write_text(json.dumps({"version": 1, "partitions": [{"topic": topic, "partition": 0, "offset": 12}]}))
    p = java(DELETE_RECORDS, ["--bootstrap-server", broker.bootstrap, "--offset-json-file", str(spec)],
             what="kafka-delete-records")
    assert p.returncode == 0, fail_text(p)
    assert re.search(r"partition: %s-0\s+low_watermark: 12" % re.escape(topic), p.stdout), fail_text(p)
    assert offsets("--time", "-2") == ["%s:0:12" % topic]
    # Earliest-local (ListOffsets v8, KIP-405): no tiered storage, so the log start offset.
    assert offsets("--time", "-4") == ["%s:0:12" % topic]

    p = java(CONSOLE_CONSUMER, [
        "--bootstrap-server", broker.bootstrap, "--topic", topic, "--partition", "0",
        "--offset", "earliest", "--max-messages", "8", "--timeout-ms", "60000",
    ], what="kafka-console-consumer")
    assert p.returncode == 0, fail_text(p)
    assert p.stdout.split() == ["r%d" % i for i in range(12, 20)], fail_text(p)


def test_log_dirs(broker):
    topic = unique_topic("jlogdirs")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "2")
    assert p.returncode == 0, fail_text(p)
    produce_lines(broker, topic, ["x" * 100] * 10)
    p = java(LOG_DIRS, ["--bootstrap-server", broker.bootstrap, "--describe", "--topic-list", topic],
             what="kafka-log-dirs --describe")
    assert p.returncode == 0, fail_text(p)
    doc = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
    parts = {pp["partition"]: pp for b in doc["brokers"] for d in b["logDirs"] for pp in d["partitions"]}
    assert set(parts) == {"%s-0" % topic, "%s-1" % topic}, doc
    assert sum(pp["size"] for pp in parts.values()) > 1000, doc


CONFIGS = "kafka.admin.ConfigCommand"  # in kafka_2.13 (the server jar) in 4.x


def test_configs_alter_describe_delete(broker):
    topic = unique_topic("jconfigs")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "1")
    assert p.returncode == 0, fail_text(p)

    def configs(*args, what):
        p = java(CONFIGS, ["--bootstrap-server", broker.bootstrap, "--entity-type", "topics",
                           "--entity-name", topic] + list(args), what=what)
        assert p.returncode == 0, fail_text(p)
        return p.stdout

    def dynamic():
        out = configs("--describe", what="kafka-configs --describe")
        assert "Dynamic configs for topic %s are:" % topic in out, out
        return dict(re.findall(r"^\s+([\w.]+)=(\S*) sensitive=", out, re.M))

    assert dynamic() == {}
    out = configs("--alter", "--add-config", "retention.ms=1000000,segment.bytes=10485760",
                  what="kafka-configs --alter --add-config")
    assert "Completed updating config for topic %s." % topic in out, out
    assert dynamic() == {"retention.ms": "1000000", "segment.bytes": "10485760"}
    configs("--alter", "--delete-config", "segment.bytes", what="kafka-configs --alter --delete-config")
    assert dynamic() == {"retention.ms": "1000000"}
    # kafka-topics shows the override too.
    head, _, out = describe(broker, topic)
    assert head["configs"] == "retention.ms=1000000", out

    p = java(CONFIGS, ["--bootstrap-server", broker.bootstrap, "--entity-type", "topics", "--entity-name", topic,
                       "--alter", "--add-config", "retention.ms=abc"], what="kafka-configs --alter (invalid)")
    assert p.returncode != 0 and "InvalidConfigurationException" in p.stdout + p.stderr, fail_text(p)
    assert dynamic() == {"retention.ms": "1000000"}


def test_configs_describe_broker(broker):
    p = java(CONFIGS, ["--bootstrap-server", broker.bootstrap, "--entity-type", "brokers", "--entity-name", "1",
                       "--describe", "--all"], what="kafka-configs --describe --all (broker)")
    assert p.returncode == 0, fail_text(p)
    assert "All configs for broker 1 are:" in p.stdout, fail_text(p)
    assert re.search(r"^\s+node.id=1 ", p.stdout, re.M), fail_text(p)


# ------------------------------------------------------------------ known gaps (consumer groups)

def test_consumer_groups_list(broker):
    p = java(CONSUMER_GROUPS, ["--bootstrap-server", broker.bootstrap, "--list"], what="kafka-consumer-groups --list")
    assert p.returncode == 0 and "UnsupportedVersionException" not in p.stdout + p.stderr, fail_text(p)


def test_console_consumer_with_group(broker):
    topic = unique_topic("jgroup")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "1")
    assert p.returncode == 0, fail_text(p)
    produce_lines(broker, topic, ["g0", "g1"])
    p = java(CONSOLE_CONSUMER, [
        "--bootstrap-server", broker.bootstrap, "--topic", topic, "--from-beginning",
        "--max-messages", "2", "--timeout-ms", "5000",
    ], what="kafka-console-consumer --from-beginning (group)")
    assert p.returncode == 0 and p.stdout.split() == ["g0", "g1"], fail_text(p)


# ------------------------------------------------------------------ acked writes across a crash

def test_idempotent_producer_acked_writes_survive_broker_kill(tmp_path):
    """The Java idempotent producer (acks=all) writes while the broker is SIGKILLed and restarted
    on the same port and data dir: every acknowledged record is stored, at its acked offset,
    exactly once, and the producer ends without errors (it retries into the new process)."""
    data = str(tmp_path / "data")
    b = Broker(data, ["--set", "num.partitions=1"]).start()
    port = b.port
    topic = unique_topic("jcrash")
    n, kill_after = 12000, 3000
    proc = None
    try:
        p = topics(b, "--create", "--topic", topic, "--partitions", "2")
        assert p.returncode == 0, fail_text(p)
        proc = subprocess.Popen(java_cmd(CLIENT_CHECK, [b.bootstrap, "acked-log", topic, str(n)]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = queue.Queue()

        def pump():
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        err_tail = []
        threading.Thread(target=lambda: err_tail.extend(proc.stderr), daemon=True).start()
        acked, errors, done = {}, [], None

        def take(deadline_s, stop):
            nonlocal done
            while not stop():
                line = lines.get(timeout=deadline_s)
                if line is None:
                    return
                parts = line.split(" ", 3)
                if parts[0] == "ACK":
                    assert parts[1] not in acked, "value %s acked twice" % parts[1]
                    acked[parts[1]] = (int(parts[2]), int(parts[3]))
                elif parts[0] == "ERR":
                    errors.append(line)
                elif parts[0] == "DONE":
                    done = line

        take(120, lambda: len(acked) >= kill_after)
        b.kill()  # SIGKILL while rounds are in flight
        acked_before_kill = len(acked)
        b = Broker(data, ["--set", "num.partitions=1"])
        b.port = port
        b.start()
        take(180, lambda: False)
        assert proc.wait(60) == 0, "".join(err_tail[-40:])
        assert done is not None, "producer did not finish:\n" + "".join(err_tail[-40:])
        assert not errors, errors[:5]
        assert len(acked) == n, "%d of %d acked (%d before the kill)" % (len(acked), n, acked_before_kill)
        print("acked before the kill: %d of %d" % (acked_before_kill, n))

        stored = {}
        for part in (0, 1):
            end = max([off for (pp, off) in acked.values() if pp == part], default=-1) + 1
            if end == 0:
                continue
            c = java(CONSOLE_CONSUMER, [
                "--bootstrap-server", b.bootstrap, "--topic", topic, "--partition", str(part),
                "--offset", "earliest", "--max-messages", str(end), "--timeout-ms", "60000",
                "--formatter-property", "print.offset=true", "--formatter-property", "key.separator= ",
            ], what="kafka-console-consumer (after restart)")
            assert c.returncode == 0, fail_text(c)
            for line in c.stdout.splitlines():
                m = re.match(r"Offset:(\d+) (\d+)$", line)
                assert m, line
                stored.setdefault(m.group(2), []).append((part, int(m.group(1))))
        lost = [v for v in acked if v not in stored]
        dups = {v: locs for v, locs in stored.items() if len(locs) > 1}
        moved = [v for v, loc in acked.items() if v in stored and stored[v][0] != loc]
        assert not lost, "%d acked records lost, e.g. %s" % (len(lost), lost[:10])
        assert not dups, "%d records stored twice (idempotence across restart), e.g. %s" % (len(dups), list(dups.items())[:5])
        assert not moved, "records not at their acked offset: %s" % moved[:10]
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        rc = b.stop()
        assert rc == 0, "broker did not shut down cleanly (rc=%s)" % rc


def test_consumer_groups_describe_shows_lag(broker):
    """A group commits offset 4 of 10 on partition 0 and 7 of 7 on partition 1 (librdkafka);
    kafka-consumer-groups --describe reports CURRENT-OFFSET, LOG-END-OFFSET and LAG."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    topic = unique_topic("jlag")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "2")
    assert p.returncode == 0, fail_text(p)
    prod = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        prod.produce(topic, value=b"a", partition=0)
    for i in range(7):
        prod.produce(topic, value=b"b", partition=1)
    prod.flush()
    group = unique_topic("jlaggroup")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 7)], asynchronous=False)
    c.close()
    p = java(CONSUMER_GROUPS, ["--bootstrap-server", broker.bootstrap, "--describe", "--group", group],
             what="kafka-consumer-groups --describe")
    assert p.returncode == 0, fail_text(p)
    rows = {}
    for line in p.stdout.splitlines():
        f = line.split()
        if len(f) >= 6 and f[0] == group and f[1] == topic:
            rows[int(f[2])] = (f[3], f[4], f[5])
    assert rows == {0: ("4", "10", "6"), 1: ("7", "7", "0")}, fail_text(p)
    p = java(CONSUMER_GROUPS, ["--bootstrap-server", broker.bootstrap, "--list"], what="kafka-consumer-groups --list")
    assert p.returncode == 0 and group in p.stdout.split(), fail_text(p)


def test_consumer_groups_reset_delete_offsets_and_delete_group(broker):
    """kafka-consumer-groups --reset-offsets (simple OffsetCommit), --delete-offsets
    (OffsetDelete) and --delete (DeleteGroups) on an empty group."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    topic = unique_topic("jreset")
    p = topics(broker, "--create", "--topic", topic, "--partitions", "1")
    assert p.returncode == 0, fail_text(p)
    prod = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(5):
        prod.produce(topic, value=b"r", partition=0)
    prod.flush()
    group = unique_topic("jresetgroup")
    base = ["--bootstrap-server", broker.bootstrap, "--group", group]
    p = java(CONSUMER_GROUPS, base + ["--reset-offsets", "--to-offset", "3", "--topic", topic, "--execute"],
             what="kafka-consumer-groups --reset-offsets")
    assert p.returncode == 0, fail_text(p)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    assert c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 3
    p = java(CONSUMER_GROUPS, base + ["--delete-offsets", "--topic", topic], what="kafka-consumer-groups --delete-offsets")
    assert p.returncode == 0, fail_text(p)
    assert c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset < 0
    c.close()
    p = java(CONSUMER_GROUPS, base + ["--delete"], what="kafka-consumer-groups --delete")
    assert p.returncode == 0 and "successful" in p.stdout, fail_text(p)
    p = java(CONSUMER_GROUPS, ["--bootstrap-server", broker.bootstrap, "--list"], what="kafka-consumer-groups --list")
    assert p.returncode == 0 and group not in p.stdout.split(), fail_text(p)
