"""KIP-848 consumer groups (group.protocol=consumer) with librdkafka (confluent-kafka).

Members run as subprocesses (group_member_kip848.py) that log, with wall-clock times, every
partition assigned and revoked, every record processed and every commit. From those logs:
ownership intervals of one partition never overlap across members, and with commits after
processing every produced record is processed at least once, also when a member is SIGKILLed.

The broker runs with a 6 s session timeout and a 500 ms heartbeat interval
(group.consumer.*) to keep the tests short; the defaults are Kafka's (45 s, 5 s).
"""
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, ConsumerGroupType, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker, unique_topic, wait_until

MEMBER = os.path.join(os.path.dirname(__file__), "group_member_kip848.py")
SESSION_MS = 6000


@pytest.fixture(scope="module")
def broker(data_dir):
    b = Broker(data_dir, [
        "--set", "num.partitions=1",
        "--set", "group.consumer.session.timeout.ms=%d" % SESSION_MS,
        "--set", "group.consumer.heartbeat.interval.ms=500",
    ]).start()
    yield b
    rc = b.stop()
    assert rc == 0, "broker did not shut down cleanly (rc=%s)" % rc


def create_topic(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result()


class Member:
    def __init__(self, broker, topic, group, *conf):
        fd, self.path = tempfile.mkstemp(prefix="member848-", suffix=".log")
        os.close(fd)
        self.killed_at = None
        self.proc = subprocess.Popen([sys.executable, MEMBER, broker.bootstrap, topic, group, self.path] + list(conf))

    def lines(self):
        with open(self.path) as f:
            return [l.rstrip("\n") for l in f if l.endswith("\n")]

    def events(self):
        """(kind, time, partitions) for each assign/revoke callback."""
        out = []
        for l in self.lines():
            if l[:2] in ("A ", "R "):
                kind, ts, *rest = l.split(" ")
                parts = {int(x) for x in (rest[0] if rest else "").split(",") if x}
                out.append((kind, float(ts), parts))
        return out

    def owned(self):
        cur = set()
        for kind, _, parts in self.events():
            cur = cur | parts if kind == "A" else cur - parts
        return cur

    def intervals(self):
        """partition -> [(start, end)], end = None while owned (or the kill time)."""
        start, out = {}, {}
        for kind, ts, parts in self.events():
            for p in parts:
                if kind == "A":
                    start[p] = ts
                elif p in start:
                    out.setdefault(p, []).append((start.pop(p), ts))
        for p, ts in start.items():
            out.setdefault(p, []).append((ts, self.killed_at))
        return out

    def processed(self):
        out = set()
        for l in self.lines():
            if l.startswith("M "):
                _, p, o = l.split()
                out.add((int(p), int(o)))
        return out

    def terminate(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)
        self.killed_at = time.time()

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.unlink(self.path)


def assert_single_owner(members):
    by_partition = {}
    for m in members:
        for p, ivs in m.intervals().items():
            by_partition.setdefault(p, []).extend(ivs)
    for p, ivs in by_partition.items():
        ivs.sort(key=lambda iv: iv[0])
        for (s1, e1), (s2, _) in zip(ivs, ivs[1:]):
            assert e1 is not None and e1 <= s2, "partition %d had two owners: %s" % (p, ivs)


def partition_of_all(members, n):
    """Members' current assignments are disjoint and cover the n partitions."""
    sets = [m.owned() for m in members]
    return sum(len(s) for s in sets) == n and set().union(*sets) == set(range(n))


def describe(bootstrap, group):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return admin.describe_consumer_groups([group])[group].result()


class Feeder:
    """Produces keyed records until stopped; remembers every delivered (partition, offset)."""

    def __init__(self, bootstrap, topic):
        self.p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.topic = topic
        self.delivered = set()
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        i = 0
        while not self.stop.is_set():
            self.p.produce(self.topic, key=b"k%d" % i, value=b"v%d" % i, on_delivery=self.done)
            i += 1
            self.p.poll(0)
            time.sleep(0.002)
        self.p.flush(30)

    def done(self, err, msg):
        if err is None:
            self.delivered.add((msg.partition(), msg.offset()))

    def finish(self):
        self.stop.set()
        self.t.join(60)
        return self.delivered


def test_members_join_and_leave_without_two_owners(broker):
    topic, group = unique_topic("k848"), unique_topic("g848")
    create_topic(broker.bootstrap, topic, 12)
    members = []
    try:
        t0 = time.monotonic()
        a = Member(broker, topic, group)
        members.append(a)
        wait_until(lambda: partition_of_all([a], 12), timeout=20, what="first member owns all")
        first = time.monotonic() - t0
        t1 = time.monotonic()
        b, c = Member(broker, topic, group), Member(broker, topic, group)
        members += [b, c]
        wait_until(lambda: partition_of_all(members, 12) and all(len(m.owned()) == 4 for m in members),
                   timeout=30, what="three members own 4 partitions each")
        three = time.monotonic() - t1
        d = describe(broker.bootstrap, group)
        assert d.type == ConsumerGroupType.CONSUMER
        assert d.state == ConsumerGroupState.STABLE
        assert len(d.members) == 3
        assert sorted(tp.partition for m in d.members for tp in m.assignment.topic_partitions) == list(range(12))
        t2 = time.monotonic()
        b.terminate()  # leaves the group (member epoch -1)
        rest = [a, c]
        wait_until(lambda: partition_of_all(rest, 12) and all(len(m.owned()) == 6 for m in rest),
                   timeout=30, what="two members take over")
        leave = time.monotonic() - t2
        print("KIP-848 settle: 1 member %.2fs, 3 members %.2fs, after a leave %.2fs" % (first, three, leave))
        assert_single_owner(members)
    finally:
        for m in members:
            m.cleanup()


def test_sigkilled_member_partitions_taken_over_at_least_once(broker):
    topic, group = unique_topic("k848kill"), unique_topic("g848kill")
    create_topic(broker.bootstrap, topic, 12)
    feeder = Feeder(broker.bootstrap, topic)
    members = [Member(broker, topic, group) for _ in range(3)]
    try:
        wait_until(lambda: partition_of_all(members, 12) and all(len(m.owned()) == 4 for m in members),
                   timeout=30, what="three members settle")
        wait_until(lambda: all(m.processed() for m in members), timeout=20, what="all members processing")
        victim = members[2]
        victim.kill()
        t = time.monotonic()
        rest = members[:2]
        wait_until(lambda: partition_of_all(rest, 12), timeout=SESSION_MS / 1000 + 15, what="takeover")
        takeover = time.monotonic() - t
        print("KIP-848 takeover after SIGKILL: %.2fs (session timeout %.1fs)" % (takeover, SESSION_MS / 1000))
        assert takeover < SESSION_MS / 1000 + 5
        time.sleep(0.5)
        delivered = feeder.finish()
        assert len(delivered) > 100
        wait_until(lambda: delivered <= set().union(*(m.processed() for m in members)),
                   timeout=30, what="every delivered record processed")
        assert_single_owner(members)
        # Committed offsets reach the end of every partition.
        ends = {}
        for p, o in delivered:
            ends[p] = max(ends.get(p, -1), o + 1)
        probe = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
        try:
            def committed_at_end():
                got = probe.committed([TopicPartition(topic, p) for p in ends], timeout=10)
                return all(tp.offset == ends[tp.partition] for tp in got)
            wait_until(committed_at_end, timeout=20, what="commits at the end")
        finally:
            probe.close()
    finally:
        feeder.stop.set()
        for m in members:
            m.cleanup()


def consume_n(conf, topic, n, timeout=20):
    c = Consumer(conf)
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got.append(m.offset())
            c.commit(message=m, asynchronous=False)
    return c, got


def group_type(bootstrap, group):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for g in admin.list_consumer_groups().result().valid:
        if g.group_id == group:
            return g.type
    return None


def test_group_converts_between_protocols(broker):
    """Kafka's offline migration: an empty classic group is joined with the consumer protocol
    and becomes a consumer group (committed offsets kept), and back again once empty."""
    topic, group = unique_topic("k848conv"), unique_topic("g848conv")
    create_topic(broker.bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(9):
        p.produce(topic, value=b"%d" % i)
    p.flush()
    base = {"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False}
    c, got = consume_n(dict(base, **{"session.timeout.ms": 6000}), topic, 3)
    assert got == [0, 1, 2]
    c.close()
    assert group_type(broker.bootstrap, group) == ConsumerGroupType.CLASSIC
    c, got = consume_n(dict(base, **{"group.protocol": "consumer"}), topic, 3)
    assert got == [3, 4, 5]
    assert group_type(broker.bootstrap, group) == ConsumerGroupType.CONSUMER
    # A classic member cannot join while the consumer group has a member: its JoinGroup is
    # refused with INCONSISTENT_GROUP_PROTOCOL (read from librdkafka's cgrp debug log).
    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    log = logging.getLogger("k848-classic")
    log.addHandler(Collect())
    log.setLevel(logging.DEBUG)
    classic = Consumer(dict(base, **{"session.timeout.ms": 6000, "debug": "cgrp", "logger": log}))
    classic.subscribe([topic])

    def refused():
        m = classic.poll(0.1)
        assert (m is None or m.error()) and classic.assignment() == []
        c.poll(0.05)
        return any("Inconsistent group protocol" in l for l in lines)
    wait_until(refused, timeout=20, what="JoinGroup refused")
    classic.close()
    d = describe(broker.bootstrap, group)
    assert d.type == ConsumerGroupType.CONSUMER and len(d.members) == 1
    # A classic-only client (kafka-python: ListGroups, DescribeGroups) sees the group listed
    # with protocol type "consumer"; DescribeGroups (v5 and below) answers Dead without an
    # error for a consumer group, as Kafka does.
    from kafka.admin import KafkaAdminClient
    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        listed = [g for g in kp.list_groups() if g["group_id"] == group]
        assert len(listed) == 1 and listed[0]["protocol_type"] == "consumer", listed
        listed = [g for g in kp.list_groups(types_filter=["consumer"]) if g["group_id"] == group]
        assert len(listed) == 1 and listed[0].get("group_state", "Stable") == "Stable", listed
        d = kp.describe_groups([group])[group]
        assert d["error"] is None and d["group_state"] == "Dead", d
    finally:
        kp.close()
    c.close()
    c, got = consume_n(dict(base, **{"session.timeout.ms": 6000}), topic, 3)
    assert got == [6, 7, 8]
    assert group_type(broker.bootstrap, group) == ConsumerGroupType.CLASSIC
    c.close()


def test_group_survives_broker_restart_without_rebalance(tmp_path):
    """The consumer group records in __consumer_offsets rebuild the group: after a restart
    the member carries on with the same epoch and partitions (no revocation)."""
    b = Broker(str(tmp_path), ["--set", "group.consumer.heartbeat.interval.ms=500"]).start()
    members = []
    try:
        topic, group = unique_topic("k848rs"), unique_topic("g848rs")
        create_topic(b.bootstrap, topic, 4)
        a, c = Member(b, topic, group), Member(b, topic, group)
        members = [a, c]
        wait_until(lambda: partition_of_all(members, 4) and all(len(m.owned()) == 2 for m in members),
                   timeout=30, what="settled")
        before = describe(b.bootstrap, group)
        n_events = [len(m.events()) for m in members]
        assert b.stop() == 0
        b.start()
        after = describe(b.bootstrap, group)
        assert after.state == ConsumerGroupState.STABLE
        assert sorted(m.member_id for m in after.members) == sorted(m.member_id for m in before.members)
        # Members carry on against the restarted broker with the epoch they had: new records
        # are processed, and nothing was revoked or reassigned.
        prod = Producer({"bootstrap.servers": b.bootstrap})
        for p in range(4):
            prod.produce(topic, value=b"after", partition=p)
        prod.flush(10)
        wait_until(lambda: {p for m in members for (p, _) in m.processed()} == set(range(4)),
                   timeout=20, what="records processed after the restart")
        again = describe(b.bootstrap, group)
        assert sorted(m.member_id for m in again.members) == sorted(m.member_id for m in before.members)
        assert [len(m.events()) for m in members] == n_events
        assert_single_owner(members)
    finally:
        for m in members:
            m.cleanup()
        b.kill()
