"""KIP-848 groups with the Java 4.x consumer (kafka-console-consumer with
group.protocol=consumer) and Apache Kafka's kafka-consumer-groups tool (describeConsumerGroups:
ConsumerGroupDescribe). Skips, visibly, without Java or the jars (scripts/setup-java-deps.sh).
"""
import pytest
from confluent_kafka import Producer

from conftest import unique_topic, wait_until
from test_group_kip848 import Member, broker, create_topic, partition_of_all  # noqa: F401 (fixture)
from test_java import CONSOLE_CONSUMER, CONSUMER_GROUPS, _MISSING, fail_text, java

pytestmark = pytest.mark.skipif(_MISSING is not None, reason="SKIPPED Java tests: %s" % _MISSING)


def rows(stdout, first):
    return [l.split() for l in stdout.splitlines() if l.split()[:1] == [first]]


def test_java_consumer_protocol_consumes_and_commits(broker):
    topic, group = unique_topic("j848"), unique_topic("gj848")
    create_topic(broker.bootstrap, topic, 3)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(12):
        p.produce(topic, value=b"m%d" % i, partition=i % 3)
    p.flush()
    out = java(CONSOLE_CONSUMER, [
        "--bootstrap-server", broker.bootstrap, "--topic", topic, "--group", group,
        "--command-property", "group.protocol=consumer",
        "--command-property", "auto.offset.reset=earliest",
        "--max-messages", "12", "--timeout-ms", "20000",
    ], what="kafka-console-consumer group.protocol=consumer")
    assert out.returncode == 0, fail_text(out)
    assert sorted(out.stdout.split()) == sorted("m%d" % i for i in range(12)), fail_text(out)
    # The Java consumer committed with its member epoch (OffsetCommit v9+) on close.
    d = java(CONSUMER_GROUPS, ["--bootstrap-server", broker.bootstrap, "--describe", "--group", group],
             what="kafka-consumer-groups --describe (consumer group)")
    assert d.returncode == 0, fail_text(d)
    lag = {int(r[2]): (r[3], r[4], r[5]) for r in rows(d.stdout, group) if r[1] == topic}
    assert lag == {0: ("4", "4", "0"), 1: ("4", "4", "0"), 2: ("4", "4", "0")}, fail_text(d)


def test_consumer_groups_describe_state_and_members(broker):
    topic, group = unique_topic("j848d"), unique_topic("gj848d")
    create_topic(broker.bootstrap, topic, 4)
    m = Member(broker, topic, group)
    try:
        wait_until(lambda: partition_of_all([m], 4), timeout=20, what="member owns all")
        base = ["--bootstrap-server", broker.bootstrap, "--describe", "--group", group]
        s = java(CONSUMER_GROUPS, base + ["--state"], what="kafka-consumer-groups --describe --state")
        assert s.returncode == 0, fail_text(s)
        (row,) = rows(s.stdout, group)
        assert "uniform" in row and "Stable" in row and row[-1] == "1", fail_text(s)
        v = java(CONSUMER_GROUPS, base + ["--members", "--verbose"],
                 what="kafka-consumer-groups --describe --members --verbose")
        assert v.returncode == 0, fail_text(v)
        (row,) = rows(v.stdout, group)
        assert "4" in row and topic + ":0,1,2,3" in " ".join(row), fail_text(v)
    finally:
        m.cleanup()


def test_java_members_split_partitions_and_one_leaves(broker):
    """Two Java 4.3 consumers (group.protocol=consumer) share a 4-partition topic, 2 each;
    one closes (SIGTERM: the console consumer closes its consumer, which leaves the group
    with epoch -1) and the other gets all 4. Observed with kafka-consumer-groups --members."""
    import subprocess
    from test_java import java_cmd
    topic, group = unique_topic("j848m"), unique_topic("gj848m")
    create_topic(broker.bootstrap, topic, 4)
    args = ["--bootstrap-server", broker.bootstrap, "--topic", topic, "--group", group,
            "--command-property", "group.protocol=consumer", "--timeout-ms", "120000"]
    procs = [subprocess.Popen(java_cmd(CONSOLE_CONSUMER, args), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    base = ["--bootstrap-server", broker.bootstrap, "--describe", "--group", group, "--members"]

    def partitions_per_member():
        p = java(CONSUMER_GROUPS, base, what="kafka-consumer-groups --describe --members")
        # GROUP CONSUMER-ID HOST CLIENT-ID #PARTITIONS
        return sorted(int(r[4]) for r in rows(p.stdout, group) if len(r) >= 5 and r[4].isdigit())
    try:
        wait_until(lambda: partitions_per_member() == [2, 2], timeout=90, interval=0.5,
                   what="two Java members with 2 partitions each")
        procs[1].terminate()
        assert procs[1].wait(60) is not None
        wait_until(lambda: partitions_per_member() == [4], timeout=60, interval=0.5,
                   what="the remaining Java member owns all 4")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
