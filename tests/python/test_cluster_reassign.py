"""Partition reassignment and rack-aware placement on a four-node cluster (three combined
voters and a broker-only node 4), with racks r1, r2, r3, r1.

* Rack-aware placement: every partition of an RF 3 topic lands on three racks.
* Apache Kafka's `kafka-reassign-partitions.sh` (ReassignPartitionsCommand) moves every
  replica off node 1 onto node 4, with `--throttle`, while a confluent-kafka idempotent
  acks=all producer keeps writing: `--verify` sees the reassignment in progress and then
  completed and clears the throttles; the new replicas join the ISR; node 1's copies are
  deleted; every acknowledged record is read back exactly once, in order per partition.
* `--cancel` puts an ongoing reassignment back to the original replicas.
"""
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from apache_kafka import JAVA, LIB, available
from conftest import BINARY, Broker, free_port, unique_topic, wait_until

_MISSING = available()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason="SKIPPED Apache Kafka CLI tests: %s" % (_MISSING,))

RACKS = {1: "r1", 2: "r2", 3: "r3", 4: "r1"}
RECORD = 1024


@pytest.fixture(scope="module")
def cluster():
    root = tempfile.mkdtemp(prefix="holdfast-pyreassign-")
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
                "--set", "broker.rack=" + RACKS[i],
                "--set", "broker.heartbeat.interval.ms=500",
                "--set", "broker.session.timeout.ms=3000",
                "--set", "replica.lag.time.max.ms=3000"]
        if i == 4:
            args += ["--controller-listen", "127.0.0.1:%d" % free_port()]
        nodes.append(Broker(d, args))
    for n in nodes:
        n.start()
    admin = AdminClient({"bootstrap.servers": ",".join(n.bootstrap for n in nodes)})
    wait_until(lambda: brokers(admin) == [1, 2, 3, 4], timeout=60, what="four unfenced brokers")
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


def assignment(admin, topic):
    """partition -> (leader, replicas, isr), or None while the topic is not visible."""
    try:
        md = admin.list_topics(topic, timeout=5).topics[topic]
    except Exception:
        return None
    if md.error is not None or not md.partitions:
        return None
    return {p: (m.leader, list(m.replicas), sorted(m.isrs)) for p, m in md.partitions.items()}


def settled(admin, topic, want):
    """True once every partition has the wanted replicas, a leader and a full ISR."""
    a = assignment(admin, topic)
    return a is not None and all(
        p in a and a[p][1] == r and a[p][0] >= 0 and a[p][2] == sorted(r) for p, r in want.items())


def reassign(bootstrap, *args):
    cmd = [JAVA, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", os.path.join(LIB, "*"),
           "org.apache.kafka.tools.reassign.ReassignPartitionsCommand", "--bootstrap-server", bootstrap, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def plan_file(topic, targets):
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump({"version": 1, "partitions": [
        {"topic": topic, "partition": p, "replicas": r} for p, r in sorted(targets.items())]}, f)
    f.close()
    return f.name


def broker_configs(admin, node):
    res = ConfigResource("BROKER", str(node))
    return {k: v.value for k, v in admin.describe_configs([res])[res].result(30).items()}


def preload(bootstrap, topic, partitions, per_partition):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 5})
    errors = []
    value = b"x" * RECORD
    for i in range(partitions * per_partition):
        p.produce(topic, value=value, partition=i % partitions,
                  on_delivery=lambda err, msg: err and errors.append(err))
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors[:3]


def test_rack_aware_placement(cluster):
    bootstrap = ",".join(n.bootstrap for n in cluster)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    nodes = admin.describe_cluster().result(30).nodes
    assert {n.id: n.rack for n in nodes} == RACKS
    topic = unique_topic("racks")
    admin.create_topics([NewTopic(topic, 12, 3)])[topic].result(60)
    a = wait_until(lambda: assignment(admin, topic), timeout=60, what="the new topic's metadata")
    for p, (_, replicas, _) in a.items():
        assert len({RACKS[r] for r in replicas}) == 3, "partition %d on %s" % (p, replicas)


