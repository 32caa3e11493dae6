"""confluent-kafka (librdkafka) against holdfast: round trips, compression, limits, admin."""
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import stored_bytes, unique_topic


def producer(broker, **extra):
    conf = {"bootstrap.servers": broker.bootstrap, "linger.ms": 5}
    conf.update(extra)
    return Producer(conf)


def produce_all(p, topic, records, partition=0, timeout=30):
    """records: list of dicts of produce kwargs. Returns delivery reports (err, offset) in order."""
    reports = [None] * len(records)

    def cb(i):
        return lambda err, msg: reports.__setitem__(i, (err, msg.offset() if err is None else None))

    for i, r in enumerate(records):
        p.produce(topic, partition=partition, on_delivery=cb(i), **r)
        p.poll(0)
    assert p.flush(timeout) == 0, "messages still in the producer queue"
    return reports


def consume(broker, topic, count, partition=0, offset=0, timeout=30):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused-" + topic,
                  "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            out.append(m)
        return out
    finally:
        c.close()


def test_round_trip_keys_headers_nulls(broker):
    topic = unique_topic("rt")
    records = [
        {"key": b"k1", "value": b"v1", "headers": [("h1", b"x"), ("h2", None)]},
        {"key": None, "value": b"null-key"},
        {"key": b"null-value", "value": None},
        {"key": b"", "value": b""},
        {"key": b"k5", "value": b"\x00\xff" * 1000, "headers": [("bin", b"\x00\x01")]},
    ]
    reports = produce_all(producer(broker, **{"enable.idempotence": True}), topic, records)
    assert [r[0] for r in reports] == [None] * len(records)
    assert [r[1] for r in reports] == list(range(len(records)))
    got = consume(broker, topic, len(records))
    assert [m.offset() for m in got] == list(range(len(records)))
    assert [m.key() for m in got] == [b"k1", None, b"null-value", b"", b"k5"]
    assert [m.value() for m in got] == [b"v1", b"null-key", None, b"", b"\x00\xff" * 1000]
    assert got[0].headers() == [("h1", b"x"), ("h2", None)]
    assert got[4].headers() == [("bin", b"\x00\x01")]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression(broker, codec):
    topic = unique_topic("c-" + codec)
    values = [("%s-%05d " % (codec, i)).encode() * 20 for i in range(200)]
    reports = produce_all(producer(broker, **{"compression.type": codec, "linger.ms": 50}), topic,
                          [{"key": b"%d" % i, "value": v} for i, v in enumerate(values)])
    assert all(r[0] is None for r in reports), reports[:3]
    got = consume(broker, topic, len(values))
    assert [m.value() for m in got] == values
    assert [m.offset() for m in got] == list(range(len(values)))
    # The batches really were compressed (librdkafka silently sends uncompressed batches
    # when it believes the broker lacks the feature, e.g. LZ4 without FindCoordinator v0).
    raw = sum(len(v) for v in values)
    assert stored_bytes(broker, topic) < raw / 4, (stored_bytes(broker, topic), raw)


def batch_size_one_record(value_len):
    """Bytes of a v2 batch holding one record with a null key, no headers, this value size."""
    def varint_len(n):
        z = (n << 1) ^ (n >> 63)
        size = 1
        while z >= 0x80:
            z >>= 7
            size += 1
        return size
    body = 1 + 1 + 1 + varint_len(-1) + varint_len(value_len) + value_len + varint_len(0)
    return 61 + varint_len(body) + body


def test_message_size_limit(broker):
    limit = 10_000
    topic = unique_topic("big")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": str(limit)})])[topic].result(30)
    v = 0
    while batch_size_one_record(v + 1) <= limit:
        v += 1
    assert batch_size_one_record(v) == limit
    p = producer(broker, **{"compression.type": "none", "linger.ms": 0, "retries": 0,
                            "enable.idempotence": False})
    ok = produce_all(p, topic, [{"value": b"x" * v}])
    assert ok == [(None, 0)]
    too_big = produce_all(p, topic, [{"value": b"x" * (v + 1)}])
    assert too_big[0][0] is not None and too_big[0][0].code() == KafkaError.MSG_SIZE_TOO_LARGE, too_big
    got = consume(broker, topic, 1)
    assert len(got[0].value()) == v


