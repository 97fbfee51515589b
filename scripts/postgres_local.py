#!/usr/bin/env python3
"""Throwaway local PostgreSQL server for tests and demos.

Usage::

    python scripts/postgres_local.py start    # prints the DSN once the server answers
    python scripts/postgres_local.py status   # "running <dsn>" (exit 0) or "stopped" (exit 3)
    python scripts/postgres_local.py dsn      # the DSN (exit 0), or exit 3 when nothing runs
    python scripts/postgres_local.py stop     # stops it and deletes its data (always exit 0)
    python scripts/postgres_local.py stop --keep-data   # an outage: the next start resumes it

Every ``start`` creates a brand-new cluster (``initdb``) in a fresh temporary directory,
trusts every local connection, and turns durability off: the data is meant to be thrown
away, and ``stop`` deletes it. Only the DSN goes to stdout; progress and errors go to stderr.

State lives in ``state_dir("postgres")`` (``.local/postgres/`` at the repository root by
default): ``dsn``, ``pid`` (the postmaster), ``datadir`` (where the cluster lives) and
``postgres.log`` (initdb and server output; kept after ``stop`` for post-mortems).

PostgreSQL refuses to run as root, so when this script runs as root the server runs as the
``postgres`` OS user. Its data directory therefore lives under the system temporary directory
(not under the repository, which that user may not be able to enter), which also keeps the
Unix socket path short.

``stop --keep-data`` (Python: ``stop(keep_data=True)``) stops the server the same way but keeps
its data directory: the next ``start`` brings the same cluster back on the same port with the
same password, so the DSN does not change, the way a real server comes back after an outage.
``restart_after(seconds)`` does both with a pause between. A plain ``stop`` deletes kept data.

The pytest fixtures use :func:`start`, :func:`stop` and :func:`running_dsn`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import gc
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from localproc import (
    LocalServiceError,
    free_port,
    log_tail,
    pid_alive,
    read_pid,
    state_dir,
    wait_until,
)

try:
    import psycopg
except ImportError:  # e.g. the system python; fall back to the pg_isready/psql clients
    psycopg = None  # type: ignore[assignment]

DATABASE = "checkpoint"
SUPERUSER = "postgres"
OS_USER = "postgres"
HOST = "127.0.0.1"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
INITDB_TIMEOUT = 120.0
PORT_ATTEMPTS = 3
#: How long a resumed server waits for its recorded port to be free again.
RESUME_PORT_WAIT = 30.0
DATADIR_PREFIX = "checkpoint-pg-"
INSTALL_COMMAND = "apt-get update && apt-get install -y --no-install-recommends postgresql"
#: Tests trade durability for speed; CONSUMER_PG_DURABLE=1 (set by `make bench`) keeps
#: PostgreSQL's durable defaults, so store benchmarks pay for real commits.
NON_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
SERVER_SETTINGS = {
    **({} if os.environ.get("CONSUMER_PG_DURABLE") else NON_DURABLE),
    "max_connections": "200",
}


# --------------------------------------------------------------------------- state files


@dataclass(frozen=True)
class _State:
    """Paths of the files that let start, status and stop run from separate shells."""

    root: Path

    @classmethod
    def current(cls) -> _State:
        return cls(state_dir("postgres"))

    @property
    def dsn(self) -> Path:
        return self.root / "dsn"

    @property
    def pid(self) -> Path:
        return self.root / "pid"

    @property
    def datadir(self) -> Path:
        return self.root / "datadir"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def kept(self) -> Path:
        """Written by ``stop(keep_data=True)``: the DSN the next start resumes."""
        return self.root / "kept"

    def recorded_datadir(self) -> Path | None:
        text = _read_text(self.datadir)
        return Path(text) if text else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


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
    """Human-readable progress and errors go to stderr; stdout carries only the DSN."""
    print(f"postgres_local: {message}", file=sys.stderr, flush=True)


def _dsn(port: int, database: str, password: str) -> str:
    return f"postgresql://{SUPERUSER}:{password}@{HOST}:{port}/{database}"


# --------------------------------------------------------------------------- binaries


def find_bindir() -> Path | None:
    """Directory holding the PostgreSQL server programs (initdb, postgres), or None."""
    for candidate in _candidate_bindirs():
        if all(os.access(candidate / name, os.X_OK) for name in ("initdb", "postgres")):
            return candidate
    return None


def _candidate_bindirs() -> list[Path]:
    """``pg_config --bindir`` first, then /usr/lib/postgresql/*/bin, newest version first."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    versioned = Path("/usr/lib/postgresql").glob("*/bin")
    candidates.extend(sorted(versioned, key=_version_key, reverse=True))
    return candidates


