#!/usr/bin/env python3
"""Throwaway local MariaDB server for tests and demos.

Usage::

    python scripts/mariadb_local.py start    # prints the URL once a client connects
    python scripts/mariadb_local.py status   # "running <url>" (exit 0) or "stopped" (exit 3)
    python scripts/mariadb_local.py dsn      # the URL (exit 0), or exit 3 when nothing runs
    python scripts/mariadb_local.py stop     # stops it and deletes its data (always exit 0)
    python scripts/mariadb_local.py stop --keep-data   # an outage: the next start resumes it

Every ``start`` creates a brand-new data directory (``mariadb-install-db``) in a fresh
temporary directory and runs ``mariadbd`` on a free loopback port with its own Unix socket,
nothing else of the machine's (``--no-defaults``: no /etc/mysql config, no system socket).
The URL is ``mysql://checkpoint:PASSWORD@127.0.0.1:PORT/checkpoint``: a user with a random
password that may create databases (each test makes its own). Durability is off (InnoDB
writes its log once a second) unless ``CONSUMER_DB_DURABLE`` or ``CONSUMER_PG_DURABLE`` is
set (``make bench``). Only the URL goes to stdout; progress and errors go to stderr.

MariaDB comes from Debian's ``mariadb-server`` package, installed with apt-get when missing
and this script runs as root. As root the server runs as the ``mysql`` OS user, so its data
lives under the system temporary directory (which keeps the socket path short, too).

State lives in ``state_dir("mariadb")`` (``.local/mariadb/``): ``url``, ``pid``, ``datadir``,
``kept`` (after ``stop --keep-data``) and ``mariadb.log`` (kept after ``stop``).
The pytest fixtures use :func:`start`, :func:`stop`, :func:`running_url` and
:func:`restart_after`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from localproc import (
    LocalServiceError,
    free_port,
    log_tail,
    pid_alive,
    read_pid,
    state_dir,
    stop_pid,
    wait_until,
)

DATABASE = "checkpoint"
USER = "checkpoint"
OS_USER = "mysql"
HOST = "127.0.0.1"
PACKAGE = "mariadb-server"
INSTALL_COMMAND = f"apt-get update && apt-get install -y --no-install-recommends {PACKAGE}"
DATADIR_PREFIX = "checkpoint-mariadb-"
READY_TIMEOUT = 60.0
INSTALL_DB_TIMEOUT = 120.0
PORT_ATTEMPTS = 3
RESUME_PORT_WAIT = 30.0
DURABLE = bool(os.environ.get("CONSUMER_DB_DURABLE") or os.environ.get("CONSUMER_PG_DURABLE"))
#: Tests trade durability for speed (the data is thrown away); `make bench` keeps it.
NON_DURABLE = ["--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0"]
SERVER_OPTIONS = [
    *([] if DURABLE else NON_DURABLE),
    "--skip-name-resolve",
    "--max-connections=300",
    "--innodb-buffer-pool-size=128M",
    "--skip-log-bin",
]


# --------------------------------------------------------------------------- state files


class _State:
    """Paths of the files that let start, status and stop run from separate shells."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root / "url"
        self.pid = root / "pid"
        self.datadir = root / "datadir"
        self.kept = root / "kept"
        self.log = root / "mariadb.log"
        self.lock = root / "lock"

    @classmethod
    def current(cls) -> _State:
        return cls(state_dir("mariadb"))

    def recorded_datadir(self) -> Path | None:
        text = _read_text(self.datadir)
        return Path(text) if text else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_secret(path: Path, text: str) -> None:
    path.write_text(f"{text}\n")
    path.chmod(0o600)


@contextlib.contextmanager
def _locked(state: _State) -> Iterator[None]:
    """Serialise start/stop so two shells (or pytest workers) cannot race each other."""
    with state.lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _say(message: str) -> None:
    print(f"mariadb_local: {message}", file=sys.stderr, flush=True)


def _url(port: int, password: str) -> str:
    return f"mysql://{USER}:{urllib.parse.quote(password, safe='')}@{HOST}:{port}/{DATABASE}"


def _socket(datadir: Path) -> Path:
    return datadir / "mariadbd.sock"


# --------------------------------------------------------------------------- binaries


def _programs() -> tuple[str, str, str] | None:
    """mariadbd, mariadb-install-db and the mariadb client, or None when one is missing."""
    server = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/bin")
    install_db = shutil.which("mariadb-install-db") or shutil.which(
        "mariadb-install-db", path="/usr/bin:/usr/sbin")
    client = shutil.which("mariadb") or shutil.which("mariadb", path="/usr/bin")
    if server and install_db and client:
        return server, install_db, client
    return None


