"""Transactions through the Java client (kafka-clients 4.x, transactions version 2 by
default), Apache Kafka's kafka-transactions tool, and the delayed-EndTxn scenario of KIP-890:
an EndTxn of an earlier transaction, delivered late, must not end a later one."""
import os
import socket
import struct
import subprocess
import tempfile
import shutil

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker, unique_topic
from test_java import _MISSING, fail_text, java, java_cmd
from test_transactions import read_all

pytestmark = pytest.mark.skipif(_MISSING is not None, reason="SKIPPED Java tests: %s" % _MISSING)

TXN_CHECK = "dev.holdfast.compat.TxnCheck"
TRANSACTIONS_TOOL = "org.apache.kafka.tools.TransactionsCommand"
PRODUCER_FENCED = 90
INVALID_PRODUCER_EPOCH = 47


@pytest.fixture(scope="module")
def broker(data_dir):
    b = Broker(data_dir, ["--set", "num.partitions=1"]).start()
    yield b
    assert b.stop() == 0


@pytest.mark.parametrize("check", ["txn-commit-abort", "txn-fencing", "txn-offsets"])
def test_java_transactions(broker, check):
    p = java(TXN_CHECK, [broker.bootstrap, check], what="kafka-clients " + check)
    assert p.returncode == 0 and ("PASS " + check) in p.stdout, fail_text(p)
    if check == "txn-commit-abort":
        # Transactions version 2: no AddPartitionsToTxn, EndTxn v5.
        sent = versions_sent(p)
        assert "END_TXN v5" in sent and "PRODUCE v12" in sent, sent
        assert not any(v.startswith("ADD_PARTITIONS_TO_TXN") for v in sent), sent


def versions_sent(p):
    import re
    return sorted({"%s v%s" % (m.group(2), m.group(3)) for m in re.finditer(
        r"Sending (\w+) request with header RequestHeader\(apiKey=(\w+), apiVersion=(\d+)", p.stderr)})


def test_kafka_transactions_tool_lists_and_describes(broker):
    topic = unique_topic("tool")
    p = java(TXN_CHECK, [broker.bootstrap, "txn-commit-abort"])
    assert p.returncode == 0, fail_text(p)
    lst = java(TRANSACTIONS_TOOL, ["--bootstrap-server", broker.bootstrap, "list"])
    assert lst.returncode == 0, fail_text(lst)
    assert "TransactionalId" in lst.stdout and "CompleteCommit" in lst.stdout, lst.stdout
    txn_id = [l.split()[0] for l in lst.stdout.splitlines()[1:] if l.strip()][0]
    d = java(TRANSACTIONS_TOOL, ["--bootstrap-server", broker.bootstrap, "describe", "--transactional-id", txn_id])
    assert d.returncode == 0 and txn_id in d.stdout, fail_text(d)
    del topic


def end_txn_v3(port, txn_id, pid, epoch, commit):
    """Sends one EndTxn v3 (flexible) on a fresh connection; returns its error code."""
    body = bytearray()
    tid = txn_id.encode()
    body += bytes([len(tid) + 1]) + tid            # compact string (short ids only)
    body += struct.pack(">qhb", pid, epoch, 1 if commit else 0)
    body += b"\x00"                                 # tagged fields
    client = b"replayer"
    header = struct.pack(">hhih", 26, 3, 7, len(client)) + client + b"\x00"
    frame = header + bytes(body)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack(">i", len(frame)) + frame)
        size = struct.unpack(">i", recv_exact(s, 4))[0]
        resp = recv_exact(s, size)
    # correlation id, header tagged fields, throttle_time_ms, error_code
    corr = struct.unpack(">i", resp[:4])[0]
    assert corr == 7
    return struct.unpack(">h", resp[4 + 1 + 4:4 + 1 + 4 + 2])[0]


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "connection closed"
        out += chunk
    return out


def replay_scenario(broker):
    """Runs the Java holder and replays transaction 1's EndTxn(commit) while transaction 2 is
    open. Returns (EndTxn error code, records visible to read_committed)."""
    topic = unique_topic("replay")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result(15)
    txn_id = "hold-" + topic
    proc = subprocess.Popen(java_cmd(TXN_CHECK, [broker.bootstrap, "hold", topic, txn_id]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        pid = epoch = None
        for line in proc.stdout:
            if line.startswith("TXN1 "):
                _, pid, epoch = line.split()
            if line.startswith("READY"):
                break
        assert pid is not None, "the Java holder did not start"
        code = end_txn_v3(broker.port, txn_id, int(pid), int(epoch), commit=True)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        rest = proc.stdout.read()
        assert proc.wait(120) == 0 and "DONE" in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    visible = [v for _, _, v in read_all(broker.bootstrap, topic, "read_committed")]
    return code, visible, rest


def test_delayed_end_txn_cannot_end_a_later_transaction(broker):
    code, visible, rest = replay_scenario(broker)
    assert code in (PRODUCER_FENCED, INVALID_PRODUCER_EPOCH), "replayed EndTxn answered %d" % code
    assert "ABORTED" in rest, rest
    assert visible == [b"t1", b"t3"], visible


def test_delayed_end_txn_negative_control_transactions_version_1():
    """The same replay against transactions version 1 (no epoch bump): the late EndTxn
    commits transaction 2, which its producer then tried to abort. Shows the test above can
    fail, and why version 2 is the default."""
    d = tempfile.mkdtemp(prefix="holdfast-tv1-")
    b = Broker(d, ["--set", "num.partitions=1", "--set", "holdfast.transaction.version=1"]).start()
    try:
        code, visible, _ = replay_scenario(b)
        assert code == 0, code
        assert b"t2" in visible, visible
    finally:
        b.kill()
        shutil.rmtree(d, ignore_errors=True)


def test_kafka_transactions_describe_producers_and_find_hanging(broker):
    from test_transactions import create_topic, txn_producer
    topic = unique_topic("producers")
    create_topic(broker.bootstrap, topic)
    p = txn_producer(broker.bootstrap, "tx-" + topic)
    p.begin_transaction()
    p.produce(topic, value=b"open")
    p.flush(10)
    d = java(TRANSACTIONS_TOOL, ["--bootstrap-server", broker.bootstrap, "describe-producers",
                                 "--topic", topic, "--partition", "0"])
    assert d.returncode == 0, fail_text(d)
    rows = [l.split() for l in d.stdout.splitlines()[1:] if l.strip()]
    assert len(rows) == 1, d.stdout
    header = d.stdout.splitlines()[0].split()
    row = dict(zip(header, rows[0]))
    assert row["CurrentTransactionStartOffset"] == "0", d.stdout
    # An open transaction the coordinator knows is not hanging.
    h = java(TRANSACTIONS_TOOL, ["--bootstrap-server", broker.bootstrap, "find-hanging",
                                 "--broker-id", "1"])
    assert h.returncode == 0, fail_text(h)
    assert topic not in h.stdout, h.stdout
    p.commit_transaction(30)
    d = java(TRANSACTIONS_TOOL, ["--bootstrap-server", broker.bootstrap, "describe-producers",
                                 "--topic", topic, "--partition", "0"])
    header = d.stdout.splitlines()[0].split()
    row = dict(zip(header, d.stdout.splitlines()[1].split()))
    assert row["CurrentTransactionStartOffset"] == "None", d.stdout