def _version_key(bindir: Path) -> tuple[int, ...]:
    """Sort key for /usr/lib/postgresql/<version>/bin: "15" > "9.6"; odd names sort last."""
    try:
        return tuple(int(part) for part in bindir.parent.name.split("."))
    except ValueError:
        return (-1,)


def ensure_bindir() -> Path:
    """Find the server programs, installing Debian's ``postgresql`` package if root."""
    bindir = find_bindir()
    if bindir:
        return bindir
    if os.geteuid() != 0:
        raise LocalServiceError(
            "PostgreSQL server programs (initdb, postgres) were not found via pg_config or "
            "in /usr/lib/postgresql/*/bin, and only root can install them. Run:\n"
            f"    sudo sh -c '{INSTALL_COMMAND}'\n"
            "then run this command again."
        )
    if not shutil.which("apt-get"):
        raise LocalServiceError(
            "PostgreSQL server programs (initdb, postgres) were not found and apt-get is not "
            "available to install them; install a PostgreSQL server with this system's "
            "package manager and make sure pg_config is on PATH."
        )
    _install_debian_package()
    bindir = find_bindir()
    if not bindir:
        raise LocalServiceError(
            "installed the 'postgresql' package, but still cannot find initdb and postgres "
            "(looked at pg_config --bindir and /usr/lib/postgresql/*/bin)"
        )
    return bindir


def _install_debian_package() -> None:
    """apt-get update + install postgresql; apt's output goes to stderr."""
    _say("PostgreSQL server programs not found; installing the Debian 'postgresql' package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
    )
    for command in commands:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=2, stderr=2, env=env)
        if result.returncode != 0:
            raise LocalServiceError(
                f"'{' '.join(command)}' failed with exit code {result.returncode} "
                "(its output is above); PostgreSQL could not be installed"
            )


@functools.cache
def _client_tool(name: str) -> str:
    """Path of a client program (psql, pg_isready): the server's bindir first, then PATH."""
    bindir = find_bindir()
    if bindir and os.access(bindir / name, os.X_OK):
        return str(bindir / name)
    found = shutil.which(name)
    if not found:
        raise LocalServiceError(
            f"the PostgreSQL client program '{name}' was not found and the psycopg module is "
            f"not importable by {sys.executable}; install postgresql-client or run this "
            "script with the project's virtualenv python"
        )
    return found


# --------------------------------------------------------------------------- OS user


def _server_account() -> pwd.struct_passwd | None:
    """The account the server must run as: ``postgres`` when we are root, else None (us)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        pass
    _say(f"creating system user '{OS_USER}' (PostgreSQL refuses to run as root)")
    result = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", OS_USER],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise LocalServiceError(
            f"could not create the '{OS_USER}' OS user needed to run PostgreSQL as non-root: "
            f"useradd exit code {result.returncode}: {result.stderr.strip()}"
        )
    return pwd.getpwnam(OS_USER)


def _run_as(account: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess keyword arguments that drop root privileges to ``account``."""
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _traversable_by(path: Path, account: pwd.struct_passwd) -> bool:
    """Whether ``account`` may enter ``path`` and every directory above it."""
    for directory in (path, *path.parents):
        st = directory.stat()
        mode = st.st_mode
        if mode & stat.S_IXOTH:
            continue
        if st.st_uid == account.pw_uid and mode & stat.S_IXUSR:
            continue
        if st.st_gid == account.pw_gid and mode & stat.S_IXGRP:
            continue
        return False
    return True


def _make_datadir(account: pwd.struct_passwd | None) -> Path:
    """A fresh, empty data directory that the server's OS user owns."""
    for base in dict.fromkeys((tempfile.gettempdir(), "/tmp")):
        if account is None or _traversable_by(Path(base), account):
            path = Path(tempfile.mkdtemp(prefix=DATADIR_PREFIX, dir=base))
            if account is not None:
                os.chown(path, account.pw_uid, account.pw_gid)
            return path
    raise LocalServiceError(
        f"the '{OS_USER}' OS user cannot enter the temporary directory "
        f"{tempfile.gettempdir()} (or /tmp); point TMPDIR at a directory every user can enter"
    )


