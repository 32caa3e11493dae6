"""The admin CLI cross-checked with kafka-python: what `holdfast` shows is what a third-party
client sees, and what it writes a third-party client reads."""
import json
import os
import subprocess

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from conftest import BINARY, unique_topic


def group_ids(admin):
    return [g["group_id"] if isinstance(g, dict) else g[0] for g in admin.list_groups()]


def cli(broker, *args, stdin=None):
    r = subprocess.run([BINARY, *args, "--bootstrap", broker.bootstrap], input=stdin,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_every_codec_from_kafka_python_reads_back_through_the_cli(broker):
    topic = unique_topic("cli-kp")
    cli(broker, "topic", "create", topic, "-p", "1")
    for codec in ["gzip", "snappy", "lz4", "zstd"]:
        p = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type=codec)
        p.send(topic, key=codec.encode(), value=b"v-" + codec.encode(), headers=[("codec", codec.encode())],
               timestamp_ms=1_700_000_000_000).get(30)
        p.close()
    lines = cli(broker, "consume", topic, "--format", "json").splitlines()
    got = [json.loads(l) for l in lines]
    assert [(r["offset"], r["key"], r["value"], r["headers"], r["timestamp"]) for r in got] == [
        (i, c, "v-" + c, {"codec": c}, 1_700_000_000_000) for i, c in enumerate(["gzip", "snappy", "lz4", "zstd"])]


def test_cli_produce_reads_back_in_kafka_python(broker):
    topic = unique_topic("cli-out")
    cli(broker, "topic", "create", topic, "-p", "3")
    out = cli(broker, "produce", topic, "-K", "=", "-H", "src=cli", "--format", "json",
              stdin="a=1\nb=2\nc=3\nd=4\n")
    placed = {r["partition"]: r["records"] for r in json.loads(out)}
    assert sum(placed.values()) == 4
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, consumer_timeout_ms=10000,
                      enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(3)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got = []
    for m in c:
        got.append(m)
        if len(got) == 4:
            break
    c.close()
    assert sorted((m.key, m.value) for m in got) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")]
    assert all(m.headers == [("src", b"cli")] for m in got)
    # kafka-python's default partitioner is murmur2 too: the same keys land in the same places.
    p = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for m in got:
        assert p.send(topic, key=m.key, value=b"again").get(30).partition == m.partition
    p.close()


def test_group_views_agree_with_kafka_python(broker):
    topic = unique_topic("cli-grp")
    group = "g-" + topic
    cli(broker, "topic", "create", topic, "-p", "2")
    p = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(30):
        p.send(topic, value=b"%d" % i, partition=i % 2)
    p.flush(30)
    p.close()
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    c.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    c.commit({TopicPartition(topic, 0): OffsetAndMetadata(4, "", -1),
              TopicPartition(topic, 1): OffsetAndMetadata(15, "", -1)})
    c.close()
    d = json.loads(cli(broker, "group", "describe", group, "--format", "json"))
    assert [(o["partition"], o["current_offset"], o["log_end_offset"], o["lag"]) for o in d["offsets"]] == \
        [(0, 4, 15, 11), (1, 15, 15, 0)]
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        committed = admin.list_group_offsets({group: None})[group]
        assert {tp.partition: om.offset for tp, om in committed.items()} == {0: 4, 1: 15}
        # The CLI's reset is what kafka-python's admin then reads.
        cli(broker, "group", "reset-offsets", group, "--topic", topic + ":1", "--shift-by", "-5", "--execute")
        committed = admin.list_group_offsets({group: None})[group]
        assert {tp.partition: om.offset for tp, om in committed.items()} == {0: 4, 1: 10}
        assert group in group_ids(admin)
        assert cli(broker, "group", "list").splitlines().count(group) == 1
        cli(broker, "group", "delete", group)
        assert group not in group_ids(admin)
    finally:
        admin.close()


def test_dump_log_shows_what_confluent_kafka_wrote_batch_by_batch(broker, data_dir):
    """`holdfast dump-log` (kafka-dump-log.sh's layout) on a partition written by librdkafka:
    an idempotent producer's batch, a committed and an aborted transaction, compressed
    records; then a torn tail is reported (exit 1), not hidden."""
    import confluent_kafka
    topic = unique_topic("dump")
    cli(broker, "topic", "create", topic, "-p", "1")
    p = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                                  "compression.type": "lz4", "linger.ms": 50})
    for i in range(3):
        # Repetitive values: librdkafka sends a batch uncompressed when lz4 does not shrink it.
        p.produce(topic, key=b"k%d" % i, value=b"plain-%d-" % i + b"x" * 300, partition=0)
    assert p.flush(30) == 0
    t = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": topic})
    t.init_transactions(30)
    for outcome in ["commit", "abort"]:
        t.begin_transaction()
        t.produce(topic, value=b"txn-" + outcome.encode(), partition=0)
        t.flush(30)
        t.commit_transaction(30) if outcome == "commit" else t.abort_transaction(30)
    seg = os.path.join(data_dir, topic + "-0", "00000000000000000000.log")
    r = subprocess.run([BINARY, "dump-log", "--files", seg, "--print-data-log"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    batches = [l for l in r.stdout.splitlines() if l.startswith("baseOffset:")]
    records = [l for l in r.stdout.splitlines() if l.startswith("| offset:")]
    # One lz4 batch of three from the idempotent producer (sequence 0..2, epoch 0).
    assert "count: 3 baseSequence: 0 lastSequence: 2" in batches[0], batches[0]
    assert "isTransactional: false" in batches[0] and "compresscodec: lz4" in batches[0]
    pid0 = int(batches[0].split("producerId: ")[1].split()[0])
    assert pid0 >= 0
    assert [l.split("payload: ")[1][:8] for l in records[:3]] == ["plain-0-", "plain-1-", "plain-2-"]
    assert all(l.endswith("... (308 bytes)") for l in records[:3]), records[0]
    assert "key: k1" in records[1]
    # The transactions: data, COMMIT marker, data, ABORT marker, under another producer id.
    tail = [(("isControl: true" in b), b.split("producerId: ")[1].split()[0]) for b in batches[1:]]
    assert tail == [(False, tail[0][1]), (True, tail[0][1])] * 2 and tail[0][1] != str(pid0), tail
    assert [l.split("endTxnMarker: ")[1] for l in records if "endTxnMarker" in l] == ["COMMIT", "ABORT"]
    assert r.stdout.rstrip().endswith("Batches: %d" % len(batches))
    # A torn tail (a crash mid-write, before recovery truncates it) stops the dump with
    # exit 1 and the position, after every whole batch.
    torn = os.path.join(data_dir, "torn-copy.log")
    with open(seg, "rb") as f:
        whole = f.read()
    with open(torn, "wb") as f:
        f.write(whole + whole[:40])
    r = subprocess.run([BINARY, "dump-log", "--files", torn], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Stopped: torn batch at position %d: 40 of " % len(whole) in r.stdout, r.stdout
    assert "Batches: %d" % len(batches) in r.stdout
