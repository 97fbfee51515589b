"""results.md's IO-bound section: ideal, achieved and their ratio, then the goals beside them."""

from __future__ import annotations

from benchmarks.capabilities import UNSUPPORTED
from benchmarks.contenders import IO_KEYS, SLEEP_SECONDS
from benchmarks.io_bound import IoBound
from benchmarks.measure import RunResult
from benchmarks.rounds import Standing, missing_label
from benchmarks.stats import Spread, met

TO = "\N{EN DASH}"
SYNC, ASYNC, SYNC_1 = "io-framework-sync-c100", "io-framework-async-c1000", "io-framework-sync-c1"
POSTGRES = "io-framework-postgres-c32"
#: Each framework contender and the peers it should be ahead of (same handler, same sleep).
PEERS_OF = {
    SYNC: ("io-arroyo-threads-c100", "io-arroyo-processes-p8",
           "io-faststream-confluent-sync-c100"),
    ASYNC: ("io-faststream-confluent-async-c1000", "io-faststream-aiokafka-async-c1000"),
}
#: Each framework contender and its ceiling: the same handler on a plain client loop with none
#: of the guarantees (``benchmarks/runners/raw_io.py``), what Python allows here. Read, not a
#: goal.
#: The async handler on the PostgreSQL store (read beside the threads' one, not a goal).
POSTGRES_ASYNC = "io-framework-postgres-async-c32"
CEILING_OF = {ASYNC: "io-ceiling-async-c1000", POSTGRES: "io-ceiling-postgres-c32",
              POSTGRES_ASYNC: "io-ceiling-postgres-c32"}


def render_io(io: IoBound, throughput: list[Standing]) -> str:
    """The section: how it ran, the table, runs left out, the goals, what each commits."""
    p = io.preloaded
    return "\n".join((
        f"Handlers wait {SLEEP_SECONDS * 1000:.0f} ms (`time.sleep`, or `asyncio.sleep` in an "
        f"`async def`), then count. One process per contender, {p.partitions} partitions, "
        f"{IO_KEYS:,} keys drawn at random and placed by the producer's partitioner "
        f"({p.messages:,} messages preloaded in {p.seconds:.1f} s). {io.rounds} rounds, "
        f"rotated; each run reads its own count (below) or stops at the first message after "
        f"{io.cap_seconds:.0f} s. *Ideal*: messages in flight at once / "
        f"{SLEEP_SECONDS * 1000:.0f} ms, what the waiting alone allows. No peak RSS here: "
        f"`wait4` reports at least the harness's own RSS when it started the child.\n",
        _table(io),
        _left_out(io.standings),
        _effects(io.standings),
        "### Goals, IO-bound (reported, never asserted)\n",
        _goals(io.standings, throughput),
        "*Committed*: the group's offsets read back after each run. With messages in flight "
        "at once, a stop can leave finished messages above an unfinished or unstarted one: "
        "the framework commits only the watermark below them (they are handled again after a "
        "restart: *above the watermark*). *Committed before handled* is FastStream's "
        "`ACK_FIRST`: offsets of messages handed to its workers are committed whether or not "
        "the handler ran; a crash loses those.\n",
        "How each one runs concurrently, and commits:\n",
        "".join(f"- **{s.contender.name}**: {s.contender.concurrency}; {s.contender.commits}.\n"
                for s in io.standings),
    ))


