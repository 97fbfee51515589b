"""Run ``consumer run`` as a real child process, the way operators do, and read what it did.

Used by the demo and by the integration tests.

The route's handler is ``handlers.record`` (one line per handled message in a file), so a test can
count what was handled, and handled twice, even across SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The start of a human log line: its local time, and the milliseconds.
LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


@dataclass
class ConsumerProcess:
    """One ``consumer run`` child with its own config file, record file and log."""

    workdir: Path
    name: str
    config: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    #: The module run with ``python -m``, and arguments before the command (test variants).
    module: list[str] = field(default_factory=lambda: ["consumer"])
    process: subprocess.Popen[bytes] | None = None

    @property
    def record_file(self) -> Path:
        return self.workdir / f"{self.name}.records"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> ConsumerProcess:
        config_path = self.workdir / f"{self.name}.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", *self.module, "run", "--config", str(config_path)],
            cwd=REPO_ROOT,
            env={**os.environ, "RECORD_FILE": str(self.record_file), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def records(self) -> list[tuple[int, int, str]]:
        """(partition, offset, value) of every handled message, in handling order."""
        if not self.record_file.exists():
            return []
        rows = []
        text = self.record_file.read_text()
        # A line being written while we read is incomplete: it has no newline yet.
        for line in text[: text.rfind("\n") + 1].splitlines():
            _topic, partition, offset, value = line.split(" ", 3)
            rows.append((int(partition), int(offset), value))
        return rows

    def partition_events(self) -> list[tuple[str, str, set[int]]]:
        """``(line, event, partitions)`` of this member's "assigned"/"revoked"/"lost" log
        lines, in order."""
        events: list[tuple[str, str, set[int]]] = []
        if not self.log_file.exists():
            return events
        for line in self.log_file.read_text(errors="replace").splitlines():
            for event in ("assigned", "revoked", "lost"):
                marker = f"consumer.engine: {event} "
                if marker in line:
                    parts = {int(p) for p in re.findall(r"\[(\d+)\]", line.split(marker, 1)[1])}
                    events.append((line, event, parts))
        return events

    def owned_partitions(self) -> set[int]:
        """Partitions this member owns now, from its own "assigned"/"revoked"/"lost" log lines."""
        owned: set[int] = set()
        for _line, event, parts in self.partition_events():
            owned = owned | parts if event == "assigned" else owned - parts
        return owned

    def assignments(self) -> list[tuple[int, int]]:
        """``(time_ns, partition)`` of every partition this member was assigned, from its
        "assigned" log lines (their local time, to the millisecond: the clock the handlers'
        ``time.time_ns()`` reads)."""
        found: list[tuple[int, int]] = []
        for line, event, parts in self.partition_events():
            stamp = LOG_TIME.match(line)
            if event != "assigned" or stamp is None:
                continue
            at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
            at_ns = int(at) * 1_000_000_000 + int(stamp.group(2)) * 1_000_000
            found.extend((at_ns, p) for p in sorted(parts))
        return found

    def wait_records(self, count: int, *, timeout: float = 60) -> None:
        wait_for(lambda: len(self.records()) >= count, timeout=timeout,
                 what=f"{self.name} to handle {count} messages ({self.log_tail()})")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout} s: "
                                 f"{self.log_tail()}") from None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop_if_running(self) -> None:
        if self.alive():
            self.kill()


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str,
             interval: float = 0.05) -> None:
    """Poll a condition until it holds; raise AssertionError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def duplicates(records: list[tuple[int, int, str]]) -> int:
    """How many handled messages were handled more than once (extra handlings counted)."""
    counts = Counter((partition, offset) for partition, offset, _ in records)
    return sum(n - 1 for n in counts.values() if n > 1)


def consumer_config(
    bootstrap: str, group: str, topic: str, *, handler: str = "handlers.record:handle",
    every_messages: int | None = 500, every_seconds: float | None = None,
    synchronous_commits: bool = False, store: str = "none", **kafka: Any,
) -> dict[str, Any]:
    """A config for ``consumer run`` with test-friendly group timings (no store unless
    ``store`` names one)."""
    return {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": group,
                  "session_timeout_ms": 6000,
                  # Members notice a rebalance at their next heartbeat, and a rewound
                  # partition (a retry, a dead letter) is fetched again once the fetch in
                  # flight returns: keep tests quick.
                  "librdkafka": {"heartbeat.interval.ms": 500, "fetch.wait.max.ms": 100},
                  **kafka},
        "routes": {topic: handler},
        "checkpoint": {"every_messages": every_messages, "every_seconds": every_seconds,
                       "synchronous_commits": synchronous_commits},
        "store": {"url": store},
        # Several members share this host: each serves its metrics on a free port.
        "metrics": {"port": 0},
        "shutdown": {"grace_seconds": 20},
        "log_level": "DEBUG",  # the tests read checkpoints and rebalances from the log
    }


def wait_until_gone(process: ConsumerProcess, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while process.alive():
        if time.monotonic() > deadline:
            raise AssertionError(f"{process.name} still running after {timeout} s")
        time.sleep(0.05)
    assert process.process is not None
    return process.process.returncode
