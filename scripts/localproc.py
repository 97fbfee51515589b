"""Shared plumbing for the local Kafka and PostgreSQL launchers.

Both launchers keep their state (pid, address, logs, data) in a folder under
``.local/`` at the repository root, or under ``$CONSUMER_LOCAL_STATE`` when set,
so ``start``, ``status`` and ``stop`` can run from separate shells.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class LocalServiceError(Exception):
    """A local server could not be started, reached or stopped."""


def state_dir(name: str) -> Path:
    """Folder holding one local service's pid file, address file, logs and data."""
    base = Path(os.environ.get("CONSUMER_LOCAL_STATE", REPO_ROOT / ".local"))
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
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


def read_pid(path: Path) -> int | None:
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
