#!/usr/bin/env python3
"""Join and rebalance times of confluent-kafka (librdkafka) group members against holdfast.

usage: .venv/bin/python scripts/bench-groups.py [--bin target/release/holdfast] [--protocol consumer]

For N in 1, 3, 10: N members subscribe at once to a fresh group on a 30-partition topic; the
join time is from the first subscribe() until every member has its assignment. Then one more
member joins the stable group; the rebalance time is from its subscribe() until all N+1 members
hold a complete assignment again. Client settings are librdkafka's defaults (heartbeat
interval 3 s: existing members learn of a rebalance on their next heartbeat) unless
--heartbeat-ms is given. With --protocol consumer the members use KIP-848
(group.protocol=consumer) and --heartbeat-ms sets the broker's
group.consumer.heartbeat.interval.ms (default 5000) instead. Prints figures; asserts nothing.
"""
import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
import conftest  # noqa: E402
from confluent_kafka import Consumer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

PARTITIONS = 30


class M:
    def __init__(self, bootstrap, topic, group, hb, protocol="classic"):
        conf = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"}
        self.incremental = protocol == "consumer"
        if self.incremental:
            conf["group.protocol"] = "consumer"
        elif hb:
            conf["heartbeat.interval.ms"] = hb
        self.c = Consumer(conf)
        self.assigned = set()
        self.stop = False
        self.topic = topic
        self.t = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.t.start()

    def run(self):
        def on_assign(_c, parts):
            if self.incremental:
                self.assigned = self.assigned | {p.partition for p in parts}
            else:
                self.assigned = {p.partition for p in parts}

        def on_revoke(_c, parts):
            if self.incremental:
                self.assigned = self.assigned - {p.partition for p in parts}
            else:
                self.assigned = set()

        self.c.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke)
        while not self.stop:
            self.c.poll(0.05)
        self.c.close()


def complete(ms):
    sets = [m.assigned for m in ms]
    return all(sets) and sum(len(s) for s in sets) == PARTITIONS and set().union(*sets) == set(range(PARTITIONS))


def wait(ms, t0, timeout=120):
    while not complete(ms):
        if time.monotonic() - t0 > timeout:
            return float("nan")
        time.sleep(0.005)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=None)
    ap.add_argument("--heartbeat-ms", type=int, default=0)
    ap.add_argument("--protocol", choices=("classic", "consumer"), default="classic")
    a = ap.parse_args()
    if a.bin:
        conftest.BINARY = os.path.abspath(a.bin)
    d = tempfile.mkdtemp(prefix="holdfast-bench-groups-")
    extra_args = []
    if a.protocol == "consumer" and a.heartbeat_ms:
        extra_args = ["--set", "group.consumer.heartbeat.interval.ms=%d" % a.heartbeat_ms]
    b = conftest.Broker(d, extra_args).start()
    try:
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        topic = "bench-groups"
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
        default_hb = "5000 (default)" if a.protocol == "consumer" else "3000 (default)"
        print("binary: %s, group.protocol: %s, heartbeat interval ms: %s"
              % (conftest.BINARY, a.protocol, a.heartbeat_ms or default_hb))
        for n in (1, 3, 10):
            group = "bench-%d-%d" % (n, time.monotonic_ns())
            ms = [M(b.bootstrap, topic, group, a.heartbeat_ms, a.protocol) for _ in range(n)]
            t0 = time.monotonic()
            for m in ms:
                m.start()
            join = wait(ms, t0)
            extra = M(b.bootstrap, topic, group, a.heartbeat_ms, a.protocol)
            t1 = time.monotonic()
            extra.start()
            time.sleep(0.05)
            reb = wait(ms + [extra], t1)
            print("members=%2d  join (empty group -> all assigned): %6.3f s   rebalance (+1 member): %6.3f s"
                  % (n, join, reb))
            for m in ms + [extra]:
                m.stop = True
            for m in ms + [extra]:
                m.t.join(30)
    finally:
        b.kill()


if __name__ == "__main__":
    main()
