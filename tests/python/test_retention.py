"""Background maintenance: retention by size advances the log start; LogAppendTime topics."""
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition, TIMESTAMP_LOG_APPEND_TIME
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker, unique_topic, wait_until


@pytest.fixture(scope="module")
def fast_broker(data_dir):
    b = Broker(data_dir, ["--set", "log.retention.check.interval.ms=100"]).start()
    yield b
    assert b.stop() == 0


def test_retention_bytes_deletes_old_segments(fast_broker):
    b = fast_broker
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    topic = unique_topic("ret")
    fs = admin.create_topics([NewTopic(topic, 1, 1, config={"segment.bytes": "20000", "retention.bytes": "40000"})])
    fs[topic].result(30)
    # Batches must stay below segment.bytes (a larger one is RECORD_LIST_TOO_LARGE).
    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 0, "compression.type": "none",
                  "batch.size": 4000})
    failed = []
    for i in range(200):
        p.produce(topic, value=b"%04d" % i + b"x" * 996, on_delivery=lambda e, m: e and failed.append(e))
        p.poll(0)
    assert p.flush(30) == 0
    assert not failed, failed[:3]
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "ret-" + topic, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    try:
        tp = TopicPartition(topic, 0)
        # The background task deletes whole old segments: the log start moves past 0.
        lo = wait_until(lambda: c.get_watermark_offsets(tp, timeout=10)[0] or None, what="retention")
        hi = c.get_watermark_offsets(tp, timeout=10)[1]
        assert hi == 200 and 0 < lo < 200
        # Reading from 0 is out of range and resets to the new log start.
        c.assign([TopicPartition(topic, 0, 0)])
        m = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                break
        assert m is not None and m.error() is None
        assert m.offset() >= lo and m.value()[:4] == b"%04d" % m.offset()
    finally:
        c.close()


def test_log_append_time_topic(fast_broker):
    b = fast_broker
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    topic = unique_topic("lat")
    fs = admin.create_topics([NewTopic(topic, 1, 1, config={"message.timestamp.type": "LogAppendTime"})])
    fs[topic].result(30)
    before = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": b.bootstrap})
    p.produce(topic, value=b"v", timestamp=1_000_000)  # ignored: the broker stamps append time
    assert p.flush(30) == 0
    after = int(time.time() * 1000)
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "lat-" + topic, "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        m = None
        deadline = time.monotonic() + 20
        while m is None and time.monotonic() < deadline:
            m = c.poll(0.5)
        assert m is not None and m.error() is None
        ts_type, ts = m.timestamp()
        assert ts_type == TIMESTAMP_LOG_APPEND_TIME
        assert before - 1000 <= ts <= after + 1000
    finally:
        c.close()


def read_all(bootstrap, topic, hi):
    """Every record of partition 0 from the log start up to `hi`: {offset: (key, value)}."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "rd-" + topic, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    out = {}
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error() is not None:
                continue
            out[m.offset()] = (m.key(), m.value())
            if m.offset() >= hi - 1:
                break
    finally:
        c.close()
    return out


def test_compacted_topic_keeps_latest_value_per_key(fast_broker):
    b = fast_broker
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    topic = unique_topic("compact")
    fs = admin.create_topics([NewTopic(topic, 1, 1, config={
        "cleanup.policy": "compact", "segment.bytes": "4000", "min.compaction.lag.ms": "0"})])
    fs[topic].result(30)
    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 0, "batch.size": 1000,
                  "compression.type": "lz4"})
    failed = []
    written = {}
    for i in range(400):
        key = b"key-%d" % (i % 10)
        value = b"%04d-" % i + b"v" * 100
        p.produce(topic, key=key, value=value, on_delivery=lambda e, m: e and failed.append(e))
        written[i] = (key, value)
        p.poll(0)
    assert p.flush(30) == 0
    assert not failed, failed[:3]
    # A record without a key is refused on a compacted topic (INVALID_RECORD).
    refused = []
    p.produce(topic, value=b"no key", on_delivery=lambda e, m: refused.append(e))
    p.flush(30)
    assert refused and refused[0] is not None and refused[0].code() == 87, refused
    # The background cleaner compacts the closed segments.
    got = wait_until(lambda: (lambda r: r if len(r) < 400 else None)(read_all(b.bootstrap, topic, 400)),
                     what="compaction", timeout=60)
    latest = {}
    for off, (k, v) in written.items():
        latest[k] = off
    for off, rec in got.items():
        assert written[off] == rec, "offsets are preserved and values unchanged"
    for k, off in latest.items():
        assert off in got, "the latest value of every key survives"
    for off, (k, _) in written.items():
        if off not in got:
            assert latest[k] > off, "only superseded records are removed"
