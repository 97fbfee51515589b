"""Read-only views of the loop's state, for metrics and health on other threads.

``ConsumerLoop.snapshot()`` (:mod:`consumer.engine.loop`) builds them from one copy of the
partition map, so a reader on the scrape or HTTP thread never sees a structure mid-change.
Frozen values: holding one never calls into the consumer, and nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from consumer.message import TP, Message


@dataclass(frozen=True, slots=True)
class PartitionSnapshot:
    """One assigned partition's progress, as the loop keeps it."""

    #: Next offset after the last done message; None until something is done.
    watermark: int | None
    #: Last offset the broker confirmed as committed (the next one to read); None: none yet.
    acked: int | None
    #: Messages done since the partition was assigned.
    done: int
    #: Messages done whose commit the broker has not confirmed (what a crash would repeat).
    unconfirmed: int
    #: Monotonic time the oldest done-but-uncommitted message was done; None: nothing pending.
    oldest_uncommitted_at: float | None
    #: Routes with concurrency: messages finished above the watermark (not committable yet).
    gap: int = 0


@dataclass(frozen=True, slots=True)
class WorkSnapshot:
    """Routes with concurrency: what runs and waits now (empty without concurrency)."""

    #: Route (topic) -> messages running now.
    in_flight: Mapping[str, int] = field(default_factory=dict)
    #: Partition -> messages polled and not started.
    queued: Mapping[TP, int] = field(default_factory=dict)
    #: Partition -> messages finished above its watermark.
    gaps: Mapping[TP, int] = field(default_factory=dict)
    #: Partitions paused because their route's buffer is full.
    paused: frozenset[TP] = frozenset()
    #: Partitions with messages polled and not done (queued, running, or finished above
    #: the watermark): the client's position is past the watermark because of them.
    held: frozenset[TP] = frozenset()


@dataclass(frozen=True, slots=True)
class LoopSnapshot:
    """The loop's lifecycle and its assigned partitions at one moment."""

    #: :class:`consumer.engine.loop.LoopState` value: created, running, draining, closed, failed.
    state: str
    stop_requested: bool
    partitions: dict[TP, PartitionSnapshot]
    #: Partitions not fetched now (waiting for a retry, or the store is unavailable).
    paused: frozenset[TP] = frozenset()
    #: With a store: the messages buffered for the next transaction, polled but not done.
    pending: Sequence[Message] = field(default=())
    #: Routes with concurrency: route (topic) -> messages running now.
    in_flight: Mapping[str, int] = field(default_factory=dict)
    #: Routes with concurrency: partition -> messages polled and not started.
    queued: Mapping[TP, int] = field(default_factory=dict)


#: No route runs with concurrency.
NO_WORK = WorkSnapshot()
