"""Transactions through librdkafka (confluent-kafka): commit, abort, read_committed vs
read_uncommitted, transactional offset commits, zombie fencing, coordinator timeouts, and
state across a broker SIGKILL."""
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker, free_port, unique_topic, wait_until


@pytest.fixture(scope="module")
def broker(data_dir):
    metrics_port = free_port()
    b = Broker(data_dir, [
        "--metrics-listen", "127.0.0.1:%d" % metrics_port,
        "--set", "num.partitions=1",
        # Timed-out transactions are found quickly in tests.
        "--set", "transaction.abort.timed.out.transaction.cleanup.interval.ms=200",
    ]).start()
    b.metrics_url = "http://127.0.0.1:%d/metrics" % metrics_port
    yield b
    rc = b.stop()
    if rc != 0:
        print("".join(b.stderr_lines[-50:]))
    assert rc == 0, "broker did not shut down cleanly (rc=%s)" % rc


def create_topic(bootstrap, name, partitions=1):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        f.result(15)


def txn_producer(bootstrap, txn_id, **extra):
    conf = {
        "bootstrap.servers": bootstrap,
        "transactional.id": txn_id,
        "linger.ms": 5,
    }
    conf.update(extra)
    p = Producer(conf)
    p.init_transactions(30)
    return p


def read_all(bootstrap, topic, isolation, partitions=1, expect_end=None, group=None):
    """Reads every visible record of `topic` from the start: [(partition, offset, value)]."""
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group or "reader-%s" % uuid.uuid4(),
        "isolation.level": isolation,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    })
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    eof = set()
    deadline = time.monotonic() + 60
    while len(eof) < partitions and time.monotonic() < deadline:
        for m in c.consume(1000, 0.2):
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    eof.add(m.partition())
                    continue
                raise KafkaException(m.error())
            eof.discard(m.partition())
            out.append((m.partition(), m.offset(), m.value()))
    c.close()
    assert len(eof) == partitions, "did not reach the end of %s" % topic
    return out


def test_commit_visible_abort_invisible(broker):
    topic = unique_topic("txn")
    create_topic(broker.bootstrap, topic)
    p = txn_producer(broker.bootstrap, "tx-" + topic)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=b"c1-%d" % i)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(3):
        p.produce(topic, value=b"ab-%d" % i)
    p.flush(10)  # written to the log, then aborted (abort alone would purge them unsent)
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(topic, value=b"c2-0")
    p.commit_transaction(30)

    committed = [v for _, _, v in read_all(broker.bootstrap, topic, "read_committed")]
    assert committed == [b"c1-%d" % i for i in range(5)] + [b"c2-0"]
    uncommitted = [v for _, _, v in read_all(broker.bootstrap, topic, "read_uncommitted")]
    assert uncommitted == [b"c1-%d" % i for i in range(5)] + [b"ab-%d" % i for i in range(3)] + [b"c2-0"]


def test_open_transaction_holds_back_read_committed(broker):
    topic = unique_topic("lso")
    create_topic(broker.bootstrap, topic)
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    p = txn_producer(broker.bootstrap, "tx-" + topic)
    p.begin_transaction()
    p.produce(topic, value=b"in-txn")
    p.flush(10)
    plain.produce(topic, value=b"after")
    plain.flush(10)
    # The open transaction is before "after": read_committed sees neither yet.
    assert read_all(broker.bootstrap, topic, "read_committed") == []
    assert [v for _, _, v in read_all(broker.bootstrap, topic, "read_uncommitted")] == [b"in-txn", b"after"]
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wm-" + topic,
                  "isolation.level": "read_committed"})
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    assert (lo, hi) == (0, 0), "ListOffsets(read_committed) answers the last stable offset"
    c.close()
    from test_ops_metrics import scrape, value
    _, samples, _ = scrape(broker)
    assert value(samples, "holdfast_transactions", state="Ongoing") >= 1
    assert value(samples, "holdfast_txn_lso_stuck_total") == 0
    p.commit_transaction(30)
    assert [v for _, _, v in read_all(broker.bootstrap, topic, "read_committed")] == [b"in-txn", b"after"]


def test_transactional_offsets_visible_only_on_commit(broker):
    src = unique_topic("src")
    dst = unique_topic("dst")
    create_topic(broker.bootstrap, src)
    create_topic(broker.bootstrap, dst)
    group = "g-" + src
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        plain.produce(src, value=b"%d" % i)
    plain.flush(10)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "isolation.level": "read_committed"})
    c.subscribe([src])
    got = []
    for _ in range(200):
        m = c.poll(0.1)
        if m is not None and not m.error():
            got.append(m)
        if len(got) == 10:
            break
    assert len(got) == 10
    p = txn_producer(broker.bootstrap, "tx-" + src)
    # An aborted transaction's offsets never become visible.
    p.begin_transaction()
    p.produce(dst, value=b"x")
    p.flush(10)
    p.send_offsets_to_transaction([TopicPartition(src, 0, 5)], c.consumer_group_metadata(), 30)
    p.abort_transaction(30)
    assert c.committed([TopicPartition(src, 0)], 10)[0].offset < 0
    p.begin_transaction()
    p.produce(dst, value=b"y")
    p.send_offsets_to_transaction([TopicPartition(src, 0, 10)], c.consumer_group_metadata(), 30)
    p.commit_transaction(30)
    assert c.committed([TopicPartition(src, 0)], 10)[0].offset == 10
    c.close()
    assert [v for _, _, v in read_all(broker.bootstrap, dst, "read_committed")] == [b"y"]


