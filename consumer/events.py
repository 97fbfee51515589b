"""What the core reports to the side: typed events (:class:`Observer`, :class:`Trigger`) and
the handler timings it fills (:class:`HandlerTimings`).

The engine, checkpoint and failure code call an Observer on the poll thread (the processed-key
purger calls ``processed_keys_purged`` on its own thread). An implementation returns quickly,
never raises, and never steers the loop or calls the Kafka client: it only records. The layers
below observability know only these types, never the classes that implement them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol

from consumer.errors import ConsumerError, KafkaError, StoreError
from consumer.message import TP, Message


class Trigger(enum.Enum):
    """Why a checkpoint was taken (the ``trigger`` label of ``consumer_commits_total``)."""

    COUNT = "count"
    INTERVAL = "interval"
    REVOKE = "revoke"
    SHUTDOWN = "shutdown"


class Observer:
    """Receives the engine's events. Every method is a no-op here; override what you need."""

    def started(self, topics: list[str]) -> None: ...

    def assigned(self, partitions: list[TP]) -> None: ...

    def revoked(self, partitions: list[TP]) -> None: ...

    def lost(self, partitions: list[TP]) -> None: ...

    def polled(self, messages: list[Message]) -> None:
        """A poll returned (possibly nothing); the loop handles ``messages`` next. Keep it
        cheap: it runs once per loop turn, on the polling thread."""

    def batch_done(self, count: int) -> None: ...

    def checkpoint_committed(self, trigger: Trigger, offsets: Mapping[TP, int]) -> None: ...

    def checkpoint_noop(self, trigger: Trigger) -> None: ...

    def commit_failed(self, trigger: Trigger | None, error: KafkaError) -> None: ...

    def commit_acknowledged(self, offsets: Mapping[TP, int]) -> None: ...

    def kafka_error(self, error: KafkaError) -> None: ...

    def failed(self, error: ConsumerError) -> None: ...

    def stopped(self) -> None: ...

    def batch_applied(self, applied: int, duplicates: int) -> None:
        """A store transaction committed: handlers applied, and duplicates skipped."""

    def messages_done(self, messages: list[Message]) -> None:
        """With a store: the messages a committed transaction made done, once per batch."""

    def store_unavailable(self, error: StoreError) -> None: ...

    def store_available(self) -> None: ...

    def external_reset(self, partition: TP, kafka_offset: int, store_offset: int,
                       policy: str) -> None: ...

    def processed_keys_purged(self, count: int) -> None: ...

    def retry_scheduled(self, message: Message, attempt: int, delay: float,
                        error: BaseException) -> None: ...

    def dead_lettered(self, message: Message, reason: str, error: BaseException) -> None: ...

    def dead_letter_failed(self, message: Message, error: ConsumerError) -> None: ...


class Observers(Observer):
    """Fans every event out to several observers."""

    def __init__(self, *observers: Observer) -> None:
        self._observers = observers

    def __getattribute__(self, name: str):  # type: ignore[no-untyped-def]
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        observers = object.__getattribute__(self, "_observers")

        def fan_out(*args: object) -> None:
            for observer in observers:
                getattr(observer, name)(*args)

        return fan_out


class HandlerTimings(Protocol):
    """Where handler calls are timed while metrics are on
    (:class:`consumer.observability.instruments.Instruments`)."""

    #: ``now()`` when the handler call in progress started; 0.0 when none is running.
    started: float

    def now(self) -> float: ...

    def durations(self, topic: str) -> list[float]:
        """The list each successful call's duration of ``topic`` is appended to."""
        ...

    def failed(self, topic: str, seconds: float) -> None:
        """A handler call of ``topic`` raised after ``seconds``."""
        ...

