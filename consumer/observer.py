"""Typed events the engine emits; metrics and logs observe from the side, never steer."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from consumer.checkpoint_policy import Trigger
from consumer.errors import ConsumerError, KafkaError, StoreError
from consumer.message import Message

TP = tuple[str, int]

log = logging.getLogger("consumer.engine")


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

    def store_unavailable(self, error: StoreError) -> None: ...

    def store_available(self) -> None: ...

    def external_reset(self, partition: TP, kafka_offset: int, store_offset: int,
                       policy: str) -> None: ...

    def processed_keys_purged(self, count: int) -> None: ...


class LoggingObserver(Observer):
    """Logs what an operator needs to follow the consumer's life."""

    def started(self, topics: list[str]) -> None:
        log.info("subscribed to %s", ", ".join(topics))

    def assigned(self, partitions: list[TP]) -> None:
        log.info("assigned %s", _names(partitions))

    def revoked(self, partitions: list[TP]) -> None:
        log.info("revoked %s", _names(partitions))

    def lost(self, partitions: list[TP]) -> None:
        log.warning("lost %s (another member may own them now; nothing committed for them)",
                    _names(partitions))

    def checkpoint_committed(self, trigger: Trigger, offsets: Mapping[TP, int]) -> None:
        log.debug("checkpoint (%s): %s", trigger.value,
                  ", ".join(f"{t}[{p}]={o}" for (t, p), o in offsets.items()))

    def commit_acknowledged(self, offsets: Mapping[TP, int]) -> None:
        log.debug("commit acknowledged: %s",
                  ", ".join(f"{t}[{p}]={o}" for (t, p), o in offsets.items()))

    def commit_failed(self, trigger: Trigger | None, error: KafkaError) -> None:
        log.warning("offset commit failed (%s): %s; the next checkpoint commits again",
                    trigger.value if trigger else "async", error)

    def kafka_error(self, error: KafkaError) -> None:
        log.warning("%s", error)

    def failed(self, error: ConsumerError) -> None:
        # Coordinates as attributes too, so JSON log lines carry them as fields.
        coordinates = ("topic", "partition", "offset")
        log.error("%s", error, extra={k: getattr(error, k) for k in coordinates
                                      if hasattr(error, k)})

    def stopped(self) -> None:
        log.info("stopped")

    def store_unavailable(self, error: StoreError) -> None:
        log.warning("store unavailable, consumption paused until it answers: %s", error)

    def store_available(self) -> None:
        log.info("store answers again; consumption resumed")

    def external_reset(self, partition: TP, kafka_offset: int, store_offset: int,
                       policy: str) -> None:
        topic, number = partition
        log.warning(
            "%s[%d]: Kafka's committed offset %d was moved by another tool (the store says %d);"
            " store.on_external_reset=%s: resuming at %d", topic, number, kafka_offset,
            store_offset, policy, kafka_offset if policy == "follow" else store_offset,
        )

    def processed_keys_purged(self, count: int) -> None:
        log.info("purged %d processed keys past their retention", count)


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


def _names(partitions: list[TP]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in partitions) or "no partitions"
