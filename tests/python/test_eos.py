"""Exactly-once copy (issue #5): a consume-transform-produce loop copies 100,000 records with
transactions while the broker is SIGKILLed and restarted several times and the copier
process is SIGKILLed too; read_committed output must equal the input exactly, per
partition, in order, no loss, no duplicates."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker
from test_transactions import read_all

RECORDS = 100_000
PARTITIONS = 4
COPIER = os.path.join(os.path.dirname(__file__), "eos_copier.py")


def tail(path, n=15):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except FileNotFoundError:
        return "(no %s)" % path


def committed_records(progress_path):
    try:
        with open(progress_path) as f:
            return sum(int(line.split()[1]) for line in f if line.startswith("C "))
    except FileNotFoundError:
        return 0


def test_exactly_once_copy_through_broker_and_copier_kills():
    d = tempfile.mkdtemp(prefix="holdfast-eos-")
    args = ["--set", "num.partitions=1",
            "--set", "transaction.abort.timed.out.transaction.cleanup.interval.ms=500"]
    broker = Broker(d, args).start()
    progress = os.path.join(d, "progress.txt")
    copier = None
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for f in admin.create_topics([NewTopic("eos-in", PARTITIONS, 1),
                                      NewTopic("eos-out", PARTITIONS, 1)]).values():
            f.result(15)
        p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                      "linger.ms": 20})
        for i in range(RECORDS):
            part = i % PARTITIONS
            p.produce("eos-in", value=b"%d:%d" % (part, i // PARTITIONS), partition=part)
            if i % 10000 == 0:
                p.poll(0)
        assert p.flush(60) == 0

        def start_copier():
            return subprocess.Popen([sys.executable, COPIER, broker.bootstrap, "eos-in", "eos-out",
                                     "eos-group", "eos-copier", progress])

        copier = start_copier()
        # Faults at fractions of the copy: broker kills and one copier kill.
        plan = [(0.15, "broker"), (0.35, "copier"), (0.5, "broker"), (0.75, "broker")]
        kills = {"broker": 0, "copier": 0}
        deadline = time.monotonic() + 300
        for fraction, what in plan:
            while committed_records(progress) < fraction * RECORDS:
                assert time.monotonic() < deadline, "copy made no progress:\n%s\n%s" % (
                    tail(progress), "".join(broker.stderr_lines[-15:]))
                rc = copier.poll()
                assert rc is None, "copier exited early with %s:\n%s" % (rc, tail(progress))
                time.sleep(0.05)
            if what == "broker":
                port = broker.port
                broker.kill()
                broker = Broker(d, args)
                broker.port = port  # same address: the running copier reconnects
                broker.start()
            else:
                copier.kill()
                copier.wait(10)
                copier = start_copier()
            kills[what] += 1
        rc = copier.wait(timeout=max(1, deadline - time.monotonic()))
        assert rc == 0, "copier failed (rc=%s); see %s" % (rc, progress)
        assert kills == {"broker": 3, "copier": 1}

        inp = read_all(broker.bootstrap, "eos-in", "read_committed", partitions=PARTITIONS)
        out = read_all(broker.bootstrap, "eos-out", "read_committed", partitions=PARTITIONS)
        assert len(inp) == RECORDS
        for part in range(PARTITIONS):
            want = [v for p_, _, v in inp if p_ == part]
            got = [v for p_, _, v in out if p_ == part]
            assert len(got) == len(want), "partition %d: %d copied, %d expected" % (part, len(got), len(want))
            assert got == want, "partition %d: output differs from input" % part
        # The aborted attempts are in the log, invisible to read_committed.
        raw = read_all(broker.bootstrap, "eos-out", "read_uncommitted", partitions=PARTITIONS)
        print("eos: %d records copied; %d records in the output log incl. aborted; kills %s"
              % (len(out), len(raw), kills))
    finally:
        if copier is not None and copier.poll() is None:
            copier.kill()
        broker.kill()
        shutil.rmtree(d, ignore_errors=True)
