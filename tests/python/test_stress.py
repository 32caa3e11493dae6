"""Pipelined idempotent produce over many partitions while consumers read concurrently:
every record once, in per-partition order, acknowledged offsets matching what is read."""
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import unique_topic

PARTITIONS = 8
PER_PARTITION = 2500


def test_pipelined_produce_with_concurrent_consumers(broker):
    topic = unique_topic("stress")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    fs = admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    fs[topic].result(30)

    got = {p: [] for p in range(PARTITIONS)}
    stop = threading.Event()
    errors = []

    def consume(parts):
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "stress-" + topic,
                      "enable.auto.commit": False, "fetch.wait.max.ms": 100})
        try:
            c.assign([TopicPartition(topic, p, 0) for p in parts])
            while not stop.is_set():
                for m in c.consume(500, 0.2):
                    if m.error():
                        errors.append(m.error())
                        continue
                    got[m.partition()].append((m.offset(), m.value()))
        finally:
            c.close()

    consumers = [threading.Thread(target=consume, args=(list(range(i, PARTITIONS, 2)),)) for i in range(2)]
    for t in consumers:
        t.start()

    acked = {p: [] for p in range(PARTITIONS)}
    failed = []

    def cb(err, msg):
        if err is not None:
            failed.append(err)
        else:
            acked[msg.partition()].append((msg.offset(), msg.value()))

    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 1, "max.in.flight.requests.per.connection": 5, "batch.num.messages": 200})
    for i in range(PER_PARTITION):
        for part in range(PARTITIONS):
            while True:
                try:
                    p.produce(topic, value=b"%d-%d" % (part, i), partition=part, on_delivery=cb)
                    break
                except BufferError:
                    p.poll(0.05)
        if i % 100 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    assert not failed, failed[:3]

    deadline = time.monotonic() + 60
    while any(len(got[q]) < PER_PARTITION for q in range(PARTITIONS)) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in consumers:
        t.join(30)
    assert not errors, errors[:3]
    for q in range(PARTITIONS):
        expected = [(i, b"%d-%d" % (q, i)) for i in range(PER_PARTITION)]
        assert got[q] == expected, "partition %d: %d records, first diff at %s" % (
            q, len(got[q]), next((i for i, (a, b) in enumerate(zip(got[q], expected)) if a != b), None))
        assert sorted(acked[q]) == expected
