"""The commit-interval curve: ``every_messages`` -> throughput, and -> messages handled again
after a SIGKILL at a random moment.

Throughput: the framework contender's runner with ``every_messages`` = N and the time trigger
off, on the first ``curve_messages`` of the preloaded topic (capped in time: small intervals are
slow). Handled again: ``consumer run`` routing to ``handlers.record:handle`` (one line per
handled message) is killed with SIGKILL a random number of seconds after its first message
(:func:`kill_moment`: sooner than the window says where the point's rate would finish the topic
first);
the group's committed offsets are then read back from Kafka, and every recorded message at or
past its partition's committed offset is one the restart handles again.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import topic
from benchmarks.contenders import FRAMEWORK
from benchmarks.environments import REPO_ROOT
from benchmarks.measure import ChildRun, RunResult, run_child
from benchmarks.runners.framework import baseline_sections
from benchmarks.stats import Spread
from consumer.engine.direct_mode import UNCONFIRMED_INTERVALS

INTERVALS = (1, 10, 100, 1_000, 10_000)
P = TypeVar("P")
#: Commit modes drawn as separate series.
SERIES: dict[str, dict[str, Any]] = {
    "async": {"synchronous_commits": False},
    "sync": {"synchronous_commits": True},
}


@dataclass(frozen=True)
class Kill:
    handled: int
    handled_again: int
    after_seconds: float
    error: str | None = None


@dataclass
class CurvePoint:
    series: str
    every_messages: int
    runs: list[RunResult] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)

    @property
    def rate(self) -> Spread | None:
        return Spread.of(r.rate for r in self.runs if r.ok)

    @property
    def again(self) -> Spread | None:
        return Spread.of(float(k.handled_again) for k in self.kills if k.error is None)

    @property
    def bound(self) -> int:
        """What the README promises a crash costs at most: one interval with synchronous
        commits, ``max_unconfirmed_messages`` (by default fifty intervals) with asynchronous."""
        return self.every_messages * (1 if self.series == "sync" else UNCONFIRMED_INTERVALS)


@dataclass(frozen=True)
class CurvePlan:
    series: tuple[str, ...]
    rounds: int
    messages: int
    cap_seconds: float
    kills: int
    kill_window: tuple[float, float]
    seed: int


def run_curve(plan: CurvePlan, python: Path, run: ChildRun, *, run_id: str,
              sections: Collection[str], say: Callable[[str], None]) -> list[CurvePoint]:
    points = [CurvePoint(s, n) for n in INTERVALS for s in plan.series]
    curve_run = ChildRun(run.bootstrap, run.topic, run.partitions,
                         min(plan.messages, run.messages), plan.cap_seconds, run.logs)
    for round_no in range(plan.rounds):
        for point in rotated(points, round_no):
            options = {"every_messages": point.every_messages, "every_seconds": None,
                       **SERIES[point.series]}
            result = run_child(python, FRAMEWORK, options, curve_run,
                               contender=f"curve-{point.series}-{point.every_messages}",
                               round_no=round_no + 1,
                               group=f"bench-{run_id}-curve-{point.series}-"
                                     f"{point.every_messages}-r{round_no + 1}")
            point.runs.append(result)
            say(f"curve {point.series:<5} every {point.every_messages:>6,} "
                f"round {round_no + 1}/{plan.rounds}: " + rate_text(result))
    rng = random.Random(plan.seed)
    workdir = Path(tempfile.mkdtemp(prefix="bench-kills-"))
    try:
        for kill_no in range(plan.kills):
            for point in rotated(points, kill_no):
                after = kill_moment(rng, plan.kill_window, point.rate, run.messages)
                kill = kill_once(run, point, after_seconds=after, workdir=workdir,
                                 name=f"{run_id}-{point.series}-{point.every_messages}-"
                                      f"k{kill_no + 1}", sections=sections)
                point.kills.append(kill)
                say(f"kill  {point.series:<5} every {point.every_messages:>6,} "
                    f"#{kill_no + 1}: " + _kill_text(kill))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return points


def kill_moment(rng: random.Random, window: tuple[float, float], rate: Spread | None,
                messages: int) -> float:
    """Seconds after the first handled message at which to kill: uniformly random over
    ``window``, brought within the first 80% of the time ``messages`` last at the point's
    measured ``rate`` (a run that has handled its whole topic is idle when killed, and the
    kill is not counted). Without a rate, the window as it is."""
    low, high = window
    if rate is not None and rate.median > 0:
        lasts = 0.8 * messages / rate.median
        if lasts < high:
            high, low = lasts, min(low, lasts / 4)
    return rng.uniform(low, high)


def kill_once(run: ChildRun, point: CurvePoint, *, after_seconds: float, workdir: Path,
              name: str, sections: Collection[str]) -> Kill:
    """SIGKILL ``consumer run`` ``after_seconds`` after its first handled message; count what a
    restart would handle again."""
    consumer_process = consumer_process_module()
    group = f"bench-kill-{name}-{uuid.uuid4().hex[:4]}"
    config: dict[str, Any] = {
        "kafka": {"bootstrap_servers": run.bootstrap, "group_id": group,
                  "auto_offset_reset": "earliest"},
        "routes": {run.topic: "handlers.record:handle"},
        "checkpoint": {"every_messages": point.every_messages, "every_seconds": None,
                       **SERIES[point.series]},
        "log_level": "WARNING",
        **baseline_sections(sections),
    }
    process = consumer_process.ConsumerProcess(workdir, name, config).start()
    try:
        deadline = time.monotonic() + 60
        while not has_records(process.record_file):
            if not process.alive() or time.monotonic() > deadline:
                return Kill(0, 0, after_seconds,
                            error=f"no message handled: {process.log_tail(3)}")
            time.sleep(0.01)
        time.sleep(after_seconds)
        process.kill()
    finally:
        process.stop_if_running()
    time.sleep(0.5)  # let a commit already on the wire land, as it would before a restart
    committed = topic.committed(run.bootstrap, group, run.topic, run.partitions)
    records = process.records()
    again = sum(1 for partition, offset, _ in records
                if offset >= (committed.get(partition) or 0))
    if len(records) >= run.messages:
        return Kill(len(records), again, after_seconds,
                    error="the topic ran out before the kill (idle consumer): not counted")
    return Kill(len(records), again, after_seconds)


def consumer_process_module() -> Any:
    scripts = str(REPO_ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    import consumer_process

    return consumer_process


def has_records(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def rotated(points: list[P], shift: int) -> list[P]:
    """The points starting at the ``shift``-th, so no point always runs first or last."""
    if not points:
        return []
    shift %= len(points)
    return points[shift:] + points[:shift]


def rate_text(result: RunResult) -> str:
    if not result.ok:
        return f"FAILED: {result.error}"
    capped = (f" (capped: {result.timed:,} in {result.consume_s or 0:.1f} s)" if result.capped
              else "")
    return f"{result.rate or 0:,.0f} msg/s{capped}"


def _kill_text(kill: Kill) -> str:
    if kill.error:
        return f"FAILED: {kill.error}"
    return (f"killed {kill.after_seconds:.1f} s in, after {kill.handled:,} handled; "
            f"{kill.handled_again:,} handled again")
