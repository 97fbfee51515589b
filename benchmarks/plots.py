"""throughput.png, curve.png and store_curve.png (matplotlib, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.curve import CurvePoint
from benchmarks.rounds import Standing
from benchmarks.stats import Spread
from benchmarks.store_curve import NO_STORE, StoreCurve
from consumer.engine.direct_mode import UNCONFIRMED_INTERVALS


def draw(out: Path, standings: list[Standing], curve: list[CurvePoint] | None,
         store_curve: StoreCurve | None = None) -> str | None:
    """Draw the plots into ``out``; the reason when they cannot be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    _throughput(plt, matplotlib, out / "throughput.png", standings)
    if curve:
        _curve(plt, out / "curve.png", curve)
    if store_curve and store_curve.points:
        _store_curve(plt, out / "store_curve.png", store_curve)
    return None


def _throughput(plt: Any, matplotlib: Any, path: Path, standings: list[Standing]) -> None:
    names = [s.contender.name for s in standings][::-1]
    by_name = {s.contender.name: s for s in standings}
    panels = [
        ("messages / s (median, min\N{EN DASH}max; log scale)", lambda s: s.rate),
        ("CPU µs per message", lambda s: s.spread(lambda r: r.cpu_us_per_message)),
        ("peak RSS, MB", lambda s: s.spread(lambda r: r.peak_rss_mb)),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(names) + 1.8), sharey=True)
    for index, (ax, (title, measure)) in enumerate(zip(axes, panels, strict=True)):
        base = 1.0 if index == 0 else 0.0  # log-scale bars start at 1
        for y, name in enumerate(names):
            standing = by_name[name]
            spread: Spread | None = measure(standing) if standing.missing is None else None
            if spread is None:
                why = "missing" if standing.missing is not None else "failed"
                ax.text(max(base, 0.0), y, f" {why}", va="center", color="grey", fontsize=8)
                continue
            color = {"baseline": "#555555", "peer": "#8fa8c8"}.get(standing.contender.kind,
                                                                   "#d9822b")
            ax.barh(y, spread.median - base, left=base, color=color,
                    xerr=[[spread.median - spread.low], [spread.high - spread.median]],
                    capsize=3)
            ax.text(spread.high, y, f"  {spread.median:,.0f}" if spread.median >= 10
                    else f"  {spread.median:.1f}", va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        if index == 0:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_short))
        ax.margins(x=0.25)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(value: float, _position: object = None) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:g}{unit}"
    return f"{value:g}"


def _curve(plt: Any, path: Path, curve: list[CurvePoint]) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = sorted({p.series for p in curve})
    for name, marker in zip(series, "os^", strict=False):
        points = sorted((p for p in curve if p.series == name), key=lambda p: p.every_messages)
        _errorbars(left, [(p.every_messages, p.rate) for p in points], f"{name} commits",
                   marker)
        _errorbars(right, [(p.every_messages, p.again) for p in points],
                   f"{name} commits", marker)
    xs = sorted({p.every_messages for p in curve})
    right.plot(xs, xs, "k--", lw=0.8, alpha=0.5, label="one interval")
    right.plot(xs, [UNCONFIRMED_INTERVALS * x for x in xs], "k:", lw=0.8, alpha=0.5,
               label=f"{UNCONFIRMED_INTERVALS} intervals (asynchronous bound)")
    left.set(xscale="log", yscale="log", xlabel="every_messages", ylabel="messages / s",
             title="throughput (median, min\N{EN DASH}max)")
    right.set(xscale="log", yscale="symlog", xlabel="every_messages",
              ylabel="messages handled again", title="handled again after SIGKILL "
              "(median, min\N{EN DASH}max)")
    _finish(plt, fig, (left, right), path)


STORE_LABELS = {NO_STORE: "no store", "sqlite": "SQLite store", "postgres": "PostgreSQL store"}


def _store_curve(plt: Any, path: Path, curve: StoreCurve) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    stores = [s for s in STORE_LABELS if any(p.store == s for p in curve.points)]
    twice = counted = 0
    for index, store in enumerate(stores):
        points = [p for p in curve.points if p.store == store]
        style = {"marker": "os^"[index], "color": f"C{index}"}  # one colour per store, both panels
        _errorbars(left, [(p.every_messages, p.rate) for p in points], STORE_LABELS[store],
                   **style)
        if store != NO_STORE:
            _errorbars(right, [(p.every_messages, p.again) for p in points],
                       STORE_LABELS[store], **style)
            twice += sum(k.effects_twice for p in points for k in p.counted)
            counted += sum(len(p.counted) for p in points)
    xs = sorted({p.every_messages for p in curve.points})
    right.plot(xs, xs, "k--", lw=0.8, alpha=0.5, label="one transaction")
    left.set(xscale="log", yscale="log", xlabel="every_messages (= store transaction size)",
             ylabel="messages / s", title="throughput (median, min\N{EN DASH}max)")
    right.set(xscale="log", yscale="symlog", xlabel="every_messages (= store transaction size)",
              ylabel="messages handled again",
              title=f"after SIGKILL: handled again; effects applied twice: {twice} "
                    f"in {counted} kills")
    _finish(plt, fig, (left, right), path)


def _finish(plt: Any, fig: Any, axes: tuple[Any, Any], path: Path) -> None:
    """Both curve figures: counts from 0 on the right panel, grids, legends, saved."""
    axes[1].set_ylim(bottom=0)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _errorbars(ax: Any, points: list[tuple[int, Spread | None]], label: str,
               marker: str, color: str | None = None) -> None:
    present = [(x, s) for x, s in points if s is not None]
    if not present:
        return
    xs = [x for x, _ in present]
    medians = [s.median for _, s in present]
    low = [s.median - s.low for _, s in present]
    high = [s.high - s.median for _, s in present]
    ax.errorbar(xs, medians, yerr=[low, high], marker=marker, capsize=3, label=label,
                color=color)

