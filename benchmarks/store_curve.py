"""The transaction-size curve: with a store, ``every_messages`` is also the size of the store
transaction. For SQLite and PostgreSQL, ``every_messages`` -> throughput, compared with no store
at the same sizes; and -> after a SIGKILL at a random moment, messages handled again and effects
applied twice (always 0: that is the store's promise).

Throughput: the framework contender's runner (no-op handler) with the store, ``every_messages``
= N and the time trigger off, on the first ``messages`` of the preloaded topic, capped in time.
No store: the commit-interval curve's asynchronous series when it ran in this run (the very
same runs), else measured here.

After a SIGKILL: ``consumer run`` routing to :func:`benchmarks.effects.apply` (one effect row
per message through ``context.execute``, one record line outside the transaction) is killed a
random number of seconds after its first message, restarted with the same group (and the same
static member id, so it takes the partitions back at once), left running until it has handled
past every message the killed run handled, and stopped gracefully. Then the store is read back:
rows for one message beyond the first are effects applied twice; offsets below the checkpoint
with no row are effects missing.
"""

from __future__ import annotations

import random
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import topic
from benchmarks.contenders import FRAMEWORK
from benchmarks.curve import (
    INTERVALS,
    CurvePoint,
    Kill,
    consumer_process_module,
    has_records,
    kill_moment,
    rate_text,
    rotated,
)
from benchmarks.effects import HANDLER_PATH, EffectCount, EffectsStore
from benchmarks.measure import ChildRun, RunResult, run_child
from benchmarks.runners.framework import baseline_sections
from benchmarks.stats import Spread

NO_STORE = "none"
STORES = ("sqlite", "postgres")
#: How long a restart may take to handle past what the killed run handled.
CATCH_UP_S = 120.0


@dataclass(frozen=True)
class StoreKill(Kill):
    """A kill of the commit-interval curve, plus what the store shows after it."""

    effects_twice: int = 0
    effects_missing: int = 0


@dataclass
class StorePoint:
    store: str
    every_messages: int
    runs: list[RunResult] = field(default_factory=list)
    kills: list[StoreKill] = field(default_factory=list)

    @property
    def rate(self) -> Spread | None:
        return Spread.of(r.rate for r in self.runs if r.ok)

    @property
    def counted(self) -> list[StoreKill]:
        return [k for k in self.kills if k.error is None]

    @property
    def again(self) -> Spread | None:
        return Spread.of(float(k.handled_again) for k in self.counted)


@dataclass
class StoreCurve:
    points: list[StorePoint]
    #: store -> why it could not run here.
    missing: dict[str, str]
    #: Where the no-store figures come from.
    no_store_from: str


@dataclass(frozen=True)
class StoreCurvePlan:
    rounds: int
    messages: int
    cap_seconds: float
    kills: int
    kill_window: tuple[float, float]
    seed: int


def run_store_curve(plan: StoreCurvePlan, python: Path, run: ChildRun, *, run_id: str,
                    missing: dict[str, str], no_store: list[CurvePoint] | None,
                    sections: Collection[str], say: Callable[[str], None]) -> StoreCurve:
    """Throughput rounds for every store (and no store, unless ``no_store`` has it), then the
    kills; ``missing`` names the stores that cannot run here, and why."""
    stores = [s for s in STORES if s not in missing]
    reused = _reuse(no_store)
    measured = [StorePoint(s, n) for n in INTERVALS
                for s in ((NO_STORE, *stores) if reused is None else stores)]
    curve_run = ChildRun(run.bootstrap, run.topic, run.partitions,
                         min(plan.messages, run.messages), plan.cap_seconds, run.logs)
    for round_no in range(plan.rounds):
        for point in rotated(measured, round_no):
            options: dict[str, Any] = {"every_messages": point.every_messages,
                                       "every_seconds": None, "store": point.store}
            label = f"txn-{point.store}-{point.every_messages}"
            result = run_child(python, FRAMEWORK, options, curve_run, contender=label,
                               round_no=round_no + 1,
                               group=f"bench-{run_id}-{label}-r{round_no + 1}")
            point.runs.append(result)
            say(f"txn   {point.store:<8} every {point.every_messages:>6,} "
                f"round {round_no + 1}/{plan.rounds}: " + rate_text(result))
    with_store = [p for p in measured if p.store != NO_STORE]
    _kill_all(plan, run, with_store, run_id=run_id, sections=sections, say=say)
    points = measured + (reused or [])
    source = ("the commit-interval curve's asynchronous series (the same runs)" if reused
              else "measured here, interleaved with the stores")
    return StoreCurve(sorted(points, key=lambda p: (p.every_messages, _order(p.store))),
                      missing, source)


