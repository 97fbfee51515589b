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

The pytest fixtures use :func:`start`, :func:`stop` and :func:`running_dsn`. What all the
database launchers share (state files, outages, the CLI) is in ``database_server.py``.
"""

from __future__ import annotations

import contextlib
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
import urllib.parse
from pathlib import Path
from typing import IO

import database_cli
from database_server import HOST, LocalDatabase, ServerFiles
from localproc import LocalServiceError, pid_alive, wait_until
from system_server import ensure_installed

try:
    import psycopg
except ImportError:  # e.g. the system python; fall back to the pg_isready/psql clients
    psycopg = None  # type: ignore[assignment]

DATABASE = "checkpoint"
SUPERUSER = "postgres"
OS_USER = "postgres"
PACKAGE = "postgresql"
STOP_TIMEOUT = 30.0
INITDB_TIMEOUT = 120.0
DATADIR_PREFIX = "checkpoint-pg-"
#: Tests trade durability for speed; CONSUMER_PG_DURABLE=1 (set by `make bench`) keeps
#: PostgreSQL's durable defaults, so store benchmarks pay for real commits.
DURABLE = bool(os.environ.get("CONSUMER_PG_DURABLE"))
NON_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
#: The benchmarks' server caches like the benchmarks' MariaDB (a 1 GB buffer pool), not with
#: PostgreSQL's 128 MB default for small installs: 10 million digest keys ran at 0.65x of an
#: empty table with 1 GB, 0.56x with 128 MB. The tests' servers keep 128 MB: many run at once.
#: CONSUMER_PG_SHARED_BUFFERS sizes it otherwise (e.g. 3GB).
SHARED_BUFFERS = os.environ.get("CONSUMER_PG_SHARED_BUFFERS") or ("1GB" if DURABLE else "128MB")
SERVER_SETTINGS = {
    **({} if DURABLE else NON_DURABLE),
    "max_connections": "200",
    "shared_buffers": SHARED_BUFFERS,
}


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
    return ensure_installed(
        find_bindir, package=PACKAGE, programs="PostgreSQL server programs (initdb, postgres)",
        looked_in="via pg_config or in /usr/lib/postgresql/*/bin", say=_SERVER.say)


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


# --------------------------------------------------------------------------- data directory


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


def _check_identity(dsn: str, datadir: Path) -> None:
    """Make sure the server answering ``dsn`` is the one we just started, not a neighbour."""
    served = _sql(dsn, "SHOW data_directory")
    if os.path.realpath(served) != os.path.realpath(datadir):
        raise LocalServiceError(
            f"{dsn} is answered by a different PostgreSQL (data directory {served}), "
            f"not the one just started in {datadir}"
        )


# --------------------------------------------------------------------------- stopping


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited; reaps it if it was our child (pytest-started servers)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return not pid_alive(pid)


# --------------------------------------------------------------------------- the server


class _PostgreSQL(LocalDatabase[Path]):
    """PostgreSQL from a bindir: initdb, then the postmaster; the superuser's DSN."""

    def install(self) -> Path:
        return ensure_bindir()

    def create(self, files: ServerFiles, programs: Path, account: pwd.struct_passwd | None,
               log: IO[bytes]) -> str:
        """initdb + launch + create the database."""
        datadir = _make_datadir(account)
        files.datadir.write_text(f"{datadir}\n")
        password = secrets.token_urlsafe(18)
        self._initdb(programs, datadir, account, log, password)
        port = self.launch_on_free_port(
            files, log, lambda port: self._launch(programs, datadir, port, account, log),
            lambda port: _ping(_dsn(port, "postgres", password)))
        _check_identity(_dsn(port, "postgres", password), datadir)
        _sql(_dsn(port, "postgres", password), f"CREATE DATABASE {DATABASE} OWNER {SUPERUSER}")
        return _dsn(port, DATABASE, password)

    def resume(self, files: ServerFiles, programs: Path, account: pwd.struct_passwd | None,
               log: IO[bytes], datadir: Path, address: str) -> None:
        parts = urllib.parse.urlsplit(address)
        port, password = int(parts.port or 0), urllib.parse.unquote(parts.password or "")
        self.launch_on_port(
            files, log, port, lambda port: self._launch(programs, datadir, port, account, log),
            lambda port: _ping(_dsn(port, "postgres", password)))
        _check_identity(_dsn(port, "postgres", password), datadir)

    def ping(self, address: str) -> bool:
        return _ping(address)

    def serves(self, arguments: list[bytes] | None, datadir: Path) -> bool:
        # No /proc on this system: trust the pid file.
        return arguments is None or os.fsencode(datadir) in arguments

    def server_pids(self, files: ServerFiles, datadir: Path | None) -> set[int]:
        """Our pid file and the cluster's own postmaster.pid."""
        pids = super().server_pids(files, datadir)
        if datadir is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pids.add(int((datadir / "postmaster.pid").read_text().splitlines()[0]))
        return pids

    def terminate(self, pid: int) -> None:
        """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL, each with a
        deadline."""
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
            self.say(f"PostgreSQL (pid {pid}) still running {timeout:.0f} s after {sig.name}")
        raise LocalServiceError(f"could not stop PostgreSQL (pid {pid}) even with SIGKILL")

    def _initdb(self, bindir: Path, datadir: Path, account: pwd.struct_passwd | None,
                log: IO[bytes], password: str) -> None:
        """Create a new cluster in ``datadir``. TCP connections need the password (as on a real
        server, so a wrong one is refused); the local socket is trusted."""
        with tempfile.NamedTemporaryFile("w", prefix="checkpoint-pg-pw-", delete=False) as pwfile:
            pwfile.write(password + "\n")
        os.chmod(pwfile.name, 0o644)
        command = [str(bindir / "initdb"), "-D", str(datadir), f"-U{SUPERUSER}"]
        command += ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile.name}",
                    "--encoding=UTF8", "--locale=C", "--no-sync"]
        try:
            self.run_setup(command, what="initdb", datadir=datadir, timeout=INITDB_TIMEOUT,
                           account=account, log=log)
        finally:
            os.unlink(pwfile.name)

    def _launch(self, bindir: Path, datadir: Path, port: int, account: pwd.struct_passwd | None,
                log: IO[bytes]) -> subprocess.Popen[bytes]:
        command = [str(bindir / "postgres"), "-D", str(datadir), "-h", HOST, "-p", str(port)]
        command += ["-k", str(datadir)]
        for name, value in SERVER_SETTINGS.items():
            command += ["-c", f"{name}={value}"]
        return self.spawn(command, account=account, log=log)