def test_offsets_for_times(broker):
    topic = unique_topic("ts")
    base = int(time.time() * 1000) - 60_000
    reports = produce_all(producer(broker), topic,
                          [{"value": b"%d" % i, "timestamp": base + 1000 * i} for i in range(5)])
    assert [r[1] for r in reports] == [0, 1, 2, 3, 4]
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ts-" + topic, "enable.auto.commit": False})
    try:
        def lookup(ts):
            return c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=20)[0].offset
        assert lookup(base) == 0
        assert lookup(base + 1500) == 2
        assert lookup(base + 4000) == 4
        assert lookup(base + 4001) == -1  # past the last record: end (OFFSET_END)
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=20)
        assert (lo, hi) == (0, 5)
    finally:
        c.close()


def create_one(admin, new_topic, **kw):
    # Keep the dict of futures alive: confluent-kafka completes the per-topic futures from an
    # internal future that the dict's lifetime anchors (a temporary dict never completes).
    futures = admin.create_topics([new_topic], **kw)
    return futures[new_topic.topic].result(30)


def test_admin_create_delete(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = unique_topic("adm")
    admin.create_topics([NewTopic(topic, 3, 1, config={"retention.ms": "3600000"})])[topic].result(30)
    md = admin.list_topics(timeout=20)
    assert len(md.topics[topic].partitions) == 3
    with pytest.raises(Exception) as exc:
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    assert exc.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    with pytest.raises(Exception) as exc:
        create_one(admin, NewTopic(unique_topic("rf"), 1, 3))
    assert exc.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR
    with pytest.raises(Exception) as exc:
        create_one(admin, NewTopic(unique_topic("cfg"), 1, 1, config={"no.such.config": "1"}))
    assert exc.value.args[0].code() == KafkaError.INVALID_CONFIG
    with pytest.raises(Exception) as exc:
        create_one(admin, NewTopic(unique_topic("np"), 0, 1))
    assert exc.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    # validate_only creates nothing
    vo = unique_topic("vo")
    admin.create_topics([NewTopic(vo, 1, 1)], validate_only=True)[vo].result(30)
    assert vo not in admin.list_topics(timeout=20).topics

    admin.delete_topics([topic])[topic].result(30)
    assert topic not in admin.list_topics(timeout=20).topics
    with pytest.raises(Exception) as exc:
        admin.delete_topics([topic])[topic].result(30)
    assert exc.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    # The name can be reused: a fresh, empty topic.
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    assert produce_all(producer(broker), topic, [{"value": b"again"}]) == [(None, 0)]


def test_acks_zero_and_one(broker):
    topic = unique_topic("acks")
    for acks in ("0", "1", "all"):
        reports = produce_all(producer(broker, acks=acks, **{"enable.idempotence": False}), topic,
                              [{"value": acks.encode()} for _ in range(10)])
        assert all(r[0] is None for r in reports)
    got = consume(broker, topic, 30)
    assert [m.value() for m in got] == [b"0"] * 10 + [b"1"] * 10 + [b"all"] * 10


def test_fetch_out_of_range_resets(broker):
    topic = unique_topic("oor")
    produce_all(producer(broker), topic, [{"value": b"a"}, {"value": b"b"}])
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "oor-" + topic,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, 0, 100)])
        deadline = time.monotonic() + 20
        m = None
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                break
        assert m is not None and m.offset() == 0 and m.value() == b"a"
    finally:
        c.close()