def test_second_instance_fences_the_first(broker):
    topic = unique_topic("zombie")
    create_topic(broker.bootstrap, topic)
    txn_id = "tx-" + topic
    first = txn_producer(broker.bootstrap, txn_id)
    first.begin_transaction()
    first.produce(topic, value=b"zombie")
    first.flush(10)
    second = txn_producer(broker.bootstrap, txn_id)  # aborts the first's transaction
    second.begin_transaction()
    second.produce(topic, value=b"live")
    second.commit_transaction(30)
    with pytest.raises(KafkaException) as err:
        first.produce(topic, value=b"zombie-2")
        first.commit_transaction(30)
    e = err.value.args[0]
    assert e.fatal() or e.txn_requires_abort(), e
    assert [v for _, _, v in read_all(broker.bootstrap, topic, "read_committed")] == [b"live"]


def test_timed_out_transaction_is_aborted_and_lso_moves_on(broker):
    topic = unique_topic("timeout")
    create_topic(broker.bootstrap, topic)
    p = txn_producer(broker.bootstrap, "tx-" + topic, **{"transaction.timeout.ms": 1000})
    p.begin_transaction()
    p.produce(topic, value=b"abandoned")
    p.flush(10)
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    plain.produce(topic, value=b"later")
    plain.flush(10)
    # The coordinator aborts it; then read_committed sees the later record only.
    wait_until(lambda: [v for _, _, v in read_all(broker.bootstrap, topic, "read_committed")] == [b"later"],
               timeout=20, what="the timed-out transaction to be aborted")
    with pytest.raises(KafkaException):
        p.commit_transaction(10)


def test_transactions_survive_broker_sigkill(data_dir):
    import tempfile
    d = tempfile.mkdtemp(prefix="holdfast-txn-kill-")
    b = Broker(d, ["--set", "num.partitions=1"]).start()
    topic = unique_topic("kill")
    try:
        create_topic(b.bootstrap, topic)
        p = txn_producer(b.bootstrap, "tx-" + topic)
        p.begin_transaction()
        p.produce(topic, value=b"committed")
        p.commit_transaction(30)
        p.begin_transaction()
        p.produce(topic, value=b"aborted")
        p.flush(10)
        p.abort_transaction(30)
        p.begin_transaction()
        p.produce(topic, value=b"open-at-crash")
        p.flush(10)
        b.kill()
        b = Broker(d, ["--set", "num.partitions=1",
                       "--set", "transaction.abort.timed.out.transaction.cleanup.interval.ms=200"]).start()
        # The aborted one stays aborted after recovery; the open one is aborted by a new
        # instance of the producer.
        p2 = txn_producer(b.bootstrap, "tx-" + topic)
        p2.begin_transaction()
        p2.produce(topic, value=b"after-restart")
        p2.commit_transaction(30)
        assert [v for _, _, v in read_all(b.bootstrap, topic, "read_committed")] == [b"committed", b"after-restart"]
        assert [v for _, _, v in read_all(b.bootstrap, topic, "read_uncommitted")] == [
            b"committed", b"aborted", b"open-at-crash", b"after-restart"]
    finally:
        b.kill()
        import shutil
        shutil.rmtree(d, ignore_errors=True)


def test_prepared_transaction_is_completed_after_a_crash(tmp_path):
    """The broker dies right after PrepareCommit is durable and before any marker (test
    hook); after a restart the coordinator writes the markers and completes the commit, and
    the producer's retried EndTxn succeeds."""
    import os
    import threading
    d = str(tmp_path / "data")
    os.environ["HOLDFAST_TEST_CRASH_AFTER_PREPARE"] = "1"
    try:
        b = Broker(d, ["--set", "num.partitions=1"]).start()
    finally:
        del os.environ["HOLDFAST_TEST_CRASH_AFTER_PREPARE"]
    port = b.port
    topic = unique_topic("prepared")
    try:
        create_topic(b.bootstrap, topic)
        p = txn_producer(b.bootstrap, "tx-" + topic)
        p.begin_transaction()
        for i in range(3):
            p.produce(topic, value=b"v%d" % i)
        p.flush(10)
        result = {}

        def commit():
            try:
                p.commit_transaction(60)
                result["ok"] = True
            except KafkaException as e:
                result["err"] = e

        t = threading.Thread(target=commit)
        t.start()
        assert b.proc.wait(30) != 0, "the test hook should have aborted the broker"
        b = Broker(d, ["--set", "num.partitions=1"])
        b.port = port
        b.start()
        t.join(90)
        assert result.get("ok"), result
        assert [v for _, _, v in read_all(b.bootstrap, topic, "read_committed")] == [b"v0", b"v1", b"v2"]
    finally:
        b.kill()
