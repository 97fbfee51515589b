"""A real, single-node Apache Kafka broker (KRaft) on loopback, run from its Maven Central jars.

    python scripts/kafka_local.py start     # prints the bootstrap address
    python scripts/kafka_local.py status    # "running 127.0.0.1:PORT" or "stopped" (exit 3)
    python scripts/kafka_local.py stop
    python scripts/kafka_local.py stop --keep-data   # an outage: the next start resumes it
    python scripts/kafka_local.py tool CLASS [ARGS...]   # run a Kafka admin tool class
    python scripts/kafka_local.py start --sasl-ssl   # also a SASL_SSL (SCRAM-SHA-512) listener

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

``start --sasl-ssl`` (Python: ``start(sasl_ssl=True)``) gives the broker a second client
listener, SASL_SSL with SCRAM-SHA-512, beside the PLAINTEXT one (which the controller and the
broker itself keep using, on loopback). Each start makes a throwaway CA and a broker
certificate for 127.0.0.1/localhost with openssl (the broker reads them as PEM), and formats
the storage with one SCRAM user: ``$CONSUMER_KAFKA_SASL_USER`` (default ``consumer``) with
``$CONSUMER_KAFKA_SASL_PASSWORD`` (default: random). What a client needs (bootstrap address,
CA file, mechanism, user, password) is written to ``sasl_ssl.json`` in the state folder (mode
0600); ``sasl_ssl_listener()`` reads it back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from localproc import (
    JAVA_PACKAGE,
    REPO_ROOT,
    LocalServiceError,
    cache_root,
    free_port,
    jvm_options,
    log_tail,
    read_pid,
    read_state_file,
    require_program,
    running_address,
    state_dir,
    stop_pid,
    wait_until,
    write_private,
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
    pom_digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    return cache_root("CONSUMER_KAFKA_CACHE") / f"kafka-{pom_digest}"


def ensure_jars() -> Path:
    """Resolve the broker's jars into the cache (once) and return the folder holding them."""
    cache = _cache_dir()
    lib = cache / "lib"
    stamp = cache / "complete"
    if stamp.exists() and any(lib.glob("kafka_2.13-*.jar")):
        return lib
    mvn = require_program("mvn", "to resolve Kafka's jars from Maven Central",
                          package="maven")
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
        # Written by ``start(sasl_ssl=True)``: what a client needs for the SASL_SSL listener.
        "tls": base / "tls",
        "sasl_ssl": base / "sasl_ssl.json",
    }


#: The SASL mechanism of the ``--sasl-ssl`` listener.
SASL_MECHANISM = "SCRAM-SHA-512"


def _server_properties(port: int, controller_port: int, data: Path,
                       secured: SecuredListener | None = None) -> str:
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
    if secured is not None:
        settings["listeners"] += f",SASL_SSL://{secured.bootstrap}"
        settings["advertised.listeners"] += f",SASL_SSL://{secured.bootstrap}"
        settings.update(secured.server_properties())
    return "".join(f"{key}={value}\n" for key, value in settings.items())


class SecuredListener:
    """The SASL_SSL listener of a ``--sasl-ssl`` broker: its port, TLS files and SCRAM user."""

    def __init__(self, port: int, tls: Path, username: str, password: str) -> None:
        self.port = port
        self.tls = tls
        self.username = username
        self.password = password

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_location(self) -> Path:
        return self.tls / "ca.pem"

    def server_properties(self) -> dict[str, str]:
        """Broker settings for the extra listener; CONTROLLER and PLAINTEXT stay as they are."""
        name = "listener.name.sasl_ssl"
        return {
            "listener.security.protocol.map":
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": SASL_MECHANISM,
            f"{name}.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"{name}.ssl.keystore.type": "PEM",
            f"{name}.ssl.keystore.location": str(self.tls / "broker.pem"),
            f"{name}.ssl.client.auth": "none",
        }

    def scram_argument(self) -> str:
        """``kafka-storage format --add-scram`` value creating the user with its password."""
        return f"{SASL_MECHANISM}=[name={self.username},password={self.password}]"

    def client_info(self) -> dict[str, str]:
        return {"bootstrap": self.bootstrap, "security_protocol": "SASL_SSL",
                "mechanism": SASL_MECHANISM, "username": self.username,
                "password": self.password, "ca_location": str(self.ca_location)}


