"""SIGKILL or SIGTERM in the middle of an acks=all idempotent stream: every acknowledged record
survives, exactly once and in order, after a restart on the same data directory."""
import os
import shutil
import tempfile
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import Broker, wait_until


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_stop_mid_stream_loses_no_acked_record(how):
    data = tempfile.mkdtemp(prefix="holdfast-crash-")
    try:
        b = Broker(data).start()
        port = b.port
        topic = "crash"
        acked = []
        failed = []
        lock = threading.Lock()

        def on_delivery(err, msg):
            with lock:
                if err is None:
                    acked.append((msg.offset(), int(msg.value())))
                else:
                    failed.append((err, int(msg.value())))

        p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "enable.idempotence": True,
                      "linger.ms": 2, "message.timeout.ms": 60000, "reconnect.backoff.max.ms": 200})
        n = 0
        # Produce until a good number of records are acknowledged, then kill the broker while
        # the producer still has records in flight.
        deadline = time.monotonic() + 60
        while True:
            with lock:
                done = len(acked)
            if done >= 3000 or time.monotonic() > deadline:
                break
            try:
                p.produce(topic, value=b"%d" % n, on_delivery=on_delivery)
                n += 1
            except BufferError:
                p.poll(0.05)
            if n % 200 == 0:
                p.poll(0.005)
        # Keep records in flight while the broker dies.
        for _ in range(2000):
            try:
                p.produce(topic, value=b"%d" % n, on_delivery=on_delivery)
                n += 1
            except BufferError:
                break
        p.poll(0)
        if how == "sigkill":
            b.kill()
        else:
            assert b.stop() == 0, "SIGTERM must finish in-flight requests and exit 0"
        with lock:
            acked_at_kill = len(acked)
        assert acked_at_kill >= 3000
        # The kill really happened mid-stream: records were produced but not yet acknowledged.
        assert n > acked_at_kill, (n, acked_at_kill)
        print("killed with %d of %d records acknowledged" % (acked_at_kill, n))

        # Restart on the same port and data dir; the producer reconnects and finishes.
        b2 = Broker(data)
        b2.port = port
        b2.start()
        try:
            # The restart noticed the unclean stop (and recovered; nothing may be damaged).
            wait_until(lambda: any("broker started" in line for line in b2.stderr_lines), what="startup log")
            unclean = any("unclean stop" in line for line in b2.stderr_lines)
            assert unclean == (how == "sigkill"), "".join(b2.stderr_lines)
            assert p.flush(60) == 0
            with lock:
                assert not failed, failed[:5]
                acked_values = [v for _, v in acked]
            assert len(acked_values) == n

            c = Consumer({"bootstrap.servers": b2.bootstrap, "group.id": "crash-check", "enable.auto.commit": False})
            try:
                c.assign([TopicPartition(topic, 0, 0)])
                got = []

                def read_more():
                    m = c.poll(0.2)
                    if m is not None:
                        assert m.error() is None, m.error()
                        got.append((m.offset(), int(m.value())))
                    return len(got) >= n
                wait_until(read_more, timeout=60, interval=0, what="all records read back")
            finally:
                c.close()
            values = [v for _, v in got]
            # Exactly once, in produce order: idempotence deduplicated the retries.
            assert values == list(range(n)), "first mismatch at %s" % next(
                i for i, (a, e) in enumerate(zip(values, range(n))) if a != e)
            # Every acknowledgement named the offset the record really has.
            assert sorted(acked) == sorted(got)
        finally:
            assert b2.stop() == 0
    finally:
        shutil.rmtree(data, ignore_errors=True)
