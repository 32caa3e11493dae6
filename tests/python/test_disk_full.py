"""A full disk: produce fails with KAFKA_STORAGE_ERROR while reads keep working, nothing
acknowledged is lost, and the broker accepts writes again once space returns. The data
directory is a small tmpfs mounted by the test (needs root; skipped visibly otherwise)."""
import os
import subprocess
import tempfile

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker, unique_topic

KAFKA_STORAGE_ERROR = 56


@pytest.fixture(scope="module")
def small_disk():
    mnt = tempfile.mkdtemp(prefix="holdfast-full-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", mnt], capture_output=True, text=True)
    if r.returncode != 0:
        os.rmdir(mnt)
        pytest.skip("SKIPPED disk-full test: cannot mount a tmpfs here: %s" % r.stderr.strip())
    yield mnt
    subprocess.run(["umount", mnt])
    os.rmdir(mnt)


def produce(bootstrap, topic, values):
    """Produces values one by one; returns {value: error code or None}."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "retries": 0, "acks": "all",
                  "message.timeout.ms": 5000, "compression.type": "none"})
    result = {}

    def on(err, msg, v):
        result[v] = None if err is None else err.code()

    for v in values:
        p.produce(topic, value=v, on_delivery=lambda e, m, v=v: on(e, m, v))
        p.flush(10)
    return result


def read_values(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "full", "enable.auto.commit": False})
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.assign([TopicPartition(topic, 0, lo)])
    out = []
    while len(out) < hi - lo:
        m = c.poll(10)
        assert m is not None, "consumer stalled reading %d records" % (hi - lo)
        if m.error() is None:
            out.append(m.value())
    c.close()
    return out


def test_full_disk_refuses_writes_keeps_reads_and_recovers(small_disk):
    data = os.path.join(small_disk, "data")
    b = Broker(data, ["--set", "num.partitions=1"]).start()
    try:
        topic = unique_topic("full")
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        admin.create_topics([NewTopic(topic, 1, 1, config={"segment.bytes": "1048576"})])[topic].result(30)
        # Fill the file system with a file the test can remove later.
        filler = os.path.join(small_disk, "filler")
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        values = [b"%05d-" % i + b"x" * 20000 for i in range(60)]
        first = produce(b.bootstrap, topic, values)
        acked = [v for v in values if first[v] is None]
        refused = [v for v in values if first[v] is not None]
        assert refused, "the disk never filled up"
        assert all(first[v] == KAFKA_STORAGE_ERROR for v in refused), set(first.values())
        # Reads keep working and return exactly what was acknowledged.
        assert read_values(b.bootstrap, topic) == acked
        # Space returns: writes succeed again, with no restart.
        os.remove(filler)
        again = produce(b.bootstrap, topic, [b"after-%d" % i for i in range(5)])
        assert all(e is None for e in again.values()), again
        assert read_values(b.bootstrap, topic) == acked + [b"after-%d" % i for i in range(5)]
    finally:
        assert b.stop() == 0
