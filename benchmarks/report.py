"""results.md: the tables, the goals as ratios, the curves, and what each contender commits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.curve import CurvePoint
from benchmarks.io_bound import IoBound
from benchmarks.io_report import render_io
from benchmarks.measure import RunResult
from benchmarks.rounds import Standing
from benchmarks.stats import Spread, met
from benchmarks.store_curve import NO_STORE, StoreCurve, StorePoint
from benchmarks.topic import Preloaded

TO = "\N{EN DASH}"  # ranges: min to max
EM = "\N{EM DASH}"  # not applicable

TIMED = """\
- **msg/s**: messages handled / consume phase. The consume phase runs from the first message
  reaching the contender's no-op handler to the last one, as the child process measures it:
  process start, imports, group join (reported apart as *join*) and the final commit and close
  are outside it. A run stops at the target count, or at the first message after the time cap
  (then marked *capped*; the rate is still handled / elapsed).
- **no-op handler**: it takes the message alone in every contender (raw's and the peers' as
  their APIs call it; the framework's as ``def handle(message)``, for which it builds no
  context), except framework-context's, which takes ``(message, context)``.
- **CPU**: CPU seconds of the whole child process (every thread, librdkafka's included) over the
  consume phase, also per message handled.
- **peak RSS**: the child's maximum resident set (``ru_maxrss`` from ``wait4`` on that child),
  over its whole life.
- **committed**: after each run the group's committed offsets are read back from Kafka; *ok*
  when they add up to exactly the messages handled.
- Each contender runs in its own process, with a fresh consumer group, over the same preloaded
  topic; rounds rotate the order so no contender always runs first or last. The broker shares
  the machine's cores with the contender (and with anything else running), so figures are
  noisy: compare medians within one run, not across machines."""


@dataclass(frozen=True)
class Report:
    machine: dict[str, Any]
    preloaded: Preloaded
    settings: dict[str, Any]
    standings: list[Standing]
    curve: list[CurvePoint] | None
    elapsed_s: float
    plots: str | None  # why the plots are missing, or None
    store_curve: StoreCurve | None = None
    #: Phase name -> seconds, in the order they ran.
    phases: dict[str, float] = field(default_factory=dict)
    #: The IO-bound group, when it ran (``--io``).
    io: IoBound | None = None


def render(report: Report) -> str:
    parts = [
        "# Benchmark results\n",
        _header(report),
        "## Throughput\n",
        "![throughput](throughput.png)\n" if report.plots is None else "",
        _throughput_table(report.standings),
        _capped_note(report.standings),
        "## Goals (reported, never asserted)\n",
        _goals(report.standings, report.preloaded),
        "Where the time goes: `python -m benchmarks.profile` profiles the raw loop and the "
        "framework on 200,000 messages (`profile.txt` beside this file, when it was run).\n",
        "## IO-bound handlers, concurrently\n",
        render_io(report.io, report.standings) if report.io
        else "Not run this time (`--io` runs it).\n",
        "## Commit-interval curve\n",
        _curve(report, report.curve) if report.curve else "Not run this time (`--no-curve`).\n",
        "## Transaction-size curve, with a store\n",
        _store_curve(report, report.store_curve) if report.store_curve
        else "Not run this time (`--no-store-curve`).\n",
        "## What each contender commits, and how\n",
        "".join(f"- **{s.contender.name}**: {s.contender.commits}.\n"
                for s in report.standings),
        "\n## What is measured\n",
        TIMED + "\n",
    ]
    if report.plots is not None:
        parts.append(f"\nPlots not drawn: {report.plots}\n")
    return "\n".join(p for p in parts if p)


def _header(report: Report) -> str:
    m, p, s = report.machine, report.preloaded, report.settings
    return (
        f"Measured {m['date']} in {report.elapsed_s / 60:.1f} min ({s['mode']} run).\n\n"
        f"| machine | |\n| --- | --- |\n"
        f"| CPU | {m['cpu']}, {m['cores']} cores |\n"
        f"| memory | {m['memory_gib']} GiB |\n"
        f"| load average at start | {', '.join(str(x) for x in m['load_average_at_start'])} |\n"
        f"| OS | {m['os']} |\n"
        f"| Python | {m['python']} |\n"
        f"| Kafka | {m['kafka']}, single node, on this machine |\n"
        f"| PostgreSQL | {m.get('postgres', 'not recorded')} |\n"
        f"| MariaDB | {m.get('mariadb', 'not recorded')} |\n"
        f"| confluent-kafka / librdkafka | {m['confluent_kafka']} / {m['librdkafka']} "
        f"(project venv; each peer's own is in the table) |\n"
        f"| checkout | {m['checkout']} |\n\n"
        f"Data: {p.messages:,} messages of {p.size} bytes over {p.partitions} partitions, "
        f"preloaded once in {p.seconds:.1f} s. {s['rounds']} rounds; each run capped at "
        f"{s['cap_seconds']:.0f} s of consuming.\n"
        + (f"\nPhases: {_phases(report.phases)}.\n" if report.phases else "")
    )


def _phases(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds / 60:.1f} min" if seconds >= 90
                     else f"{name} {seconds:.0f} s" for name, seconds in phases.items())


def _throughput_table(standings: list[Standing]) -> str:
    raw = _rate_of(standings, "raw")
    rows = [f"| contender | msg/s median (min{TO}max) | vs raw | CPU s | CPU µs/msg "
            "| peak RSS MB | join s | runs | committed | client |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in standings:
        name = s.contender.name
        if s.missing is not None:
            rows.append(f"| {name} | **missing**: {s.missing} | | | | | | | | |")
            continue
        rate = s.rate
        if rate is None:
            errors = "; ".join(sorted({r.error or "" for r in s.runs}))[:300]
            rows.append(f"| {name} | **failed**: {errors} | | | | | | 0/{len(s.runs)} | | |")
            continue
        ok = s.ok_runs
        vs_raw = _ratio(rate.median / raw.median) if raw and raw.median else ""
        rows.append(
            f"| {name} | {_spread(rate, '{:,.0f}')} | {vs_raw} "
            f"| {_spread(s.spread(lambda r: r.consume_cpu_s), '{:.2f}')} "
            f"| {_spread(s.spread(lambda r: r.cpu_us_per_message), '{:.1f}')} "
            f"| {_spread(s.spread(lambda r: r.peak_rss_mb), '{:.0f}')} "
            f"| {_median(s.spread(lambda r: r.join_s), '{:.2f}')} "
            f"| {len(ok)}/{len(s.runs)} | {_committed(ok)} | {_client(ok[0])} |"
        )
    return "\n".join(rows) + "\n"


def _capped_note(standings: list[Standing]) -> str:
    notes = []
    for s in standings:
        capped = [r for r in s.ok_runs if r.capped]
        if capped:
            handled = ", ".join(f"{r.timed:,}" for r in capped)
            notes.append(f"{s.contender.name} ({len(capped)} of {len(s.ok_runs)} runs: "
                         f"{handled} of {capped[0].target:,} messages)")
    failed = [f"{s.contender.name} round {r.round}: {r.error}"
              for s in standings for r in s.runs if not r.ok and s.rate is not None]
    text = ""
    if notes:
        text += "Capped by time: " + "; ".join(notes) + ".\n"
    if failed:
        text += "\nFailed runs (left out of the medians): " + "; ".join(failed) + ".\n"
    return text


def _goals(standings: list[Standing], preloaded: Preloaded) -> str:
    rows = ["| goal | measured | met |", "| --- | --- | --- |"]

    def ratio_row(goal: str, subject: str, base: str | None, target: float) -> None:
        mine, theirs = _rate_of(standings, subject), _rate_of(standings, base or "")
        if base is None or mine is None or theirs is None or not theirs.median:
            absent = [n for n, r in ((subject, mine), (base or "peers", theirs)) if r is None]
            rows.append(f"| {goal} | not measured: no figures for {' or '.join(absent)} | |")
            return
        ratio = mine.median / theirs.median
        rows.append(f"| {goal} | {_ratio(ratio)} ({mine.median:,.0f} vs {base} "
                    f"{theirs.median:,.0f} msg/s) | {met(ratio, target)} |")

    # Against the raw loop with the client's defaults, and with the fetch setting the
    # framework's consumer uses: the second is the like-for-like ceiling.
    for raw in ("raw", "raw-tuned"):
        ratio_row(f"framework ≥ 0.9x {raw}", "framework", raw, 0.9)
    cpu = {name: next((s.spread(lambda r: r.cpu_us_per_message) for s in standings
                       if s.contender.name == name), None)
           for name in ("framework", "raw", "raw-tuned")}
    for raw in ("raw", "raw-tuned"):
        mine_cpu, raw_cpu = cpu["framework"], cpu[raw]
        if mine_cpu is not None and raw_cpu is not None and raw_cpu.median:
            cpu_ratio = mine_cpu.median / raw_cpu.median
            rows.append(f"| framework CPU per message ≤ 1.2x {raw} | {_ratio(cpu_ratio)} "
                        f"({mine_cpu.median:.2f} vs {raw} {raw_cpu.median:.2f} µs) "
                        f"| {'yes' if cpu_ratio <= 1.2 else 'no'} |")
    peers = [s for s in standings if s.contender.kind == "peer" and s.rate is not None]
    fastest = max(peers, key=lambda s: s.rate.median if s.rate else 0.0) if peers else None
    ratio_row("framework ≥ 1.2x the fastest peer", "framework",
              fastest.contender.name if fastest else None, 1.2)
    ratio_row("framework-sqlite ≥ 0.5x framework", "framework-sqlite", "framework", 0.5)
    ratio_row("framework-postgres ≥ 0.5x framework", "framework-postgres", "framework", 0.5)
    ratio_row("framework-mariadb ≥ 0.35x framework", "framework-mariadb", "framework", 0.35)
    rss = next((s.spread(lambda r: r.peak_rss_mb) for s in standings
                if s.contender.name == "framework"), None)
    if rss is not None:
        backlog = f"a backlog of {preloaded.messages:,}"
        rows.append(f"| framework peak RSS < 150 MB over {backlog} | {rss.high:.0f} MB (max) "
                    f"| {'yes' if rss.high < 150 else 'no'} |")
    return "\n".join(rows) + "\n"


def _ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x"


def _curve(report: Report, curve: list[CurvePoint]) -> str:
    rows = [f"| every_messages | commits | msg/s median (min{TO}max) | handled again after "
            f"SIGKILL, median (min{TO}max) | kills | bound |",
            "| --- | --- | --- | --- | --- | --- |"]
    for point in sorted(curve, key=lambda p: (p.series, p.every_messages)):
        capped = sum(1 for r in point.runs if r.ok and r.capped)
        rate = _spread(point.rate, "{:,.0f}") if point.rate else "failed"
        if capped:
            rate += f" ({capped} capped)"
        again = _spread(point.again, "{:,.0f}") if point.again else _why_no_kill(point)
        kills = f"{sum(1 for k in point.kills if k.error is None)}/{len(point.kills)}"
        rows.append(f"| {point.every_messages:,} | {point.series} | {rate} | {again} | {kills} "
                    f"| {point.bound:,} |")
    s = report.settings
    return (
        "![curve](curve.png)\n\n" if report.plots is None else ""
    ) + "\n".join(rows) + (
        f"\n\nThroughput: the framework runner with the time trigger off, on the first "
        f"{s['curve_messages']:,} messages, {s['curve_rounds']} round(s), capped at "
        f"{s['curve_cap_seconds']:.0f} s. Handled again: `consumer run` routing to "
        f"`handlers.record:handle`, SIGKILLed "
        f"{s['kill_window'][0]:g}{TO}{s['kill_window'][1]:g} s "
        f"(uniformly random; sooner, within the first 80% of the time the topic lasts at the "
        f"point's measured rate, where that is shorter) after its first message; the group's "
        f"committed offsets are read "
        f"back from Kafka and every recorded message at or past them is one the restart handles "
        f"again. *Bound*: what the README promises (one interval with synchronous commits; "
        f"`max_unconfirmed_messages`, by default fifty intervals, with asynchronous ones).\n"
    )


STORE_NAMES = {NO_STORE: "no store", "sqlite": "SQLite", "postgres": "PostgreSQL"}


def _store_curve(report: Report, curve: StoreCurve) -> str:
    rows = [f"| every_messages | store | msg/s median (min{TO}max) | vs no store | handled again "
            f"after SIGKILL, median (min{TO}max) | effects applied twice | effects missing "
            f"| kills | bound |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    none = {p.every_messages: p.rate for p in curve.points if p.store == NO_STORE}
    for point in curve.points:
        base = none.get(point.every_messages)
        vs = ("" if point.store == NO_STORE or not point.rate or not base or not base.median
              else _ratio(point.rate.median / base.median))
        rows.append(f"| {point.every_messages:,} | {STORE_NAMES[point.store]} "
                    f"| {_point_rate(point)} | {vs} | {_store_kills(point)} |")
    s = report.settings
    missing = "".join(f"\n\n{STORE_NAMES[store]}: **missing**: {reason}."
                      for store, reason in curve.missing.items())
    failed = "; ".join(f"{STORE_NAMES[p.store]} every {p.every_messages:,} round {r.round}: "
                       f"{r.error}" for p in curve.points for r in p.runs if not r.ok)
    if failed:
        missing += f"\n\nFailed runs (left out of the medians): {failed}."
    return (
        "![transaction-size curve](store_curve.png)\n\n" if report.plots is None else ""
    ) + "\n".join(rows) + missing + (
        f"\n\nWith a store, `every_messages` is also the size of the store transaction. "
        f"Throughput: the framework runner (no-op handler) with the store and the time trigger "
        f"off, on the first {s['curve_messages']:,} messages, {s['store_rounds']} round(s), "
        f"capped at {s['store_cap_seconds']:g} s; no store: {curve.no_store_from}. After a "
        f"SIGKILL: `consumer run` routing to `benchmarks.effects:apply` (one row per message "
        f"written with `context.execute` in the store transaction, one record line outside "
        f"it) is killed {s['store_kill_window'][0]:g}{TO}{s['store_kill_window'][1]:g} s "
        f"(uniformly random; sooner where the point's measured rate would finish the topic "
        f"first) after its first message, restarted with the same group until it "
        f"has handled past everything the killed run handled, and stopped gracefully. "
        f"*Handled again*: messages recorded twice (the open transaction's, rolled back by the "
        f"kill). *Effects applied twice*: rows beyond the first for one message, over all "
        f"kills; the store promises 0. *Effects missing*: offsets below the store's checkpoint "
        f"with no row; also 0. *Bound*: one transaction. Without a store nothing is killed "
        f"here: its effects are at-least-once, and its re-reads are the commit-interval "
        f"curve's.\n"
    )


def _point_rate(point: StorePoint) -> str:
    if point.rate is None:
        return "failed"
    capped = sum(1 for r in point.runs if r.ok and r.capped)
    return _spread(point.rate, "{:,.0f}") + (f" ({capped} capped)" if capped else "")


def _store_kills(point: StorePoint) -> str:
    if point.store == NO_STORE:
        return " | ".join([EM] * 5)
    counted = point.counted
    errors = [k.error for k in point.kills if k.error]
    if not counted:
        why = f"none counted: {errors[0]}" if errors else "not run"
        return f"{why} | | | 0/{len(point.kills)} | {point.every_messages:,}"
    twice = sum(k.effects_twice for k in counted)
    lost = sum(k.effects_missing for k in counted)
    return (f"{_spread(point.again, '{:,.0f}')} | {twice:,}{'' if twice == 0 else ' (!)'} "
            f"| {lost:,}{'' if lost == 0 else ' (!)'} | {len(counted)}/{len(point.kills)} "
            f"| {point.every_messages:,}")


def _why_no_kill(point: CurvePoint) -> str:
    errors = [k.error for k in point.kills if k.error]
    return f"none counted: {errors[0]}" if errors else "not run"


def _rate_of(standings: list[Standing], name: str) -> Spread | None:
    return next((s.rate for s in standings if s.contender.name == name), None)



def _spread(spread: Spread | None, fmt: str) -> str:
    if spread is None:
        return ""
    if spread.count == 1:
        return fmt.format(spread.median)
    low, high = fmt.format(spread.low), fmt.format(spread.high)
    return f"{fmt.format(spread.median)} ({low}{TO}{high})"


def _median(spread: Spread | None, fmt: str) -> str:
    return "" if spread is None else fmt.format(spread.median)


def _committed(runs: list[RunResult]) -> str:
    wrong = [r for r in runs if not r.committed_ok]
    if not wrong:
        return "ok"
    return "; ".join(f"{r.committed:,} for {r.handled:,} handled" if r.committed is not None
                     else "unknown" for r in wrong)


def _client(run: RunResult) -> str:
    lib = f" / librdkafka {run.librdkafka}" if run.librdkafka else ""
    return f"{run.client or '?'}{lib}"