def _openssl(*args: str, cwd: Path) -> None:
    openssl = require_program("openssl", "to make the SASL_SSL listener's certificates",
                              package="openssl")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise LocalServiceError(f"openssl {args[0]} failed (exit {result.returncode}): "
                                f"{result.stderr.strip()}")


def make_certificates(tls: Path) -> None:
    """A throwaway CA (``ca.pem``, what clients trust) and a broker certificate it signed for
    127.0.0.1 and localhost, with its key in one PEM file (``broker.pem``, the broker's
    keystore). EC keys: made in milliseconds."""
    shutil.rmtree(tls, ignore_errors=True)
    tls.mkdir(parents=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
             "-subj", "/CN=kafka-local test CA", cwd=tls)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=localhost", cwd=tls)
    (tls / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "broker.crt", "-days", "30", "-extfile", "san.ext",
             cwd=tls)
    # Kafka's PEM keystore wants an unencrypted PKCS#8 key followed by the certificate chain.
    _openssl("pkcs8", "-topk8", "-nocrypt", "-in", "broker.key", "-out", "broker.p8", cwd=tls)
    (tls / "broker.pem").write_text((tls / "broker.p8").read_text()
                                    + (tls / "broker.crt").read_text()
                                    + (tls / "ca.pem").read_text())


def _secured_listener(port: int) -> SecuredListener:
    username = os.environ.get("CONSUMER_KAFKA_SASL_USER", "consumer")
    password = os.environ.get("CONSUMER_KAFKA_SASL_PASSWORD") or secrets.token_urlsafe(18)
    tls = _paths()["tls"]
    make_certificates(tls)
    return SecuredListener(port, tls, username, password)


def sasl_ssl_listener() -> dict[str, str] | None:
    """What a client needs for the running broker's SASL_SSL listener (bootstrap,
    security_protocol, mechanism, username, password, ca_location), or None without one."""
    path = _paths()["sasl_ssl"]
    if running_bootstrap() is None or not path.exists():
        return None
    info: dict[str, str] = json.loads(path.read_text())
    return info


