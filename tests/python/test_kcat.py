"""kcat (librdkafka as packaged by the distribution: the old-client tier) against holdfast."""
import shutil
import subprocess

import pytest

from conftest import stored_bytes, unique_topic

KCAT = shutil.which("kcat") or shutil.which("kafkacat")

if KCAT is None:
    print("\n*** kcat not installed: SKIPPING the kcat tests (run scripts/setup-test-deps.sh) ***")

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat is not installed (scripts/setup-test-deps.sh installs it)")


def kcat(broker, *args, stdin=None, timeout=30):
    r = subprocess.run([KCAT, "-b", broker.bootstrap] + list(args), input=stdin, capture_output=True,
                       timeout=timeout)
    assert r.returncode == 0, "kcat %s failed: %s" % (args, r.stderr.decode(errors="replace"))
    return r.stdout.decode()


def test_version_reported():
    out = subprocess.run([KCAT, "-V"], capture_output=True, timeout=10).stdout.decode()
    print(out)
    assert "librdkafka" in out


def test_metadata_listing(broker):
    topic = unique_topic("kcat-md")
    kcat(broker, "-P", "-t", topic, stdin=b"x\n")
    out = kcat(broker, "-L")
    assert "1 brokers:" in out
    assert "broker 1 at %s" % broker.bootstrap in out
    assert 'topic "%s" with 1 partitions' % topic in out
    assert "partition 0, leader 1, replicas: 1, isrs: 1" in out


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_produce_consume(broker, codec):
    topic = unique_topic("kcat-" + codec)
    lines = ["line %d %s" % (i, "y" * 200) for i in range(500)]
    kcat(broker, "-P", "-t", topic, "-K", ":", "-z", codec,
         stdin=("".join("k%d:%s\n" % (i, l) for i, l in enumerate(lines))).encode())
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%o %k %s\n")
    got = out.splitlines()
    assert got == ["%d k%d %s" % (i, i, l) for i, l in enumerate(lines)]
    raw = sum(len(l) for l in lines)
    if codec == "none":
        assert stored_bytes(broker, topic) > raw
    else:
        # Stored compressed: old librdkafka really used the codec with this broker.
        assert stored_bytes(broker, topic) < raw / 4, (stored_bytes(broker, topic), raw)


def test_query_offset_by_time(broker):
    topic = unique_topic("kcat-q")
    kcat(broker, "-P", "-t", topic, stdin=b"a\nb\nc\n")
    # -Q: ListOffsets by timestamp; 0 is before every record, so the first offset.
    out = kcat(broker, "-Q", "-t", "%s:0:0" % topic)
    assert "offset 0" in out, out
