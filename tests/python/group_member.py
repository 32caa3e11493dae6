"""A confluent-kafka group member run as a subprocess by test_groups.py.

usage: group_member.py BOOTSTRAP TOPIC GROUP OUT [key=value ...]
Appends to OUT, flushed per line: "A p,p" on assign, "R p,p" on revoke, "M p o" for each
record processed. Offsets are committed synchronously after the records are written
(at-least-once). SIGTERM closes the consumer cleanly.
"""
import signal
import sys

from confluent_kafka import Consumer

bootstrap, topic, group, out_path = sys.argv[1:5]
conf = {
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
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


def fmt(parts):
    return ",".join(str(p.partition) for p in sorted(parts, key=lambda p: p.partition))


c = Consumer(conf)
c.subscribe([topic],
            on_assign=lambda _c, parts: out.write("A %s\n" % fmt(parts)),
            on_revoke=lambda _c, parts: out.write("R %s\n" % fmt(parts)),
            on_lost=lambda _c, parts: out.write("R %s\n" % fmt(parts)))
while not stop:
    msgs = c.consume(200, 0.2)
    done = []
    for m in msgs:
        if m.error():
            continue
        done.append("M %d %d\n" % (m.partition(), m.offset()))
    if done:
        out.write("".join(done))
        out.flush()
        try:
            c.commit(asynchronous=False)
        except Exception as e:  # a commit refused during a rebalance: records are redelivered
            out.write("E %s\n" % e)
c.close()
out.write("CLOSED\n")
