"""Wires metrics, health and their HTTP server for one ``consumer run`` process, beside the
composition root (:mod:`consumer.app`):

    observability = build_observability(settings)
    loop = build_loop(settings, router, *observability.observers,
                      on_statistics=observability.on_statistics,
                      instruments=observability.instruments, offsets=observability.offset_tracker,
                      tracer=observability.tracer)
    observability.serve(loop.snapshot)       # /readyz answers false until the first assignment
    ...
    observability.close()

Built before the loop; ``serve`` starts the HTTP thread (OSError when the address is taken).
The statistics callback runs inside ``poll`` on the poll thread and never raises into it (a
failure is logged once, logger ``consumer.metrics``). With ``metrics.enabled: false`` it
observes nothing and serves nothing. ``tracer`` is None unless ``tracing.enabled``; ``close``
flushes the spans not exported yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from consumer import __version__
from consumer.clock import Clock, SystemClock
from consumer.engine.snapshot import LoopSnapshot
from consumer.events import Observer
from consumer.observability import client_stats
from consumer.observability.collector import ConsumerCollector
from consumer.observability.endpoints import ObservabilityServer
from consumer.observability.health import Health, Lifecycle
from consumer.observability.instruments import Instruments
from consumer.observability.lag import OffsetTracker
from consumer.observability.metrics import MetricsObserver
from consumer.observability.tracing_export import tracer_for
from consumer.settings import Settings

log = logging.getLogger("consumer.metrics")


@dataclass
class Observability:
    """The observing side of one process: events in, snapshots read, HTTP out."""

    settings: Settings
    clock: Clock
    registry: CollectorRegistry
    lifecycle: Lifecycle
    events: MetricsObserver
    offsets: OffsetTracker
    timings: Instruments
    health: Health | None = None
    server: ObservabilityServer | None = None
    address: tuple[str, int] | None = None
    #: Handler calls' spans go here (None: tracing is off).
    tracer: Tracer | None = None
    flush_spans: Callable[[], None] | None = None
    _failures: list[str] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.settings.metrics.enabled

    @property
    def observers(self) -> tuple[Observer, ...]:
        return (self.lifecycle, self.events) if self.enabled else ()

    @property
    def instruments(self) -> Instruments | None:
        """What times handlers, store operations and commits; None with metrics off."""
        return self.timings if self.enabled else None

    @property
    def offset_tracker(self) -> OffsetTracker | None:
        """What the loop's :class:`~consumer.observability.offset_refresh.OffsetRefresher`
        feeds; None with metrics off."""
        return self.offsets if self.enabled else None

    @property
    def on_statistics(self) -> Callable[[str], None] | None:
        return self._statistics if self.enabled else None

    def _statistics(self, raw: str) -> None:
        """librdkafka's statistics, inside poll on the polling thread; never raises into it."""
        try:
            stats = client_stats.parse(raw)
            self.offsets.update(client_stats.partition_offsets(stats), self.clock.wall())
            self.lifecycle.brokers_reported(client_stats.brokers_up(stats))
        except Exception as error:  # a metrics bug must never stop consumption
            if not self._failures:
                log.exception("could not read librdkafka statistics: %s", error)
            self._failures.append(type(error).__name__)

    def serve(self, snapshot: Callable[[], LoopSnapshot]) -> tuple[str, int] | None:
        """Attach to the loop and start serving; returns the bound address. Raises OSError
        when the address is taken."""
        if not self.enabled:
            return None
        health = self.attach(snapshot)
        metrics = self.settings.metrics
        self.server = ObservabilityServer(host=metrics.host, port=metrics.port,
                                          registry=self.registry, health=health)
        self.address = self.server.start()
        host, port = self.address
        log.info("serving /metrics, /livez and /readyz on http://%s:%d", host, port)
        return self.address

    def attach(self, snapshot: Callable[[], LoopSnapshot]) -> Health:
        """Build the health checks and register the scrape-time collector on the loop's
        snapshots (``serve`` does this; tests call it to scrape without HTTP)."""
        kafka = self.settings.kafka
        self.health = Health(lifecycle=self.lifecycle, snapshot=snapshot, clock=self.clock,
                             max_poll_interval_seconds=kafka.max_poll_interval_ms / 1000)
        self.registry.register(ConsumerCollector(
            snapshot=snapshot, events=self.events, lifecycle=self.lifecycle,
            health=self.health, offsets=self.offsets, clock=self.clock, group=kafka.group_id,
            version=__version__, instruments=self.timings, store=self.settings.store.enabled,
        ))
        return self.health

    def close(self) -> None:
        if self.flush_spans is not None:
            self.flush_spans()
            self.flush_spans = None
        if self.server is not None:
            self.server.close()
            self.server = None


def build_observability(
    settings: Settings, *, clock: Clock | None = None, registry: CollectorRegistry | None = None
) -> Observability:
    """Everything observing needs, before the loop exists; nothing is bound until ``serve``.
    Raises ConfigError when tracing exports over OTLP and the SDK is not installed."""
    clock = clock or SystemClock()
    tracer, flush = tracer_for(settings.tracing) if settings.tracing.enabled else (None, None)
    registry = registry or CollectorRegistry()
    tracker = OffsetTracker()
    # Handler timing reads perf_counter directly: a SystemClock method call per read would
    # double its cost. A test's manual clock is read as it is.
    instruments = Instruments() if isinstance(clock, SystemClock) else Instruments(
        now=clock.monotonic)
    return Observability(
        settings=settings,
        clock=clock,
        registry=registry,
        lifecycle=Lifecycle(clock),
        events=MetricsObserver(registry=registry, clock=clock, group=settings.kafka.group_id,
                               offsets=tracker, instruments=instruments),
        offsets=tracker,
        timings=instruments,
        tracer=tracer,
        flush_spans=flush,
    )