def test_reassign_partitions_under_load_with_throttle(cluster):
    bootstrap = ",".join(n.bootstrap for n in cluster)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = unique_topic("moving")
    before = {0: [1, 2, 3], 1: [2, 3, 1], 2: [3, 1, 2]}
    admin.create_topics([NewTopic(topic, num_partitions=3, replica_assignment=[before[p] for p in range(3)])])[topic].result(60)
    wait_until(lambda: settled(admin, topic, before), timeout=60, what="the topic's full ISRs")
    per_partition = 2000
    preload(bootstrap, topic, 3, per_partition)
    moved_bytes = 3 * per_partition * RECORD

    # Load during the reassignment: an idempotent acks=all producer, values in send order.
    acked = {p: [] for p in range(3)}
    errors = []
    stop = threading.Event()

    def produce():
        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                      "linger.ms": 2})

        def delivered(err, msg):
            if err is not None:
                errors.append(err)
            else:
                acked[msg.partition()].append((msg.offset(), msg.value().decode()))

        i = 0
        while not stop.is_set():
            p.produce(topic, value=("live-%d" % i).encode(), partition=i % 3, on_delivery=delivered)
            i += 1
            p.poll(0.005)
        assert p.flush(60) == 0

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        after = {0: [4, 2, 3], 1: [2, 3, 4], 2: [3, 4, 2]}
        plan = plan_file(topic, after)
        rate = 1_000_000
        t0 = time.monotonic()
        r = reassign(bootstrap, "--execute", "--reassignment-json-file", plan, "--throttle", str(rate))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Successfully started partition reassignments" in r.stdout, r.stdout
        assert "The inter-broker throttle limit was set to %d B/s" % rate in r.stdout, r.stdout
        assert broker_configs(admin, 4).get("follower.replication.throttled.rate") == str(rate)

        v = reassign(bootstrap, "--verify", "--reassignment-json-file", plan)
        assert v.returncode == 0, v.stdout + v.stderr
        # 6 MB at 1 MB/s cannot be done by the time the JVM of --verify has started.
        assert "is still in progress" in v.stdout, v.stdout
        assert "Clearing broker-level throttles" not in v.stdout, v.stdout
        wait_until(lambda: settled(admin, topic, after), timeout=180, interval=0.1,
                   what="the reassignment to complete (new replicas in the ISR)")
        elapsed = time.monotonic() - t0
        print("reassignment of %.1f MB with a %d B/s throttle: completed after %.1f s"
              % (moved_bytes / 1e6, rate, elapsed))
        # Throttled catch-up cannot be faster than the rate allows (one second of burst).
        assert elapsed >= moved_bytes / rate - 1.5, elapsed
        v = reassign(bootstrap, "--verify", "--reassignment-json-file", plan)
        assert v.returncode == 0, v.stdout + v.stderr
        for p in range(3):
            assert "Reassignment of partition %s-%d is completed" % (topic, p) in v.stdout, v.stdout
        assert "Clearing broker-level throttles" in v.stdout, v.stdout
        assert "follower.replication.throttled.rate" not in broker_configs(admin, 4)
        node1 = cluster[0].data_dir
        wait_until(lambda: not any(os.path.exists(os.path.join(node1, "%s-%d" % (topic, p))) for p in range(3)),
                   timeout=30, what="node 1's copies deleted")
        desc = subprocess.run(
            [JAVA, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", os.path.join(LIB, "*"),
             "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", bootstrap, "--describe", "--topic", topic],
            capture_output=True, text=True, timeout=120)
        assert desc.returncode == 0, desc.stderr
        for p, r in after.items():
            line = [l for l in desc.stdout.splitlines() if "\tPartition: %d\t" % p in l][0]
            assert "Replicas: %s\t" % ",".join(map(str, r)) in line, line
        # Keep producing a little after completion, through the moved leadership.
        n = sum(len(v) for v in acked.values())
        wait_until(lambda: sum(len(v) for v in acked.values()) > n + 100, timeout=60, what="writes after the move")
    finally:
        stop.set()
        producer.join(90)
    assert not errors, errors[:5]

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("g"),
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in range(3)])
    want = 3 * per_partition + sum(len(v) for v in acked.values())
    seen = {p: [] for p in range(3)}
    deadline = time.monotonic() + 120
    while sum(len(v) for v in seen.values()) < want and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            seen[m.partition()].append((m.offset(), m.value().decode()))
    c.close()
    for p in range(3):
        live = [x for x in seen[p] if x[1].startswith("live-")]
        assert len(seen[p]) == per_partition + len(acked[p]), (p, len(seen[p]), len(acked[p]))
        assert live == acked[p], "partition %d: acknowledged records read back once, in order" % p
    print("acknowledged during the reassignment: %d records, all read back once"
          % sum(len(v) for v in acked.values()))


