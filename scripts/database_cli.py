"""The command line of the database launchers (``postgres_local.py``, ``mariadb_local.py``).

    start                # prints the address once a client gets in
    status               # "running <address>" (exit 0) or "stopped" (exit 3)
    dsn                  # the address (exit 0), or exit 3 when nothing runs
    stop [--keep-data]   # stops it and deletes its data (always exit 0); --keep-data: an outage

Only addresses go to stdout; progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from database_server import LocalDatabase
from localproc import LocalServiceError

EXIT_FAILED = 1
EXIT_STOPPED = 3
EXIT_INTERRUPTED = 130


def main(server: LocalDatabase[Any], argv: list[str] | None = None) -> int:
    """Run one command on ``server``; returns the process exit code."""
    parser = argparse.ArgumentParser(
        description=f"Throwaway local {server.title} for tests and demos.")
    parser.add_argument("command", choices=["start", "stop", "status", "dsn"])
    parser.add_argument("--keep-data", action="store_true",
                        help="with stop: keep the data; the next start resumes the same server")
    args = parser.parse_args(argv)
    if args.keep_data and args.command != "stop":
        parser.error("--keep-data goes with stop only")
    commands: dict[str, Callable[[], int]] = {
        "start": lambda: _start(server),
        "stop": lambda: _stop(server, keep_data=args.keep_data),
        "status": lambda: _status(server),
        "dsn": lambda: _address(server),
    }
    try:
        return commands[args.command]()
    except LocalServiceError as exc:
        server.say(f"'{args.command}' FAILED: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        server.say(f"'{args.command}' interrupted")
        return EXIT_INTERRUPTED


def _start(server: LocalDatabase[Any]) -> int:
    print(server.start(), flush=True)
    return 0


def _stop(server: LocalDatabase[Any], *, keep_data: bool) -> int:
    server.stop(keep_data=keep_data)
    return 0


def _status(server: LocalDatabase[Any]) -> int:
    address = server.running_address()
    if address is not None:
        print(f"running {address}")
        return 0
    print("stopped")
    kept = server.kept_address()
    if kept is not None:
        server.say(f"data kept: the next start resumes {kept}")
    pid = server.silent_pid()
    if pid is not None:
        server.say(f"{server.title} pid {pid} exists but does not answer; see "
                   f"{server.files().log} and run: python scripts/{server.script}.py stop")
    return EXIT_STOPPED


def _address(server: LocalDatabase[Any]) -> int:
    address = server.running_address()
    if address is None:
        server.say(f"no local {server.title} is running; start one with: "
                   f"python scripts/{server.script}.py start")
        return EXIT_STOPPED
    print(address)
    return 0
