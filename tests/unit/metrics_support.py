"""A consumer loop over InMemorySource with metrics and health attached, scraped in-process."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from consumer.app import build_loop
from consumer.clock import ManualClock
from consumer.engine.loop import ConsumerLoop
from consumer.kafka.protocol import PartitionOffsets
from consumer.message import TP
from consumer.observability.health import Health
from consumer.observability.wiring import Observability, build_observability
from consumer.routing import Route, Router
from consumer.store import Store
from consumer.testing import InMemoryDeadLetterSink, InMemorySource
from tests.support.wiring import STOP_AT_FAILURE, loop_settings
from tests.unit.engine_support import Handler, Recorder


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
        self.observability.offsets.update(
            {tp: PartitionOffsets(start=start, end=end) for tp, end in ends.items()},
            self.clock.wall(),
        )

    def histogram(self, name: str, **labels: str) -> tuple[float | None, float | None]:
        """(count, sum) of a histogram's series."""
        return (self.value(f"{name}_count", **labels), self.value(f"{name}_sum", **labels))

    def bucket(self, name: str, le: str, **labels: str) -> float | None:
        return self.value(f"{name}_bucket", le=le, **labels)

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
    retry_backoff: float | None = None,
    store: Store | None = None,
    route: dict[str, object] | None = None,
) -> Metered:
    """``retry_backoff``: failing messages are retried (3 attempts) after this many seconds;
    ``store``: store mode, keys by coordinates; ``route``: more route settings."""
    clock = ManualClock(start=0.0)
    retry = (STOP_AT_FAILURE if retry_backoff is None else
             {"on_failure": "dead_letter",
              "retry": {"attempts": 3, "initial_backoff_seconds": retry_backoff,
                        "max_backoff_seconds": retry_backoff, "multiplier": 1.0, "jitter": 0.0}})
    settings = loop_settings(topics, every_messages=every_messages, every_seconds=every_seconds,
                             batch_size=batch_size,
                             route={"dedup_key": "coordinates", **retry, **(route or {})},
                             store={"url": "sqlite:///unused.db"} if store else None)
    observability = build_observability(settings, clock=clock, registry=CollectorRegistry())
    handle = handler or Recorder()
    router = Router(Route(topic, handle, "x:y") for topic in topics)
    loop = build_loop(settings, router, *observability.observers,
                      instruments=observability.timings, offsets=observability.offsets,
                      source=source, store=store, clock=clock,
                      dead_letters=InMemoryDeadLetterSink())
    health = observability.attach(loop.snapshot)
    return Metered(loop, source, clock, observability, health)
