"""Operability: /metrics scraped with prometheus_client's text-format parser, lag against
retention, and the loss ledger (`holdfast cluster events`), driven by confluent-kafka."""
import json
import subprocess
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from conftest import BINARY, Broker, free_port, unique_topic, wait_until


def start_broker(data_dir, metrics_port):
    b = Broker(data_dir, ["--metrics-listen", "127.0.0.1:%d" % metrics_port,
                          "--set", "log.retention.check.interval.ms=100"]).start()
    b.metrics_url = "http://127.0.0.1:%d/metrics" % metrics_port
    return b


@pytest.fixture(scope="module")
def mbroker(data_dir):
    b = start_broker(data_dir, free_port())
    yield b
    assert b.stop() == 0


def scrape(b):
    """(raw text, {(name, labels): value}, {family name: type}) from a real parser."""
    text = urllib.request.urlopen(b.metrics_url, timeout=10).read().decode()
    samples, types = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples, types


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))))


def cli(b, *args):
    r = subprocess.run([BINARY, *args, "--bootstrap", b.bootstrap], capture_output=True, text=True, timeout=60)
    return r


def cli_json(b, *args):
    r = cli(b, *args, "--format", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_scrape_parses_and_counts(mbroker):
    b = mbroker
    topic = unique_topic("m")
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 0})
    for i in range(50):
        p.produce(topic, key=str(i), value=b"x" * 100, partition=i % 2)
    assert p.flush(30) == 0
    group = "g-" + topic
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
    got = 0
    deadline = time.monotonic() + 30
    while got < 50 and time.monotonic() < deadline:
        m = c.poll(1)
        if m is not None and m.error() is None:
            got += 1
    assert got == 50
    c.commit(offsets=[TopicPartition(topic, 0, 25), TopicPartition(topic, 1, 20)], asynchronous=False)
    c.close()

    text, s, types = scrape(b)
    print("scrape: %d bytes, %d samples" % (len(text), len(s)))
    assert types["holdfast_request_duration_seconds"] == "histogram"
    assert types["holdfast_fsync_round_duration_seconds"] == "histogram"
    assert types["holdfast_topic_bytes_in"] == "counter"
    assert value(s, "holdfast_requests_total", api="Produce") >= 1
    assert value(s, "holdfast_request_duration_seconds_count", api="Fetch") >= 1
    assert value(s, "holdfast_topic_bytes_in_total", topic=topic) > 50 * 100
    assert value(s, "holdfast_topic_bytes_out_total", topic=topic) > 50 * 100
    assert value(s, "holdfast_log_end_offset", topic=topic, partition=0) == 25
    assert value(s, "holdfast_log_segments", topic=topic, partition=1) == 1
    assert value(s, "holdfast_log_size_bytes", topic=topic, partition=0) > 25 * 100
    assert value(s, "holdfast_fsync_round_duration_seconds_count") >= 1
    assert value(s, "holdfast_fsyncs_total") >= 1
    assert value(s, "holdfast_offline_partitions") == 0
    assert value(s, "holdfast_active_controller_count") == 1
    assert value(s, "holdfast_group_lag_records", group=group, topic=topic, partition=0) == 0
    assert value(s, "holdfast_group_lag_records", group=group, topic=topic, partition=1) == 5
    assert value(s, "holdfast_group_lag_retention_ratio", group=group, topic=topic, partition=1) == 0.2
    assert value(s, "holdfast_group_lag_seconds", group=group, topic=topic, partition=1) >= 0
    # The CLI computes the same ratio from the standard APIs.
    lag = cli_json(b, "group", "lag", group)
    assert [r["lag_retention_ratio"] for r in lag["partitions"]] == [0.0, 0.2]
    # Unknown paths are 404, not metrics.
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(b.metrics_url.replace("/metrics", "/nope"), timeout=10)


