"""Lag, computed right: in messages from offsets, in seconds from timestamps.

- messages: ``max(0, end - max(position, start))``; with no position yet (nothing processed,
  nothing committed) measure from the log start. Never -1, never negative.
- seconds: 0 when the lag in messages is 0 (an idle, caught-up consumer reads 0); otherwise
  now minus the timestamp of the oldest unprocessed message the consumer holds; when that
  message is not fetched yet, the time the log's end passed its offset, interpolated between
  recorded (end offset, time) samples, never extrapolated.
- transaction markers: the end offset counts a transaction's commit marker, which no handler
  ever sees; when the consumer holds nothing of a partition and the client's position is past
  the watermark, the position is what was processed (:class:`Skip`).

:class:`OffsetTracker` keeps the latest :class:`~consumer.kafka.protocol.PartitionOffsets` per
partition and those samples. The poll thread updates it (from the client's statistics, and for
paused partitions from a throttled broker query); the scrape thread reads it.
It never calls the broker.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from consumer.kafka.protocol import PartitionOffsets
from consumer.message import TP

#: Seconds a released pin still holds back a lower end from the statistics (the client needs
#: a fetch or two after a partition resumes before its statistics catch up).
PIN_GRACE_SECONDS = 30.0

#: Samples kept per partition; older ones are thinned out, so the history reaches further back
#: at a coarser resolution instead of being cut off.
MAX_SAMPLES = 64


def lag_messages(end: int, position: int | None, start: int) -> int:
    """Messages between ``position`` (the next offset to process) and the log's end."""
    base = start if position is None else max(position, start)
    return max(0, end - base)


class EndTimeline:
    """(end offset, wall time) samples of one partition's log, oldest first.

    For each end offset the first and the last time it was seen are kept, so interpolation
    brackets the moment the end moved past an offset as tightly as the samples allow.
    """

    __slots__ = ("_samples",)

    def __init__(self) -> None:
        self._samples: list[tuple[int, float]] = []

    def record(self, end: int, at: float) -> None:
        samples = self._samples
        if samples and at < samples[-1][1]:
            return  # a clock step backwards: keep the history monotonic
        if len(samples) >= 2 and samples[-1][0] == end and samples[-2][0] == end:
            samples[-1] = (end, at)
            return
        if samples and end < samples[-1][0]:
            samples.clear()  # the log was truncated or recreated: the old history lies
        samples.append((end, at))
        if len(samples) > MAX_SAMPLES:
            # Keep the newest half as it is, every other sample of the older half.
            half = MAX_SAMPLES // 2
            self._samples = samples[:-half:2] + samples[-half:]

    def produced_at(self, offset: int) -> float | None:
        """When the message at ``offset`` reached the log (interpolated); None if it has not
        yet, as far as the samples know. Older than every sample: the oldest sample's time, a
        lower bound on its age (never extrapolated)."""
        previous: tuple[int, float] | None = None
        for end, at in self._samples:
            if end > offset:
                if previous is None:
                    return at
                end0, at0 = previous
                # The end moved from end0 to end between at0 and at; offset's message arrived
                # when the end passed offset + 1.
                return at0 + (at - at0) * (offset + 1 - end0) / (end - end0)
            previous = (end, at)
        return None


@dataclass
class _Pin:
    """An end offset asked from the broker for a paused partition, whose cached watermarks
    in the client's statistics have stopped moving."""

    start: int
    end: int
    #: Wall time the partition resumed (its pin lapses once the statistics catch up).
    released_at: float | None = None


@dataclass(frozen=True, slots=True)
class Skip:
    """The client's position is past the watermark with nothing unprocessed in between (only
    transaction markers or aborted records): ``watermark`` may be read as ``position``."""

    watermark: int
    position: int


