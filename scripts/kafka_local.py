"""A real, single-node Apache Kafka broker (KRaft) on loopback, run from its Maven Central jars.

    python scripts/kafka_local.py start     # prints the bootstrap address
    python scripts/kafka_local.py status    # "running 127.0.0.1:PORT" or "stopped" (exit 3)
    python scripts/kafka_local.py stop
    python scripts/kafka_local.py stop --keep-data   # an outage: the next start resumes it
    python scripts/kafka_local.py tool CLASS [ARGS...]   # run a Kafka admin tool class

Environment: ``CONSUMER_KAFKA_PORT`` fixes the client port (default: a free one),
``CONSUMER_KAFKA_JVM_OPTS`` replaces the JVM options, ``CONSUMER_LOCAL_STATE`` moves the state
folder, ``CONSUMER_KAFKA_CACHE`` moves the jar cache.

The jars are resolved once with Maven into ``~/.cache/checkpoint-consumer/kafka-<version>/``
(``$CONSUMER_KAFKA_CACHE`` overrides), so a second start works offline. Each start formats a
fresh log directory; ``stop`` removes it. Logs stay in ``.local/kafka/`` for post-mortems.

``stop --keep-data`` (Python: ``stop(keep_data=True)``) stops the broker the same clean way but
keeps its log directory and configuration: the next ``start`` brings the same broker back (same
cluster, topics, committed offsets, ports) instead of formatting a new one, the way a real
broker comes back after an outage. ``restart_after(seconds)`` does both with a pause between.
A plain ``stop`` deletes kept data too.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from localproc import (
    REPO_ROOT,
    LocalServiceError,
    free_port,
    log_tail,
    pid_alive,
    read_pid,
    state_dir,
    stop_pid,
    wait_until,
)

POM = REPO_ROOT / "scripts" / "kafka" / "pom.xml"
LOG4J_CONFIG = REPO_ROOT / "scripts" / "kafka" / "log4j2.properties"
JVM_OPTS = [
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
]
READY_TIMEOUT_S = 90.0
START_ATTEMPTS = 3
#: How long a resumed broker waits for its recorded ports to be free again.
RESUME_PORT_WAIT_S = 30.0


def _say(text: str) -> None:
    print(f"kafka-local: {text}", file=sys.stderr, flush=True)


# --- jars ------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    default = Path.home() / ".cache" / "checkpoint-consumer"
    pom_digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    return Path(os.environ.get("CONSUMER_KAFKA_CACHE", default)) / f"kafka-{pom_digest}"


def _require(program: str, why: str) -> str:
    path = shutil.which(program)
    if path is None:
        package = "maven" if program == "mvn" else "openjdk-17-jre-headless"
        raise LocalServiceError(
            f"'{program}' is not on PATH; it is needed {why}. "
            f"Install it (Debian: apt-get install -y {package})."
        )
    return path


def ensure_jars() -> Path:
    """Resolve the broker's jars into the cache (once) and return the folder holding them."""
    cache = _cache_dir()
    lib = cache / "lib"
    stamp = cache / "complete"
    if stamp.exists() and any(lib.glob("kafka_2.13-*.jar")):
        return lib
    mvn = _require("mvn", "to resolve Kafka's jars from Maven Central")
    _say(f"resolving Kafka jars with Maven into {lib} (first start only)")
    partial = cache / "lib.partial"
    shutil.rmtree(partial, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "maven.log"
    with log.open("w") as out:
        result = subprocess.run(
            [
                mvn, "-B", "-q", "-f", str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={partial}",
                "-DincludeScope=runtime",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0:
        raise LocalServiceError(
            f"Maven could not resolve Kafka's jars (exit {result.returncode}); "
            f"is Maven Central reachable? Last lines of {log}:\n{log_tail(log)}"
        )
    shutil.rmtree(lib, ignore_errors=True)
    partial.rename(lib)
    stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return lib


def _classpath(lib: Path) -> str:
    return os.pathsep.join(str(jar) for jar in sorted(lib.glob("*.jar")))


# --- broker ----------------------------------------------------------------------------------


def _paths() -> dict[str, Path]:
    base = state_dir("kafka")
    return {
        "base": base,
        "pid": base / "broker.pid",
        "bootstrap": base / "bootstrap",
        "data": base / "data",
        "logs": base / "logs",
        "props": base / "server.properties",
        "stdout": base / "logs" / "stdout.log",
        # Written by ``stop(keep_data=True)``: the bootstrap address the next start resumes.
        "kept": base / "kept",
    }


def _server_properties(port: int, controller_port: int, data: Path) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "log.cleaner.dedupe.buffer.size": "4194304",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _jvm_opts() -> list[str]:
    """JVM options; ``$CONSUMER_KAFKA_JVM_OPTS`` replaces the defaults (e.g. a bigger heap)."""
    override = os.environ.get("CONSUMER_KAFKA_JVM_OPTS")
    return override.split() if override else JVM_OPTS


def _java_command(lib: Path, main_class: str, *args: str, logs: Path) -> list[str]:
    java = _require("java", "to run the Kafka broker (Java 17 or newer)")
    return [
        java,
        *_jvm_opts(),
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={logs}",
        "-cp",
        _classpath(lib),
        main_class,
        *args,
    ]


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _broker_answers(bootstrap: str) -> bool:
    """Ready means an AdminClient sees a broker, not merely an open port."""
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:  # Launched by a Python without the client: fall back to the log.
        return "Kafka Server started" in log_tail(_paths()["logs"] / "server.log", 400)
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=2)
    except Exception:
        return False
    return bool(metadata.brokers)


def _first_errors(log: Path, limit: int = 6) -> str:
    """The first ERROR lines and exception causes of a broker log: usually the real reason."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no broker log)"
    picked = [line for line in lines if " ERROR " in line or line.startswith("Caused by:")]
    return "\n".join(picked[:limit]) or "(no ERROR lines)"


def running_bootstrap() -> str | None:
    """The bootstrap address of the broker this launcher started, if it is alive."""
    paths = _paths()
    pid = read_pid(paths["pid"])
    if pid is None or not pid_alive(pid) or not paths["bootstrap"].exists():
        return None
    return paths["bootstrap"].read_text().strip()


def _start_once(lib: Path) -> str:
    paths = _paths()
    shutil.rmtree(paths["data"], ignore_errors=True)
    paths["logs"].mkdir(parents=True, exist_ok=True)
    fixed_port = os.environ.get("CONSUMER_KAFKA_PORT")
    port = int(fixed_port) if fixed_port else free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    paths["props"].write_text(_server_properties(port, controller_port, paths["data"]))

    formatting = subprocess.run(
        _java_command(
            lib, "kafka.tools.StorageTool", "format",
            "-t", _cluster_id(), "-c", str(paths["props"]), "--ignore-formatted",
            logs=paths["logs"],
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    if formatting.returncode != 0:
        raise LocalServiceError(
            f"formatting the broker's storage failed (exit {formatting.returncode}):\n"
            f"{formatting.stdout}{formatting.stderr}"
        )

    return _launch_and_wait(lib, port, controller_port, stdout_mode="w")


def _launch_and_wait(lib: Path, port: int, controller_port: int, *, stdout_mode: str) -> str:
    """Run the broker on the configuration in ``server.properties`` and wait until it answers;
    on any failure it is stopped again and :class:`LocalServiceError` says why."""
    paths = _paths()
    bootstrap = f"127.0.0.1:{port}"
    with paths["stdout"].open(stdout_mode) as out:
        process = subprocess.Popen(
            _java_command(lib, "kafka.Kafka", str(paths["props"]), logs=paths["logs"]),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    paths["pid"].write_text(str(process.pid))

    def died() -> str | None:
        if process.poll() is None:
            return None
        errors = _first_errors(paths["logs"] / "server.log")
        hint = ""
        if "Address already in use" in errors:
            hint = (f"Address already in use: port {port} or {controller_port} is taken by "
                    "another process. ")
        return (
            f"{hint}the broker exited with code {process.returncode} while starting.\n"
            f"First errors in its log:\n{errors}\n"
            f"Last lines of its logs:\n{log_tail(paths['stdout'], 10)}\n"
            f"{log_tail(paths['logs'] / 'server.log', 15)}"
        )

    try:
        ready = wait_until(lambda: _broker_answers(bootstrap), timeout=READY_TIMEOUT_S,
                           interval=0.3, failed=died)
        if not ready:
            raise LocalServiceError(
                f"the broker did not answer on {bootstrap} within {READY_TIMEOUT_S:.0f} s. "
                f"Last lines of its log:\n{log_tail(paths['logs'] / 'server.log', 30)}"
            )
    except BaseException:
        _stop_process(process.pid)
        raise
    paths["bootstrap"].write_text(bootstrap)
    return bootstrap


def kept_bootstrap() -> str | None:
    """The address of a broker stopped with ``keep_data=True`` that ``start`` will resume."""
    paths = _paths()
    if not paths["kept"].exists() or not paths["data"].is_dir():
        return None
    return paths["kept"].read_text().strip() or None


def _recorded_ports() -> tuple[int, int]:
    """(client port, controller port) from the kept ``server.properties``."""
    settings = dict(
        line.split("=", 1) for line in _paths()["props"].read_text().splitlines() if "=" in line
    )
    ports = {}
    for listener in settings["listeners"].split(","):
        name, _, port = listener.rpartition(":")
        ports[name.split("://")[0]] = int(port)
    return ports["PLAINTEXT"], ports["CONTROLLER"]


def _resume_kept(lib: Path) -> str:
    """Start the kept broker again on its recorded ports, log directory and cluster id. A port
    still taken (a socket lingering from the stopped broker) is retried for a while."""
    port, controller_port = _recorded_ports()
    deadline = time.monotonic() + RESUME_PORT_WAIT_S
    while True:
        try:
            bootstrap = _launch_and_wait(lib, port, controller_port, stdout_mode="a")
        except LocalServiceError as error:
            if "Address already in use" not in str(error) or time.monotonic() >= deadline:
                raise LocalServiceError(
                    f"could not resume the kept broker on {port}: {error}\n(its data is still "
                    f"kept in {_paths()['data']}; a plain stop deletes it)"
                ) from error
            _say(f"port {port} or {controller_port} still taken; retrying")
            time.sleep(1.0)
            continue
        _paths()["kept"].unlink(missing_ok=True)
        return bootstrap


def start() -> str:
    """Start the broker (or find the one already running) and return its bootstrap address.

    After ``stop(keep_data=True)`` it resumes that broker (same port, data and cluster);
    otherwise it formats a fresh one.
    """
    existing = running_bootstrap()
    if existing and _broker_answers(existing):
        return existing
    if existing:
        stop()
    lib = ensure_jars()
    kept = kept_bootstrap()
    if kept is not None:
        began = time.monotonic()
        bootstrap = _resume_kept(lib)
        _say(f"broker resumed on {bootstrap} with its kept data in "
             f"{time.monotonic() - began:.1f} s (logs: {_paths()['logs']})")
        return bootstrap
    began = time.monotonic()
    last_error: LocalServiceError | None = None
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            bootstrap = _start_once(lib)
        except LocalServiceError as error:
            last_error = error
            retryable = "Address already in use" in str(error)
            if not retryable or os.environ.get("CONSUMER_KAFKA_PORT") or attempt == START_ATTEMPTS:
                break
            _say(f"port taken by someone else while starting (attempt {attempt}); retrying")
            continue
        _say(f"broker ready on {bootstrap} in {time.monotonic() - began:.1f} s "
             f"(logs: {_paths()['logs']})")
        return bootstrap
    _cleanup_files()
    assert last_error is not None
    raise last_error


def _stop_process(pid: int) -> None:
    stop_pid(pid, timeout=30)


def _cleanup_files() -> None:
    paths = _paths()
    for key in ("pid", "bootstrap", "kept"):
        paths[key].unlink(missing_ok=True)
    shutil.rmtree(paths["data"], ignore_errors=True)


def stop(*, keep_data: bool = False) -> None:
    """Stop the broker cleanly (SIGTERM, then SIGKILL after 30 s) and delete its data.

    With ``keep_data`` the log directory and configuration stay, and the next :func:`start`
    resumes the same broker on the same port: an outage, not a teardown.
    """
    paths = _paths()
    bootstrap = running_bootstrap()
    pid = read_pid(paths["pid"])
    if pid is not None:
        _stop_process(pid)
    if not keep_data:
        _cleanup_files()
        return
    if bootstrap is None:
        if kept_bootstrap() is None:
            _say("no broker was running; nothing to keep")
        return
    paths["kept"].write_text(bootstrap)
    for key in ("pid", "bootstrap"):
        paths[key].unlink(missing_ok=True)
    _say(f"broker on {bootstrap} stopped; its data is kept for the next start")


def restart_after(seconds: float) -> str:
    """An outage: stop the running broker keeping its data, wait, start it again; returns its
    (unchanged) bootstrap address."""
    if running_bootstrap() is None:
        raise LocalServiceError("no broker is running: nothing to restart")
    stop(keep_data=True)
    time.sleep(seconds)
    return start()


def run_tool(main_class: str, args: list[str]) -> int:
    """Run one of Kafka's admin tool classes (for example ConsumerGroupCommand) on our jars."""
    lib = ensure_jars()
    command = _java_command(lib, main_class, *args, logs=_paths()["logs"])
    return subprocess.run(command, check=False).returncode


def main(argv: list[str]) -> int:
    usage = "usage: kafka_local.py start|stop [--keep-data]|status|tool CLASS [ARGS...]"
    if not argv:
        print(usage, file=sys.stderr)
        return 2
    command = argv[0]
    try:
        if command == "start":
            print(start(), flush=True)
            return 0
        if command == "stop" and argv[1:] in ([], ["--keep-data"]):
            stop(keep_data=argv[1:] == ["--keep-data"])
            return 0
        if command == "status":
            bootstrap = running_bootstrap()
            if bootstrap is None:
                print("stopped")
                kept = kept_bootstrap()
                if kept is not None:
                    _say(f"data kept: the next start resumes the broker on {kept}")
                return 3
            print(f"running {bootstrap}")
            return 0
        if command == "tool" and len(argv) >= 2:
            return run_tool(argv[1], argv[2:])
    except LocalServiceError as error:
        _say(f"error: {error}")
        return 1
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
