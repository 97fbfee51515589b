"""Read-only views of the consumer's state, for metrics and health on another thread.

The poll thread owns the state; these views are built on demand (``ConsumerLoop.snapshot()``)
or swapped in whole (``LogOffsets`` maps from the source), so a reader never sees a structure
being changed and never calls into the consumer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from consumer.message import Message

#: (topic, partition)
TP = tuple[str, int]


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


@dataclass(frozen=True, slots=True)
class LoopSnapshot:
    """The loop's lifecycle and its assigned partitions at one moment."""

    #: :class:`consumer.engine.LoopState` value: created, running, draining, closed, failed.
    state: str
    stop_requested: bool
    partitions: dict[TP, PartitionSnapshot]
    #: Partitions not fetched now (waiting for a retry, or the store is unavailable).
    paused: frozenset[TP] = frozenset()
    #: With a store: the messages buffered for the next transaction, polled but not done.
    pending: Sequence[Message] = field(default=())


@dataclass(frozen=True, slots=True)
class LogOffsets:
    """What the client last learned about a partition's log, without asking the broker.

    Offsets are Kafka's: ``end`` is the offset the next produced message will get (the high
    watermark), ``start`` the first offset still in the log.
    """

    start: int
    end: int
    #: The group's committed offset as the client knows it; None when nothing is committed.
    committed: int | None = None
    #: Bytes of records fetched for this partition since the client started (librdkafka's
    #: rxbytes: a record batch fetched twice counts twice).
    fetched_bytes: int = 0


@dataclass(frozen=True, slots=True)
class GroupPosition:
    """A group's committed offset on one partition beside the partition's log (``consumer
    lag``), as the brokers report them now."""

    topic: str
    partition: int
    #: None when the group has committed nothing for this partition.
    committed: int | None
    #: The commit's metadata (``checkpoint-consumer/1`` for ours); None when absent.
    metadata: str | None
    start: int
    end: int