def test_reassignment_cancel_restores_the_replicas(cluster):
    bootstrap = ",".join(n.bootstrap for n in cluster)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = unique_topic("cancelled")
    before = {0: [1, 2, 3]}
    admin.create_topics([NewTopic(topic, num_partitions=1, replica_assignment=[before[0]])])[topic].result(60)
    wait_until(lambda: settled(admin, topic, before), timeout=60, what="the topic's full ISR")
    preload(bootstrap, topic, 1, 2000)
    plan = plan_file(topic, {0: [4, 2, 3]})
    # 2 MB at 20 kB/s: far from done when cancelled.
    r = reassign(bootstrap, "--execute", "--reassignment-json-file", plan, "--throttle", "20000")
    assert r.returncode == 0, r.stdout + r.stderr
    listed = reassign(bootstrap, "--list")
    assert listed.returncode == 0, listed.stderr
    assert "%s-0: replicas: 4,2,3,1. adding: 4. removing: 1." % topic in listed.stdout, listed.stdout
    c = reassign(bootstrap, "--cancel", "--reassignment-json-file", plan)
    assert c.returncode == 0, c.stdout + c.stderr
    assert "Successfully cancelled partition reassignment" in c.stdout, c.stdout
    a = assignment(admin, topic)
    assert sorted(a[0][1]) == [1, 2, 3], a
    listed = reassign(bootstrap, "--list")
    assert "No partition reassignments found." in listed.stdout, listed.stdout
    node4 = cluster[3].data_dir
    wait_until(lambda: not os.path.exists(os.path.join(node4, "%s-0" % topic)), timeout=30,
               what="node 4's partial copy deleted")


def cluster_tool(bootstrap, command, *args):
    cmd = [JAVA, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", os.path.join(LIB, "*"),
           "org.apache.kafka.tools.ClusterTool", command, "--bootstrap-server", bootstrap, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_decommission_a_broker_only_node(cluster):
    """Last in this file: moves every replica off node 4 with `--generate` (rack-aware over
    brokers 1-3) and `--execute`, stops node 4, and unregisters it with `kafka-cluster.sh
    unregister`: it leaves the broker list and the metadata quorum's observers."""
    voters = ",".join(n.bootstrap for n in cluster[:3])
    admin = AdminClient({"bootstrap.servers": voters})
    md = admin.list_topics(timeout=10)
    topics = sorted(t for t, m in md.topics.items()
                    if any(4 in p.replicas for p in m.partitions.values()))
    assert topics, "earlier tests left replicas on node 4"
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump({"version": 1, "topics": [{"topic": t} for t in topics]}, f)
    f.close()
    g = reassign(voters, "--generate", "--topics-to-move-json-file", f.name, "--broker-list", "1,2,3")
    assert g.returncode == 0, g.stdout + g.stderr
    proposed = json.loads(g.stdout.split("Proposed partition reassignment configuration")[1].strip().splitlines()[0])
    for p in proposed["partitions"]:
        assert 4 not in p["replicas"] and len({RACKS[r] for r in p["replicas"]}) == len(p["replicas"]), p
    plan = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(proposed, plan)
    plan.close()
    t0 = time.monotonic()
    r = reassign(voters, "--execute", "--reassignment-json-file", plan.name)
    assert r.returncode == 0, r.stdout + r.stderr
    want = {}
    for p in proposed["partitions"]:
        want.setdefault(p["topic"], {})[p["partition"]] = p["replicas"]
    for t, parts in want.items():
        wait_until(lambda: settled(admin, t, parts), timeout=120, interval=0.1,
                   what="%s moved off node 4" % t)
    print("moved %d partitions of %d topics off node 4 in %.1f s"
          % (len(proposed["partitions"]), len(want), time.monotonic() - t0))
    v = reassign(voters, "--verify", "--reassignment-json-file", plan.name)
    assert v.returncode == 0 and "is still in progress" not in v.stdout, v.stdout

    cluster[3].stop()
    wait_until(lambda: brokers(admin) == [1, 2, 3], timeout=60, what="node 4 fenced")
    u = cluster_tool(voters, "unregister", "--id", "4")
    assert u.returncode == 0, u.stdout + u.stderr
    assert "Broker 4 is no longer registered." in u.stdout, u.stdout
    assert sorted(n.id for n in admin.describe_cluster().result(30).nodes) == [1, 2, 3]
    q = subprocess.run(
        [JAVA, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", os.path.join(LIB, "*"),
         "org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-server", voters,
         "describe", "--status"], capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stdout + q.stderr
    observers = [l for l in q.stdout.splitlines() if l.startswith("CurrentObservers")][0]
    assert '"id": 4' not in observers, q.stdout
    # Unregistering again: the broker is unknown now.
    u = cluster_tool(voters, "unregister", "--id", "4")
    assert u.returncode != 0 and "BrokerIdNotRegistered" in (u.stdout + u.stderr), u.stdout + u.stderr