def _table(io: IoBound) -> str:
    rows = [f"| contender | messages | ideal msg/s | msg/s median (min{TO}max) | vs ideal "
            "| CPU µs/msg | runs | committed | client |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in io.standings:
        c = s.contender
        head = f"| {c.name} | {io.messages.get(c.name, 0):,} | {c.ideal or 0:,.0f} |"
        if s.missing is not None:
            reason = s.missing.removeprefix(f"{UNSUPPORTED}: ")
            rows.append(f"{head} **{missing_label(s.missing)}**: {reason} | | | | | |")
            continue
        rate = s.rate
        if rate is None:
            errors = "; ".join(sorted({r.error or "" for r in s.runs}))[:300]
            rows.append(f"{head} **failed**: {errors} | | | 0/{len(s.runs)} | | |")
            continue
        ok = s.ok_runs
        vs = f"{rate.median / c.ideal:.2f}x" if c.ideal else ""
        rows.append(
            f"{head} {_spread(rate)} | {vs} "
            f"| {_median(s.spread(lambda r: r.cpu_us_per_message), '{:.1f}')} "
            f"| {len(ok)}/{len(s.runs)} | {_committed(ok)} | {_client(ok[0])} |")
    return "\n".join(rows) + "\n"


def _left_out(standings: list[Standing]) -> str:
    notes = []
    for s in standings:
        capped = [r for r in s.ok_runs if r.capped]
        if capped:
            notes.append(f"{s.contender.name} ({len(capped)} of {len(s.ok_runs)} runs: "
                         + ", ".join(f"{r.timed:,}" for r in capped)
                         + f" of {capped[0].target:,})")
    failed = [f"{s.contender.name} round {r.round}: {r.error}"
              for s in standings for r in s.runs if not r.ok and s.rate is not None]
    text = "Capped by time: " + "; ".join(notes) + ".\n" if notes else ""
    if failed:
        text += "\nFailed runs (left out of the medians): " + "; ".join(failed) + ".\n"
    return text


def _effects(standings: list[Standing]) -> str:
    """Per contender whose handler writes a row per message: were there exactly that many?"""
    lines = []
    for s in standings:
        counted = [r for r in s.ok_runs if r.effects_ok is not None]
        if not counted:
            continue
        wrong = [f"round {r.round}: {r.effect_rows:,} rows for {r.effect_distinct:,} "
                 f"messages, {r.handled:,} handled" for r in counted if not r.effects_ok]
        verdict = "; ".join(wrong) if wrong else "exactly one per message handled"
        lines.append(f"- **{s.contender.name}**: effect rows in `bench_effects` after the "
                     f"graceful stop, {len(counted) - len(wrong)}/{len(counted)} runs ok: "
                     f"{verdict} (PostgreSQL's durability settings: the machine table).\n")
    return "".join(lines)


def _goals(standings: list[Standing], throughput: list[Standing]) -> str:
    by_name = {s.contender.name: s for s in standings}
    rows = ["| goal | measured | met |", "| --- | --- | --- |"]

    def rate(name: str) -> tuple[float | None, str]:
        s = by_name.get(name) or next((t for t in throughput if t.contender.name == name), None)
        if s is None:
            return None, f"{name} did not run"
        if s.missing is not None:
            return None, f"{name} is {missing_label(s.missing)}"
        return (s.rate.median, "") if s.rate else (None, f"{name} failed")

    def row(goal: str, name: str, target: float, note: str = "") -> None:
        mine, why = rate(name)
        if mine is None:
            rows.append(f"| {goal} | not measured: {why} | |")
            return
        rows.append(f"| {goal} | {mine:,.0f} msg/s{note} | {met(mine, target)} |")

    for name, ideal in ((SYNC, 10_000.0), (POSTGRES, 3_200.0), (SYNC_1, 100.0)):
        share = 0.95 if name == SYNC_1 else 0.8
        mine, _ = rate(name)
        note = f" ({mine / ideal:.2f}x ideal)" if mine else ""
        row(f"{name} ≥ {share}x ideal {ideal:,.0f} msg/s", name, share * ideal, note)
    noop, _ = rate("framework")
    if noop is None:
        row(f"{ASYNC} ≥ 50,000 msg/s (0.8x the no-op framework: not measured this run)",
            ASYNC, 50_000.0)
    else:
        target = min(50_000.0, 0.8 * noop)
        row(f"{ASYNC} ≥ {target:,.0f} msg/s (50,000, or 0.8x the no-op framework's "
            f"{noop:,.0f} where lower)", ASYNC, target)
    for mine_name, peers in PEERS_OF.items():
        mine, why = rate(mine_name)
        for peer in peers:
            theirs, their_why = rate(peer)
            if mine is None or theirs is None:
                rows.append(f"| {mine_name} ahead of {peer} | not measured: "
                            f"{why or their_why} | |")
                continue
            ratio = mine / theirs
            rows.append(f"| {mine_name} ahead of {peer} | {ratio:.2f}x ({mine:,.0f} vs "
                        f"{theirs:,.0f} msg/s) | {'yes' if ratio > 1 else 'no'} |")
    for mine_name, ceiling in CEILING_OF.items():
        mine, _ = rate(mine_name)
        top, _ = rate(ceiling)
        if mine is not None and top is not None:
            rows.append(f"| (read, not a goal) {mine_name} against its ceiling {ceiling} "
                        f"| {mine / top:.2f}x ({mine:,.0f} vs {top:,.0f} msg/s) | |")
    return "\n".join(rows) + "\n"


def _committed(runs: list[RunResult]) -> str:
    """``ok``, or per kind of difference: how many runs, and the range of messages."""
    kinds: dict[str, list[int]] = {}
    for r in runs:
        if r.committed is None:
            kinds.setdefault("unknown", []).append(0)
        elif r.committed < r.handled:
            kinds.setdefault("above the watermark", []).append(r.handled - r.committed)
        elif r.committed > r.handled:
            kinds.setdefault("committed before handled", []).append(r.committed - r.handled)
    if not kinds:
        return "ok"
    return "; ".join(
        f"{len(counts)}/{len(runs)} runs: "
        + (kind if kind == "unknown" else f"{min(counts):,}{TO}{max(counts):,} {kind}"
           if min(counts) != max(counts) else f"{counts[0]:,} {kind}")
        for kind, counts in kinds.items())


def _spread(spread: Spread) -> str:
    return f"{spread.median:,.0f} ({spread.low:,.0f}{TO}{spread.high:,.0f})"


def _median(spread: Spread | None, fmt: str) -> str:
    return fmt.format(spread.median) if spread else ""


def _client(run: RunResult) -> str:
    lib = f" / librdkafka {run.librdkafka}" if run.librdkafka else ""
    return f"{run.client or '?'}{lib}"