# --------------------------------------------------------------------------- client checks


def _ping(dsn: str) -> bool:
    """Whether a real connection to ``dsn`` succeeds right now."""
    if psycopg is not None:
        try:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            answered = False
        else:
            answered = True
        if not answered:
            # After a connect timeout psycopg leaves its half-open socket to the cyclic garbage
            # collector (only possible once the exception is gone, hence out here). While that
            # socket stays open the server keeps a pre-auth child that delays its shutdown 60 s.
            gc.collect()
        return answered
    command = [_client_tool("pg_isready"), "-q", "-t", "2", "-d", dsn]
    return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True).returncode == 0


def _sql(dsn: str, statement: str) -> str:
    """Run one statement in autocommit mode; return the first column of the first row."""
    if psycopg is not None:
        try:
            with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
                cursor = conn.execute(statement.encode())
                row = cursor.fetchone() if cursor.description else None
        except psycopg.Error as exc:
            raise LocalServiceError(f"SQL {statement!r} failed on {dsn}: {exc}") from exc
        return "" if row is None else str(row[0])
    command = [_client_tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    command += ["-d", dsn, "-c", statement]
    result = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise LocalServiceError(
            f"SQL {statement!r} failed on {dsn} (psql exit code {result.returncode}): "
            f"{result.stderr.strip()}"
        )
    return result.stdout.strip()


# --------------------------------------------------------------------------- stopping


def _is_our_postmaster(pid: int, datadir: Path | None) -> bool:
    """Whether ``pid`` is a live postmaster serving ``datadir`` (guards against pid reuse)."""
    if datadir is None or not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc on this system: trust the pid file
    return os.fsencode(datadir) in argv


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited; reaps it if it was our child (pytest-started servers)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return not pid_alive(pid)


def _terminate(pid: int) -> None:
    """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL, each with a deadline."""
    for sig, timeout in (
        (signal.SIGINT, STOP_TIMEOUT),
        (signal.SIGQUIT, 10.0),  # immediate shutdown; the postmaster SIGKILLs children at 5 s
        (signal.SIGKILL, 5.0),
    ):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            os.kill(pid, signal.SIGCONT)  # a frozen (SIGSTOPped) server must wake to react
        if wait_until(lambda: _gone(pid), timeout=timeout, interval=0.1):
            return
        _say(f"PostgreSQL (pid {pid}) still running {timeout:.0f} s after {sig.name}")
    raise LocalServiceError(f"could not stop PostgreSQL (pid {pid}) even with SIGKILL")


def _postmaster_pids(state: _State, datadir: Path | None) -> set[int]:
    """Candidate postmaster pids: our pid file and the cluster's own postmaster.pid."""
    pids = {read_pid(state.pid)}
    if datadir is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.add(int((datadir / "postmaster.pid").read_text().splitlines()[0]))
    return {pid for pid in pids if pid is not None}


def _teardown(state: _State) -> bool:
    """Stop whatever this state dir records and delete its data. True if anything was there."""
    datadir = state.recorded_datadir()
    found = False
    for pid in _postmaster_pids(state, datadir):
        if _is_our_postmaster(pid, datadir):
            _say(f"stopping PostgreSQL (pid {pid})")
            _terminate(pid)
            found = True
    if datadir is not None and datadir.exists():
        if not datadir.name.startswith(DATADIR_PREFIX):
            raise LocalServiceError(
                f"refusing to delete {datadir} named in {state.datadir}: it does not look like "
                f"a data directory this script created ({DATADIR_PREFIX}*); check that file"
            )
        shutil.rmtree(datadir)
        found = True
    for path in (state.dsn, state.pid, state.datadir, state.kept):
        path.unlink(missing_ok=True)
    return found


def _stop_keeping_data(state: _State) -> None:
    """Stop the server this state dir records (fast shutdown, as ``stop``), keep its data."""
    dsn = running_dsn()
    datadir = state.recorded_datadir()
    for pid in _postmaster_pids(state, datadir):
        if _is_our_postmaster(pid, datadir):
            _say(f"stopping PostgreSQL (pid {pid}), keeping its data in {datadir}")
            _terminate(pid)
    if dsn is None or datadir is None or not datadir.is_dir():
        if kept_dsn() is None:
            _say("no local PostgreSQL was running; nothing to keep")
        return
    state.kept.write_text(f"{dsn}\n")
    state.kept.chmod(0o600)
    for path in (state.dsn, state.pid):
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- starting


def _initdb(bindir: Path, datadir: Path, account: pwd.struct_passwd | None, log: IO[bytes],
            password: str) -> None:
    """Create a new cluster in ``datadir``; output goes to the log. TCP connections need the
    password (as on a real server, so a wrong one is refused); the local socket is trusted."""
    with tempfile.NamedTemporaryFile("w", prefix="checkpoint-pg-pw-", delete=False) as pwfile:
        pwfile.write(password + "\n")
    os.chmod(pwfile.name, 0o644)
    command = [str(bindir / "initdb"), "-D", str(datadir), f"-U{SUPERUSER}"]
    command += ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile.name}",
                "--encoding=UTF8", "--locale=C", "--no-sync"]
    try:
        _run_initdb(command, datadir, account, log)
    finally:
        os.unlink(pwfile.name)