def _java_command(lib: Path, main_class: str, *args: str, logs: Path) -> list[str]:
    java = require_program("java", "to run the Kafka broker (Java 17 or newer)",
                           package=JAVA_PACKAGE)
    return [
        java,
        # $CONSUMER_KAFKA_JVM_OPTS replaces the defaults (e.g. a bigger heap).
        *jvm_options("CONSUMER_KAFKA_JVM_OPTS", JVM_OPTS),
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={logs}",
        "-cp",
        _classpath(lib),
        main_class,
        *args,
    ]


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def format_storage(lib: Path, cluster_id: str, props: Path, logs: Path,
                   scram: list[str]) -> None:
    """Format the log directories named in ``props`` for a new cluster with ``cluster_id``."""
    formatting = subprocess.run(
        _java_command(
            lib, "kafka.tools.StorageTool", "format",
            # One argument: an id may begin with '-' (base64url), which argparse would take
            # for an option if it stood alone.
            f"--cluster-id={cluster_id}", "-c", str(props), "--ignore-formatted", *scram,
            logs=logs,
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
    return running_address(paths["pid"], paths["bootstrap"])


def _start_once(lib: Path, *, sasl_ssl: bool = False) -> str:
    paths = _paths()
    shutil.rmtree(paths["data"], ignore_errors=True)
    paths["sasl_ssl"].unlink(missing_ok=True)
    paths["logs"].mkdir(parents=True, exist_ok=True)
    fixed_port = os.environ.get("CONSUMER_KAFKA_PORT")
    port = int(fixed_port) if fixed_port else free_port()
    taken = {port}
    controller_port = _another_free_port(taken)
    secured = _secured_listener(_another_free_port(taken)) if sasl_ssl else None
    paths["props"].write_text(_server_properties(port, controller_port, paths["data"], secured))
    scram = ["--add-scram", secured.scram_argument()] if secured else []

    format_storage(lib, _cluster_id(), paths["props"], paths["logs"], scram)

    bootstrap = _launch_and_wait(lib, port, controller_port, stdout_mode="w")
    if secured is not None:
        _wait_for_secured(secured)
        write_private(paths["sasl_ssl"], json.dumps(secured.client_info(), indent=2))
    return bootstrap


def _another_free_port(taken: set[int]) -> int:
    port = free_port()
    while port in taken:
        port = free_port()
    taken.add(port)
    return port


def _wait_for_secured(secured: SecuredListener) -> None:
    """The SASL_SSL listener answers an authenticated client (TLS, SCRAM) with a broker."""
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:  # Launched by a Python without the client: the plaintext check stands.
        return
    admin = AdminClient({
        "bootstrap.servers": secured.bootstrap, "security.protocol": "SASL_SSL",
        "sasl.mechanism": SASL_MECHANISM, "sasl.username": secured.username,
        "sasl.password": secured.password, "ssl.ca.location": str(secured.ca_location),
        "log_level": 0,
    })

    def answers() -> bool:
        try:
            return bool(admin.list_topics(timeout=2).brokers)
        except Exception:
            return False

    if not wait_until(answers, timeout=30, interval=0.3):
        _stop_process(read_pid(_paths()["pid"]) or 0)
        raise LocalServiceError(
            f"the broker's SASL_SSL listener on {secured.bootstrap} did not accept user "
            f"{secured.username!r} ({SASL_MECHANISM}) within 30 s. First errors in its log:\n"
            f"{_first_errors(_paths()['logs'] / 'server.log')}")


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
    if not paths["data"].is_dir():
        return None
    return read_state_file(paths["kept"])


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


def start(*, sasl_ssl: bool = False) -> str:
    """Start the broker (or find the one already running) and return its bootstrap address.

    After ``stop(keep_data=True)`` it resumes that broker (same port, data and cluster);
    otherwise it formats a fresh one. ``sasl_ssl``: with the SASL_SSL listener too (see
    :func:`sasl_ssl_listener`); a running broker without one is refused, not restarted.
    """
    existing = running_bootstrap()
    if existing and _broker_answers(existing):
        if sasl_ssl and sasl_ssl_listener() is None:
            raise LocalServiceError(
                f"a broker without a SASL_SSL listener already runs on {existing} from "
                f"{_paths()['base']}; stop it first, or set CONSUMER_LOCAL_STATE to start "
                "another one beside it")
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
            bootstrap = _start_once(lib, sasl_ssl=sasl_ssl)
        except LocalServiceError as error:
            last_error = error
            retryable = "Address already in use" in str(error)
            if not retryable or os.environ.get("CONSUMER_KAFKA_PORT") or attempt == START_ATTEMPTS:
                break
            _say(f"port taken by someone else while starting (attempt {attempt}); retrying")
            continue
        secured = f" and SASL_SSL on {sasl_ssl_listener_address()}" if sasl_ssl else ""
        _say(f"broker ready on {bootstrap}{secured} in {time.monotonic() - began:.1f} s "
             f"(logs: {_paths()['logs']})")
        return bootstrap
    _cleanup_files()
    assert last_error is not None
    raise last_error


def _stop_process(pid: int) -> None:
    stop_pid(pid, timeout=30)


def sasl_ssl_listener_address() -> str | None:
    info = sasl_ssl_listener()
    return None if info is None else info["bootstrap"]


def _cleanup_files() -> None:
    paths = _paths()
    for key in ("pid", "bootstrap", "kept", "sasl_ssl"):
        paths[key].unlink(missing_ok=True)
    shutil.rmtree(paths["data"], ignore_errors=True)
    shutil.rmtree(paths["tls"], ignore_errors=True)


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
    usage = ("usage: kafka_local.py start [--sasl-ssl]|stop [--keep-data]|status|"
             "tool CLASS [ARGS...]")
    if not argv:
        print(usage, file=sys.stderr)
        return 2
    command = argv[0]
    try:
        if command == "start" and argv[1:] in ([], ["--sasl-ssl"]):
            print(start(sasl_ssl=argv[1:] == ["--sasl-ssl"]), flush=True)
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
