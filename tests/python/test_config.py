"""`holdfast serve --config FILE --set k=v`: Kafka's names, file then overrides."""
import os
import shutil
import tempfile

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource

from conftest import Broker


def test_config_file_and_set_overrides():
    data = tempfile.mkdtemp(prefix="holdfast-cfg-")
    try:
        cfg = os.path.join(data, "holdfast.toml")
        with open(cfg, "w") as f:
            f.write('"num.partitions" = 4\n"log.retention.ms" = 3600000\n"auto.create.topics.enable" = true\n')
        b = Broker(os.path.join(data, "d"), ["--config", cfg, "--set", "num.partitions=3",
                                             "--set", "message.max.bytes=2000000"]).start()
        try:
            p = Producer({"bootstrap.servers": b.bootstrap})
            p.produce("auto", b"x")
            assert p.flush(30) == 0
            admin = AdminClient({"bootstrap.servers": b.bootstrap})
            assert len(admin.list_topics(timeout=20).topics["auto"].partitions) == 3  # --set wins
            fs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "auto")])
            c = list(fs.values())[0].result(30)
            assert c["retention.ms"].value == "3600000"
            assert c["retention.ms"].source == ConfigSource.STATIC_BROKER_CONFIG.value
            assert c["max.message.bytes"].value == "2000000"
        finally:
            assert b.stop() == 0
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_unknown_setting_is_refused_at_startup():
    data = tempfile.mkdtemp(prefix="holdfast-cfg-")
    try:
        b = Broker(data, ["--set", "no.such.setting=1"])
        try:
            b.start(timeout=20)
            raise AssertionError("broker started with an unknown setting")
        except RuntimeError as e:
            assert "no.such.setting" in str(e)
    finally:
        shutil.rmtree(data, ignore_errors=True)
