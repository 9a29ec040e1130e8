"""A real Apache Kafka broker for tests: fetched with Maven, run with Java, KRaft single node.

The broker jars (``org.apache.kafka:kafka_2.13``) come from Maven Central through an
ordinary ``mvn dependency:copy-dependencies`` on a tiny generated pom, into an ignored
folder (``.cache/kafka/<version>/lib`` by default, ``STREAMWEIGHTS_KAFKA_CACHE`` to move
it); a marker file makes later runs skip the fetch. Maven's own repository (``~/.m2``)
also keeps the jars, so a fresh clone on the same machine re-copies them without the
network.

``KafkaBroker`` formats KRaft storage for one combined broker+controller node with the
storage tool in those jars, starts ``kafka.Kafka`` on free loopback ports, waits until an
admin client can list topics, and stops it (SIGTERM, then SIGKILL). ``kill()`` and
``start()`` on the same object keep the ports and the data directory, so a test can
restart the broker mid-stream. Nothing here fakes the broker.

Run by hand: ``scripts/kafka_broker.sh fetch`` or ``scripts/kafka_broker.sh run``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[2]

#: Broker version; 4.4.0 resolves from Maven Central with all its dependencies.
KAFKA_VERSION = os.environ.get("STREAMWEIGHTS_KAFKA_VERSION", "4.4.0")
#: log4j2's binding for the slf4j 1.x API the broker logs through (same version as the
#: log4j-core the broker depends on), so the broker's log reaches a file we can show.
LOG4J_SLF4J_VERSION = "2.25.5"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

#: Small heap: the machine has 2 cores and 24 GiB shared with the test suite.
DEFAULT_JVM_OPTIONS = (
    "-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
    "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.streamweights.tests</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = warn
"""


class BrokerSetupError(RuntimeError):
    """The broker could not be fetched or started; the message says what to fix."""


def cache_dir(version: str = KAFKA_VERSION) -> pathlib.Path:
    root = os.environ.get("STREAMWEIGHTS_KAFKA_CACHE")
    base = pathlib.Path(root) if root else REPO / ".cache" / "kafka"
    return base / version