def _reuse(no_store: list[CurvePoint] | None) -> list[StorePoint] | None:
    """The commit-interval curve's asynchronous points as the no-store series, when present."""
    if not no_store:
        return None
    found = {p.every_messages: p for p in no_store if p.series == "async"}
    if set(found) != set(INTERVALS):
        return None
    return [StorePoint(NO_STORE, n, runs=found[n].runs) for n in INTERVALS]


def _order(store: str) -> int:
    return (NO_STORE, *STORES).index(store)


def _kill_all(plan: StoreCurvePlan, run: ChildRun, points: list[StorePoint], *, run_id: str,
              sections: Collection[str], say: Callable[[str], None]) -> None:
    rng = random.Random(plan.seed)
    workdir = Path(tempfile.mkdtemp(prefix="bench-store-kills-"))
    try:
        for kill_no in range(plan.kills):
            for point in rotated(points, kill_no):
                kill = kill_with_store(
                    run, point, workdir=workdir,
                    after_seconds=kill_moment(rng, plan.kill_window, point.rate, run.messages),
                    name=f"{run_id}-{point.store}-{point.every_messages}-k{kill_no + 1}",
                    sections=sections)
                point.kills.append(kill)
                say(f"kill  {point.store:<8} every {point.every_messages:>6,} "
                    f"#{kill_no + 1}: " + kill_text(kill))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def kill_with_store(run: ChildRun, point: StorePoint, *, after_seconds: float, workdir: Path,
                    name: str, sections: Collection[str]) -> StoreKill:
    """SIGKILL ``consumer run`` ``after_seconds`` after its first handled message, restart it
    until it has handled past the killed run, stop it, and read the store back."""
    group = f"bench-kill-{name}-{uuid.uuid4().hex[:4]}"
    url = _store_url(point.store, workdir / f"{name}.db")
    config = _config(run, group, point.every_messages, url, member=name, sections=sections)
    with EffectsStore(url) as effects:
        effects.prepare()
    try:
        first = _killed(workdir, name, config, after_seconds)
        if isinstance(first, str):
            return StoreKill(0, 0, after_seconds, error=first)
        if len(first) >= run.messages:
            return StoreKill(len(first), 0, after_seconds,
                             error="the topic ran out before the kill: not counted")
        reached = _reached(first)
        failure = _restart_past(workdir, name, config, reached, len(first), _last_offsets(run))
        process = consumer_process_module()
        again = process.duplicates(process.ConsumerProcess(workdir, name, config).records())
        if failure is not None:
            return StoreKill(len(first), again, after_seconds, error=failure)
        with EffectsStore(url) as effects:
            return _verdict(effects.count(group, run.topic), first, again, after_seconds,
                            reached)
    finally:
        with EffectsStore(url) as effects:
            effects.forget(group)


def _killed(workdir: Path, name: str, config: dict[str, Any],
            after_seconds: float) -> list[tuple[int, int, str]] | str:
    """The records of a run killed ``after_seconds`` after its first message (or why not)."""
    process = consumer_process_module().ConsumerProcess(workdir, name, config).start()
    try:
        deadline = time.monotonic() + 60
        while not has_records(process.record_file):
            if not process.alive() or time.monotonic() > deadline:
                return f"no message handled: {process.log_tail(3)}"
            time.sleep(0.01)
        time.sleep(after_seconds)
        process.kill()
    finally:
        process.stop_if_running()
    records: list[tuple[int, int, str]] = process.records()
    return records


