"""The life of a throwaway local database server: state files, start, stop, outages, the CLI.

The PostgreSQL and MariaDB launchers differ in how a server is made, launched and asked; what
they do around that is the same and lives here, in :class:`LocalDatabase`:

- ``start`` reuses a server that runs and answers, resumes one that ``stop(keep_data=True)``
  left, or else stops and deletes whatever an earlier run left and creates a brand-new server
  on a free loopback port in a fresh temporary data directory. A start that fails leaves
  nothing running and no data behind (kept data stays kept).
- ``stop`` stops the server and deletes its data; with ``keep_data`` the data stays and the
  next ``start`` brings the same server back on the same port with the same address: an outage.
- The state folder (``state_dir(name)``) holds the address file (``dsn`` or ``url``, mode
  0600), ``pid``, ``datadir``, ``kept`` (after ``stop --keep-data``), ``lock`` and the log
  (``<name>.log``, kept after ``stop`` for post-mortems).
- Only addresses go to stdout; progress and errors go to stderr. The command line is in
  ``database_cli.py``.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import sys
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Generic

from localproc import (
    LocalServiceError,
    free_port,
    locked,
    log_tail,
    pid_alive,
    process_arguments,
    read_pid,
    read_state_file,
    state_dir,
    stop_pid,
    wait_until,
    write_private,
)
from system_server import Programs, run_as, server_account

HOST = "127.0.0.1"
#: What both servers write to their log when their port is taken.
PORT_TAKEN = "already in use"


@dataclass(frozen=True)
class ServerFiles:
    """Paths of the files that let start, status and stop run from separate shells."""

    root: Path
    #: The name of the file holding the address clients use ("dsn", "url").
    address_name: str
    log_name: str

    @property
    def address(self) -> Path:
        return self.root / self.address_name

    @property
    def pid(self) -> Path:
        return self.root / "pid"

    @property
    def datadir(self) -> Path:
        return self.root / "datadir"

    @property
    def kept(self) -> Path:
        """Written by ``stop(keep_data=True)``: the address the next start resumes."""
        return self.root / "kept"

    @property
    def log(self) -> Path:
        return self.root / self.log_name

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    def recorded_datadir(self) -> Path | None:
        text = read_state_file(self.datadir)
        return Path(text) if text else None


def with_log_tail(message: str, log: Path) -> str:
    """An error message followed by the last lines of the server's log."""
    return f"{message}\n--- last lines of {log} ---\n{log_tail(log)}"


def _log_since(path: Path, offset: int) -> str:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


#: Starts the server on a port; the server answers on a port.
Launch = Callable[[int], "subprocess.Popen[bytes]"]
Answers = Callable[[int], bool]