def ensure_programs() -> tuple[str, str, str]:
    """Find the server programs, installing Debian's ``mariadb-server`` package if root."""
    found = _programs()
    if found:
        return found
    if os.geteuid() != 0:
        raise LocalServiceError(
            "MariaDB's programs (mariadbd, mariadb-install-db, mariadb) were not found, and "
            f"only root can install them. Run:\n    sudo sh -c '{INSTALL_COMMAND}'\n"
            "then run this command again.")
    if not shutil.which("apt-get"):
        raise LocalServiceError(
            "MariaDB's programs were not found and apt-get is not available to install "
            f"them; install the {PACKAGE} package with this system's package manager.")
    _say(f"MariaDB not found; installing the Debian '{PACKAGE}' package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", PACKAGE]):
        result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=2, stderr=2, env=env)
        if result.returncode != 0:
            raise LocalServiceError(f"'{' '.join(command)}' failed with exit code "
                                    f"{result.returncode} (its output is above)")
    found = _programs()
    if not found:
        raise LocalServiceError(f"installed '{PACKAGE}', but still cannot find mariadbd, "
                                "mariadb-install-db and mariadb on PATH or in /usr/sbin")
    return found


# --------------------------------------------------------------------------- OS user


def _server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: ``mysql`` when we are root, else None (us)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        pass
    _say(f"creating system user '{OS_USER}' to run MariaDB as non-root")
    result = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                             OS_USER], capture_output=True, text=True)
    if result.returncode != 0:
        raise LocalServiceError(f"could not create the '{OS_USER}' OS user: useradd exit "
                                f"code {result.returncode}: {result.stderr.strip()}")
    return pwd.getpwnam(OS_USER)


def _run_as(account: pwd.struct_passwd | None) -> dict[str, Any]:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _make_datadir(account: pwd.struct_passwd | None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=DATADIR_PREFIX, dir="/tmp"))
    path.chmod(0o755)
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)
    return path


# --------------------------------------------------------------------------- client checks