def _restart_past(workdir: Path, name: str, config: dict[str, Any], reached: dict[int, int],
                  skip: int, last: dict[int, int]) -> str | None:
    """Run the same consumer again until every partition the killed run reached is handled
    past that point (or is at its end), then stop it gracefully; why not, when it failed."""
    process = consumer_process_module().ConsumerProcess(workdir, name, config).start()
    try:
        deadline = time.monotonic() + CATCH_UP_S
        while not _past(process.records()[skip:], reached, last):
            if not process.alive():
                return f"the restart exited early: {process.log_tail(3)}"
            if time.monotonic() > deadline:
                return f"the restart did not catch up within {CATCH_UP_S:.0f} s"
            time.sleep(0.05)
        process.signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        return None if code == 0 else f"the restart exited with {code}: {process.log_tail(3)}"
    except AssertionError as error:  # wait() timed out
        return str(error)
    finally:
        process.stop_if_running()


def _past(records: list[tuple[int, int, str]], reached: dict[int, int],
          last: dict[int, int]) -> bool:
    beyond: dict[int, int] = {}
    for partition, offset, _ in records:
        beyond[partition] = max(offset, beyond.get(partition, -1))
    return all(beyond.get(p, -1) > offset or offset >= last.get(p, -1)
               for p, offset in reached.items())


def _verdict(count: EffectCount, first: list[tuple[int, int, str]], again: int,
             after_seconds: float, reached: dict[int, int]) -> StoreKill:
    short = {p: o for p, o in reached.items() if count.checkpoints.get(p, 0) <= o}
    if short:
        return StoreKill(len(first), again, after_seconds,
                         error=f"the store's checkpoint stayed behind the killed run: {short}")
    # Offsets of a preloaded topic start at 0 and are contiguous (no transactions).
    missing = sum(count.checkpoints.values()) - count.distinct
    return StoreKill(len(first), again, after_seconds, effects_twice=count.applied_twice,
                     effects_missing=missing)


def _reached(records: list[tuple[int, int, str]]) -> dict[int, int]:
    reached: dict[int, int] = {}
    for partition, offset, _ in records:
        reached[partition] = max(offset, reached.get(partition, -1))
    return reached


def _last_offsets(run: ChildRun) -> dict[int, int]:
    return {p: high - 1 for p, (_low, high) in
            topic.watermarks(run.bootstrap, run.topic, run.partitions).items()}


def _store_url(store: str, sqlite_file: Path) -> str:
    if store == "sqlite":
        return f"sqlite:///{sqlite_file.resolve()}"  # four slashes: an absolute path
    from benchmarks.runners.framework import store_url

    return store_url(store)


def _config(run: ChildRun, group: str, every_messages: int, url: str, *, member: str,
            sections: Collection[str]) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": run.bootstrap, "group_id": group,
                  "auto_offset_reset": "earliest", "session_timeout_ms": 6000,
                  # Static membership: the restart takes the killed member's partitions back
                  # at once instead of waiting out its session.
                  "librdkafka": {"group.instance.id": member, "heartbeat.interval.ms": 500}},
        "routes": {run.topic: HANDLER_PATH},
        "checkpoint": {"every_messages": every_messages, "every_seconds": None},
        "log_level": "WARNING",
        **baseline_sections(sections),
        "store": {"url": url},
    }


def kill_text(kill: StoreKill) -> str:
    if kill.error:
        return f"FAILED: {kill.error}"
    return (f"killed {kill.after_seconds:.1f} s in, after {kill.handled:,} handled; "
            f"{kill.handled_again:,} handled again, {kill.effects_twice:,} effects twice, "
            f"{kill.effects_missing:,} missing")