_SERVER = _PostgreSQL(
    title="PostgreSQL", script="postgres_local", state_name="postgres", address_name="dsn",
    process_name="postgres", os_user=OS_USER, datadir_prefix=DATADIR_PREFIX, ready_timeout=30.0)


# --------------------------------------------------------------------------- public API


def kept_dsn() -> str | None:
    """The DSN of a server stopped with ``keep_data=True`` that ``start`` will resume."""
    return _SERVER.kept_address()


def running_dsn() -> str | None:
    """The DSN of the server this state dir records, if it is alive and answers; else None."""
    return _SERVER.running_address()


def start() -> str:
    """Start a fresh throwaway server (or reuse the running one); return its DSN.

    After ``stop(keep_data=True)`` it resumes that server instead: same data, port and DSN.

    Raises :class:`LocalServiceError` with the log tail when it cannot start; in that case
    nothing is left running and the data directory is deleted (kept data stays kept).
    """
    return _SERVER.start()


def stop(*, keep_data: bool = False) -> None:
    """Stop the server (if any) and delete its data directory, DSN and pid files.

    With ``keep_data`` the data directory stays, and the next :func:`start` resumes the same
    server on the same port with the same DSN: an outage, not a teardown.
    """
    _SERVER.stop(keep_data=keep_data)


def restart_after(seconds: float) -> str:
    """An outage: stop the running server keeping its data, wait, start it again; returns its
    (unchanged) DSN."""
    return _SERVER.restart_after(seconds)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    return database_cli.main(_SERVER, argv)


if __name__ == "__main__":
    sys.exit(main())