def _java_major(java: str) -> int:
    completed = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', completed.stderr + completed.stdout)
    if not match:
        raise BrokerSetupError(f"cannot tell the Java version from `{java} -version`: "
                               f"{completed.stderr.strip()!r}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def find_java() -> str:
    """The ``java`` to run the broker with (``JAVA_HOME`` first); Kafka 4 needs 17+."""
    home = os.environ.get("JAVA_HOME")
    java = str(pathlib.Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise BrokerSetupError("Kafka tests need Java 17 or newer: no `java` on PATH "
                               "(install it, e.g. `apt-get install openjdk-17-jre-headless`)")
    major = _java_major(java)
    if major < 17:
        raise BrokerSetupError(f"Kafka {KAFKA_VERSION} needs Java 17 or newer; {java} is {major}")
    return java


def fetch_jars(version: str = KAFKA_VERSION, *, quiet: bool = True) -> pathlib.Path:
    """The folder of broker jars, fetched with Maven on first use (cached after)."""
    folder = cache_dir(version)
    lib = folder / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch at a time (parallel sessions)
        if marker.exists():
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerSetupError("Kafka tests fetch the broker with Maven: no `mvn` on PATH "
                                   "(install it, e.g. `apt-get install maven`)")
        pom = folder / "pom.xml"
        pom.write_text(_POM.format(kafka=version, log4j=LOG4J_SLF4J_VERSION))
        staging = folder / "lib.partial"
        shutil.rmtree(staging, ignore_errors=True)
        command = [mvn, "-B", *(["-q"] if quiet else []), "-f", str(pom),
                   f"{DEPENDENCY_PLUGIN}:copy-dependencies", "-DincludeScope=runtime",
                   f"-DoutputDirectory={staging}"]
        repository = os.environ.get("STREAMWEIGHTS_MAVEN_REPO")
        if repository:
            command.append(f"-Dmaven.repo.local={repository}")
        try:
            completed = subprocess.run(command, capture_output=True, text=True, check=False,
                                       timeout=900)
        except subprocess.TimeoutExpired:
            raise BrokerSetupError(f"fetching Kafka {version} with Maven took over 15 minutes; "
                                   "is Maven Central reachable?") from None
        if completed.returncode != 0:
            tail = (completed.stdout + completed.stderr).strip().splitlines()[-15:]
            raise BrokerSetupError(f"fetching Kafka {version} with Maven failed "
                                   f"(exit {completed.returncode}):\n" + "\n".join(tail))
        if not list(staging.glob(f"kafka_2.13-{version}.jar")):
            raise BrokerSetupError(f"Maven finished but {staging} has no kafka_2.13-{version}.jar")
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
        marker.write_text(version + "\n")
    return lib


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cluster_id() -> str:
    """A Kafka ``Uuid`` string: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class KafkaBroker:
    """One KRaft node (broker and controller in one JVM) on loopback ports.

    ``overrides`` are extra ``server.properties`` entries. The defaults suit tests:
    replication factor 1 everywhere, few internal partitions (fast start), no automatic
    topic creation (so a missing topic is an error the service must report) and no
    initial rebalance delay, and a short broker session so a kill -9 and restart is
    back in about as long as a clean start.

    ``host`` is the address the client listener binds and advertises (the controller
    stays on loopback); ``command_prefix`` runs the JVM through another program, e.g.
    ``ip netns exec NS`` for a broker in its own network namespace (``tests/kafka/netns.py``;
    readiness is then checked from whatever namespace calls ``start``);
    ``format_arguments`` go to the KRaft storage tool, e.g. ``--add-scram`` credentials.
    """

    def __init__(self, workdir: pathlib.Path | str, *, overrides: dict[str, str] | None = None,
                 jvm_options: tuple[str, ...] = DEFAULT_JVM_OPTIONS,
                 log_level: str = "INFO", host: str = "127.0.0.1",
                 command_prefix: tuple[str, ...] = (),
                 format_arguments: tuple[str, ...] = ()) -> None:
        self.workdir = pathlib.Path(workdir)
        self.host = host
        self.command_prefix = tuple(command_prefix)
        self.format_arguments = tuple(format_arguments)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.overrides = dict(overrides or {})
        self.jvm_options = jvm_options
        self.log_level = log_level
        self.process: subprocess.Popen | None = None
        #: Seconds the last ``start()`` took from launching the JVM to ready (format excluded).
        self.startup_seconds: float | None = None
        self._formatted = False
        self._lib: pathlib.Path | None = None
        self._java: str | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> pathlib.Path:
        return self.workdir / "server.log"

    def properties(self) -> dict[str, str]:
        values = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},"
                         f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After kill -9 the restarted broker waits for its old registration's session
            # to expire before it is unfenced (9 s by default); keep fault tests short.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            "log.segment.bytes": str(16 * 1024 * 1024),
            # A killed transactional producer's open transaction is aborted within a
            # second of its timeout (default: checked every 10 s), so a takeover waits
            # for it seconds, not tens of seconds.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        }
        values.update(self.overrides)
        return values

    def _write_config(self) -> pathlib.Path:
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in self.properties().items()))
        (self.workdir / "log4j2.properties").write_text(
            _LOG4J2.format(path=self.log_path, level=self.log_level))
        return path

    def _java_command(self, main: str, *args: str) -> list[str]:
        assert self._java is not None and self._lib is not None
        return [self._java, *self.jvm_options,
                f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
                "-cp", f"{self._lib}/*", main, *args]

    def format(self) -> None:
        """Format the KRaft log directory (once per broker object)."""
        if self._lib is None:
            self._lib = fetch_jars()
            self._java = find_java()
        config = self._write_config()
        command = self._java_command("kafka.tools.StorageTool", "format", "--config", str(config),
                                     f"--cluster-id={_cluster_id()}", "--ignore-formatted",
                                     *self.format_arguments)
        completed = subprocess.run(command, capture_output=True, text=True, check=False,
                                   timeout=120)
        if completed.returncode != 0:
            raise BrokerSetupError("formatting KRaft storage failed "
                                   f"(exit {completed.returncode}): "
                                   f"{(completed.stdout + completed.stderr).strip()}")
        self._formatted = True

    def start(self, timeout: float = 90.0) -> None:
        """Start the JVM (formatting first if needed) and wait until clients can connect."""
        if self.process is not None and self.process.poll() is None:
            return
        if not self._formatted:
            self.format()
        config = self._write_config()
        started = time.monotonic()
        with open(self.workdir / "stdout.log", "ab") as output:
            self.process = subprocess.Popen(
                [*self.command_prefix, *self._java_command("kafka.Kafka", str(config))],
                stdout=output,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.wait_ready(timeout)
        self.startup_seconds = time.monotonic() - started

    def wait_ready(self, timeout: float) -> None:
        from kafka import KafkaAdminClient  # imported late: kafka-python is slow to import
        from kafka.errors import KafkaConfigurationError, KafkaError

        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BrokerSetupError(f"Kafka broker exited with code {self.process.returncode} "
                                       f"while starting:\n{self.log_tail()}")
            if not self._port_open():
                time.sleep(0.05)
                continue
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap,
                                         request_timeout_ms=3000,
                                         client_id="streamweights-test-readiness")
                try:
                    admin.list_topics()
                    described = admin.describe_cluster()
                finally:
                    admin.close()
                if described.get("controller_id", -1) not in (-1, None):
                    return
            except KafkaConfigurationError:
                raise
            except (KafkaError, OSError) as error:  # not up yet: refused, no brokers, timeout
                last_error = error
            time.sleep(0.2)
        self.stop()
        raise BrokerSetupError(f"Kafka broker not ready on {self.bootstrap} after {timeout:.0f}s "
                               f"(last error: {last_error!r}):\n{self.log_tail()}")

    def _port_open(self) -> bool:
        """A plain TCP connect: cheap to poll, and spares the admin client's bootstrap
        back-off (which grows to seconds) while the JVM is still starting."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        chunks = []
        for path in (self.workdir / "stdout.log", self.log_path):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(chunks) or "(no broker log)"

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown (SIGTERM), SIGKILL if it takes longer than ``timeout``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def kill(self) -> None:
        """kill -9: the broker dies without shutting down (data directory kept)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def restart(self, timeout: float = 90.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch the broker jars into the cache (no-op when cached)")
    run = commands.add_parser("run", help="start a broker, print its address, stop on Ctrl-C")
    run.add_argument("--workdir", help="data/log folder (default: a temporary one)")
    arguments = parser.parse_args(argv)
    try:
        started = time.monotonic()
        lib = fetch_jars(quiet=False)
        print(f"kafka {KAFKA_VERSION} jars in {lib} ({time.monotonic() - started:.1f}s)")
        if arguments.command == "fetch":
            return 0
        workdir = arguments.workdir or tempfile.mkdtemp(prefix="streamweights-kafka-")
        broker = KafkaBroker(workdir)
        signal.signal(signal.SIGTERM, _interrupt)  # so `finally` stops the broker on SIGTERM too
        try:
            started = time.monotonic()
            broker.start()
            print(f"kafka broker ready on {broker.bootstrap} ({time.monotonic() - started:.1f}s); "
                  f"logs in {workdir}; Ctrl-C stops it", flush=True)
            while True:
                signal.pause()
        except KeyboardInterrupt:
            return 0
        finally:
            broker.stop()
    except BrokerSetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
