"""Consumer groups (classic protocol) and committed offsets with real clients.

Group members that must be killed run as subprocesses (group_member.py) and report what they
were assigned and processed through a file each.
"""
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker, unique_topic, wait_until

MEMBER = os.path.join(os.path.dirname(__file__), "group_member.py")


def create_topic(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result()


class Member:
    def __init__(self, broker, topic, group, *conf):
        fd, self.path = tempfile.mkstemp(prefix="member-", suffix=".log")
        os.close(fd)
        self.proc = subprocess.Popen([sys.executable, MEMBER, broker.bootstrap, topic, group, self.path] + list(conf))

    def lines(self):
        with open(self.path) as f:
            return [l.rstrip("\n") for l in f if l.endswith("\n")]

    def assigned(self):
        """Current assignment, replaying incremental (or eager) assign/revoke events."""
        cur = set()
        for l in self.lines():
            kind, _, rest = l.partition(" ")
            parts = {int(x) for x in rest.split(",") if x} if kind in ("A", "R") else set()
            if kind == "A":
                cur |= parts
            elif kind == "R":
                cur -= parts
        return cur

    def events(self):
        return [l for l in self.lines() if l[:1] in ("A", "R")]

    def processed(self):
        out = set()
        for l in self.lines():
            if l.startswith("M "):
                _, p, o = l.split()
                out.add((int(p), int(o)))
        return out

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        os.unlink(self.path)


def covers(members, n):
    sets = [m.assigned() for m in members]
    union = set().union(*sets)
    return union == set(range(n)) and sum(len(s) for s in sets) == n


class BackgroundProducer:
    """Produces keyed records until stopped; remembers every delivered (partition, offset)."""

    def __init__(self, bootstrap, topic):
        self.p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.topic = topic
        self.delivered = set()
        self.stop_flag = threading.Event()
        self.errors = []
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def cb(self, err, msg):
        if err:
            self.errors.append(err)
        else:
            self.delivered.add((msg.partition(), msg.offset()))

    def run(self):
        i = 0
        while not self.stop_flag.is_set():
            self.p.produce(self.topic, key=str(i), value="v%d" % i, on_delivery=self.cb)
            i += 1
            self.p.poll(0.005)
        self.p.flush(30)

    def stop(self):
        self.stop_flag.set()
        self.t.join(60)
        assert not self.errors, self.errors


def test_single_consumer_joins_empty_group_fast_and_metadata_round_trips(broker):
    topic = unique_topic("g1")
    create_topic(broker.bootstrap, topic, 3)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(30):
        p.produce(topic, value=b"x", partition=i % 3)
    p.flush()
    group = unique_topic("grp")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    t0 = time.monotonic()
    c.subscribe([topic])
    first = None
    n = 0
    deadline = time.monotonic() + 20
    while n < 30 and time.monotonic() < deadline:
        m = c.poll(0.1)
        if m is not None and not m.error():
            first = first or time.monotonic() - t0
            n += 1
    assert n == 30
    print("single consumer: first record %.3f s after subscribe" % first)
    offs = [TopicPartition(topic, i, 10, metadata="meta-%d" % i) for i in range(3)]
    c.commit(offsets=offs, asynchronous=False)
    got = c.committed([TopicPartition(topic, i) for i in range(3)], timeout=10)
    assert [(x.partition, x.offset, x.metadata) for x in got] == [(i, 10, "meta-%d" % i) for i in range(3)]
    # Oversized metadata is refused (offset.metadata.max.bytes = 4096).
    with pytest.raises(KafkaException):
        c.commit(offsets=[TopicPartition(topic, 0, 11, metadata="x" * 5000)], asynchronous=False)
    c.close()


def test_three_members_sigkill_one_others_take_over_at_least_once(broker):
    topic = unique_topic("g3")
    create_topic(broker.bootstrap, topic, 12)
    group = unique_topic("grp")
    prod = BackgroundProducer(broker.bootstrap, topic)
    members = [Member(broker, topic, group) for _ in range(3)]
    try:
        wait_until(lambda: covers(members, 12) and all(m.assigned() for m in members), 60,
                   what="3 members sharing 12 partitions")
        wait_until(lambda: all(m.processed() for m in members), 30, what="every member processing")
        victim = members[0]
        lost = victim.assigned()
        victim.kill()
        t_kill = time.monotonic()
        survivors = members[1:]
        wait_until(lambda: covers(survivors, 12), 30, what="survivors taking over")
        took = time.monotonic() - t_kill
        print("takeover after SIGKILL: %.2f s (session.timeout.ms=6000)" % took)
        assert took < 20, took  # session timeout 6 s + heartbeat + rejoin; generous on a loaded box
        # Records of the victim's partitions keep being processed.
        before = {x for m in survivors for x in m.processed()}
        wait_until(lambda: any(p in lost for (p, _) in {x for m in survivors for x in m.processed()} - before), 30,
                   what="victim's partitions consumed again")
        prod.stop()
        assert prod.delivered
        processed = lambda: set().union(*[m.processed() for m in members])
        wait_until(lambda: prod.delivered <= processed(), 60, what="every delivered record processed")
        # None skipped: per partition, the processed offsets are contiguous from 0.
        allp = processed()
        for part in range(12):
            offs = sorted(o for (p, o) in allp if p == part)
            assert offs == list(range(len(offs))), "gap in partition %d" % part
    finally:
        prod.stop_flag.set()
        for m in members:
            m.stop()


def test_cooperative_sticky_join_revokes_only_moving_partitions(broker):
    topic = unique_topic("gc")
    create_topic(broker.bootstrap, topic, 6)
    group = unique_topic("grp")
    conf = "partition.assignment.strategy=cooperative-sticky"
    a = Member(broker, topic, group, conf)
    b = None
    try:
        wait_until(lambda: a.assigned() == set(range(6)), 30, what="first member owning all")
        b = Member(broker, topic, group, conf)
        wait_until(lambda: covers([a, b], 6) and b.assigned(), 60, what="second member assigned")
        revoked = set()
        for e in a.events():
            if e.startswith("R "):
                revoked |= {int(x) for x in e[2:].split(",") if x}
        # Only partitions that moved to b were revoked from a.
        assert revoked == b.assigned(), (a.events(), b.events())
        assert a.assigned().isdisjoint(revoked)
    finally:
        a.stop()
        if b:
            b.stop()


def test_static_member_restart_within_session_timeout_no_rebalance(broker):
    topic = unique_topic("gs")
    create_topic(broker.bootstrap, topic, 4)
    group = unique_topic("grp")
    conf = ["session.timeout.ms=30000"]
    a = Member(broker, topic, group, "group.instance.id=inst-a", *conf)
    b = Member(broker, topic, group, "group.instance.id=inst-b", *conf)
    b2 = None
    try:
        wait_until(lambda: covers([a, b], 4) and a.assigned() and b.assigned(), 60, what="two static members")
        a_events = a.events()
        b_parts = b.assigned()
        b.kill()
        b2 = Member(broker, topic, group, "group.instance.id=inst-b", *conf)
        wait_until(lambda: b2.assigned(), 30, what="restarted static member assigned")
        assert b2.assigned() == b_parts
        # Give a rebalance every chance to show up at the other member: it would have to
        # rejoin within a heartbeat interval (500 ms); wait several.
        p = Producer({"bootstrap.servers": broker.bootstrap})
        for i in range(40):
            p.produce(topic, value=b"after", partition=i % 4)
        p.flush()
        wait_until(lambda: any(pp in b_parts for (pp, _) in b2.processed()), 30, what="restarted member consuming")
        wait_until(lambda: any(pp in a.assigned() for (pp, _) in a.processed()), 30, what="other member consuming")
        assert a.events() == a_events, "the other member was rebalanced"
    finally:
        for m in (a, b, b2):
            if m:
                m.stop()


def test_admin_list_describe_delete_groups(broker):
    topic = unique_topic("ga")
    create_topic(broker.bootstrap, topic, 2)
    group = unique_topic("grp")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    wait_until(lambda: (c.poll(0.1), c.assignment())[1], 30, what="assignment")
    c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    from confluent_kafka import ConsumerGroupState
    listed = admin.list_consumer_groups(states={ConsumerGroupState.STABLE}).result().valid
    assert group in [g.group_id for g in listed]
    empty = admin.list_consumer_groups(states={ConsumerGroupState.EMPTY}).result().valid
    assert group not in [g.group_id for g in empty]
    d = admin.describe_consumer_groups([group])[group].result()
    assert d.state == ConsumerGroupState.STABLE
    assert len(d.members) == 1
    assert {tp.partition for tp in d.members[0].assignment.topic_partitions} == {0, 1}
    with pytest.raises(KafkaException):
        admin.delete_consumer_groups([group])[group].result()
    c.close()
    wait_until(lambda: admin.describe_consumer_groups([group])[group].result().state == ConsumerGroupState.EMPTY,
               10, what="group empty after close")
    admin.delete_consumer_groups([group])[group].result()
    c2 = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    got = c2.committed([TopicPartition(topic, 0)], timeout=10)
    assert got[0].offset < 0, "offsets deleted with the group"
    c2.close()


def test_offsets_survive_broker_sigkill_and_never_go_backwards():
    d = tempfile.mkdtemp(prefix="holdfast-groups-")
    b = Broker(d).start()
    topic = unique_topic("gk")
    group = unique_topic("grp")
    create_topic(b.bootstrap, topic, 3)
    acked = {}
    stop = threading.Event()

    def committer():
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group, "enable.auto.commit": False})
        i = 1
        while not stop.is_set():
            offs = [TopicPartition(topic, p, i * 10 + p, metadata="m%d" % i) for p in range(3)]
            try:
                c.commit(offsets=offs, asynchronous=False)
            except KafkaException:
                break
            acked["last"] = i
            i += 1
        c.close()

    t = threading.Thread(target=committer, daemon=True)
    t.start()
    wait_until(lambda: acked.get("last", 0) >= 30, 60, what="commits acknowledged")
    b.kill()
    # Everything acknowledged before the kill is at least this (a response that raced the
    # kill may still bump it: that only makes the check weaker, never wrong).
    last = acked["last"]
    stop.set()
    port = b.port
    b2 = Broker(d)
    b2.port = port
    b2.start()
    t.join(60)  # an in-flight commit completes against the restarted broker
    try:
        c = Consumer({"bootstrap.servers": b2.bootstrap, "group.id": group})
        got = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=20)
        for x in got:
            n = (x.offset - x.partition) // 10
            assert n >= last, "committed offset went backwards: %s < acked %d" % (x, last)
            assert x.metadata == "m%d" % n
        c.close()
    finally:
        b2.stop()


