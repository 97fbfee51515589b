"""Where a checkpoint batch spends the loop thread's time, and what it costs the database:

    python -m benchmarks.breakdown [--stores none,sqlite,postgres,mariadb] [--messages 1000000]
                                   [--rounds 3]

Preloads its own topic (6 partitions, 100-byte messages) and runs the framework's no-op
contender of each store in this process, as ``python -m benchmarks.profile`` does, with the
loop's stages timed (:data:`STAGES`): each stage's wall time and the loop thread's CPU
(``time.thread_time``) in it, summed over the timed phase (the tally's, from the first message
to the last). Beside them, the database server's CPU over the same phase, read from ``/proc``
(every process named ``postgres`` or ``mariadbd`` on this machine, with the children it reaped;
nothing when the server runs elsewhere). Rounds alternate the stores; each figure is the median
over the rounds. Stages nest (the opening is part of the checkpoint), so they do not add up.
A call is counted when it ends inside the phase: with a store, handlers run inside the
checkpoint, so the one handling the last message is left out (999 of a million messages'
1,000), and the first one is counted whole.

A profile says which functions the consumer runs; this says where a batch waits: a stage whose
wall time is well above its CPU time waits for the database (or the broker).
Needs KAFKA_BOOTSTRAP_SERVERS, and each server store's URL as its contender does
(``CONSUMER_TEST_POSTGRES_DSN``, ``CONSUMER_TEST_MARIADB_URL``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import topic
from benchmarks.contenders import by_name
from benchmarks.runners import framework
from benchmarks.runners.tally import RunSpec, Tally

#: The stages timed: (depth, name, module, class, method), each inside the last one of a
#: smaller depth above it.
STAGES: tuple[tuple[int, str, str, str, str], ...] = (
    (0, "poll", "consumer.kafka.source", "KafkaSource", "poll"),
    (0, "checkpoint", "consumer.engine.store_mode", "StoreMode", "checkpoint"),
    (1, "the last batch's closing answered", "consumer.engine.store_mode", "StoreMode",
     "_answer"),
    (2, "its answer read", "consumer.store.base", "SendsClosing", "_answer_closing"),
    (1, "keys (stretches) made", "consumer.checkpoint.store_batch", "StoreCheckpoint",
     "_claims"),
    (1, "opening (begin, claim)", "consumer.checkpoint.store_batch", "StoreCheckpoint",
     "_claim"),
    (1, "handlers", "consumer.checkpoint.store_batch", "StoreCheckpoint",
     "_apply_optimistically"),
    (1, "closing sent", "consumer.store.postgres", "PostgresStore", "send_close"),
    # a batch held to be new: its opening is answered here (or at a handler's context.db)
    (2, "its opening's answer read", "consumer.store.postgres", "PostgresStore",
     "_answer_opening"),
    (1, "closing sent", "consumer.store.mariadb", "MariaDBStore", "send_close"),
    (1, "closing (SQLite: answered at once)", "consumer.store.sqlite", "SQLiteStore",
     "send_close"),
    (0, "Kafka commit sent", "consumer.kafka.source", "KafkaSource", "commit"),
)
#: The database servers' process names (``/proc/PID/comm``).
SERVERS = ("postgres", "mariadbd")
CONTENDERS = {"none": "framework", "sqlite": "framework-sqlite",
              "postgres": "framework-postgres", "mariadb": "framework-mariadb"}


@dataclass
class Timings:
    """Wall and CPU seconds per stage, and calls, while :attr:`on`."""

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    on: bool = False

    def add(self, stage: str, wall: float, cpu: float) -> None:
        if self.on:
            self.wall[stage] = self.wall.get(stage, 0.0) + wall
            self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu
            self.calls[stage] = self.calls.get(stage, 0) + 1

    def start(self) -> None:
        self.wall.clear()
        self.cpu.clear()
        self.calls.clear()
        self.on = True


def _timed(stage: str, method: Callable[..., Any], timings: Timings) -> Callable[..., Any]:
    clock, thread_clock = time.perf_counter, time.thread_time

    def timed(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = clock(), thread_clock()
        try:
            return method(*args, **kwargs)
        finally:
            timings.add(stage, clock() - wall, thread_clock() - cpu)

    return timed


@contextmanager
def stages_timed(timings: Timings,
                 stages: tuple[tuple[int, str, str, str, str], ...] = STAGES) -> Iterator[None]:
    """Each stage's method replaced by one timing it into ``timings``; put back on exit."""
    replaced: list[tuple[type, str, Any]] = []  # (class, method, its own or None: inherited)
    try:
        for _, stage, module, cls_name, method in stages:
            cls = getattr(importlib.import_module(module), cls_name)
            replaced.append((cls, method, cls.__dict__.get(method)))
            setattr(cls, method, _timed(stage, getattr(cls, method), timings))
        yield
    finally:
        for cls, method, own in reversed(replaced):
            if own is None:
                delattr(cls, method)
            else:
                setattr(cls, method, own)


