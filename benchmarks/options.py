"""Command-line options and the two presets: the full run and ``--quick``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.contenders import CONTENDERS, IO_CONTENDERS

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Preset:
    messages: int
    rounds: int
    #: A run stops at the first message after this many seconds of consuming.
    cap_seconds: float
    curve_messages: int
    curve_rounds: int
    curve_cap_seconds: float
    kills: int
    #: A kill lands uniformly at random this many seconds after the first handled message.
    kill_window: tuple[float, float]
    #: The transaction-size curve (every store x every_messages): its rounds, cap and kills.
    #: It reads the curve's first ``curve_messages`` too.
    store_rounds: int
    store_cap_seconds: float
    store_kills: int
    store_kill_window: tuple[float, float]
    #: The IO-bound group (``--io``): rounds, the cap of each run, and the share of each
    #: contender's full message count it reads.
    io_rounds: int = 3
    io_cap_seconds: float = 20.0
    io_share: float = 1.0


FULL = Preset(messages=1_000_000, rounds=3, cap_seconds=25.0, curve_messages=100_000,
              curve_rounds=3, curve_cap_seconds=8.0, kills=3, kill_window=(1.0, 4.0),
              store_rounds=3, store_cap_seconds=4.0, store_kills=2,
              store_kill_window=(1.0, 3.0))
QUICK = Preset(messages=100_000, rounds=3, cap_seconds=3.0, curve_messages=20_000,
               curve_rounds=1, curve_cap_seconds=2.0, kills=2, kill_window=(0.2, 0.8),
               store_rounds=1, store_cap_seconds=1.5, store_kills=1,
               store_kill_window=(0.2, 0.8), io_rounds=3, io_cap_seconds=6.0, io_share=0.2)


@dataclass(frozen=True)
class Options:
    mode: str
    preset: Preset
    size: int
    partitions: int
    contenders: list[str] | None
    out: Path
    curve: bool
    store_curve: bool
    seed: int
    keep_topic: bool
    io: bool = False


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Consume one preloaded topic with every contender, side by side; draw the "
                    "commit-interval curve; write benchmarks/results/.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="100,000 messages, 3 s caps, short curves (about 4 minutes)")
    parser.add_argument("--messages", type=int,
                        help=f"messages to preload (default {FULL.messages:,})")
    parser.add_argument("--size", type=int, default=100, help="bytes per message (100)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions (6)")
    parser.add_argument("--rounds", type=int, help=f"rounds of every contender ({FULL.rounds})")
    parser.add_argument("--cap-seconds", type=float,
                        help=f"stop a run after this many seconds ({FULL.cap_seconds:.0f})")
    parser.add_argument("--contenders",
                        help="comma-separated names (default: all): "
                             + ", ".join(c.name for c in CONTENDERS)
                             + "; IO-bound (see --io): "
                             + ", ".join(c.name for c in IO_CONTENDERS))
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"folder (default {RESULTS})")
    parser.add_argument("--no-curve", action="store_true", help="skip the commit-interval curve")
    parser.add_argument("--curve-messages", type=int,
                        help=f"messages per curve run ({FULL.curve_messages:,})")
    parser.add_argument("--kills", type=int, help=f"SIGKILLs per curve point ({FULL.kills})")
    parser.add_argument("--no-store-curve", action="store_true",
                        help="skip the transaction-size curve (SQLite and PostgreSQL stores)")
    parser.add_argument("--store-kills", type=int,
                        help=f"SIGKILLs per store and transaction size ({FULL.store_kills})")
    parser.add_argument("--io", action="store_true",
                        help="also run the IO-bound group: handlers that sleep 10 ms, run "
                             "concurrently (about 7-8 minutes; 2 with --quick)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the kill moments (7)")
    parser.add_argument("--keep-topic", action="store_true",
                        help="leave the preloaded topic on the broker")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    overrides = {name: value for name, value in (
        ("messages", args.messages), ("rounds", args.rounds),
        ("cap_seconds", args.cap_seconds), ("curve_messages", args.curve_messages),
        ("kills", args.kills), ("store_kills", args.store_kills),
    ) if value is not None}
    for name, value in overrides.items():
        if value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return Options(
        mode="quick" if args.quick else "full",
        preset=replace(preset, **overrides),
        size=args.size,
        partitions=args.partitions,
        contenders=[n.strip() for n in args.contenders.split(",")] if args.contenders else None,
        out=args.out,
        curve=not args.no_curve,
        store_curve=not args.no_store_curve,
        seed=args.seed,
        keep_topic=args.keep_topic,
        io=args.io,
    )
