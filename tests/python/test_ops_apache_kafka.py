"""The holdfast CLI uses only standard admin APIs, so it must work against Apache Kafka
itself (issue #8): the same commands against a real Kafka 4.x broker started from the Maven
jars, checked against what Kafka's own clients see."""
import json
import subprocess
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from apache_kafka import ApacheKafka, available
from conftest import BINARY, unique_topic

_MISSING = available()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason="SKIPPED Apache Kafka tests: %s" % (_MISSING,))


@pytest.fixture(scope="module")
def kafka():
    k = ApacheKafka().start()
    yield k
    k.stop()


def cli(k, *args, stdin=None):
    return subprocess.run([BINARY, *args, "--bootstrap", k.bootstrap], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_topic_commands_against_apache_kafka(kafka):
    t = unique_topic("ak")
    r = cli(kafka, "topic", "create", t, "--partitions", "3")
    assert r.returncode == 0, r.stderr
    r = cli(kafka, "topic", "describe", t)
    assert r.returncode == 0, r.stderr
    assert "PartitionCount: 3" in r.stdout and "\tTopic: %s\tPartition: 2\tLeader: 1\tReplicas: 1\tIsr: 1" % t in r.stdout, r.stdout
    r = cli(kafka, "topic", "alter-config", t, "--set", "retention.ms=3600000")
    assert r.returncode == 0, r.stderr
    d = json.loads(cli(kafka, "topic", "describe", t, "--format", "json").stdout)
    assert "3600000" in json.dumps(d), d
    r = cli(kafka, "topic", "add-partitions", t, "--count", "4")
    assert r.returncode == 0, r.stderr
    assert t in cli(kafka, "topic", "list").stdout
    r = cli(kafka, "topic", "delete", t)
    assert r.returncode == 0, r.stderr


def test_produce_consume_and_group_lag_against_apache_kafka(kafka):
    t = unique_topic("akg")
    assert cli(kafka, "topic", "create", t, "--partitions", "1").returncode == 0
    r = cli(kafka, "produce", t, stdin="".join("v%d\n" % i for i in range(10)))
    assert r.returncode == 0, r.stderr
    r = cli(kafka, "consume", t, "-o", "beginning", "-c", "10")
    assert r.stdout.split() == ["v%d" % i for i in range(10)], r.stdout + r.stderr
    group = "g-" + t
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "enable.auto.commit": False})
    # Kafka answers NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS while it loads a fresh
    # __consumer_offsets partition: retry (bounded).
    for attempt in range(60):
        try:
            c.commit(offsets=[TopicPartition(t, 0, 4)], asynchronous=False)
            break
        except Exception:
            if attempt == 59:
                raise
            time.sleep(0.5)
    c.close()
    r = cli(kafka, "group", "describe", group)
    assert r.returncode == 0, r.stderr
    row = [l.split() for l in r.stdout.splitlines() if l.startswith(group)][0]
    # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    assert row[1:6] == [t, "0", "4", "10", "6"], r.stdout
    r = cli(kafka, "group", "reset-offsets", group, "--topic", t, "--to-earliest", "--execute")
    assert r.returncode == 0, r.stderr
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group})
    assert c.committed([TopicPartition(t, 0)], 10)[0].offset == 0
    c.close()


def test_cluster_health_and_doctor_against_apache_kafka(kafka):
    r = cli(kafka, "cluster", "health")
    assert r.returncode == 0, r.stdout + r.stderr
    t = unique_topic("akd")
    assert cli(kafka, "topic", "create", t).returncode == 0
    # Kafka propagates a new topic to its metadata cache asynchronously.
    for _ in range(100):
        if t in cli(kafka, "topic", "list").stdout.split():
            break
        time.sleep(0.1)
    r = cli(kafka, "doctor", "--format", "json")
    findings = json.loads(r.stdout)
    text = json.dumps(findings)
    # Kafka acknowledges from the page cache by default: the doctor says so for the topic.
    assert "page-cache" in text and t in text, text
    # The exit code follows the worst finding (the group reset to earliest above sits at
    # the log start: critical by design).
    assert r.returncode == {"info": 0, "warning": 1, "critical": 2}[findings["worst"]], (r.returncode, text)