def server_cpu(names: tuple[str, ...] = SERVERS, proc: Path = Path("/proc")) -> float:
    """CPU seconds of every process named one of ``names``, with the children it reaped."""
    ticks = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() not in names:
                continue
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class _MarkedTally(Tally):
    """A tally that starts the timings at the first message and notes the server's CPU at
    both ends of the timed phase."""

    __slots__ = ("marks", "timings")

    def __init__(self, target: int, timings: Timings) -> None:
        super().__init__(target)
        self.timings = timings
        self.marks: dict[str, Any] = {}

    def add(self, count: int = 1) -> bool:
        first = self.count == 0
        done = super().add(count)
        if first:
            self.marks["server"] = server_cpu()
            self.marks["thread"] = time.thread_time()
            self.timings.start()
        if self.last_at is not None and "stages" not in self.marks:
            self.timings.on = False
            self.marks["server"] = server_cpu() - self.marks["server"]
            self.marks["thread"] = time.thread_time() - self.marks["thread"]
            self.marks["stages"] = (dict(self.timings.wall), dict(self.timings.cpu),
                                    dict(self.timings.calls))
        return done


@dataclass
class Round:
    """One store's run: the timed phase's figures."""

    store: str
    messages: int
    seconds: float
    process_cpu: float
    thread_cpu: float
    server_cpu: float
    checkpoints: int
    wall: dict[str, float]
    cpu: dict[str, float]


def run_one(store: str, bootstrap: str, topic_name: str, messages: int) -> Round:
    contender = by_name([CONTENDERS[store]])[0]
    spec = RunSpec(bootstrap, topic_name, f"bench-breakdown-{store}-{uuid.uuid4().hex[:6]}",
                   messages, dict(contender.options))
    timings = Timings()
    tally = _MarkedTally(messages, timings)
    here = os.getcwd()
    os.chdir(tempfile.mkdtemp(prefix="bench-breakdown-"))  # the runner writes scratch files
    try:
        with stages_timed(timings):
            framework.run(spec, tally)
    finally:
        os.chdir(here)
    phases = tally.phases()
    wall, cpu, calls = tally.marks["stages"]
    return Round(store, tally.timed, phases["consume_s"] or 0.0, phases["consume_cpu_s"] or 0.0,
                 tally.marks["thread"], tally.marks["server"], calls.get("checkpoint", 0),
                 wall, cpu)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _per_checkpoint(seconds: float, checkpoints: float) -> str:
    """Milliseconds a checkpoint; "-" without a store (no store checkpoints)."""
    return f"{seconds / checkpoints * 1e3:.3f}" if checkpoints else "-"


def report(rounds: list[Round]) -> str:
    """A table per store: the medians over its rounds."""
    out: list[str] = []
    for store in dict.fromkeys(r.store for r in rounds):
        mine = [r for r in rounds if r.store == store]
        seconds = _median([r.seconds for r in mine])
        checkpoints = _median([float(r.checkpoints) for r in mine])
        rate = _median([r.messages / r.seconds for r in mine if r.seconds])
        server = _median([r.server_cpu for r in mine])
        out.append(
            f"== {store}: {rate:,.0f} msg/s, {checkpoints:,.0f} checkpoints, median of "
            f"{len(mine)} rounds; CPU over {seconds:.2f} s: process "
            f"{_median([r.process_cpu for r in mine]):.2f} s, loop thread "
            f"{_median([r.thread_cpu for r in mine]):.2f} s, database server "
            f"{server:.2f} s ({_per_checkpoint(server, checkpoints)} ms a checkpoint)\n")
        out.append("| stage | wall s | share of the timed phase | loop thread CPU s "
                   "| wall ms a checkpoint | CPU ms a checkpoint |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for depth, stage in dict.fromkeys((depth, name) for depth, name, *_ in STAGES):
            walls = [r.wall[stage] for r in mine if stage in r.wall]
            if not walls:
                continue
            wall, cpu = _median(walls), _median([r.cpu.get(stage, 0.0) for r in mine])
            out.append(f"| {'· ' * depth}{stage} | {wall:.3f} | {wall / seconds:.0%} "
                       f"| {cpu:.3f} | {_per_checkpoint(wall, checkpoints)} "
                       f"| {_per_checkpoint(cpu, checkpoints)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.breakdown")
    parser.add_argument("--stores", default="none,sqlite,postgres,mariadb")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("breakdown: set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    stores = [s.strip() for s in args.stores.split(",")]
    unknown = [s for s in stores if s not in CONTENDERS]
    if unknown:
        print(f"breakdown: unknown stores {unknown}; choose from {list(CONTENDERS)}",
              file=sys.stderr)
        return 2
    name = f"bench-breakdown-{uuid.uuid4().hex[:6]}"
    topic.preload(bootstrap, name, partitions=6, messages=args.messages, size=100)
    try:
        rounds = [run_one(store, bootstrap, name, args.messages)
                  for _ in range(args.rounds) for store in stores]
    finally:
        topic.delete(bootstrap, name)
    print(report(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
