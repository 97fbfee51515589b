"""Run one contender in a child process and measure it from outside as well as inside.

Inside (the child's own report): join, consume and close phases, CPU seconds of the consume
phase (all threads), messages handled. Outside (``os.wait4`` on that one child): peak RSS and the
whole process's CPU seconds. Afterwards the group's committed offsets are read back from Kafka.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import topic
from benchmarks.environments import REPO_ROOT


@dataclass
class RunResult:
    contender: str
    round: int
    target: int
    #: Messages that reached the handler; ``timed``: those within the timed phase.
    handled: int = 0
    timed: int = 0
    error: str | None = None
    capped: bool = False
    join_s: float | None = None
    consume_s: float | None = None
    close_s: float | None = None
    consume_cpu_s: float | None = None
    process_cpu_s: float | None = None
    peak_rss_mb: float | None = None
    wall_s: float | None = None
    committed: int | None = None
    client: str | None = None
    librdkafka: str | None = None
    #: Runs whose handler writes one row per message: the group's rows after the stop, and the
    #: distinct messages among them (None when the run writes none).
    effect_rows: int | None = None
    effect_distinct: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def rate(self) -> float | None:
        """Messages per second over the consume phase."""
        if not self.ok or not self.consume_s:
            return None
        return (self.timed or self.handled) / self.consume_s

    @property
    def cpu_us_per_message(self) -> float | None:
        """CPU microseconds per handled message over the consume phase."""
        if self.consume_cpu_s is None or not (self.timed or self.handled):
            return None
        return self.consume_cpu_s / (self.timed or self.handled) * 1e6

    @property
    def committed_ok(self) -> bool:
        return self.committed == self.handled

    @property
    def effects_ok(self) -> bool | None:
        """Exactly one row per message handled (None when the run writes no rows)."""
        if self.effect_rows is None:
            return None
        return self.effect_rows == self.effect_distinct == self.handled

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate}


@dataclass(frozen=True)
class ChildRun:
    """Everything one child run needs besides the contender itself."""

    bootstrap: str
    topic: str
    partitions: int
    messages: int
    cap_seconds: float
    logs: Path


def run_child(python: Path, runner: str, options: dict[str, Any], run: ChildRun, *,
              contender: str, round_no: int, group: str) -> RunResult:
    """Run ``runner`` in ``python`` for one fresh ``group``; never raises for a failed run."""
    result = RunResult(contender, round_no, run.messages)
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{contender}-"))
    spec = {"runner": runner, "bootstrap": run.bootstrap, "topic": run.topic, "group": group,
            "messages": run.messages, "options": options, "cap_seconds": run.cap_seconds}
    report = scratch / "result.json"
    run.logs.mkdir(parents=True, exist_ok=True)
    log = run.logs / f"{group}.log"
    began = time.perf_counter()
    try:
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(python), "-m", "benchmarks.child", json.dumps(spec), str(report)],
                cwd=scratch, env=_child_env(), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        usage = _wait(process, deadline=began + run.cap_seconds + 120)
        result.wall_s = time.perf_counter() - began
        if usage is None:
            result.error = f"no result within {run.cap_seconds + 120:.0f} s; killed (log: {log})"
        else:
            result.process_cpu_s = usage.ru_utime + usage.ru_stime
            result.peak_rss_mb = usage.ru_maxrss / 1024  # Linux reports KiB
            _read_report(result, report, log)
        result.committed = _committed_total(run, group)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


#: The environment variables naming the stores' servers, which the children need.
STORE_URLS = ("CONSUMER_TEST_POSTGRES_DSN", "CONSUMER_TEST_MARIADB_URL")


def _child_env() -> dict[str, str]:
    """The environment minus any CONSUMER_ override (the stores' URLs stay), plus the repo."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CONSUMER_") or k in STORE_URLS}
    env.pop("RECORD_SLEEP_SECONDS", None)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _wait(process: subprocess.Popen[bytes], *, deadline: float) -> Any:
    """Reap the child and return its rusage, or None after killing it at the deadline."""
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return usage
        if time.perf_counter() > deadline:
            process.send_signal(signal.SIGKILL)
            os.wait4(process.pid, 0)
            process.returncode = -9
            return None
        time.sleep(0.05)


def _read_report(result: RunResult, report: Path, log: Path) -> None:
    if not report.exists():
        result.error = f"the child wrote no result (log: {log}): {_tail(log)}"
        return
    data = json.loads(report.read_text())
    for name in ("handled", "timed", "capped", "join_s", "consume_s", "close_s",
                 "consume_cpu_s", "client", "librdkafka", "effect_rows", "effect_distinct"):
        setattr(result, name, data.get(name))
    if data.get("error"):
        result.error = f"{data['error']} (log: {log})"
        with log.open("a") as out:
            out.write(data.get("traceback", ""))


def _committed_total(run: ChildRun, group: str) -> int | None:
    try:
        offsets = topic.committed(run.bootstrap, group, run.topic, run.partitions)
    except Exception:  # reported as unknown; the run itself already has its figures
        return None
    return sum(offset or 0 for offset in offsets.values())


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(text[-lines:])[:400]
