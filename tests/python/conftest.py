"""Fixtures: a real `holdfast serve` process per test module, on 127.0.0.1 and a free port."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.environ.get("HOLDFAST_BIN", os.path.join(ROOT, "target", "debug", "holdfast"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A holdfast process. `start()` waits for the "holdfast listening on" line."""

    def __init__(self, data_dir, extra_args=()):
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.proc = None
        self.stderr_lines = []

    @property
    def bootstrap(self):
        return "127.0.0.1:%d" % self.port

    def start(self, timeout=30.0):
        assert os.path.exists(BINARY), "build the broker first: cargo build -p holdfast (%s)" % BINARY
        self.proc = subprocess.Popen(
            [BINARY, "serve", "--data-dir", self.data_dir, "--listen", self.bootstrap] + self.extra_args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        ready = threading.Event()

        def pump_stdout():
            for line in self.proc.stdout:
                if line.startswith("holdfast listening on"):
                    ready.set()

        def pump_stderr():
            for line in self.proc.stderr:
                self.stderr_lines.append(line)
                if len(self.stderr_lines) > 5000:
                    del self.stderr_lines[:1000]

        threading.Thread(target=pump_stdout, daemon=True).start()
        err_thread = threading.Thread(target=pump_stderr, daemon=True)
        err_thread.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None:
                err_thread.join(5)  # the pipe reaches EOF once the process is gone
                raise RuntimeError("holdfast exited with %s:\n%s" % (self.proc.returncode, "".join(self.stderr_lines[-50:])))
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("holdfast did not start in %ss" % timeout)
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout=20.0):
        """SIGTERM, expecting a clean exit 0."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout)
        return self.proc.returncode if self.proc else None


@pytest.fixture(scope="module")
def data_dir():
    d = tempfile.mkdtemp(prefix="holdfast-pytest-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def broker(data_dir):
    b = Broker(data_dir, ["--set", "num.partitions=1"]).start()
    yield b
    rc = b.stop()
    if rc != 0:
        print("".join(b.stderr_lines[-50:]))
    assert rc == 0, "broker did not shut down cleanly (rc=%s)" % rc


def unique_topic(prefix="t"):
    return "%s-%d-%d" % (prefix, os.getpid(), time.monotonic_ns())


def wait_until(predicate, timeout=20.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(interval)


def stored_bytes(broker, topic, partition=0):
    """Bytes of segment files of a partition: proves batches were stored compressed."""
    d = os.path.join(broker.data_dir, "%s-%d" % (topic, partition))
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".log"))