class OffsetTracker:
    """The latest log offsets of every partition the client reports, and their timelines.

    Fed on the poll thread by the client's statistics (:meth:`update`) and by
    :class:`~consumer.observability.offset_refresh.OffsetRefresher` (:meth:`pin_end` for paused
    partitions, :meth:`record_skips` for positions past transaction markers); read by the scrape.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offsets: Mapping[TP, PartitionOffsets] = {}
        self._timelines: dict[TP, EndTimeline] = {}
        self._fetched_bytes: dict[TP, int] = {}
        self._bytes_by_topic: dict[str, int] = {}
        self._pins: dict[TP, _Pin] = {}
        self._skips: Mapping[TP, Skip] = {}

    def update(self, offsets: Mapping[TP, PartitionOffsets], at: float) -> None:
        """New offsets from the client (the poll thread); ``at`` is wall time."""
        with self._lock:
            offsets = {tp: self._pinned(tp, log, at) for tp, log in offsets.items()}
            for tp, log in offsets.items():
                self._timeline(tp).record(log.end, at)
                before = self._fetched_bytes.get(tp, 0)
                # A client-side counter that went down was reset: count it from zero again.
                grown = log.fetched_bytes - before if log.fetched_bytes >= before \
                    else log.fetched_bytes
                self._fetched_bytes[tp] = log.fetched_bytes
                if grown:
                    self._bytes_by_topic[tp[0]] = self._bytes_by_topic.get(tp[0], 0) + grown
            self._offsets = {**self._offsets, **offsets}

    def _timeline(self, tp: TP) -> EndTimeline:
        timeline = self._timelines.get(tp)
        if timeline is None:
            timeline = self._timelines[tp] = EndTimeline()
        return timeline

    def _pinned(self, tp: TP, log: PartitionOffsets, at: float) -> PartitionOffsets:
        """The statistics' offsets, with the broker's fresher end while a pin holds."""
        pin = self._pins.get(tp)
        if pin is None:
            return log
        if log.end >= pin.end or (pin.released_at is not None
                                  and at - pin.released_at > PIN_GRACE_SECONDS):
            del self._pins[tp]
            return log
        return PartitionOffsets(start=max(log.start, pin.start), end=pin.end,
                          committed=log.committed, fetched_bytes=log.fetched_bytes)

    def pin_end(self, tp: TP, start: int, end: int, at: float) -> None:
        """A paused partition's log range as the broker answered it now (the poll thread)."""
        with self._lock:
            self._pins[tp] = _Pin(start, end)
            known = self._offsets.get(tp)
            log = PartitionOffsets(start=start, end=end) if known is None else PartitionOffsets(
                start=max(known.start, start), end=max(known.end, end),
                committed=known.committed, fetched_bytes=known.fetched_bytes)
            self._timeline(tp).record(log.end, at)
            self._offsets = {**self._offsets, tp: log}

    def release(self, partitions: list[TP], at: float) -> None:
        """These partitions are fetched again: their pins lapse once the statistics catch up."""
        with self._lock:
            for tp in partitions:
                pin = self._pins.get(tp)
                if pin is not None and pin.released_at is None:
                    pin.released_at = at

    def pinned(self) -> list[TP]:
        return [tp for tp, pin in self._pins.items() if pin.released_at is None]

    def record_skips(self, skips: Mapping[TP, Skip]) -> None:
        """Replace every partition's :class:`Skip` (the poll thread)."""
        self._skips = dict(skips)

    def skips(self) -> Mapping[TP, Skip]:
        return self._skips

    def offsets(self) -> Mapping[TP, PartitionOffsets]:
        return self._offsets

    def fetched_bytes(self) -> dict[str, int]:
        """Record bytes fetched per topic since the process started (a counter)."""
        with self._lock:
            return dict(self._bytes_by_topic)

    def produced_at(self, tp: TP, offset: int) -> float | None:
        with self._lock:
            timeline = self._timelines.get(tp)
            return None if timeline is None else timeline.produced_at(offset)

    def forget(self, partitions: list[TP]) -> None:
        """Drop partitions this consumer no longer owns (their history goes stale)."""
        with self._lock:
            for tp in partitions:
                self._timelines.pop(tp, None)
                self._pins.pop(tp, None)
            self._offsets = {tp: o for tp, o in self._offsets.items() if tp not in partitions}
            self._skips = {tp: s for tp, s in self._skips.items() if tp not in partitions}


def lag_seconds(
    *, now: float, lag: int, oldest_held: float | None, produced_at: float | None
) -> float:
    """Seconds the oldest unprocessed message has waited; 0 when there is nothing to process.

    ``oldest_held``: timestamp of the oldest unprocessed message the consumer holds, if any;
    ``produced_at``: when the log's end passed the next offset to process (interpolated).
    """
    if lag == 0:
        return 0.0
    stamp = oldest_held if oldest_held is not None else produced_at
    if stamp is None:
        return 0.0
    return max(0.0, now - stamp)