def test_kafka_python_group_consumer(broker):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import TopicPartition as KTP
    topic = unique_topic("gkp")
    create_topic(broker.bootstrap, topic, 2)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(20):
        p.send(topic, value=b"v%d" % i, partition=i % 2)
    p.flush()
    p.close()
    group = unique_topic("grp")
    c = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                      auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=20000)
    got = []
    for m in c:
        got.append(m)
        if len(got) == 20:
            break
    assert len(got) == 20
    c.commit()
    assert c.committed(KTP(topic, 0)) == 10 and c.committed(KTP(topic, 1)) == 10
    c.close()


def test_clients_cannot_write_the_offsets_topic(broker):
    p = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 10000})
    errors = []
    p.produce("__consumer_offsets", value=b"forged", partition=0, on_delivery=lambda e, m: errors.append(e))
    p.flush(20)
    assert len(errors) == 1 and errors[0] is not None, errors
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    assert "__consumer_offsets" in md.topics


def test_pipelined_async_commits_apply_in_order_and_survive_restart():
    """librdkafka pipelines async commits on one connection: the last acknowledged commit
    must be the committed offset, before and after a broker SIGKILL (librdkafka test 0030
    found them applied out of order)."""
    data = tempfile.mkdtemp(prefix="holdfast-commit-order-")
    b = Broker(data).start()
    port = b.port
    try:
        topic = unique_topic("co")
        create_topic(b.bootstrap, topic, 1)
        for trial in range(3):
            done = {"ok": 0, "err": 0}

            def on_commit(err, parts):
                if err or any(p.error for p in parts):
                    done["err"] += 1
                else:
                    done["ok"] += 1

            c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "co-%d" % trial,
                          "enable.auto.commit": False, "on_commit": on_commit})
            c.assign([TopicPartition(topic, 0, 0)])
            for off in range(1, 201):
                c.commit(offsets=[TopicPartition(topic, 0, off)], asynchronous=True)
            wait_until(lambda: (c.poll(0.05), done["ok"] + done["err"] >= 200)[1], timeout=30,
                       interval=0, what="200 commit callbacks")
            assert done == {"ok": 200, "err": 0}
            got = c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
            assert got == 200, "trial %d: committed %d after 200 ordered commits" % (trial, got)
            c.close()
        b.kill()
        b2 = Broker(data)
        b2.port = port
        b2.start()
        try:
            for trial in range(3):
                c = Consumer({"bootstrap.servers": b2.bootstrap, "group.id": "co-%d" % trial,
                              "enable.auto.commit": False})
                got = c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
                c.close()
                assert got == 200, "after restart, trial %d: %d" % (trial, got)
        finally:
            assert b2.stop() == 0
    finally:
        b.kill()
        import shutil
        shutil.rmtree(data, ignore_errors=True)
