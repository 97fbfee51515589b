"""Shared plumbing for the local server launchers (Kafka, PostgreSQL, MariaDB, registry).

Each launcher keeps its state (pid, address, logs, data) in a folder under
``.local/`` at the repository root, or under ``$CONSUMER_LOCAL_STATE`` when set,
so ``start``, ``status`` and ``stop`` can run from separate shells. Downloaded
programs (jars, distributions) are cached under ``~/.cache/checkpoint-consumer/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The Debian package that gives the JVM launchers their ``java``.
JAVA_PACKAGE = "openjdk-17-jre-headless"


class LocalServiceError(Exception):
    """A local server could not be started, reached or stopped."""


def state_dir(name: str) -> Path:
    """Folder holding one local service's pid file, address file, logs and data."""
    base = Path(os.environ.get("CONSUMER_LOCAL_STATE", REPO_ROOT / ".local"))
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_root(variable: str) -> Path:
    """Folder for downloads that outlive a state folder: ``$variable``, else the user's cache."""
    default = Path.home() / ".cache" / "checkpoint-consumer"
    return Path(os.environ.get(variable, default))


def jvm_options(variable: str, defaults: list[str]) -> list[str]:
    """JVM options: ``$variable`` (split on white space) replaces ``defaults`` when set."""
    return os.environ.get(variable, "").split() or defaults


def require_program(program: str, why: str, *, package: str) -> str:
    """The path of ``program`` on PATH, or an error naming the Debian package that has it."""
    path = shutil.which(program)
    if path is None:
        raise LocalServiceError(
            f"'{program}' is not on PATH; it is needed {why}. "
            f"Install it (Debian: apt-get install -y {package})."
        )
    return path


def read_state_file(path: Path) -> str | None:
    """A state file's text without surrounding white space; None when missing or empty."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def write_private(path: Path, text: str) -> None:
    """Write a state file only its owner may read (it may hold a password)."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(f"{text}\n")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` so two shells (or pytest workers) cannot race."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def running_address(pid_file: Path, address_file: Path) -> str | None:
    """The address a launcher recorded for its server, if the recorded process is alive."""
    pid = read_pid(pid_file)
    if pid is None or not pid_alive(pid):
        return None
    return read_state_file(address_file)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something on this machine holds ``port`` on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.2,
    failed: Callable[[], str | None] = lambda: None,
) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass.

    ``failed`` may return a reason to give up early (for example, the process died);
    it is raised as :class:`LocalServiceError`.
    """
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        reason = failed()
        if reason:
            raise LocalServiceError(reason)
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state where /proc exists.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def process_arguments(pid: int) -> list[bytes] | None:
    """The command line of ``pid``, one item an argument; None where /proc cannot tell."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def read_pid(path: Path) -> int | None:
    """The pid recorded in ``path``; None when missing or not a number."""
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def stop_pid(pid: int, *, timeout: float = 30.0) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not pid_alive(pid), timeout=timeout):
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), timeout=10)