class LocalDatabase(ABC, Generic[Programs]):
    """One throwaway database server and the state files that track it.

    A subclass says what differs per server (the abstract methods); the steps they share
    (:meth:`run_setup`, :meth:`spawn`, :meth:`launch_on_free_port`, :meth:`launch_on_port`)
    are here for them. ``Programs`` is what :meth:`install` finds (a bindir, program paths).
    """

    def __init__(self, *, title: str, script: str, state_name: str, address_name: str,
                 process_name: str, os_user: str, datadir_prefix: str, ready_timeout: float,
                 port_attempts: int = 3, resume_port_wait: float = 30.0) -> None:
        self.title = title  # "PostgreSQL": in messages
        self.script = script  # "postgres_local": prefixes stderr lines and log markers
        self.state_name = state_name
        self.address_name = address_name
        self.process_name = process_name  # "postgres": in log markers
        self.os_user = os_user
        self.datadir_prefix = datadir_prefix
        self.ready_timeout = ready_timeout
        self.port_attempts = port_attempts
        #: How long a resumed server waits for its recorded port to be free again.
        self.resume_port_wait = resume_port_wait

    # ----------------------------------------------------------------------- what differs

    @abstractmethod
    def install(self) -> Programs:
        """Find the server's programs, installing them first if need be."""

    @abstractmethod
    def create(self, files: ServerFiles, programs: Programs,
               account: pwd.struct_passwd | None, log: IO[bytes]) -> str:
        """Make a brand-new server and start it (recording its data directory in
        ``files.datadir``, its pid in ``files.pid``); return the address clients use."""

    @abstractmethod
    def resume(self, files: ServerFiles, programs: Programs, account: pwd.struct_passwd | None,
               log: IO[bytes], datadir: Path, address: str) -> None:
        """Start the kept server in ``datadir`` again on the port of ``address``."""

    @abstractmethod
    def ping(self, address: str) -> bool:
        """Whether a client gets in with ``address`` right now."""

    @abstractmethod
    def serves(self, arguments: list[bytes] | None, datadir: Path) -> bool:
        """Whether a live process with these arguments (None: unknown) serves ``datadir``."""

    def server_pids(self, files: ServerFiles, datadir: Path | None) -> set[int]:
        """The pids that may be this server's (each is checked with :meth:`serves`)."""
        pid = read_pid(files.pid)
        return set() if pid is None else {pid}

    def terminate(self, pid: int) -> None:
        """Stop the server process ``pid`` (SIGTERM, then SIGKILL after 30 s)."""
        stop_pid(pid, timeout=30.0)

    # ----------------------------------------------------------------------- shared steps

    def say(self, message: str) -> None:
        """Progress and errors go to stderr; stdout carries only addresses."""
        print(f"{self.script}: {message}", file=sys.stderr, flush=True)

    def mark(self, log: IO[bytes], text: str) -> None:
        """A line in the server's log saying what this script does next."""
        log.write(f"=== {self.script}: {text} ===\n".encode())
        log.flush()

    def run_setup(self, command: list[str], *, what: str, datadir: Path, timeout: float,
                  account: pwd.struct_passwd | None, log: IO[bytes]) -> None:
        """Run a program that prepares ``datadir`` (initdb, install-db); output to the log."""
        self.mark(log, f"{what} in {datadir}")
        try:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd="/", timeout=timeout,
                                    **run_as(account))
        except subprocess.TimeoutExpired as exc:
            raise LocalServiceError(f"{what} did not finish within {timeout:.0f} s") from exc
        if result.returncode != 0:
            raise LocalServiceError(
                f"{what} failed with exit code {result.returncode} in {datadir}")

    def spawn(self, command: list[str], *, account: pwd.struct_passwd | None,
              log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start the server in its own session (it outlives this process); output to the log."""
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd="/", start_new_session=True,
                                **run_as(account))

    def launch_on_free_port(self, files: ServerFiles, log: IO[bytes], launch: Launch,
                            answers: Answers) -> int:
        """Start the server on a free loopback port, trying another if someone grabs it first;
        return the port it answers on."""
        for attempt in range(1, self.port_attempts + 1):
            port = free_port()
            marker = f"starting {self.process_name} on {HOST}:{port} (attempt {attempt})"
            if self._launch_once(files, log, port, launch, answers, marker):
                return port
            self.say(f"port {port} was taken before {self.title} could bind it; "
                     "trying another port")
        raise LocalServiceError(
            f"{self.title} could not bind a loopback port: 'Address already in use' on "
            f"{self.port_attempts} different ports in a row")

    def launch_on_port(self, files: ServerFiles, log: IO[bytes], port: int, launch: Launch,
                       answers: Answers) -> None:
        """Start the server on ``port`` (its recorded one), retrying while it is still taken."""
        deadline = time.monotonic() + self.resume_port_wait
        marker = (f"resuming {self.process_name} on {HOST}:{port} "
                  f"with data {files.recorded_datadir()}")
        while not self._launch_once(files, log, port, launch, answers, marker):
            if time.monotonic() >= deadline:
                raise LocalServiceError(
                    f"port {port} stayed taken for {self.resume_port_wait:.0f} s")
            self.say(f"port {port} still taken; retrying")
            time.sleep(1.0)

    def _launch_once(self, files: ServerFiles, log: IO[bytes], port: int, launch: Launch,
                     answers: Answers, marker: str) -> bool:
        self.mark(log, marker)
        offset = files.log.stat().st_size
        process = launch(port)
        files.pid.write_text(f"{process.pid}\n")
        return self._wait_ready(process, port, answers, files.log, offset)

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int, answers: Answers,
                    log_path: Path, offset: int) -> bool:
        """Wait until the new server answers. False: it died because its port was taken (the
        caller tries again); any other death, or no answer in time, raises."""
        def died() -> str | None:
            if process.poll() is None:
                return None
            return f"{self.title} exited during startup with exit code {process.returncode}"

        try:
            ready = wait_until(lambda: process.poll() is None and answers(port),
                               timeout=self.ready_timeout, interval=0.1, failed=died)
        except LocalServiceError:
            if PORT_TAKEN in _log_since(log_path, offset):
                return False
            raise
        if not ready:
            raise LocalServiceError(
                f"{self.title} (pid {process.pid}) did not accept connections on {HOST}:{port} "
                f"within {self.ready_timeout:.0f} s")
        return True

    # ----------------------------------------------------------------------- the life cycle

    def files(self) -> ServerFiles:
        return ServerFiles(state_dir(self.state_name), self.address_name,
                           f"{self.state_name}.log")

    def running_address(self) -> str | None:
        """The address of the server the state folder records, if it is alive and answers."""
        return self._running_address(self.files())

    def kept_address(self) -> str | None:
        """The address of a server stopped with ``keep_data=True`` that ``start`` resumes."""
        files = self.files()
        datadir = files.recorded_datadir()
        if datadir is None or not datadir.is_dir():
            return None
        return read_state_file(files.kept)

    def start(self) -> str:
        """Reuse the running server, resume a kept one or start a fresh one; its address."""
        files = self.files()
        with locked(files.lock):
            address = self._running_address(files)
            if address is not None:
                self.say(f"{self.title} already running: {address}")
                return address
            kept = self.kept_address()
            if kept is not None:
                return self._resume_kept(files, kept)
            if self._teardown(files):
                self.say("cleaned up a dead or unresponsive server left by an earlier run")
            return self._start_fresh(files)

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the server and delete its data; with ``keep_data`` the next start resumes it."""
        files = self.files()
        with locked(files.lock):
            if keep_data:
                self._stop_keeping_data(files)
            elif not self._teardown(files):
                self.say(f"no local {self.title} was running")

    def restart_after(self, seconds: float) -> str:
        """An outage: stop keeping the data, wait, start again; returns the (same) address."""
        if self.running_address() is None:
            raise LocalServiceError(f"no local {self.title} is running: nothing to restart")
        self.stop(keep_data=True)
        time.sleep(seconds)
        return self.start()

    def silent_pid(self) -> int | None:
        """The pid of a live server process of ours that does not answer (for ``status``)."""
        files = self.files()
        pid = read_pid(files.pid)
        if pid is None or not self._is_ours(pid, files.recorded_datadir()):
            return None
        return None if self._running_address(files) else pid

    def _running_address(self, files: ServerFiles) -> str | None:
        address = read_state_file(files.address)
        pid = read_pid(files.pid)
        if address is None or pid is None or not self._is_ours(pid, files.recorded_datadir()):
            return None
        return address if self.ping(address) else None

    def _is_ours(self, pid: int, datadir: Path | None) -> bool:
        """``pid`` is a live server of ``datadir``, not a recycled pid."""
        return datadir is not None and pid_alive(pid) and self.serves(
            process_arguments(pid), datadir)

    def _account(self) -> pwd.struct_passwd | None:
        return server_account(self.os_user, why=f"{self.title} should not run as root",
                              say=self.say)

    def _start_fresh(self, files: ServerFiles) -> str:
        programs = self.install()
        account = self._account()
        began = time.monotonic()
        files.log.write_bytes(b"")
        with files.log.open("ab") as log:
            try:
                address = self.create(files, programs, account, log)
            except Exception as exc:
                self.say("start failed; stopping anything it started and deleting its data")
                self._teardown(files)
                raise LocalServiceError(with_log_tail(str(exc), files.log)) from exc
            except BaseException:  # Ctrl-C and friends: still leave nothing running
                self._teardown(files)
                raise
        write_private(files.address, address)
        self.say(f"{self.title} ready in {time.monotonic() - began:.1f} s on "
                 f"{HOST}:{urllib.parse.urlsplit(address).port} "
                 f"(data {files.recorded_datadir()}, log {files.log})")
        return address

    def _resume_kept(self, files: ServerFiles, address: str) -> str:
        """Start the kept server again on its recorded port; its address stays the same. On
        failure the server is stopped but its data stays kept."""
        programs = self.install()
        account = self._account()
        began = time.monotonic()
        datadir = files.recorded_datadir()
        if datadir is None:
            raise LocalServiceError(f"no data directory recorded in {files.datadir}")
        port = urllib.parse.urlsplit(address).port
        with files.log.open("ab") as log:
            try:
                self.resume(files, programs, account, log, datadir, address)
            except BaseException as exc:
                self._stop_servers(files, datadir)
                if isinstance(exc, Exception):
                    raise LocalServiceError(with_log_tail(
                        f"could not resume the kept {self.title} on port {port}: {exc} (its "
                        f"data is still kept in {datadir}; a plain stop deletes it)",
                        files.log)) from exc
                raise
        write_private(files.address, address)
        files.kept.unlink(missing_ok=True)
        self.say(f"{self.title} resumed in {time.monotonic() - began:.1f} s on {HOST}:{port} "
                 f"(data {datadir}, log {files.log})")
        return address

    def _stop_servers(self, files: ServerFiles, datadir: Path | None, note: str = "") -> bool:
        """Stop every process that is this server; True if there was one."""
        found = False
        for pid in self.server_pids(files, datadir):
            if self._is_ours(pid, datadir):
                self.say(f"stopping {self.title} (pid {pid}){note}")
                self.terminate(pid)
                found = True
        files.pid.unlink(missing_ok=True)
        return found

    def _stop_keeping_data(self, files: ServerFiles) -> None:
        address = self._running_address(files)
        datadir = files.recorded_datadir()
        self._stop_servers(files, datadir, note=f", keeping its data in {datadir}")
        if address is None or datadir is None or not datadir.is_dir():
            if self.kept_address() is None:
                self.say(f"no local {self.title} was running; nothing to keep")
            return
        write_private(files.kept, address)
        files.address.unlink(missing_ok=True)

    def _teardown(self, files: ServerFiles) -> bool:
        """Stop whatever the state folder records and delete its data. True if anything was
        there."""
        datadir = files.recorded_datadir()
        found = self._stop_servers(files, datadir)
        if datadir is not None and datadir.exists():
            if not datadir.name.startswith(self.datadir_prefix):
                raise LocalServiceError(
                    f"refusing to delete {datadir} named in {files.datadir}: it does not look "
                    f"like a data directory this script created ({self.datadir_prefix}*); "
                    "check that file")
            shutil.rmtree(datadir, ignore_errors=True)
            found = True
        for path in (files.address, files.pid, files.datadir, files.kept):
            path.unlink(missing_ok=True)
        return found