def _run_initdb(command: list[str], datadir: Path, account: pwd.struct_passwd | None,
                log: IO[bytes]) -> None:
    _log_marker(log, f"initdb -D {datadir}")
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
            timeout=INITDB_TIMEOUT,
            **_run_as(account),
        )
    except subprocess.TimeoutExpired as exc:
        raise LocalServiceError(f"initdb did not finish within {INITDB_TIMEOUT:.0f} s") from exc
    if result.returncode != 0:
        raise LocalServiceError(f"initdb failed with exit code {result.returncode} in {datadir}")


def _launch(
    bindir: Path, datadir: Path, port: int, account: pwd.struct_passwd | None, log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """Start the postmaster in its own session (it outlives this process); output to the log."""
    command = [str(bindir / "postgres"), "-D", str(datadir), "-h", HOST, "-p", str(port)]
    command += ["-k", str(datadir)]
    for name, value in SERVER_SETTINGS.items():
        command += ["-c", f"{name}={value}"]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd="/",
        start_new_session=True,
        **_run_as(account),
    )


def _log_marker(log: IO[bytes], text: str) -> None:
    log.write(f"=== postgres_local: {text} ===\n".encode())
    log.flush()


def _log_since(path: Path, offset: int) -> str:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path, offset: int,
                password: str) -> bool:
    """Wait until the new server accepts connections.

    Returns False if it exited because the port was taken (the caller retries elsewhere);
    raises :class:`LocalServiceError` for any other death or on timeout.
    """
    admin = _dsn(port, "postgres", password)

    def died() -> str | None:
        if proc.poll() is None:
            return None
        return f"PostgreSQL exited during startup with exit code {proc.returncode}"

    try:
        ready = wait_until(
            lambda: proc.poll() is None and _ping(admin),
            timeout=READY_TIMEOUT,
            interval=0.1,
            failed=died,
        )
    except LocalServiceError:
        if "Address already in use" in _log_since(log_path, offset):
            return False
        raise
    if not ready:
        raise LocalServiceError(
            f"PostgreSQL (pid {proc.pid}) did not accept connections on {HOST}:{port} "
            f"within {READY_TIMEOUT:.0f} s"
        )
    return True