def _client(client: str, datadir: Path, sql: str, *, timeout: float = 10.0) -> str:
    """Run ``sql`` as the server's root over its own socket; returns the output."""
    result = subprocess.run(
        [client, "--no-defaults", "--protocol=socket", f"--socket={_socket(datadir)}",
         "--user=root", "--batch", "--skip-column-names", "--connect-timeout=2",
         "-e", sql], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise LocalServiceError(f"mariadb client failed ({result.returncode}): "
                                f"{result.stderr.strip()}")
    return result.stdout.strip()


def _answers(client: str, datadir: Path) -> bool:
    try:
        _client(client, datadir, "SELECT 1", timeout=5)
    except (LocalServiceError, subprocess.TimeoutExpired):
        return False
    return True


def _ping_url(url: str) -> bool:
    """Whether the URL's user gets in over TCP right now (PyMySQL, else the mariadb client)."""
    address = urllib.parse.urlsplit(url)
    password = urllib.parse.unquote(address.password or "")
    try:
        import pymysql
    except ImportError:
        found = _programs()
        if not found:
            return False
        result = subprocess.run(
            [found[2], "--no-defaults", "--protocol=tcp", f"--host={address.hostname}",
             f"--port={address.port}", f"--user={address.username}", f"--password={password}",
             "--connect-timeout=2", "-e", "SELECT 1", address.path.lstrip("/")],
            capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        return result.returncode == 0
    try:
        conn = pymysql.connect(host=address.hostname, port=address.port or 3306,
                               user=address.username, password=password,
                               database=address.path.lstrip("/"), connect_timeout=2)
    except pymysql.Error:
        return False
    conn.close()
    return True


# --------------------------------------------------------------------------- starting


def _install_db(install_db: str, datadir: Path, account: pwd.struct_passwd | None,
                log: IO[bytes]) -> None:
    _marker(log, f"mariadb-install-db --datadir={datadir}")
    command = [install_db, "--no-defaults", f"--datadir={datadir}", "--skip-test-db",
               "--auth-root-authentication-method=normal", "--skip-name-resolve"]
    if account is not None:
        command.append(f"--user={account.pw_name}")
    try:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd="/", timeout=INSTALL_DB_TIMEOUT,
                                **_run_as(account))
    except subprocess.TimeoutExpired as exc:
        raise LocalServiceError(f"mariadb-install-db did not finish within "
                                f"{INSTALL_DB_TIMEOUT:.0f} s") from exc
    if result.returncode != 0:
        raise LocalServiceError(f"mariadb-install-db failed with exit code "
                                f"{result.returncode} in {datadir}")


def _launch(server: str, datadir: Path, port: int, account: pwd.struct_passwd | None,
            log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start mariadbd in its own session (it outlives this process); output to the log."""
    command = [server, "--no-defaults", f"--datadir={datadir}", f"--port={port}",
               f"--bind-address={HOST}", f"--socket={_socket(datadir)}",
               f"--pid-file={datadir / 'mariadbd.pid'}", *SERVER_OPTIONS]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, cwd="/", start_new_session=True,
                            **_run_as(account))


def _marker(log: IO[bytes], text: str) -> None:
    log.write(f"=== mariadb_local: {text} ===\n".encode())
    log.flush()


def _log_since(path: Path, offset: int) -> str:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def _wait_ready(proc: subprocess.Popen[bytes], client: str, datadir: Path, port: int,
                log_path: Path, offset: int) -> bool:
    """Wait until a client connects. False: the port was taken (the caller tries another);
    any other death, or no answer in time, raises."""
    def died() -> str | None:
        if proc.poll() is None:
            return None
        return f"mariadbd exited during startup with exit code {proc.returncode}"

    try:
        ready = wait_until(lambda: proc.poll() is None and _answers(client, datadir),
                           timeout=READY_TIMEOUT, interval=0.1, failed=died)
    except LocalServiceError:
        if "already in use" in _log_since(log_path, offset):
            return False
        raise
    if not ready:
        raise LocalServiceError(f"mariadbd (pid {proc.pid}) did not accept connections on "
                                f"{HOST}:{port} within {READY_TIMEOUT:.0f} s")
    return True


def _start_fresh(state: _State, account: pwd.struct_passwd | None) -> str:
    """install-db + launch + create the user and database; on failure leave nothing."""
    server, install_db, client = ensure_programs()
    began = time.monotonic()
    state.log.write_bytes(b"")
    with state.log.open("ab") as log:
        try:
            datadir = _make_datadir(account)
            state.datadir.write_text(f"{datadir}\n")
            _install_db(install_db, datadir, account, log)
            for attempt in range(1, PORT_ATTEMPTS + 1):
                port = free_port()
                _marker(log, f"starting mariadbd on {HOST}:{port} (attempt {attempt})")
                offset = state.log.stat().st_size
                proc = _launch(server, datadir, port, account, log)
                state.pid.write_text(f"{proc.pid}\n")
                if _wait_ready(proc, client, datadir, port, state.log, offset):
                    break
                _say(f"port {port} was taken before MariaDB could bind it; trying another")
            else:
                raise LocalServiceError(f"no free loopback port in {PORT_ATTEMPTS} attempts")
            _check_identity(client, datadir)
            password = secrets.token_urlsafe(18)
            _client(client, datadir, (
                f"CREATE DATABASE {DATABASE}; "
                f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1'"))
            url = _url(port, password)
            if not _ping_url(url):
                raise LocalServiceError(f"user {USER} cannot connect over TCP on port {port}")
        except Exception as exc:
            _say("start failed; stopping anything it started and deleting its data")
            _teardown(state)
            raise LocalServiceError(f"{exc}\n--- last lines of {state.log} ---\n"
                                    f"{log_tail(state.log)}") from exc
        except BaseException:
            _teardown(state)
            raise
    _write_secret(state.url, url)
    _say(f"MariaDB ready in {time.monotonic() - began:.1f} s on {HOST}:{port} "
         f"(data {datadir}, log {state.log})")
    return url


def _check_identity(client: str, datadir: Path) -> None:
    served = _client(client, datadir, "SELECT @@datadir")
    if os.path.realpath(served) != os.path.realpath(datadir):
        raise LocalServiceError(f"the socket in {datadir} is answered by a MariaDB with data "
                                f"directory {served}, not the one just started")


def _resume_kept(state: _State, account: pwd.struct_passwd | None, url: str) -> str:
    """Start the kept server again on its recorded port; the URL stays the same."""
    server, _, client = ensure_programs()
    began = time.monotonic()
    datadir = state.recorded_datadir()
    if datadir is None:
        raise LocalServiceError(f"no data directory recorded in {state.datadir}")
    port = urllib.parse.urlsplit(url).port or 0
    deadline = time.monotonic() + RESUME_PORT_WAIT
    with state.log.open("ab") as log:
        try:
            while True:
                _marker(log, f"resuming mariadbd on {HOST}:{port} with data {datadir}")
                offset = state.log.stat().st_size
                proc = _launch(server, datadir, port, account, log)
                state.pid.write_text(f"{proc.pid}\n")
                if _wait_ready(proc, client, datadir, port, state.log, offset):
                    break
                if time.monotonic() >= deadline:
                    raise LocalServiceError(f"port {port} stayed taken for "
                                            f"{RESUME_PORT_WAIT:.0f} s")
                time.sleep(1.0)
        except BaseException as exc:
            _stop_server(state)
            if isinstance(exc, Exception):
                raise LocalServiceError(
                    f"could not resume the kept MariaDB on port {port}: {exc} (its data is "
                    f"still kept in {datadir}; a plain stop deletes it)") from exc
            raise
    _write_secret(state.url, url)
    state.kept.unlink(missing_ok=True)
    _say(f"MariaDB resumed in {time.monotonic() - began:.1f} s on {HOST}:{port}")
    return url


# --------------------------------------------------------------------------- stopping


def _is_our_server(pid: int, datadir: Path | None) -> bool:
    """The pid is a live mariadbd serving ``datadir`` (not a recycled pid)."""
    if datadir is None or not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"--datadir={datadir}".encode() in cmdline


def _stop_server(state: _State) -> bool:
    pid = read_pid(state.pid)
    state.pid.unlink(missing_ok=True)
    if pid is None or not _is_our_server(pid, state.recorded_datadir()):
        return False
    _say(f"stopping MariaDB (pid {pid})")
    stop_pid(pid, timeout=30.0)
    return True


def _teardown(state: _State) -> bool:
    """Stop whatever this state dir records and delete its data. True if anything was there."""
    found = _stop_server(state)
    datadir = state.recorded_datadir()
    if datadir is not None and datadir.exists():
        if not datadir.name.startswith(DATADIR_PREFIX):
            raise LocalServiceError(f"refusing to delete {datadir} named in {state.datadir}: "
                                    f"not a data directory this script made")
        shutil.rmtree(datadir, ignore_errors=True)
        found = True
    for path in (state.url, state.pid, state.datadir, state.kept):
        path.unlink(missing_ok=True)
    return found


# --------------------------------------------------------------------------- public API


def running_url() -> str | None:
    """The URL of the server this state dir records, if it is alive and answers."""
    state = _State.current()
    url = _read_text(state.url)
    pid = read_pid(state.pid)
    if url is None or pid is None or not _is_our_server(pid, state.recorded_datadir()):
        return None
    return url if _ping_url(url) else None


def kept_url() -> str | None:
    state = _State.current()
    datadir = state.recorded_datadir()
    if datadir is None or not datadir.is_dir():
        return None
    return _read_text(state.kept)


def start() -> str:
    """Start a fresh throwaway server (or reuse the running one, or resume a kept one);
    return its URL. Raises LocalServiceError with the log's tail when it cannot."""
    state = _State.current()
    with _locked(state):
        url = running_url()
        if url is not None:
            _say(f"MariaDB already running: {url}")
            return url
        kept = kept_url()
        if kept is not None:
            return _resume_kept(state, _server_account(), kept)
        if _teardown(state):
            _say("cleaned up a dead or unresponsive server left by an earlier run")
        return _start_fresh(state, _server_account())


def stop(*, keep_data: bool = False) -> None:
    """Stop the server and delete its data; with ``keep_data`` the next start resumes it."""
    state = _State.current()
    with _locked(state):
        if not keep_data:
            if not _teardown(state):
                _say("no local MariaDB was running")
            return
        url = running_url()
        _stop_server(state)
        if url is not None:
            _write_secret(state.kept, url)
        state.url.unlink(missing_ok=True)


def restart_after(seconds: float) -> str:
    """An outage: stop keeping the data, wait, start again; returns the (same) URL."""
    if running_url() is None:
        raise LocalServiceError("no local MariaDB is running: nothing to restart")
    stop(keep_data=True)
    time.sleep(seconds)
    return start()


# --------------------------------------------------------------------------- CLI

EXIT_FAILED = 1
EXIT_STOPPED = 3


def _cmd_status() -> int:
    url = running_url()
    if url is not None:
        print(f"running {url}")
        return 0
    print("stopped")
    return EXIT_STOPPED


def _cmd_dsn() -> int:
    url = running_url()
    if url is None:
        _say("no local MariaDB is running; start one with: python scripts/mariadb_local.py start")
        return EXIT_STOPPED
    print(url)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Throwaway local MariaDB for tests and demos.")
    parser.add_argument("command", choices=["start", "stop", "status", "dsn"])
    parser.add_argument("--keep-data", action="store_true",
                        help="with stop: keep the data; the next start resumes the same server")
    args = parser.parse_args(argv)
    if args.keep_data and args.command != "stop":
        parser.error("--keep-data goes with stop only")
    commands: dict[str, Callable[[], int]] = {
        "start": lambda: print(start(), flush=True) or 0,
        "stop": lambda: stop(keep_data=args.keep_data) or 0,
        "status": _cmd_status,
        "dsn": _cmd_dsn,
    }
    try:
        return commands[args.command]()
    except LocalServiceError as exc:
        _say(f"'{args.command}' FAILED: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say(f"'{args.command}' interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
