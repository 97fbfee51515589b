"""``python -m benchmarks``: preload, run every contender in rounds, draw the curves, write the
results. Needs KAFKA_BOOTSTRAP_SERVERS (``make bench`` starts a local broker and sets it)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks import capabilities, machine, plots, topic
from benchmarks.contenders import PROJECT, select
from benchmarks.curve import CurvePlan, CurvePoint, run_curve
from benchmarks.environments import Environment, prepare
from benchmarks.io_bound import IoBound, run_io_bound
from benchmarks.measure import ChildRun
from benchmarks.options import Options, parse
from benchmarks.report import Report, render
from benchmarks.rounds import Standing, run_rounds
from benchmarks.store_curve import StoreCurve, StoreCurvePlan, run_store_curve


def say(text: str) -> None:
    print(f"bench: {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("bench: set KAFKA_BOOTSTRAP_SERVERS, or run `make bench`", file=sys.stderr)
        return 2
    try:
        throughput, io_bound = select(options.contenders, io=options.io)
    except ValueError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    standings = [Standing(c) for c in throughput]
    io_standings = [Standing(c) for c in io_bound]
    began = time.monotonic()
    phases: dict[str, float] = {}
    with _phase(phases, "setup"):
        environments = _prepare(standings + io_standings)
    run_id = time.strftime("%m%d%H%M%S") + uuid.uuid4().hex[:4]
    preset = options.preset
    name = f"bench-{run_id}"
    say(f"preloading {preset.messages:,} messages of {options.size} bytes over "
        f"{options.partitions} partitions into {name} on {bootstrap}")
    with _phase(phases, "preload"):
        described = machine.describe(bootstrap)
        for warning in machine.not_durable(described):
            say(f"WARNING: {warning}")
        preloaded = topic.preload(bootstrap, name, partitions=options.partitions,
                                  messages=preset.messages, size=options.size)
    logs = options.out / "raw" / run_id
    run = ChildRun(bootstrap, name, options.partitions, preset.messages, preset.cap_seconds,
                   logs)
    curve: list[CurvePoint] | None = None
    store_curve: StoreCurve | None = None
    io: IoBound | None = None
    try:
        with _phase(phases, "rounds"):
            run_rounds(standings, environments, run, rounds=preset.rounds, run_id=run_id,
                       say=say)
        if io_standings:
            with _phase(phases, "IO-bound rounds"):
                io = run_io_bound(io_standings, environments, run, preset, size=options.size,
                                  run_id=run_id, seed=options.seed,
                                  keep_topic=options.keep_topic, say=say)
        if options.curve:
            with _phase(phases, "commit-interval curve"):
                curve = run_curve(
                    CurvePlan(series=("async", "sync"), rounds=preset.curve_rounds,
                              messages=preset.curve_messages,
                              cap_seconds=preset.curve_cap_seconds, kills=preset.kills,
                              kill_window=preset.kill_window, seed=options.seed),
                    Path(sys.executable), run, run_id=run_id,
                    sections=capabilities.settings_sections(), say=say,
                )
        if options.store_curve:
            with _phase(phases, "transaction-size curve"):
                store_curve = _store_curve(options, run, run_id, curve)
    finally:
        if not options.keep_topic:
            topic.delete(bootstrap, name)
    report = Report(described, preloaded, {"mode": options.mode, **asdict(preset)}, standings,
                    curve, time.monotonic() - began, None, store_curve=store_curve,
                    phases=phases, io=io)
    _write(options, report, logs)
    return 0


@contextlib.contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    """Time one phase of the run; say how long it took, also when it failed."""
    began = time.monotonic()
    try:
        yield
    finally:
        phases[name] = time.monotonic() - began
        say(f"{name} took {_minutes(phases[name])}")


def _minutes(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _store_curve(options: Options, run: ChildRun, run_id: str,
                 curve: list[CurvePoint] | None) -> StoreCurve:
    preset = options.preset
    missing = {store: reason for store, reason in (
        ("sqlite", capabilities.missing(("store",))),
        ("postgres", capabilities.missing(("store", "postgres"))),
    ) if reason is not None}
    for store, reason in missing.items():
        say(f"transaction-size curve, {store}: missing: {reason}")
    plan = StoreCurvePlan(rounds=preset.store_rounds, messages=preset.curve_messages,
                          cap_seconds=preset.store_cap_seconds, kills=preset.store_kills,
                          kill_window=preset.store_kill_window, seed=options.seed)
    return run_store_curve(plan, Path(sys.executable), run, run_id=run_id, missing=missing,
                           no_store=curve, sections=capabilities.settings_sections(), say=say)


def _prepare(standings: list[Standing]) -> dict[str, Environment]:
    """Build the environments the contenders need; mark the ones that cannot run, and why."""
    environments: dict[str, Environment] = {}
    for standing in standings:
        name = standing.contender.environment
        if name not in environments:
            environments[name] = prepare(name)
        standing.missing = (environments[name].missing
                            or capabilities.missing(standing.contender.needs))
        if standing.missing:
            say(f"{standing.contender.name}: missing: {standing.missing}")
    environments.setdefault(PROJECT, prepare(PROJECT))
    return environments


def _write(options: Options, report: Report, logs: Path) -> None:
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    why_no_plots = plots.draw(out, report.standings, report.curve, report.store_curve)
    if why_no_plots:
        say(f"plots not drawn: {why_no_plots}")
    final = replace(report, plots=why_no_plots)
    (out / "results.md").write_text(render(final))
    (out / "machine.json").write_text(json.dumps(report.machine, indent=2) + "\n")
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "runs.json").write_text(json.dumps({
        "settings": report.settings,
        "phases_s": report.phases,
        "runs": [r.as_dict() for s in report.standings for r in s.runs],
        "missing": {s.contender.name: s.missing for s in report.standings if s.missing},
        "io_bound": None if report.io is None else {
            "messages": report.io.messages,
            "runs": [r.as_dict() for s in report.io.standings for r in s.runs],
            "missing": {s.contender.name: s.missing for s in report.io.standings
                        if s.missing}},
        "curve": [{"series": p.series, "every_messages": p.every_messages,
                   "runs": [r.as_dict() for r in p.runs],
                   "kills": [asdict(k) for k in p.kills]} for p in report.curve or []],
        "store_curve": None if report.store_curve is None else {
            "missing": report.store_curve.missing,
            "no_store_from": report.store_curve.no_store_from,
            "points": [{"store": p.store, "every_messages": p.every_messages,
                        "runs": [r.as_dict() for r in p.runs],
                        "kills": [asdict(k) for k in p.kills]}
                       for p in report.store_curve.points]},
    }, indent=1))
    say(f"wrote {out / 'results.md'} (runs and logs: {logs}) in "
        f"{report.elapsed_s / 60:.1f} min; "
        + ", ".join(f"{name} {_minutes(s)}" for name, s in report.phases.items()))
    print(render(final))
