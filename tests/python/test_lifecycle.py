"""SIGTERM: clean, prompt exit; topics (ids, partition counts, configs) and data survive."""
import shutil
import tempfile
import time

from confluent_kafka import Consumer, Producer, TopicPartition, TopicCollection
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from conftest import Broker, wait_until


def test_sigterm_is_clean_and_everything_survives_restart():
    data = tempfile.mkdtemp(prefix="holdfast-life-")
    try:
        b = Broker(data, ["--set", "num.partitions=2"]).start()
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        fs = admin.create_topics([NewTopic("kept", 3, 1, config={"retention.ms": "86400000"})])
        fs["kept"].result(30)
        fs = admin.describe_topics(TopicCollection(["kept"]))
        topic_id = str(fs["kept"].result(30).topic_id)
        p = Producer({"bootstrap.servers": b.bootstrap, "enable.idempotence": True})
        for i in range(30):
            p.produce("kept", value=b"%d" % i, partition=i % 3)
        p.produce("auto", value=b"auto-created")  # auto-created with num.partitions=2
        assert p.flush(30) == 0

        # A long-polling consumer is connected while we stop the broker.
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "life", "enable.auto.commit": False,
                      "fetch.wait.max.ms": 5000})
        c.assign([TopicPartition("kept", 0, 10)])
        c.poll(0.5)
        start = time.monotonic()
        assert b.stop(timeout=30) == 0
        # The pending long poll is answered at once, not after fetch.wait.max.ms.
        assert time.monotonic() - start < 4, time.monotonic() - start
        c.close()

        b2 = Broker(data)
        b2.port = b.port
        b2.start()
        try:
            # Recovery is logged before "broker started": once that line is in, all of it is.
            wait_until(lambda: any("broker started" in line for line in b2.stderr_lines), what="startup log")
            assert not any("unclean" in line for line in b2.stderr_lines), "".join(b2.stderr_lines)
            admin = AdminClient({"bootstrap.servers": b2.bootstrap})
            md = admin.list_topics(timeout=20)
            assert len(md.topics["kept"].partitions) == 3
            assert len(md.topics["auto"].partitions) == 2
            fs = admin.describe_topics(TopicCollection(["kept"]))
            assert str(fs["kept"].result(30).topic_id) == topic_id
            fs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "kept")])
            assert list(fs.values())[0].result(30)["retention.ms"].value == "86400000"
            c = Consumer({"bootstrap.servers": b2.bootstrap, "group.id": "life2", "enable.auto.commit": False})
            try:
                lo_hi = [c.get_watermark_offsets(TopicPartition("kept", i), timeout=20) for i in range(3)]
                assert lo_hi == [(0, 10), (0, 10), (0, 10)]
            finally:
                c.close()
        finally:
            assert b2.stop() == 0
    finally:
        shutil.rmtree(data, ignore_errors=True)
