"""Starts Apache Kafka itself (KRaft, one combined broker+controller node) from the Maven
jars that scripts/setup-java-deps.sh puts in .deps/java/lib, on loopback ports, for tests
that run the same commands against Holdfast and Kafka. `available()` says why not when the
jars or java are missing."""
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time

from conftest import ROOT, free_port

LIB = os.path.join(ROOT, ".deps", "java", "lib")
JAVA = shutil.which("java")


def available():
    if JAVA is None:
        return "java not on PATH"
    if not glob.glob(os.path.join(LIB, "kafka_2.13-*.jar")):
        return "no Apache Kafka server jar in %s (run scripts/setup-java-deps.sh)" % LIB
    return None


class ApacheKafka:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="apache-kafka-")
        self.port = free_port()
        self.controller_port = free_port()
        self.proc = None
        self.lines = []

    @property
    def bootstrap(self):
        return "127.0.0.1:%d" % self.port

    def _java(self, main, *args):
        return [JAVA, "-Xmx768m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-cp", os.path.join(LIB, "*"), main, *args]

    def start(self, timeout=90):
        props = os.path.join(self.dir, "server.properties")
        with open(props, "w") as f:
            f.write("\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                "controller.quorum.voters=1@127.0.0.1:%d" % self.controller_port,
                "listeners=PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d" % (self.port, self.controller_port),
                "advertised.listeners=PLAINTEXT://127.0.0.1:%d" % self.port,
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "log.dirs=%s" % os.path.join(self.dir, "data"),
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "num.partitions=1",
            ]) + "\n")
        uuid = subprocess.run(self._java("kafka.tools.StorageTool", "random-uuid"),
                              capture_output=True, text=True, timeout=120).stdout.strip().splitlines()[-1]
        fmt = subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", uuid, "-c", props),
                             capture_output=True, text=True, timeout=120)
        assert fmt.returncode == 0, fmt.stderr[-2000:]
        self.proc = subprocess.Popen(self._java("kafka.Kafka", props), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.lines.append(line)
                if len(self.lines) > 2000:
                    del self.lines[:500]
                if "Kafka Server started" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("Apache Kafka did not start:\n" + "".join(self.lines[-40:]))
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