def test_group_behind_retention_is_visible_then_recorded(data_dir, tmp_path):
    mport = free_port()
    b = start_broker(str(tmp_path), mport)
    try:
        topic = unique_topic("ret")
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        admin.create_topics([NewTopic(topic, 1, 1, config={"segment.bytes": "2000",
                                                           "retention.ms": "86400000"})])[topic].result(30)
        # 100 records written two hours ago (CreateTime), in many small segments.
        old = int(time.time() * 1000) - 2 * 3600 * 1000
        p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 0, "batch.size": 300,
                      "enable.idempotence": True})
        for i in range(100):
            p.produce(topic, value=b"%03d" % i + b"r" * 150, timestamp=old + i)
            p.poll(0)
        assert p.flush(30) == 0
        group = "slow-" + topic
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group, "enable.auto.commit": False})
        c.commit(offsets=[TopicPartition(topic, 0, 10)], asynchronous=False)
        c.close()

        # Before any loss: the group is 90% of the retained log behind, nothing lost yet.
        _, s, _ = scrape(b)
        ratio = value(s, "holdfast_group_lag_retention_ratio", group=group, topic=topic, partition=0)
        assert ratio == 0.9 and ratio > 0.5
        assert value(s, "holdfast_loss_events_total", reason="retention_unconsumed") == 0
        assert value(s, "holdfast_log_start_offset", topic=topic, partition=0) == 0
        segments = value(s, "holdfast_log_segments", topic=topic, partition=0)
        assert segments > 3

        # Retention shrinks to one hour: the closed segments (all two hours old) go.
        r = cli(b, "topic", "alter-config", topic, "--set", "retention.ms=3600000")
        assert r.returncode == 0, r.stderr

        def lost():
            _, s, _ = scrape(b)
            return s if value(s, "holdfast_loss_events_total", reason="retention_unconsumed") >= 1 else None

        s = wait_until(lost, what="the retention loss in the metrics")
        start = int(value(s, "holdfast_log_start_offset", topic=topic, partition=0))
        assert 10 < start < 100
        assert value(s, "holdfast_loss_records_total", reason="retention_unconsumed") == start - 10
        assert value(s, "holdfast_group_lag_retention_ratio", group=group, topic=topic, partition=0) > 1

        def ledger(reason):
            evs = cli_json(b, "cluster", "events", "--topic", topic, "--reason", reason)
            return evs or None

        evs = wait_until(lambda: ledger("retention_unconsumed"), what="the retention event in the ledger")
        assert len(evs) == 1
        ev = evs[0]
        assert (ev["group"], ev["partition"], ev["from_offset"], ev["to_offset"], ev["records"]) == \
            (group, 0, 10, start, start - 10)
        text = cli(b, "cluster", "events").stdout
        row = [l.split() for l in text.splitlines() if topic in l][0]
        assert row[1:] == ["retention_unconsumed", topic, "0", "10", str(start), str(start - 10), group]

        # The group's consumer resumes at its committed offset, below the log start: the
        # client resets (auto.offset.reset), and the skip is recorded too.
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group, "enable.auto.commit": False,
                      "auto.offset.reset": "earliest"})
        c.subscribe([topic])
        first = None
        deadline = time.monotonic() + 30
        while first is None and time.monotonic() < deadline:
            m = c.poll(1)
            if m is not None and m.error() is None:
                first = m.offset()
        c.close()
        assert first == start
        evs = wait_until(lambda: ledger("fetch_below_log_start"), what="the fetch event in the ledger")
        assert (evs[0]["from_offset"], evs[0]["to_offset"], evs[0]["records"]) == (10, start, start - 10)

        # The ledger is durable: it survives a restart, and any Kafka consumer can read it.
        assert b.stop() == 0
        b = start_broker(str(tmp_path), mport)
        evs = cli_json(b, "cluster", "events", "--topic", topic)
        assert sorted(e["reason"] for e in evs) == ["fetch_below_log_start", "retention_unconsumed"]
        raw = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "reader-" + topic,
                        "auto.offset.reset": "earliest"})
        raw.assign([TopicPartition("__holdfast_events", 0, 0)])
        values = []
        deadline = time.monotonic() + 30
        while len(values) < 2 and time.monotonic() < deadline:
            m = raw.poll(1)
            if m is not None and m.error() is None:
                values.append(json.loads(m.value()))
        raw.close()
        assert {v["reason"] for v in values if v["topic"] == topic} == \
            {"fetch_below_log_start", "retention_unconsumed"}
    finally:
        b.stop()


def test_protected_retention_keeps_unread_data_up_to_the_cap(tmp_path):
    b = start_broker(str(tmp_path), free_port())
    try:
        topic = unique_topic("prot")
        group = "protected-" + topic
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        admin.create_topics([NewTopic(topic, 1, 1, config={
            "segment.bytes": "2000", "retention.ms": "3600000",
            "retention.protect.groups": group, "retention.protect.max.bytes": "100000000"})])[topic].result(30)
        old = int(time.time() * 1000) - 2 * 3600 * 1000
        p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 0, "batch.size": 300})
        for i in range(100):
            p.produce(topic, value=b"%03d" % i + b"r" * 150, timestamp=old + i)
            p.poll(0)
        assert p.flush(30) == 0
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group, "enable.auto.commit": False})
        c.commit(offsets=[TopicPartition(topic, 0, 40)], asynchronous=False)
        c.close()
        # Every closed segment is past retention.ms; only those wholly below the protected
        # group's offset 40 may go.
        _, s, _ = scrape(b)
        start = wait_until(lambda: value(scrape(b)[1], "holdfast_log_start_offset", topic=topic, partition=0),
                           what="retention below the protected offset")
        assert 0 < start <= 40
        # A group that is not protected loses nothing it has not read either: none exists.
        _, s, _ = scrape(b)
        assert value(s, "holdfast_loss_events_total", reason="retention_unconsumed") == 0
        desc = cli(b, "topic", "describe", topic).stdout.splitlines()[0]
        assert "retention.protect.groups=%s" % group in desc
        # Beyond the cap protection yields: deletion proceeds, and the ledger records it.
        r = cli(b, "topic", "alter-config", topic, "--set", "retention.protect.max.bytes=1000")
        assert r.returncode == 0, r.stderr
        evs = wait_until(lambda: cli_json(b, "cluster", "events", "--topic", topic) or None,
                         what="the capped deletion in the ledger")
        new_start = int(value(scrape(b)[1], "holdfast_log_start_offset", topic=topic, partition=0))
        assert new_start > 40
        assert (evs[0]["reason"], evs[0]["group"], evs[0]["from_offset"], evs[0]["records"]) == \
            ("retention_unconsumed", group, 40, evs[0]["to_offset"] - 40)
    finally:
        b.stop()
