"""The contenders' rounds: every contender once per round, in a rotated order, each run with
its own fresh consumer group, all over the same preloaded topic."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from benchmarks.capabilities import UNSUPPORTED
from benchmarks.contenders import Contender
from benchmarks.environments import Environment
from benchmarks.measure import ChildRun, RunResult, run_child
from benchmarks.stats import Spread


@dataclass
class Standing:
    """One contender's runs, or why it could not run at all."""

    contender: Contender
    missing: str | None = None
    runs: list[RunResult] = field(default_factory=list)

    @property
    def ok_runs(self) -> list[RunResult]:
        return [r for r in self.runs if r.ok]

    def spread(self, measure: Callable[[RunResult], float | None]) -> Spread | None:
        return Spread.of(measure(r) for r in self.ok_runs)

    @property
    def rate(self) -> Spread | None:
        return self.spread(lambda r: r.rate)


def rotated(items: list[Contender], round_no: int) -> list[Contender]:
    """Round r starts at the r-th contender, so each one takes each slot in turn."""
    if not items:
        return []
    shift = round_no % len(items)
    return items[shift:] + items[:shift]


def run_rounds(standings: list[Standing], environments: dict[str, Environment],
               run: ChildRun, *, rounds: int, run_id: str,
               say: Callable[[str], None], messages: Mapping[str, int] | None = None) -> None:
    """Run every present contender ``rounds`` times, interleaved; results land in standings.

    ``messages``: contender name -> its own target, where it differs from ``run.messages``.
    """
    present = [s for s in standings if s.missing is None]
    by_name = {s.contender.name: s for s in present}
    for round_no in range(rounds):
        for contender in rotated([s.contender for s in present], round_no):
            python = environments[contender.environment].python
            if python is None:  # prepared as missing; never scheduled
                continue
            target = (messages or {}).get(contender.name, run.messages)
            result = run_child(
                python, contender.runner, dict(contender.options),
                run if target == run.messages else replace(run, messages=target),
                contender=contender.name, round_no=round_no + 1,
                group=f"bench-{run_id}-{contender.name}-r{round_no + 1}",
            )
            by_name[contender.name].runs.append(result)
            say(f"round {round_no + 1}/{rounds} {contender.name:<22} {describe(result)}")


def missing_label(reason: str) -> str:
    """``unsupported`` for a feature this checkout lacks; ``missing`` for anything else."""
    return "unsupported" if reason.startswith(UNSUPPORTED) else "missing"


def describe(result: RunResult) -> str:
    """One progress line for a run."""
    if not result.ok:
        return f"FAILED: {result.error}"
    text = (f"{result.rate or 0:>10,.0f} msg/s  cpu {result.consume_cpu_s or 0:5.2f} s  "
            f"rss {result.peak_rss_mb or 0:5.0f} MB  join {result.join_s or 0:4.2f} s")
    if result.capped:
        text += f"  (capped: {result.timed:,} of {result.target:,})"
    if not result.committed_ok:
        text += f"  committed {result.committed or 0:,} for {result.handled:,} handled"
    return text
