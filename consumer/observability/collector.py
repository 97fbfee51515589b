"""The scrape side of the metrics: every gauge computed when Prometheus scrapes, from the
loop's snapshot, the lifecycle facts, the client's log offsets and the histograms the poll
thread filled. Per-partition series exist while the partition is assigned: they vanish with it
on revoke or loss.

Runs on the HTTP thread serving ``/metrics``. It reads snapshots and copies only: it never
calls the broker, the store or the loop's live objects, and writes nothing the poll thread
reads.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from consumer.clock import Clock
from consumer.engine.snapshot import LoopSnapshot, PartitionSnapshot
from consumer.kafka.protocol import PartitionOffsets
from consumer.message import TP, Message
from consumer.observability.health import Health, Lifecycle
from consumer.observability.histogram import Histogram
from consumer.observability.instruments import STORE_OPERATIONS, Instruments
from consumer.observability.lag import OffsetTracker, Skip, lag_messages, lag_seconds
from consumer.observability.metrics import METRICS, MetricsObserver

#: LoopState value -> the ``state`` label values of ``consumer_state``.
STATES = {"created": "starting", "running": "running", "draining": "draining",
          "closed": "stopped", "failed": "failed"}
STATE_LABELS = ("starting", "running", "rebalancing", "draining", "stopped", "failed")


class ConsumerCollector(Collector):
    """Computes the gauges at scrape time; registered once the loop exists."""

    def __init__(
        self,
        *,
        snapshot: Callable[[], LoopSnapshot],
        events: MetricsObserver,
        lifecycle: Lifecycle,
        health: Health,
        offsets: OffsetTracker,
        clock: Clock,
        group: str,
        version: str,
        instruments: Instruments,
        store: bool = False,
    ) -> None:
        self._snapshot = snapshot
        self._instruments = instruments
        #: Whether a store is configured: its families have samples only then.
        self._store = store
        self._events = events
        self._lifecycle = lifecycle
        self._health = health
        self._offsets = offsets
        self._clock = clock
        self._group = group
        self._version = version

    def collect(self) -> Iterable[Metric]:
        snapshot = self._snapshot()
        yield from self._process(snapshot)
        yield from self._partitions(snapshot)
        assigned = GaugeMetricFamily("consumer_assigned_partitions",
                                     METRICS["consumer_assigned_partitions"],
                                     labels=["group", "topic"])
        per_topic = Tally(topic for topic, _ in snapshot.partitions)
        for topic in sorted(set(self._events.topics) | set(per_topic)):
            assigned.add_metric([self._group, topic], per_topic.get(topic, 0))
        yield assigned
        fetched = CounterMetricFamily("consumer_consumed_bytes",
                                      METRICS["consumer_consumed_bytes"],
                                      labels=["group", "topic"])
        for topic, count in sorted(self._offsets.fetched_bytes().items()):
            fetched.add_metric([self._group, topic], count)
        yield fetched
        paused = GaugeMetricFamily("consumer_paused_partitions",
                                   METRICS["consumer_paused_partitions"],
                                   labels=["group", "topic"])
        per_topic = Tally(topic for topic, _ in snapshot.paused)
        for topic in sorted(set(self._events.topics) | set(per_topic)):
            paused.add_metric([self._group, topic], per_topic.get(topic, 0))
        yield paused
        yield from self._concurrency(snapshot)
        yield from self._timings()
        yield from self._store_metrics()

    def _concurrency(self, snapshot: LoopSnapshot) -> Iterable[Metric]:
        group = self._group
        in_flight = GaugeMetricFamily("consumer_handlers_in_flight",
                                      METRICS["consumer_handlers_in_flight"],
                                      labels=["group", "route"])
        for route, count in sorted(snapshot.in_flight.items()):
            in_flight.add_metric([group, route], count)
        yield in_flight
        queued = GaugeMetricFamily("consumer_partition_queued_messages",
                                   METRICS["consumer_partition_queued_messages"],
                                   labels=["group", "topic", "partition"])
        gaps = GaugeMetricFamily("consumer_partition_gap_messages",
                                 METRICS["consumer_partition_gap_messages"],
                                 labels=["group", "topic", "partition"])
        if snapshot.in_flight:  # only with concurrency: no empty series otherwise
            for tp, progress in sorted(snapshot.partitions.items()):
                labels = [group, tp[0], str(tp[1])]
                queued.add_metric(labels, snapshot.queued.get(tp, 0))
                gaps.add_metric(labels, progress.gap)
        yield queued
        yield gaps

    def _timings(self) -> Iterable[Metric]:
        instruments, group = self._instruments, self._group
        yield _histograms("consumer_handler_duration_seconds", ["group", "topic", "outcome"],
                          {(group, *key): h for key, h in sorted(instruments.handler.items())})
        yield _histograms("consumer_message_age_seconds", ["group", "topic"],
                          {(group, topic): h for topic, h in sorted(self._events.ages.items())})
        yield _histograms("consumer_commit_duration_seconds", ["group"],
                          {(group,): instruments.commit})
        yield _histograms("consumer_rebalance_duration_seconds", ["group"],
                          {(group,): self._events.rebalance})
        started = GaugeMetricFamily("consumer_handler_oldest_start_timestamp_seconds",
                                    METRICS["consumer_handler_oldest_start_timestamp_seconds"],
                                    labels=["group"])
        since = instruments.started
        started.add_metric([group], 0.0 if not since else
                           self._clock.wall() - (instruments.now() - since))
        yield started

    def _store_metrics(self) -> Iterable[Metric]:
        instruments, group = self._instruments, self._group
        store = self._store
        yield _histograms("consumer_store_duration_seconds", ["group", "operation"],
                          {(group, operation): histogram for operation, histogram
                           in instruments.store_duration.items()} if store else {})
        errors = CounterMetricFamily("consumer_store_errors", METRICS["consumer_store_errors"],
                                     labels=["group", "operation"])
        lookups = CounterMetricFamily("consumer_dedup_lookups",
                                      METRICS["consumer_dedup_lookups"],
                                      labels=["group", "topic", "result"])
        if store:
            for operation in STORE_OPERATIONS:
                errors.add_metric([group, operation], instruments.store_errors[operation])
            for (topic, result), count in sorted(instruments.dedup.items()):
                lookups.add_metric([group, topic, result], count)
        yield errors
        yield lookups

    def _process(self, snapshot: LoopSnapshot) -> Iterable[Metric]:
        group = self._group
        info = GaugeMetricFamily("consumer_build_info", METRICS["consumer_build_info"],
                                 labels=["version"])
        info.add_metric([self._version], 1)
        yield info
        state = GaugeMetricFamily("consumer_state", METRICS["consumer_state"],
                                  labels=["group", "state"])
        current = STATES.get(snapshot.state, "starting")
        if current == "running" and self._events.rebalance_since is not None:
            current = "rebalancing"
        for name in STATE_LABELS:
            state.add_metric([group, name], 1 if name == current else 0)
        yield state
        for name, report in (("consumer_ready", self._health.ready()),
                             ("consumer_live", self._health.live())):
            gauge = GaugeMetricFamily(name, METRICS[name], labels=["group"])
            gauge.add_metric([group], 1 if report.ok else 0)
            yield gauge
        polled = GaugeMetricFamily("consumer_last_poll_timestamp_seconds",
                                   METRICS["consumer_last_poll_timestamp_seconds"],
                                   labels=["group"])
        if self._lifecycle.last_poll_wall is not None:
            polled.add_metric([group], self._lifecycle.last_poll_wall)
        yield polled

    def _partitions(self, snapshot: LoopSnapshot) -> Iterable[Metric]:
        families = {name: (CounterMetricFamily if name == "consumer_messages_consumed"
                           else GaugeMetricFamily)(name, METRICS[name],
                                                   labels=["group", "topic", "partition"])
                    for name in PARTITION_METRICS}
        now, wall = self._clock.monotonic(), self._clock.wall()
        offsets = self._offsets.offsets()
        held = held_messages([snapshot.pending, self._events.batch], snapshot.partitions)
        skips = self._offsets.skips()
        for tp, progress in sorted(snapshot.partitions.items()):
            labels = [self._group, tp[0], str(tp[1])]
            skip = None if tp in held or tp in snapshot.paused else skips.get(tp)
            for name, value in self._partition_values(
                tp, progress, offsets.get(tp), held.get(tp), now, wall, skip
            ):
                families[name].add_metric(labels, value)
        yield from families.values()

    def _partition_values(
        self, tp: TP, progress: PartitionSnapshot, log: PartitionOffsets | None,
        held: Held | None, now: float, wall: float, skip: Skip | None,
    ) -> Iterable[tuple[str, float]]:
        yield "consumer_messages_consumed", progress.done
        yield "consumer_uncommitted_messages", progress.unconfirmed
        since = progress.oldest_uncommitted_at
        yield "consumer_checkpoint_age_seconds", 0.0 if since is None else max(0.0, now - since)
        committed = progress.acked
        if committed is None and log is not None:
            committed = log.committed  # committed before this process owned the partition
        if committed is not None:
            yield "consumer_committed_offset", committed
        committed_at = self._events.last_commit_at(tp, progress.acked)
        if committed_at is not None:
            yield "consumer_last_commit_timestamp_seconds", committed_at
        position = progress.watermark if progress.watermark is not None else committed
        if skip is not None and skip.watermark == progress.watermark:
            # Only transaction markers lie between the watermark and the client's position.
            if committed == progress.watermark:
                committed = skip.position
            position = skip.position
        if position is None and held is not None:
            position = held.first  # nothing done nor committed: the client started here
        if log is None and held is None:
            if position is not None:
                yield "consumer_partition_processed_offset", position
            return  # the client has not reported this partition's log yet
        # The client reports the log's end when it polls: a stuck handler holds newer messages.
        start = 0 if log is None else log.start
        end = max(0 if log is None else log.end, 0 if held is None else held.end)
        position = max(position if position is not None else start, start)
        lag = lag_messages(end, position, start)
        yield "consumer_partition_processed_offset", position
        yield "consumer_partition_end_offset", end
        if log is not None:
            yield "consumer_partition_start_offset", log.start
        yield "consumer_partition_lag_messages", lag
        yield "consumer_partition_committed_lag_messages", lag_messages(end, committed, start)
        oldest = None if held is None else held.timestamp
        produced = (None if lag == 0 or oldest is not None
                    else self._offsets.produced_at(tp, position))
        yield "consumer_partition_lag_seconds", lag_seconds(
            now=wall, lag=lag, oldest_held=oldest, produced_at=produced)


PARTITION_METRICS = (
    "consumer_messages_consumed", "consumer_uncommitted_messages",
    "consumer_checkpoint_age_seconds", "consumer_committed_offset",
    "consumer_last_commit_timestamp_seconds", "consumer_partition_processed_offset",
    "consumer_partition_end_offset", "consumer_partition_start_offset",
    "consumer_partition_lag_messages", "consumer_partition_committed_lag_messages",
    "consumer_partition_lag_seconds",
)


class Held(NamedTuple):
    """A partition's messages in the batch in hand that are not done yet."""

    #: Offset of the first (the oldest unprocessed message the consumer holds).
    first: int
    #: Its timestamp; None when the record has none.
    timestamp: float | None
    #: Offset after the batch's last message: a floor for the log's end.
    end: int


def held_messages(batches: Iterable[Iterable[Message]],
                  partitions: Mapping[TP, PartitionSnapshot]) -> dict[TP, Held]:
    """Per assigned partition, what the batches in hand (a store's pending batch, the last
    poll) hold past its watermark."""
    found: dict[TP, Held] = {}
    for batch in batches:
        for message in batch:
            tp = (message.topic, message.partition)
            progress = partitions.get(tp)
            if progress is None or (progress.watermark is not None
                                    and message.offset < progress.watermark):
                continue
            held = found.get(tp)
            if held is None:
                found[tp] = Held(message.offset, message.timestamp, message.offset + 1)
            elif message.offset < held.first:
                found[tp] = Held(message.offset, message.timestamp, max(held.end,
                                                                        message.offset + 1))
            elif message.offset >= held.end:
                found[tp] = held._replace(end=message.offset + 1)
    return found


def _histograms(name: str, labels: list[str],
                histograms: Mapping[tuple[str, ...], Histogram]) -> Metric:
    family = HistogramMetricFamily(name, METRICS[name], labels=labels)
    for values, histogram in histograms.items():
        buckets, total = histogram.export()
        family.add_metric(list(values), buckets, total)
    return family
