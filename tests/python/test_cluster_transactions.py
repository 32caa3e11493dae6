"""Transactions on a three-node Holdfast cluster with confluent-kafka (docs/cluster.md,
"Transaction coordinator"): a transactional producer commits and aborts transactions over an
RF 3 topic whose partitions are led by different nodes; the node that is the transaction
coordinator (leader of the id's `__transaction_state` partition) is SIGKILLed between
transactions; the producer goes on; a read_committed consumer sees exactly the committed
records, each once."""
import os
import shutil
import subprocess
import tempfile
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import BINARY, Broker, free_port, unique_topic, wait_until

PARTITIONS = 6


@pytest.fixture(scope="module")
def cluster():
    root = tempfile.mkdtemp(prefix="holdfast-pytxn-")
    cid = subprocess.run([BINARY, "random-uuid"], capture_output=True, text=True, check=True).stdout.strip()
    voters = ",".join("%d@127.0.0.1:%d" % (i, free_port()) for i in (1, 2, 3))
    nodes = []
    for i in (1, 2, 3):
        d = os.path.join(root, "node%d" % i)
        fmt = [BINARY, "format", "--data-dir", d, "--node-id", str(i), "--cluster-id=" + cid]
        if i == 1:
            fmt.append("--bootstrap")
        subprocess.run(fmt, check=True, capture_output=True)
        nodes.append(Broker(d, ["--node-id", str(i), "--controller-quorum-voters", voters,
                                "--set", "broker.heartbeat.interval.ms=500",
                                "--set", "broker.session.timeout.ms=3000"]))
    for n in nodes:
        n.start()
    yield nodes
    for n in nodes:
        n.kill()
    shutil.rmtree(root, ignore_errors=True)


def java_partition(key, n):
    """Kafka's Utils.abs(key.hashCode()) % n (Java String hash over UTF-16)."""
    h = 0
    data = key.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (h * 31 + int.from_bytes(data[i:i + 2], "big")) & 0xFFFFFFFF
    if h >= 1 << 31:
        h -= 1 << 32
    h = 0 if h == -(1 << 31) else abs(h)
    return h % n


def leaders(admin, topic):
    try:
        md = admin.list_topics(topic, timeout=5).topics[topic]
    except Exception:
        return None
    if md.error is not None or not md.partitions:
        return None
    out = {p: m.leader for p, m in md.partitions.items()}
    return out if all(l >= 0 for l in out.values()) else None


def end_txn(p, commit, deadline_s=90):
    """Commits (or aborts) the open transaction, retrying retriable errors; returns whether
    it was committed."""
    deadline = time.time() + deadline_s
    while True:
        try:
            (p.commit_transaction if commit else p.abort_transaction)(30)
            return commit
        except KafkaException as e:
            err = e.args[0]
            if err.txn_requires_abort():
                commit = False
            elif not err.retriable() or time.time() > deadline:
                raise


def read_committed(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("reader"),
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    tps = [TopicPartition(topic, p, 0) for p in range(PARTITIONS)]
    c.assign(tps)
    # The targets are high watermarks, read with read_uncommitted: a read_committed query
    # answers the last stable offset, which stays before the last transaction until its
    # markers are written (after commit_transaction returns, as in Kafka), and reading up to
    # that would miss the transaction.
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("hw"),
                      "isolation.level": "read_uncommitted"})
    highs = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=20)[1] for p in range(PARTITIONS)}
    probe.close()
    seen = {}
    deadline = time.time() + 60
    while time.time() < deadline:
        m = c.poll(0.1)
        if m is not None and m.error() is None:
            v = m.value().decode()
            seen[v] = seen.get(v, 0) + 1
        pos = {tp.partition: tp.offset for tp in c.position(tps)}
        if all(pos[p] >= highs[p] for p in range(PARTITIONS)):
            c.close()
            return seen
    c.close()
    raise AssertionError("read_committed did not reach the high watermarks %s" % highs)


def test_transactions_across_coordinator_failover(cluster):
    bootstrap = ",".join(n.bootstrap for n in cluster)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wait_until(lambda: len(admin.list_topics(timeout=5).brokers) == 3, timeout=60, what="three unfenced brokers")
    topic = unique_topic("ctxn")
    admin.create_topics([NewTopic(topic, PARTITIONS, 3)])[topic].result(60)
    parts = wait_until(lambda: leaders(admin, topic), timeout=60, what="partition leaders")
    assert len(set(parts.values())) >= 2, parts
    txn_id = unique_topic("py-cluster-txn")
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 2})
    p.init_transactions(60)
    committed, aborted = set(), set()

    def one(name, commit):
        p.begin_transaction()
        values = ["%s-%02d" % (name, j) for j in range(12)]
        for j, v in enumerate(values):
            p.produce(topic, v.encode(), partition=j % PARTITIONS)
        p.flush(60)
        (committed if end_txn(p, commit) else aborted).update(values)

    for i in range(6):
        one("a%d" % i, i % 2 == 0)
    # The coordinator: leader of the id's __transaction_state partition.
    state = wait_until(lambda: leaders(admin, "__transaction_state"), timeout=30, what="__transaction_state")
    assert len(state) == 10, state
    coord = state[java_partition(txn_id, 10)]
    victim = cluster[coord - 1]
    victim.kill()
    others = ",".join(n.bootstrap for n in cluster if n is not victim)
    t0 = time.time()
    one("b0", True)
    failover = time.time() - t0
    for i in range(4):
        one("c%d" % i, i % 2 == 1)
    seen = read_committed(others, topic)
    assert {v: n for v, n in seen.items() if n > 1} == {}, "read more than once"
    assert not (set(seen) & aborted), "aborted records visible"
    assert set(seen) == committed
    print("coordinator %d SIGKILLed; next transaction committed after %.1f s" % (coord, failover))
