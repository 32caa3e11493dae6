"""A confluent-kafka member of a KIP-848 (group.protocol=consumer) group, run as a subprocess
by test_group_kip848.py.

usage: group_member_kip848.py BOOTSTRAP TOPIC GROUP OUT [key=value ...]
Appends to OUT, flushed per line: "A <unix time> p,p" when partitions are assigned (incremental),
"R <unix time> p,p" when they are revoked or lost, "M p o" per record processed, "C" after each
successful commit. Offsets are committed synchronously after the records are written
(at-least-once). SIGTERM closes the consumer cleanly (the member leaves the group).
"""
import signal
import sys
import time

from confluent_kafka import Consumer

bootstrap, topic, group, out_path = sys.argv[1:5]
conf = {
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "group.protocol": "consumer",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
}
for kv in sys.argv[5:]:
    k, v = kv.split("=", 1)
    conf[k] = v
out = open(out_path, "a", buffering=1)
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)


def event(kind, parts):
    ps = ",".join(str(p.partition) for p in sorted(parts, key=lambda p: p.partition))
    out.write("%s %.6f %s\n" % (kind, time.time(), ps))


c = Consumer(conf)
c.subscribe([topic],
            on_assign=lambda _c, parts: event("A", parts),
            on_revoke=lambda _c, parts: event("R", parts),
            on_lost=lambda _c, parts: event("R", parts))
while not stop:
    msgs = c.consume(200, 0.1)
    done = ["M %d %d\n" % (m.partition(), m.offset()) for m in msgs if not m.error()]
    if done:
        out.write("".join(done))
        out.flush()
        try:
            c.commit(asynchronous=False)
            out.write("C\n")
        except Exception as e:  # e.g. STALE_MEMBER_EPOCH during reconciliation: redelivered
            out.write("E %s\n" % e)
c.close()
