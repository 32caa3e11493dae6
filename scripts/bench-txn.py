#!/usr/bin/env python3
"""Transaction throughput and latency of a confluent-kafka (librdkafka) transactional
producer against holdfast, with the default durability (every coordinator record, data
batch and marker fsynced before it is acknowledged or takes effect).

usage: .venv/bin/python scripts/bench-txn.py [--bin target/release/holdfast]
       [--transactions 300] [--records 100] [--size 1024] [--partitions 4]

Each transaction writes RECORDS records of SIZE bytes spread over PARTITIONS partitions and
commits. Prints commit latency percentiles (commit_transaction() call to return), the
transaction rate and the payload throughput, and the same for a non-transactional idempotent
producer writing the same records, for comparison. Asserts nothing.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
import conftest  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=None)
    ap.add_argument("--transactions", type=int, default=300)
    ap.add_argument("--records", type=int, default=100)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=4)
    a = ap.parse_args()
    if a.bin:
        conftest.BINARY = os.path.abspath(a.bin)
    d = tempfile.mkdtemp(prefix="holdfast-bench-txn-")
    b = conftest.Broker(d, []).start()
    try:
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        for f in admin.create_topics([NewTopic("bench-txn", a.partitions, 1),
                                      NewTopic("bench-idem", a.partitions, 1)]).values():
            f.result(15)
        payload = os.urandom(a.size)
        p = Producer({"bootstrap.servers": b.bootstrap, "transactional.id": "bench",
                      "linger.ms": 1})
        p.init_transactions(30)
        lat = []
        start = time.monotonic()
        for t in range(a.transactions):
            p.begin_transaction()
            for i in range(a.records):
                p.produce("bench-txn", value=payload, partition=i % a.partitions)
            t0 = time.monotonic()
            p.commit_transaction(60)
            lat.append(time.monotonic() - t0)
        el = time.monotonic() - start
        total = a.transactions * a.records
        print("transactional: %d transactions x %d records x %d B over %d partitions (binary %s)"
              % (a.transactions, a.records, a.size, a.partitions, os.path.basename(conftest.BINARY)))
        print("  %.1f transactions/s, %.0f records/s, %.2f MB/s" % (
            a.transactions / el, total / el, total * a.size / el / 1e6))
        print("  commit latency ms: p50 %.2f  p90 %.2f  p99 %.2f  max %.2f" % (
            pct(lat, .5) * 1e3, pct(lat, .9) * 1e3, pct(lat, .99) * 1e3, max(lat) * 1e3))
        q = Producer({"bootstrap.servers": b.bootstrap, "enable.idempotence": True,
                      "linger.ms": 1})
        start = time.monotonic()
        for t in range(a.transactions):
            for i in range(a.records):
                q.produce("bench-idem", value=payload, partition=i % a.partitions)
            q.flush(60)
        el = time.monotonic() - start
        print("idempotent, flush() per %d records (same shape, no transaction):" % a.records)
        print("  %.0f records/s, %.2f MB/s" % (total / el, total * a.size / el / 1e6))
    finally:
        b.kill()


if __name__ == "__main__":
    main()
