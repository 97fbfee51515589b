"""A consumer loop over InMemorySource with metrics and health attached, scraped in-process."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from consumer.checkpoint.policy import CheckpointPolicy
from consumer.clock import ManualClock
from consumer.dedup import key_function
from consumer.engine.loop import ConsumerLoop
from consumer.engine.store_mode import TransactionalBatches
from consumer.events import Observers
from consumer.failures.retries import FailurePolicy, Failures
from consumer.kafka.protocol import LogOffsets
from consumer.message import TP
from consumer.observability.health import Health
from consumer.observability.log_watch import LogWatch
from consumer.observability.wiring import Observability, build_observability
from consumer.routing import Route, Router
from consumer.settings import Settings
from consumer.store import Store
from consumer.testing import InMemoryDeadLetterSink, InMemorySource
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
        self.observability.log.update(
            {tp: LogOffsets(start=start, end=end) for tp, end in ends.items()}, self.clock.wall()
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
) -> Metered:
    """``retry_backoff``: failing messages are retried (3 attempts) after this many seconds;
    ``store``: store mode, keys by coordinates."""
    clock = ManualClock(start=0.0)
    settings = Settings(kafka={"bootstrap_servers": "127.0.0.1:1", "group_id": "g"},
                        routes={t: "handlers.echo:handle" for t in topics},
                        store={"url": "sqlite:///unused.db" if store else "none"})
    observability = build_observability(settings, clock=clock, registry=CollectorRegistry())
    instruments = observability.timings
    timed_source = instruments.source(source)
    handle = handler or Recorder()
    observer = Observers(*observability.observers)
    router = Router(Route(topic, handle, "x:y") for topic in topics)
    failures = None if retry_backoff is None else Failures(
        {t: FailurePolicy(attempts=3, initial_backoff=retry_backoff, max_backoff=retry_backoff,
                          multiplier=1.0, jitter=0.0, never_retry=(), stop_on=(),
                          dead_letter_topic=f"{t}.dlq", format="bytes") for t in topics},
        sink=InMemoryDeadLetterSink(), group="g", observer=observer,
        monotonic=clock.monotonic, wall=clock.wall)
    keys = {t: key_function("coordinates", {}) for t in topics}
    transactional = None if store is None else TransactionalBatches(
        instruments.store(store), source=timed_source, router=router, keys=keys, group="g",
        observer=observer, clock=clock, failures=failures, instruments=instruments)
    loop = ConsumerLoop(
        timed_source, router=router,
        policy=CheckpointPolicy(every_messages=every_messages, every_seconds=every_seconds),
        group="g", clock=clock, observer=observer, batch_size=batch_size, poll_timeout=0.0,
        keys=keys, failures=failures, transactional=transactional, instruments=instruments,
        log_watch=LogWatch(observability.log, source=timed_source, clock=clock),
    )
    health = observability.attach(loop.snapshot)
    return Metered(loop, source, clock, observability, health)
