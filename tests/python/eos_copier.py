"""Exactly-once copier run as a subprocess by test_eos.py (consume-transform-produce).

usage: eos_copier.py BOOTSTRAP INPUT OUTPUT GROUP TXN_ID PROGRESS
Copies each record of INPUT partition p to OUTPUT partition p inside transactions that also
commit the consumer's offsets. Writes the number of committed transactions to PROGRESS
(one line per commit: "C <records>"). Exits 0 once every input partition has been copied up
to its end as it was at start (the caller produces all input first), 3 on a fatal error.
"""
import os
import sys

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

bootstrap, src, dst, group, txn_id, progress_path = sys.argv[1:7]
progress = open(progress_path, "a", buffering=1)

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "group.instance.id": txn_id,
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "isolation.level": "read_committed",
    "metadata.recovery.strategy": "none",
    **({"debug": os.environ["COPIER_DEBUG"]} if os.environ.get("COPIER_DEBUG") else {}),
})
producer = Producer({
    "bootstrap.servers": bootstrap,
    "transactional.id": txn_id,
    "transaction.timeout.ms": 20000,
    "linger.ms": 5,
    # librdkafka 2.16's re-bootstrap after every broker was down can leave a transactional
    # producer waiting forever for a group coordinator (docs/compat/python.md).
    "metadata.recovery.strategy": "none",
    **({"debug": os.environ["COPIER_DEBUG"]} if os.environ.get("COPIER_DEBUG") else {}),
})


def log(msg):
    progress.write("L %s\n" % msg)


def retry(fn, what, attempts=60):
    for i in range(attempts):
        try:
            return fn()
        except KafkaException as e:
            err = e.args[0]
            if err.retriable() and i + 1 < attempts:
                log("%s retriable: %s" % (what, err))
                continue
            raise


retry(lambda: producer.init_transactions(10), "init")
consumer.subscribe([src])
# The end of the input, fixed before copying starts (the input is complete by then).
meta = consumer.list_topics(src, timeout=20)
parts = sorted(meta.topics[src].partitions)
ends = {}
for p in parts:
    lo, hi = retry(lambda: consumer.get_watermark_offsets(TopicPartition(src, p), timeout=10), "watermarks")
    ends[p] = hi


def rewind():
    """After an abort: back to the last committed offsets."""
    assignment = consumer.assignment()
    if not assignment:
        return
    committed = retry(lambda: consumer.committed(assignment, timeout=10), "committed")
    for tp in committed:
        consumer.seek(TopicPartition(src, tp.partition, tp.offset if tp.offset >= 0 else 0))


def done():
    committed = retry(lambda: consumer.committed([TopicPartition(src, p) for p in parts], timeout=10), "committed")
    return all(tp.offset >= ends[tp.partition] for tp in committed)


empty_polls = 0
while True:
    msgs = consumer.consume(500, 0.5)
    msgs = [m for m in msgs if not m.error()]
    if not msgs:
        if done():
            break
        empty_polls += 1
        if empty_polls >= 8:
            # librdkafka 2.16 can drop prefetched messages when it re-validates positions
            # after a broker restart and go on fetching past them (see
            # docs/compat/python.md): go back to the committed offsets.
            log("stalled below the end: rewinding to committed offsets")
            rewind()
            empty_polls = 0
        continue
    empty_polls = 0
    try:
        producer.begin_transaction()
        for m in msgs:
            producer.produce(dst, value=m.value(), key=m.key(), partition=m.partition())
        offsets = {}
        for m in msgs:
            offsets[m.partition()] = m.offset() + 1
        producer.send_offsets_to_transaction(
            [TopicPartition(src, p, o) for p, o in offsets.items()],
            consumer.consumer_group_metadata(), 30)
        retry(lambda: producer.commit_transaction(30), "commit")
        progress.write("C %d\n" % len(msgs))
    except KafkaException as e:
        err = e.args[0]
        if err.txn_requires_abort():
            log("abort: %s" % err)
            retry(lambda: producer.abort_transaction(30), "abort")
            rewind()
        else:
            log("fatal: %s" % err)
            sys.exit(3)
consumer.close()
log("finished")
