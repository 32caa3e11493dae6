"""A broker-only node (Kafka's `process.roles=broker`): three combined voters and a fourth
node that is not a voter. It joins the metadata quorum as a Raft learner when it registers,
receives replicas, serves confluent-kafka producers and consumers, and survives a SIGKILL
and restart while the quorum (which it is not part of) keeps working. Kafka's own
`kafka-metadata-quorum.sh` lists it as an observer when the Apache Kafka tools are installed."""
import os
import shutil
import subprocess
import tempfile
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from apache_kafka import JAVA, LIB, available
from conftest import BINARY, Broker, free_port, unique_topic, wait_until

PARTITIONS = 8


@pytest.fixture(scope="module")
def cluster():
    root = tempfile.mkdtemp(prefix="holdfast-pybrokeronly-")
    cid = subprocess.run([BINARY, "random-uuid"], capture_output=True, text=True, check=True).stdout.strip()
    voters = ",".join("%d@127.0.0.1:%d" % (i, free_port()) for i in (1, 2, 3))
    nodes = []
    for i in (1, 2, 3, 4):
        d = os.path.join(root, "node%d" % i)
        fmt = [BINARY, "format", "--data-dir", d, "--node-id", str(i), "--cluster-id=" + cid]
        if i == 1:
            fmt.append("--bootstrap")
        subprocess.run(fmt, check=True, capture_output=True)
        args = ["--node-id", str(i), "--controller-quorum-voters", voters,
                "--set", "broker.heartbeat.interval.ms=500",
                "--set", "broker.session.timeout.ms=3000",
                "--set", "replica.lag.time.max.ms=2000"]
        if i == 4:
            args += ["--controller-listen", "127.0.0.1:%d" % free_port()]
        nodes.append(Broker(d, args))
    for n in nodes:
        n.start()
    yield nodes
    for n in nodes:
        if n.proc is not None and n.proc.poll() is None:
            n.kill()
    shutil.rmtree(root, ignore_errors=True)


def brokers(admin):
    try:
        return sorted(admin.list_topics(timeout=5).brokers)
    except Exception:
        return []


def full_isrs(admin, topic):
    """partition -> replicas once every partition has a leader and a full ISR."""
    try:
        md = admin.list_topics(topic, timeout=5).topics[topic]
    except Exception:
        return None
    if md.error is not None or len(md.partitions) != PARTITIONS:
        return None
    if any(m.leader < 0 or sorted(m.isrs) != sorted(m.replicas) for m in md.partitions.values()):
        return None
    return {p: list(m.replicas) for p, m in md.partitions.items()}


def test_broker_only_node_joins_serves_and_restarts(cluster):
    voters = ",".join(n.bootstrap for n in cluster[:3])
    everyone = ",".join(n.bootstrap for n in cluster)
    admin = AdminClient({"bootstrap.servers": voters})
    t0 = time.monotonic()
    wait_until(lambda: brokers(admin) == [1, 2, 3, 4], timeout=60, what="four unfenced brokers")
    print("broker-only node registered and unfenced after %.2f s" % (time.monotonic() - t0))

    topic = unique_topic("brokeronly")
    admin.create_topics([NewTopic(topic, PARTITIONS, 3)])[topic].result(60)
    replicas = wait_until(lambda: full_isrs(admin, topic), timeout=60, what="full ISRs")
    on_four = [p for p, r in replicas.items() if 4 in r]
    assert on_four, "placement over four brokers gives broker 4 replicas: %s" % replicas

    acked = set()
    errors = []

    def delivered(err, msg):
        if err is None:
            acked.add(msg.value().decode())
        else:
            errors.append(err)

    # Bootstrapping from the broker-only node alone works too: it answers Metadata.
    p = Producer({"bootstrap.servers": cluster[3].bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(2000):
        p.produce(topic, value=b"v%d" % i, partition=i % PARTITIONS, on_delivery=delivered)
        if i % 200 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors[:5]
    assert len(acked) == 2000

    # SIGKILL the broker-only node: the quorum (three voters) keeps committing metadata.
    cluster[3].kill()
    other = unique_topic("whiledown")
    t0 = time.monotonic()
    admin.create_topics([NewTopic(other, 1, 3)])[other].result(60)
    print("CreateTopics while the broker-only node is down: %.2f s" % (time.monotonic() - t0))
    cluster[3].start()
    t0 = time.monotonic()
    wait_until(lambda: brokers(admin) == [1, 2, 3, 4], timeout=60, what="broker 4 back")
    wait_until(lambda: full_isrs(admin, topic), timeout=60, what="broker 4 back in its ISRs")
    print("restarted broker-only node back in every ISR after %.2f s" % (time.monotonic() - t0))

    c = Consumer({"bootstrap.servers": everyone, "group.id": unique_topic("g"),
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, q, 0) for q in range(PARTITIONS)])
    seen = []
    deadline = time.monotonic() + 60
    while len(seen) < 2000 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            seen.append(m.value().decode())
    c.close()
    assert len(seen) == 2000 and set(seen) == acked, (len(seen), len(set(seen)))

    if available() is None:
        cmd = [JAVA, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", os.path.join(LIB, "*"),
               "org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-server", voters,
               "describe", "--status"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        line = [l for l in r.stdout.splitlines() if l.startswith("CurrentObservers")][0]
        assert '"id": 4' in line, r.stdout
        voters_line = [l for l in r.stdout.splitlines() if l.startswith("CurrentVoters")][0]
        assert '"id": 4' not in voters_line, r.stdout
