"""A consumer loop over InMemorySource with metrics and health attached, scraped in-process."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from consumer.clock import ManualClock
from consumer.engine import ConsumerLoop
from consumer.health import Health
from consumer.observability import Observability, build_observability
from consumer.observer import Observers
from consumer.settings import Settings
from consumer.snapshot import TP, LogOffsets
from consumer.testing import InMemorySource
from tests.unit.engine_support import Handler, Recorder, make_loop


@dataclass
class Metered:
    loop: ConsumerLoop
    source: InMemorySource
    clock: ManualClock
    observability: Observability
    health: Health

    @property
    def registry(self) -> CollectorRegistry:
        return self.observability.registry

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {"group": "g", **labels})

    def partition_value(self, name: str, partition: int, topic: str = "t") -> float | None:
        return self.value(name, topic=topic, partition=str(partition))

    def log_ends(self, ends: dict[TP, int], *, start: int = 0) -> None:
        """What the client's statistics would report now."""
        self.observability.log.update(
            {tp: LogOffsets(start=start, end=end) for tp, end in ends.items()}, self.clock.wall()
        )

    def partitions_in(self, name: str) -> set[tuple[str, str]]:
        """(topic, partition) of every sample of a per-partition family."""
        found = set()
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and "partition" in sample.labels:
                    found.add((sample.labels["topic"], sample.labels["partition"]))
        return found


def metered(
    source: InMemorySource,
    handler: Handler | None = None,
    *,
    topics: tuple[str, ...] = ("t",),
    every_messages: int | None = None,
    every_seconds: float | None = None,
    batch_size: int = 500,
) -> Metered:
    clock = ManualClock(start=0.0)
    settings = Settings(kafka={"bootstrap_servers": "127.0.0.1:1", "group_id": "g"},
                        routes={t: "handlers.echo:handle" for t in topics})
    observability = build_observability(settings, clock=clock, registry=CollectorRegistry())
    loop = make_loop(source, handler or Recorder(), topics=topics, every_messages=every_messages,
                     every_seconds=every_seconds, batch_size=batch_size, clock=clock,
                     observer=Observers(*observability.observers))
    health = observability.attach(loop.snapshot)
    return Metered(loop, source, clock, observability, health)