def test_long_poll_wakes_on_produce(broker):
    topic = unique_topic("lp")
    p = producer(broker)
    produce_all(p, topic, [{"value": b"first"}])
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "lp-" + topic, "enable.auto.commit": False,
                  "fetch.wait.max.ms": 5000})
    try:
        c.assign([TopicPartition(topic, 0, 1)])
        c.poll(0.5)  # let the consumer start its (long-polling) fetch at offset 1
        start = time.monotonic()
        produce_all(p, topic, [{"value": b"second"}])
        deadline = start + 20
        m = None
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None:
                break
        assert m is not None and m.error() is None and m.value() == b"second"
        # Woken by the append, not by fetch.wait.max.ms (5 s) expiring.
        assert time.monotonic() - start < 4.0
    finally:
        c.close()


def test_create_partitions(broker):
    from confluent_kafka.admin import NewPartitions
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = unique_topic("cp")
    create_one(admin, NewTopic(topic, 1, 1))
    fs = admin.create_partitions([NewPartitions(topic, 3)])
    fs[topic].result(30)
    assert len(admin.list_topics(timeout=20).topics[topic].partitions) == 3
    assert produce_all(producer(broker), topic, [{"value": b"p2"}], partition=2) == [(None, 0)]
    assert [m.value() for m in consume(broker, topic, 1, partition=2)] == [b"p2"]
    fs = admin.create_partitions([NewPartitions(topic, 2)])
    with pytest.raises(Exception) as exc:
        fs[topic].result(30)
    assert exc.value.args[0].code() == KafkaError.INVALID_PARTITIONS


def test_describe_configs(broker):
    from confluent_kafka.admin import ConfigResource, ConfigSource
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = unique_topic("dc")
    create_one(admin, NewTopic(topic, 1, 1, config={"retention.ms": "12345", "cleanup.policy": "compact"}))
    fs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    configs = list(fs.values())[0].result(30)
    assert configs["retention.ms"].value == "12345"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["cleanup.policy"].value == "compact"
    assert configs["max.message.bytes"].value == "1048588"
    assert configs["max.message.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert configs["segment.bytes"].value == str(1 << 30)


def test_delete_records(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = unique_topic("dr")
    produce_all(producer(broker), topic, [{"value": b"%d" % i} for i in range(10)])
    fs = admin.delete_records([TopicPartition(topic, 0, 4)])
    res = list(fs.values())[0].result(30)
    assert res.low_watermark == 4
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "dr-" + topic, "enable.auto.commit": False})
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=20) == (4, 10)
    finally:
        c.close()
    got = consume(broker, topic, 6, offset=4)
    assert [m.value() for m in got] == [b"%d" % i for i in range(4, 10)]


def test_alter_configs_and_describe_cluster(broker):
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = unique_topic("ac")
    create_one(admin, NewTopic(topic, 1, 1, config={"retention.ms": "1000000"}))

    def describe():
        fs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
        return list(fs.values())[0].result(30)

    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", "5000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
    ])
    list(admin.incremental_alter_configs([res]).values())[0].result(30)
    configs = describe()
    assert configs["max.message.bytes"].value == "5000"
    assert configs["retention.ms"].value == str(7 * 24 * 3600 * 1000)
    # The new limit is enforced on the live partition.
    p = producer(broker, **{"compression.type": "none", "retries": 0, "enable.idempotence": False})
    too_big = produce_all(p, topic, [{"value": b"x" * 6000}])
    assert too_big[0][0] is not None and too_big[0][0].code() == KafkaError.MSG_SIZE_TOO_LARGE

    bad = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(Exception) as exc:
        list(admin.incremental_alter_configs([bad]).values())[0].result(30)
    assert exc.value.args[0].code() == KafkaError.INVALID_CONFIG

    cluster = admin.describe_cluster().result(30)
    assert [n.id for n in cluster.nodes] == [1]
    assert cluster.controller.id == 1
    assert cluster.cluster_id
