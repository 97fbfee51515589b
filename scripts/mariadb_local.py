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
:func:`restart_after`. What all the database launchers share (state files, outages, the CLI)
is in ``database_server.py``.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import IO, NamedTuple

import database_cli
from database_server import HOST, LocalDatabase, ServerFiles
from localproc import LocalServiceError
from system_server import ensure_installed

DATABASE = "checkpoint"
USER = "checkpoint"
OS_USER = "mysql"
PACKAGE = "mariadb-server"
DATADIR_PREFIX = "checkpoint-mariadb-"
INSTALL_DB_TIMEOUT = 120.0
DURABLE = bool(os.environ.get("CONSUMER_DB_DURABLE") or os.environ.get("CONSUMER_PG_DURABLE"))
#: Tests trade durability for speed (the data is thrown away); `make bench` keeps it.
NON_DURABLE = ["--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0"]
#: The benchmarks' server gets a buffer pool sized like a database server's on this kind of
#: machine, not MariaDB's 128 MB default for small installs: InnoDB reads past the operating
#: system's cache, so a processed-keys index larger than the pool costs a disk read per claimed
#: key (make bench's MariaDB run: 36,615 msg/s with 128 MB, 50,368 with 1 GB; 10 million keys:
#: 0.14x against 0.49x of an empty table). The tests' servers keep 128 MB: many run at once.
BUFFER_POOL = "1G" if DURABLE else "128M"
SERVER_OPTIONS = [
    *([] if DURABLE else NON_DURABLE),
    "--skip-name-resolve",
    "--max-connections=300",
    f"--innodb-buffer-pool-size={BUFFER_POOL}",
    "--skip-log-bin",
]


def _url(port: int, password: str) -> str:
    return f"mysql://{USER}:{urllib.parse.quote(password, safe='')}@{HOST}:{port}/{DATABASE}"


def _socket(datadir: Path) -> Path:
    return datadir / "mariadbd.sock"


# --------------------------------------------------------------------------- binaries


class Programs(NamedTuple):
    """MariaDB's server, data-directory maker and client."""

    server: str
    install_db: str
    client: str


def _programs() -> Programs | None:
    """mariadbd, mariadb-install-db and the mariadb client, or None when one is missing."""
    server = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/bin")
    install_db = shutil.which("mariadb-install-db") or shutil.which(
        "mariadb-install-db", path="/usr/bin:/usr/sbin")
    client = shutil.which("mariadb") or shutil.which("mariadb", path="/usr/bin")
    if server and install_db and client:
        return Programs(server, install_db, client)
    return None


def ensure_programs() -> Programs:
    """Find the server programs, installing Debian's ``mariadb-server`` package if root."""
    return ensure_installed(
        _programs, package=PACKAGE,
        programs="MariaDB's programs (mariadbd, mariadb-install-db, mariadb)",
        looked_in="on PATH or in /usr/sbin", say=_SERVER.say)


def _make_datadir(account: pwd.struct_passwd | None) -> Path:
    """A fresh data directory under /tmp (a short socket path) the server's OS user owns."""
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
            [found.client, "--no-defaults", "--protocol=tcp", f"--host={address.hostname}",
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


def _check_identity(client: str, datadir: Path) -> None:
    served = _client(client, datadir, "SELECT @@datadir")
    if os.path.realpath(served) != os.path.realpath(datadir):
        raise LocalServiceError(f"the socket in {datadir} is answered by a MariaDB with data "
                                f"directory {served}, not the one just started")


# --------------------------------------------------------------------------- the server


class _MariaDB(LocalDatabase[Programs]):
    """MariaDB: mariadb-install-db, then mariadbd; a user that may create databases."""

    def install(self) -> Programs:
        return ensure_programs()

    def create(self, files: ServerFiles, programs: Programs,
               account: pwd.struct_passwd | None, log: IO[bytes]) -> str:
        """install-db + launch + create the user and database."""
        datadir = _make_datadir(account)
        files.datadir.write_text(f"{datadir}\n")
        command = [programs.install_db, "--no-defaults", f"--datadir={datadir}",
                   "--skip-test-db", "--auth-root-authentication-method=normal",
                   "--skip-name-resolve"]
        if account is not None:
            command.append(f"--user={account.pw_name}")
        self.run_setup(command, what="mariadb-install-db", datadir=datadir,
                       timeout=INSTALL_DB_TIMEOUT, account=account, log=log)
        port = self.launch_on_free_port(
            files, log, lambda port: self._launch(programs, datadir, port, account, log),
            lambda _port: _answers(programs.client, datadir))
        _check_identity(programs.client, datadir)
        password = secrets.token_urlsafe(18)
        _client(programs.client, datadir, (
            f"CREATE DATABASE {DATABASE}; "
            f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
            f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1'"))
        url = _url(port, password)
        if not _ping_url(url):
            raise LocalServiceError(f"user {USER} cannot connect over TCP on port {port}")
        return url

    def resume(self, files: ServerFiles, programs: Programs, account: pwd.struct_passwd | None,
               log: IO[bytes], datadir: Path, address: str) -> None:
        self.launch_on_port(
            files, log, urllib.parse.urlsplit(address).port or 0,
            lambda port: self._launch(programs, datadir, port, account, log),
            lambda _port: _answers(programs.client, datadir))

    def ping(self, address: str) -> bool:
        return _ping_url(address)

    def serves(self, arguments: list[bytes] | None, datadir: Path) -> bool:
        return arguments is not None and f"--datadir={datadir}".encode() in arguments

    def _launch(self, programs: Programs, datadir: Path, port: int,
                account: pwd.struct_passwd | None, log: IO[bytes]) -> subprocess.Popen[bytes]:
        command = [programs.server, "--no-defaults", f"--datadir={datadir}", f"--port={port}",
                   f"--bind-address={HOST}", f"--socket={_socket(datadir)}",
                   f"--pid-file={datadir / 'mariadbd.pid'}", *SERVER_OPTIONS]
        return self.spawn(command, account=account, log=log)


_SERVER = _MariaDB(
    title="MariaDB", script="mariadb_local", state_name="mariadb", address_name="url",
    process_name="mariadbd", os_user=OS_USER, datadir_prefix=DATADIR_PREFIX,
    ready_timeout=60.0)


# --------------------------------------------------------------------------- public API


def running_url() -> str | None:
    """The URL of the server this state dir records, if it is alive and answers."""
    return _SERVER.running_address()


def kept_url() -> str | None:
    """The URL of a server stopped with ``keep_data=True`` that ``start`` will resume."""
    return _SERVER.kept_address()


def start() -> str:
    """Start a fresh throwaway server (or reuse the running one, or resume a kept one);
    return its URL. Raises LocalServiceError with the log's tail when it cannot."""
    return _SERVER.start()


def stop(*, keep_data: bool = False) -> None:
    """Stop the server and delete its data; with ``keep_data`` the next start resumes it."""
    _SERVER.stop(keep_data=keep_data)


def restart_after(seconds: float) -> str:
    """An outage: stop keeping the data, wait, start again; returns the (same) URL."""
    return _SERVER.restart_after(seconds)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    return database_cli.main(_SERVER, argv)


if __name__ == "__main__":
    sys.exit(main())
