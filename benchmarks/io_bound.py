"""The IO-bound group (``--io``): handlers that wait 10 ms, run concurrently, one process each.

A topic of its own is preloaded: as many messages as the largest contender reads, each with one
of 1,000 keys drawn at random and placed by the producer's partitioner over 6 partitions (the
throughput group's topic has no keys, and key ordering needs them). Every contender reads it
from the start with a fresh group, in rounds that rotate the order, like the throughput group;
each reads its own count, sized for 10-20 s at its goal rate (``--quick`` reads a fifth).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from benchmarks import topic
from benchmarks.contenders import IO_KEYS
from benchmarks.environments import Environment
from benchmarks.measure import ChildRun
from benchmarks.options import Preset
from benchmarks.rounds import Standing, run_rounds
from benchmarks.topic import Preloaded


@dataclass(frozen=True)
class IoBound:
    standings: list[Standing]
    preloaded: Preloaded
    rounds: int
    cap_seconds: float
    #: Contender name -> messages its runs read.
    messages: dict[str, int]


def targets(standings: list[Standing], preset: Preset) -> dict[str, int]:
    """Each contender's message count: its full count times the preset's share."""
    return {s.contender.name: max(100, round((s.contender.messages or 0) * preset.io_share))
            for s in standings}


def run_io_bound(standings: list[Standing], environments: dict[str, Environment],
                 run: ChildRun, preset: Preset, *, size: int, run_id: str, seed: int,
                 keep_topic: bool, say: Callable[[str], None]) -> IoBound:
    """Preload the keyed topic, run the group's rounds, delete the topic."""
    messages = targets(standings, preset)
    name = f"bench-io-{run_id}"
    total = max(messages.values())
    say(f"IO-bound: preloading {total:,} messages with {IO_KEYS:,} keys over "
        f"{run.partitions} partitions into {name}")
    preloaded = topic.preload(run.bootstrap, name, partitions=run.partitions, messages=total,
                              size=size, keys=IO_KEYS, seed=seed)
    try:
        run_rounds(standings, environments,
                   replace(run, topic=name, messages=total, cap_seconds=preset.io_cap_seconds),
                   rounds=preset.io_rounds, run_id=f"{run_id}-io", say=say, messages=messages)
    finally:
        if not keep_topic:
            topic.delete(run.bootstrap, name)
    return IoBound(standings, preloaded, preset.io_rounds, preset.io_cap_seconds, messages)
