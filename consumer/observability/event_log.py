"""Log lines an operator follows the consumer's life by, written from the engine's events.

The logger is ``consumer.engine`` (its name is part of the interface: scripts and alerts read
it). Runs where the events arrive (the poll thread; the purge thread for purges), only logs,
and rate-limits a client error that repeats during an outage by the clock it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from consumer.clock import Clock, SystemClock
from consumer.errors import ConsumerError, KafkaError, StoreError
from consumer.events import Observer, Trigger
from consumer.message import TP, Message

log = logging.getLogger("consumer.engine")

#: Seconds between two lines about the same non-fatal client error code while it repeats.
KAFKA_ERROR_LOG_INTERVAL = 30.0


@dataclass
class _Repeats:
    """One non-fatal client error code while it keeps coming."""

    logged_at: float
    seen_at: float
    since_logged: int = 0


class LoggingObserver(Observer):
    """Logs what an operator needs to follow the consumer's life.

    Non-fatal client errors repeat during a broker outage (each connection attempt fails):
    the first of a code is logged, then at most one "still failing" line per
    :data:`KAFKA_ERROR_LOG_INTERVAL` counts the repeats. A code quiet for that long is logged
    in full again when it comes back. Fatal errors are always logged.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._repeats: dict[str, _Repeats] = {}

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
        if trigger is Trigger.REVOKE:
            then = ("the revoked partitions go without it: their next owner resumes from the "
                    "last checkpoint the store or Kafka holds")
        elif trigger is Trigger.SHUTDOWN:
            then = "the next start resumes from the last checkpoint the store or Kafka holds"
        else:
            then = "the next checkpoint commits again"
        log.warning("offset commit failed (%s): %s; %s",
                    trigger.value if trigger else "async", error, then)

    def kafka_error(self, error: KafkaError) -> None:
        if error.fatal:
            log.warning("%s", error)
            return
        now = self._clock.monotonic()
        seen = self._repeats.get(error.code)
        if seen is None or now - seen.seen_at >= KAFKA_ERROR_LOG_INTERVAL:
            self._repeats[error.code] = _Repeats(logged_at=now, seen_at=now)
            log.warning("%s", error)
            return
        seen.seen_at = now
        seen.since_logged += 1
        if now - seen.logged_at >= KAFKA_ERROR_LOG_INTERVAL:
            log.warning("Kafka client still failing: %s (%d times in the last %.0f s; latest: "
                        "%s)", error.code, seen.since_logged, now - seen.logged_at,
                        error.reason)
            seen.logged_at, seen.since_logged = now, 0

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

    def retry_scheduled(self, message: Message, attempt: int, delay: float,
                        error: BaseException) -> None:
        log.warning("handler failed on %s[%d]@%d (attempt %d: %s: %s); partition paused, "
                    "retrying in %.2f s", message.topic, message.partition, message.offset,
                    attempt, type(error).__name__, error, delay, extra=_at(message))

    def dead_lettered(self, message: Message, reason: str, error: BaseException) -> None:
        log.error("dead-lettered %s[%d]@%d (%s: %s: %s)", message.topic, message.partition,
                  message.offset, reason, type(error).__name__, error, extra=_at(message))

    def dead_letter_failed(self, message: Message, error: ConsumerError) -> None:
        log.error("%s", error, extra=_at(message))


def _at(message: Message) -> dict[str, object]:
    return {"topic": message.topic, "partition": message.partition, "offset": message.offset}


def _names(partitions: list[TP]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in partitions) or "no partitions"
