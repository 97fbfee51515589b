"""Typed events the engine emits; metrics and logs observe from the side, never steer."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from consumer.checkpoint_policy import Trigger
from consumer.errors import ConsumerError, KafkaError

TP = tuple[str, int]

log = logging.getLogger("consumer.engine")


class Observer:
    """Receives the engine's events. Every method is a no-op here; override what you need."""

    def started(self, topics: list[str]) -> None: ...

    def assigned(self, partitions: list[TP]) -> None: ...

    def revoked(self, partitions: list[TP]) -> None: ...

    def lost(self, partitions: list[TP]) -> None: ...

    def batch_done(self, count: int) -> None: ...

    def checkpoint_committed(self, trigger: Trigger, offsets: Mapping[TP, int]) -> None: ...

    def checkpoint_noop(self, trigger: Trigger) -> None: ...

    def commit_failed(self, trigger: Trigger | None, error: KafkaError) -> None: ...

    def commit_acknowledged(self, offsets: Mapping[TP, int]) -> None: ...

    def kafka_error(self, error: KafkaError) -> None: ...

    def failed(self, error: ConsumerError) -> None: ...

    def stopped(self) -> None: ...


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
        log.error("%s", error)

    def stopped(self) -> None:
        log.info("stopped")


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
