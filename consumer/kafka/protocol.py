"""The boundary between the layers above and Kafka: what a source offers (:class:`Source`),
what it reports back (:class:`SourceListener`), where dead letters go (:class:`DeadLetterSink`),
and the plain values that cross it (``COMMIT_MARKER``, :class:`PartitionOffsets`,
:class:`GroupPosition`).

Implemented over confluent-kafka by :mod:`consumer.kafka.source` and
:mod:`consumer.kafka.producer`, in memory by :mod:`consumer.testing`. One thread uses a source
and polls it; its listener is called on that thread, inside ``poll`` or ``close``. Errors
cross as :class:`~consumer.errors.ConsumerError` subclasses, never as client exceptions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from consumer.errors import KafkaError
from consumer.message import TP, Message

#: Written into every commit's metadata, so a reset made with Kafka's own tools is detectable.
COMMIT_MARKER = "checkpoint-consumer/1"


class SourceListener(Protocol):
    """What the engine does when the client reports something; called on the polling thread."""

    def on_assigned(self, partitions: list[TP]) -> Mapping[TP, int]:
        """Newly assigned partitions; returns start offsets for those it positions itself."""
        ...

    def on_revoked(self, partitions: list[TP]) -> None: ...

    def on_lost(self, partitions: list[TP]) -> None: ...

    def on_commit_result(self, offsets: Mapping[TP, int], error: KafkaError | None) -> None:
        """The outcome of an asynchronous commit."""
        ...

    def on_client_error(self, error: KafkaError) -> None: ...


class DeadLetterSink(Protocol):
    """Where failed messages go: produced, and acknowledged by the broker, before returning."""

    def send(self, topic: str, message: Message, provenance: list[tuple[str, bytes]]) -> None:
        """Raise DeadLetterFailed when the broker does not acknowledge it."""
        ...

    def close(self) -> None: ...


class Source(Protocol):
    """A subscribed consumer with manual commits."""

    def wait_for_broker(self, *, keep_trying: Callable[[], bool]) -> bool: ...

    def subscribe(self, topics: Iterable[str], listener: SourceListener) -> None: ...

    def poll(self, max_messages: int, timeout: float) -> list[Message]: ...

    def pause(self, partitions: list[TP]) -> None:
        """Stop fetching these partitions; polls still run callbacks. A pause ends when the
        partition is revoked: assigned again, it is fetched."""
        ...

    def resume(self, partitions: list[TP]) -> None: ...

    def seek(self, partition: TP, offset: int) -> None:
        """Fetch ``partition`` from ``offset`` again (messages after it are dropped locally)."""
        ...

    def commit(self, offsets: Mapping[TP, int], *, asynchronous: bool,
               metadata: Mapping[TP, str] | None = None) -> None:
        """Commit the next offsets to read, each with its ``metadata`` (the marker where
        none is given)."""
        ...

    def committed(self, partitions: Iterable[TP], timeout: float = 10.0) -> dict[TP, int | None]:
        ...

    def committed_with_metadata(
        self, partitions: Iterable[TP], timeout: float = 10.0
    ) -> dict[TP, tuple[int | None, str | None]]:
        """Kafka's committed offsets with their metadata (None, None: nothing committed)."""
        ...

    def offset_range(self, partition: TP, timeout: float = 10.0) -> tuple[int, int]:
        """(earliest retained offset, end offset) asked from the broker."""
        ...

    def positions(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """The next offset the client hands over, per partition, known locally (past any
        transaction marker); partitions without a position are left out."""
        ...

    def topic_ids(self, topics: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
        """Each topic's id, which changes when a topic is deleted and recreated."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
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
