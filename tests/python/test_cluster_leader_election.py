"""Apache Kafka's own `kafka-leader-election.sh` (org.apache.kafka.tools.LeaderElectionCommand,
from the jars scripts/setup-java-deps.sh installs) against a three-node Holdfast cluster:
after a clean restart of a preferred replica (automatic rebalance off), a preferred election
of all topic partitions moves leadership back to it."""
import os
import shutil
import subprocess
import tempfile
import time

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from apache_kafka import JAVA, LIB, available
from conftest import BINARY, Broker, free_port, unique_topic, wait_until

_MISSING = available()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason="SKIPPED Apache Kafka CLI tests: %s" % (_MISSING,))


@pytest.fixture(scope="module")
def cluster():
    root = tempfile.mkdtemp(prefix="holdfast-pycluster-")
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
                                "--set", "broker.session.timeout.ms=3000",
                                "--set", "auto.leader.rebalance.enable=false"]))
    for n in nodes:
        n.start()
    yield nodes
    for n in nodes:
        n.stop()
    shutil.rmtree(root, ignore_errors=True)


def partitions(admin, topic):
    """partition -> (leader, replicas, isr), or None until every partition has a full ISR."""
    try:
        md = admin.list_topics(topic, timeout=5).topics[topic]
    except Exception:
        return None
    if md.error is not None or len(md.partitions) != 3:
        return None
    out = {p: (m.leader, list(m.replicas), sorted(m.isrs)) for p, m in md.partitions.items()}
    if any(l < 0 or len(isr) != len(r) for l, r, isr in out.values()):
        return None
    return out


def broker_count(admin):
    try:
        return len(admin.list_topics(timeout=5).brokers)
    except Exception:
        return 0


def leader_election(bootstrap, *args):
    cmd = [JAVA, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", os.path.join(LIB, "*"),
           "org.apache.kafka.tools.LeaderElectionCommand", "--bootstrap-server", bootstrap, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_kafka_leader_election_preferred_all_topic_partitions(cluster):
    bootstrap = ",".join(n.bootstrap for n in cluster)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wait_until(lambda: broker_count(admin) == 3, timeout=60, what="three unfenced brokers")
    t = unique_topic("elect")
    admin.create_topics([NewTopic(t, 3, 3)])[t].result(60)
    parts = wait_until(lambda: partitions(admin, t), timeout=60, what="topic settled")
    assert all(l == r[0] for l, r, _ in parts.values()), parts
    pref = parts[0][1][0]
    node = cluster[pref - 1]
    assert node.stop() == 0
    node.start()
    others = ",".join(n.bootstrap for n in cluster if n is not node)
    admin2 = AdminClient({"bootstrap.servers": others})
    parts = wait_until(lambda: partitions(admin2, t), timeout=60, what="restarted node back in the ISRs")
    assert parts[0][0] != pref, "automatic rebalance is off: leadership stays moved (%s)" % parts
    r = leader_election(others, "--election-type", "preferred", "--all-topic-partitions")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Successfully completed leader election (PREFERRED) for partitions" in r.stdout, r.stdout
    assert "%s-0" % t in r.stdout, r.stdout
    parts = wait_until(lambda: (lambda p: p if p and all(l == r[0] for l, r, _ in p.values()) else None)(partitions(admin2, t)),
                       timeout=30, what="preferred leaders")
    # Again: nothing to elect, still a success.
    r = leader_election(others, "--election-type", "preferred", "--all-topic-partitions")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "%s-0" % t not in r.stdout, r.stdout
    # An explicit partition already led by its preferred replica.
    r = leader_election(others, "--election-type", "preferred", "--topic", t, "--partition", "0")
    assert "Valid replica already elected for partitions %s-0" % t in r.stdout, r.stdout + r.stderr


def metadata_quorum(bootstrap, *args):
    cmd = [JAVA, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", os.path.join(LIB, "*"),
           "org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-server", bootstrap, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def fields(text):
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def test_kafka_metadata_quorum_describe(cluster):
    """`kafka-metadata-quorum.sh describe --status / --replication` (DescribeQuorum, API 55):
    the Raft leader, its term, a high watermark that grows with metadata changes, three
    voters; the leader is the controller Metadata reports."""
    bootstrap = ",".join(n.bootstrap for n in cluster)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wait_until(lambda: broker_count(admin) == 3, timeout=60, what="three unfenced brokers")
    r = metadata_quorum(bootstrap, "describe", "--status")
    assert r.returncode == 0, r.stdout + r.stderr
    st = fields(r.stdout)
    leader = int(st["LeaderId"])
    assert leader in (1, 2, 3), r.stdout
    assert int(st["LeaderEpoch"]) >= 1, r.stdout
    hw = int(st["HighWatermark"])
    assert hw > 0, r.stdout
    for i in (1, 2, 3):
        assert '"id": %d' % i in st["CurrentVoters"], r.stdout
    assert st["CurrentObservers"] == "[]", r.stdout
    assert admin.describe_cluster().result(30).controller.id == leader
    # A metadata change moves the high watermark.
    t = unique_topic("quorum")
    admin.create_topics([NewTopic(t, 1, 3)])[t].result(60)
    r = metadata_quorum(bootstrap, "describe", "--status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert int(fields(r.stdout)["HighWatermark"]) > hw, r.stdout
    r = metadata_quorum(bootstrap, "describe", "--replication")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [l.split() for l in r.stdout.splitlines()[1:] if l.strip()]
    assert sorted(int(row[0]) for row in rows) == [1, 2, 3], r.stdout
    status = {int(row[0]): row[-1] for row in rows}
    assert status[leader] == "Leader", r.stdout
    assert sorted(s for i, s in status.items() if i != leader) == ["Follower", "Follower"], r.stdout
    print("kafka-metadata-quorum describe --replication:\n" + r.stdout)
