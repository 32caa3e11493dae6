"""kafka-python against holdfast: default idempotent producer, every codec, cross-client reads."""
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from conftest import stored_bytes, unique_topic


def consume_all(broker, topic, count, timeout_ms=20000):
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                      consumer_timeout_ms=timeout_ms, group_id=None)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        out = []
        for m in c:
            out.append(m)
            if len(out) >= count:
                break
        return out
    finally:
        c.close()


def test_default_producer_is_idempotent(broker):
    topic = unique_topic("kp-idem")
    p = KafkaProducer(bootstrap_servers=broker.bootstrap)
    assert p.config.get("enable_idempotence") is True, "kafka-python's default changed: %r" % p.config.get("enable_idempotence")
    futures = [p.send(topic, key=b"k%d" % i, value=b"v%d" % i, headers=[("h", b"%d" % i)]) for i in range(100)]
    p.flush(30)
    offsets = [f.get(30).offset for f in futures]
    assert offsets == list(range(100))
    p.close()
    got = consume_all(broker, topic, 100)
    assert [(m.offset, m.key, m.value) for m in got] == [(i, b"k%d" % i, b"v%d" % i) for i in range(100)]
    assert got[7].headers == [("h", b"7")]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression_cross_client(broker, codec):
    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as CTP
    topic = unique_topic("kp-" + codec)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type=codec, linger_ms=20)
    values = [("%s %d " % (codec, i)).encode() * 30 for i in range(300)]
    futures = [p.send(topic, value=v) for v in values]
    p.flush(30)
    assert [f.get(30).offset for f in futures] == list(range(300))
    p.close()
    raw = sum(len(v) for v in values)
    assert stored_bytes(broker, topic) < raw / 4, (stored_bytes(broker, topic), raw)
    # kafka-python reads its own batches back...
    assert [m.value for m in consume_all(broker, topic, 300)] == values
    # ...and librdkafka reads them too.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "x-" + topic, "enable.auto.commit": False})
    try:
        c.assign([CTP(topic, 0, 0)])
        out = []
        import time
        deadline = time.monotonic() + 20
        while len(out) < 300 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None:
                assert m.error() is None, m.error()
                out.append(m.value())
        assert out == values
    finally:
        c.close()


def test_null_key_and_value(broker):
    topic = unique_topic("kp-null")
    p = KafkaProducer(bootstrap_servers=broker.bootstrap)
    p.send(topic, key=None, value=b"v").get(30)
    p.send(topic, key=b"k", value=None).get(30)
    p.close()
    got = consume_all(broker, topic, 2)
    assert [(m.key, m.value) for m in got] == [(None, b"v"), (b"k", None)]


def test_offsets_for_times_and_end_offsets(broker):
    import time
    topic = unique_topic("kp-ts")
    base = int(time.time() * 1000) - 30_000
    p = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(4):
        p.send(topic, value=b"%d" % i, timestamp_ms=base + 100 * i)
    p.flush(30)
    p.close()
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tp = TopicPartition(topic, 0)
        r = c.offsets_for_times({tp: base + 150})
        assert r[tp].offset == 2 and r[tp].timestamp == base + 200
        assert c.offsets_for_times({tp: base + 1000})[tp] is None
        assert c.beginning_offsets([tp])[tp] == 0
        assert c.end_offsets([tp])[tp] == 4
    finally:
        c.close()


def test_fetch_sessions_across_partitions_and_waves(broker):
    """kafka-python uses incremental fetch sessions (KIP-227): partitions whose data did not
    change are left out of responses, so a broker bug there shows up as stalled partitions."""
    import time
    from kafka.admin import KafkaAdminClient, NewTopic
    topic = unique_topic("kp-sess")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1)])
    admin.close()
    p = KafkaProducer(bootstrap_servers=broker.bootstrap)
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None,
                      fetch_max_wait_ms=200)
    tps = [TopicPartition(topic, i) for i in range(3)]
    c.assign(tps)
    c.seek_to_beginning()
    expected = {i: [] for i in range(3)}
    got = {i: [] for i in range(3)}
    try:
        for wave in range(6):
            # Each wave writes to a different subset of partitions.
            for i in range(3):
                if (wave + i) % 2 == 0:
                    for j in range(5):
                        v = b"w%d-p%d-%d" % (wave, i, j)
                        p.send(topic, value=v, partition=i)
                        expected[i].append(v)
            p.flush(30)
            deadline = time.monotonic() + 20
            while any(len(got[i]) < len(expected[i]) for i in range(3)):
                assert time.monotonic() < deadline, (wave, {i: len(got[i]) for i in got})
                for tp, msgs in c.poll(timeout_ms=200).items():
                    got[tp.partition].extend(m.value for m in msgs)
        assert got == expected
    finally:
        c.close()
        p.close()


def test_describe_log_dirs(broker):
    from kafka.admin import KafkaAdminClient
    topic = unique_topic("kp-ld")
    p = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(20):
        p.send(topic, value=b"x" * 100)
    p.flush(30)
    p.close()
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        out = admin.describe_log_dirs(topic_partitions={topic: [0]})
    finally:
        admin.close()
    (broker_entry,) = out
    assert broker_entry["broker"] == 1
    (log_dir,) = broker_entry["log_dirs"]
    assert log_dir["error_code"] == 0 and log_dir["log_dir"] == broker.data_dir
    (t,) = log_dir["topics"]
    assert t["name"] == topic
    (part,) = t["partitions"]
    assert part["partition_index"] == 0 and part["partition_size"] >= 20 * 100