def _launch_on_free_port(
    state: _State,
    bindir: Path,
    datadir: Path,
    account: pwd.struct_passwd | None,
    log: IO[bytes],
    password: str,
    pick_port: Callable[[], int] = free_port,
) -> int:
    """Start the server on a free loopback port, retrying if another program grabs it."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = pick_port()
        _log_marker(log, f"starting postgres on {HOST}:{port} (attempt {attempt})")
        offset = state.log.stat().st_size
        proc = _launch(bindir, datadir, port, account, log)
        state.pid.write_text(f"{proc.pid}\n")
        if _wait_ready(proc, port, state.log, offset, password):
            return port
        _say(f"port {port} was taken before PostgreSQL could bind it; trying another port")
    raise LocalServiceError(
        f"PostgreSQL could not bind a loopback port: 'Address already in use' on "
        f"{PORT_ATTEMPTS} different ports in a row"
    )


def _check_identity(dsn: str, datadir: Path) -> None:
    """Make sure the server answering ``dsn`` is the one we just started, not a neighbour."""
    served = _sql(dsn, "SHOW data_directory")
    if os.path.realpath(served) != os.path.realpath(datadir):
        raise LocalServiceError(
            f"{dsn} is answered by a different PostgreSQL (data directory {served}), "
            f"not the one just started in {datadir}"
        )


def _with_log(message: str, log: Path) -> str:
    return f"{message}\n--- last lines of {log} ---\n{log_tail(log)}"


def _start_fresh(state: _State, bindir: Path, account: pwd.struct_passwd | None) -> str:
    """initdb + launch + create the database; on any failure leave nothing behind."""
    began = time.monotonic()
    state.log.write_bytes(b"")
    with state.log.open("ab") as log:
        try:
            datadir = _make_datadir(account)
            state.datadir.write_text(f"{datadir}\n")
            password = secrets.token_urlsafe(18)
            _initdb(bindir, datadir, account, log, password)
            port = _launch_on_free_port(state, bindir, datadir, account, log, password)
            _check_identity(_dsn(port, "postgres", password), datadir)
            _sql(_dsn(port, "postgres", password),
                 f"CREATE DATABASE {DATABASE} OWNER {SUPERUSER}")
        except Exception as exc:
            _say("start failed; stopping anything it started and deleting its data")
            _teardown(state)
            raise LocalServiceError(_with_log(str(exc), state.log)) from exc
        except BaseException:  # Ctrl-C and friends: still leave nothing running
            _teardown(state)
            raise
    dsn = _dsn(port, DATABASE, password)
    state.dsn.write_text(f"{dsn}\n")
    state.dsn.chmod(0o600)
    _say(
        f"PostgreSQL ready in {time.monotonic() - began:.1f} s on {HOST}:{port} "
        f"(data {datadir}, log {state.log})"
    )
    return dsn


def _resume_kept(state: _State, bindir: Path, account: pwd.struct_passwd | None,
                 dsn: str) -> str:
    """Start the kept cluster again on its recorded port; the DSN stays the same. A port still
    taken is retried for a while; on failure the server is stopped but its data stays."""
    began = time.monotonic()
    datadir = state.recorded_datadir()
    assert datadir is not None
    address = urllib.parse.urlsplit(dsn)
    port, password = int(address.port or 0), urllib.parse.unquote(address.password or "")
    deadline = time.monotonic() + RESUME_PORT_WAIT
    with state.log.open("ab") as log:
        try:
            while True:
                _log_marker(log, f"resuming postgres on {HOST}:{port} with data {datadir}")
                offset = state.log.stat().st_size
                proc = _launch(bindir, datadir, port, account, log)
                state.pid.write_text(f"{proc.pid}\n")
                if _wait_ready(proc, port, state.log, offset, password):
                    break
                if time.monotonic() >= deadline:
                    raise LocalServiceError(f"port {port} stayed taken for "
                                            f"{RESUME_PORT_WAIT:.0f} s")
                _say(f"port {port} still taken; retrying")
                time.sleep(1.0)
            _check_identity(_dsn(port, "postgres", password), datadir)
        except BaseException as exc:
            for pid in _postmaster_pids(state, datadir):
                if _is_our_postmaster(pid, datadir):
                    _terminate(pid)
            state.pid.unlink(missing_ok=True)
            if isinstance(exc, Exception):
                raise LocalServiceError(_with_log(
                    f"could not resume the kept PostgreSQL on port {port}: {exc} (its data is "
                    f"still kept in {datadir}; a plain stop deletes it)", state.log)) from exc
            raise
    state.dsn.write_text(f"{dsn}\n")
    state.dsn.chmod(0o600)
    state.kept.unlink(missing_ok=True)
    _say(f"PostgreSQL resumed in {time.monotonic() - began:.1f} s on {HOST}:{port} "
         f"(data {datadir}, log {state.log})")
    return dsn


# --------------------------------------------------------------------------- public API


def kept_dsn() -> str | None:
    """The DSN of a server stopped with ``keep_data=True`` that ``start`` will resume."""
    state = _State.current()
    datadir = state.recorded_datadir()
    if datadir is None or not datadir.is_dir():
        return None
    return _read_text(state.kept)


def running_dsn() -> str | None:
    """The DSN of the server this state dir records, if it is alive and answers; else None."""
    state = _State.current()
    dsn = _read_text(state.dsn)
    pid = read_pid(state.pid)
    if dsn is None or pid is None or not _is_our_postmaster(pid, state.recorded_datadir()):
        return None
    return dsn if _ping(dsn) else None


def start() -> str:
    """Start a fresh throwaway server (or reuse the running one); return its DSN.

    After ``stop(keep_data=True)`` it resumes that server instead: same data, port and DSN.

    Raises :class:`LocalServiceError` with the log tail when it cannot start; in that case
    nothing is left running and the data directory is deleted (kept data stays kept).
    """
    state = _State.current()
    with _locked(state):
        dsn = running_dsn()
        if dsn is not None:
            _say(f"PostgreSQL already running: {dsn}")
            return dsn
        kept = kept_dsn()
        if kept is not None:
            return _resume_kept(state, ensure_bindir(), _server_account(), kept)
        if _teardown(state):
            _say("cleaned up a dead or unresponsive server left by an earlier run")
        bindir = ensure_bindir()
        account = _server_account()
        return _start_fresh(state, bindir, account)


def stop(*, keep_data: bool = False) -> None:
    """Stop the server (if any) and delete its data directory, DSN and pid files.

    With ``keep_data`` the data directory stays, and the next :func:`start` resumes the same
    server on the same port with the same DSN: an outage, not a teardown.
    """
    state = _State.current()
    with _locked(state):
        if keep_data:
            _stop_keeping_data(state)
        elif not _teardown(state):
            _say("no local PostgreSQL was running")


def restart_after(seconds: float) -> str:
    """An outage: stop the running server keeping its data, wait, start it again; returns its
    (unchanged) DSN."""
    if running_dsn() is None:
        raise LocalServiceError("no local PostgreSQL is running: nothing to restart")
    stop(keep_data=True)
    time.sleep(seconds)
    return start()


# --------------------------------------------------------------------------- CLI

EXIT_FAILED = 1
EXIT_STOPPED = 3
EXIT_INTERRUPTED = 130


def _cmd_start() -> int:
    print(start(), flush=True)
    return 0


def _cmd_stop() -> int:
    stop()
    return 0


def _cmd_stop_keeping_data() -> int:
    stop(keep_data=True)
    return 0


def _cmd_status() -> int:
    dsn = running_dsn()
    if dsn is not None:
        print(f"running {dsn}")
        return 0
    print("stopped")
    kept = kept_dsn()
    if kept is not None:
        _say(f"data kept: the next start resumes {kept}")
    state = _State.current()
    pid = read_pid(state.pid)
    if pid is not None and _is_our_postmaster(pid, state.recorded_datadir()):
        _say(
            f"PostgreSQL pid {pid} exists but does not answer; see {state.log} "
            "and run: python scripts/postgres_local.py stop"
        )
    return EXIT_STOPPED


def _cmd_dsn() -> int:
    dsn = running_dsn()
    if dsn is None:
        _say(
            "no local PostgreSQL is running; start one with: python scripts/postgres_local.py start"
        )
        return EXIT_STOPPED
    print(dsn)
    return 0


_COMMANDS: dict[str, Callable[[], int]] = {
    "start": _cmd_start,
    "stop": _cmd_stop,
    "status": _cmd_status,
    "dsn": _cmd_dsn,
}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(description="Throwaway local PostgreSQL for tests and demos.")
    parser.add_argument("command", choices=list(_COMMANDS))
    parser.add_argument("--keep-data", action="store_true",
                        help="with stop: keep the data; the next start resumes the same server")
    args = parser.parse_args(argv)
    if args.keep_data and args.command != "stop":
        parser.error("--keep-data goes with stop only")
    command = _cmd_stop_keeping_data if args.keep_data else _COMMANDS[args.command]
    try:
        return command()
    except LocalServiceError as exc:
        _say(f"'{args.command}' FAILED: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say(f"'{args.command}' interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
