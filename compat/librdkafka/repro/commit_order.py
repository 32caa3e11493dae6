"""Pipelined async OffsetCommits are applied out of order (see docs/compat/librdkafka.md).

    holdfast serve --data-dir /tmp/co --listen 127.0.0.1:39555 &
    python compat/librdkafka/repro/commit_order.py 127.0.0.1:39555 commit   # needs confluent-kafka
    (restart the broker on the same data dir)
    python compat/librdkafka/repro/commit_order.py 127.0.0.1:39555 read

Each trial commits offsets 1..200 of partition 0 asynchronously (librdkafka pipelines them on
the coordinator connection), waits for all 200 commit callbacks (all succeed), then reads the
committed offset back. Kafka: always 200.
"""
import sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
bs = sys.argv[1]; topic = "commit-order"
mode = sys.argv[2]
if mode == "commit":
    p = Producer({"bootstrap.servers": bs})  # creates the topic (auto-create)
    p.produce(topic, b"x", partition=0)
    p.flush(10)
    for trial in range(5, 10):
        res = {"ok": 0, "err": 0}
        def cb(err, parts):
            if err or any(p.error for p in parts): res["err"] += 1
            else: res["ok"] += 1
        c = Consumer({"bootstrap.servers": bs, "group.id": f"g{trial}", "enable.auto.commit": False, "on_commit": cb})
        c.assign([TopicPartition(topic, 0, 0)])
        for off in range(1, 201):
            c.commit(offsets=[TopicPartition(topic, 0, off)], asynchronous=True)
        t = time.time()
        while res["ok"] + res["err"] < 200 and time.time() - t < 20:
            c.poll(0.1)
        later = c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
        print(f"g{trial}: commit callbacks ok={res['ok']} err={res['err']}; committed after all acks = {later} (expected 200)")
        c.close()
else:
    for trial in range(5, 10):
        c = Consumer({"bootstrap.servers": bs, "group.id": f"g{trial}"})
        print(f"after restart g{trial}: {c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset}")
        c.close()
