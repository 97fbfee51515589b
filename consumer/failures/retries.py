"""What happens when a handler raises: retry later, dead-letter, or stop.

A message waiting for its next attempt keeps its partition paused (the loop keeps polling, so
``max.poll.interval.ms`` is never exceeded and other partitions keep flowing). After the last
attempt, or at once for a type in ``never_retry`` or a value that does not decode, the message
goes to the route's dead-letter topic; only once the broker has acknowledged it does the
partition's watermark move past it.

Every letter carries the message's dedup key (``dlq.original.dedup-key``), so a redriven copy
stays the same event, and a stable id (``dlq.id``), so two letters for one message (a crash
after the produce, before the store commits) are recognisable as one. A letter's headers are
written by :mod:`consumer.failures.dead_letters`, which redrive reads them back with.
"""

from __future__ import annotations

import builtins
import enum
import importlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from consumer.errors import (
    ConfigError,
    DeadLetterFailed,
    DedupKeyFailed,
    SchemaRegistryUnavailable,
)
from consumer.events import Observer
from consumer.failures.dead_letters import provenance
from consumer.failures.formats import (
    Decode,
    PoisonMessage,
    build_decoders,
    built_in_decoder,
)
from consumer.kafka.protocol import DeadLetterSink
from consumer.message import TP, Message
from consumer.settings import RetrySettings, Settings


class Verdict(enum.Enum):
    RETRY = "retry"
    DEAD_LETTERED = "dead_lettered"
    STOP = "stop"


@dataclass(frozen=True)
class FailurePolicy:
    """One route's answer to a failing message."""

    attempts: int
    initial_backoff: float
    max_backoff: float
    multiplier: float
    jitter: float
    never_retry: tuple[type[BaseException], ...]
    stop_on: tuple[type[BaseException], ...]
    dead_letter_topic: str | None  # None: on_failure is stop
    format: str
    #: Decodes the value and/or key before the handler (None: the format's built-in, if any).
    decode: Decode | None = None

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return base * (1 + self.jitter * (2 * rng.random() - 1))


def build_policies(settings: Settings) -> dict[str, FailurePolicy]:
    """Every route's policy; raises ConfigError naming unknown exception types and decoders
    or protobuf classes that cannot be imported."""
    policies: dict[str, FailurePolicy] = {}
    problems: list[str] = []
    try:
        decoders = build_decoders(settings.routes, settings.schema_registry)
    except ConfigError as error:
        decoders = {}
        problems.extend(error.problems)
    for topic, route in settings.routes.items():
        retry = route.retry
        types: dict[str, tuple[type[BaseException], ...]] = {}
        for field in ("never_retry", "stop_on"):
            resolved = []
            for name in getattr(retry, field):
                try:
                    resolved.append(resolve_exception(name))
                except ConfigError as error:
                    problems.extend(f"routes.{topic}.retry.{field}: {p}" for p in error.problems)
            types[field] = tuple(resolved)
        policies[topic] = _policy(route.on_failure, route.dead_letter_topic or f"{topic}.dlq",
                                  retry, types, route.format, decoders.get(topic))
    if problems:
        raise ConfigError(problems)
    return policies


def _policy(on_failure: str, dead_letter_topic: str, retry: RetrySettings,
            types: Mapping[str, tuple[type[BaseException], ...]], format: str,
            decode: Decode | None) -> FailurePolicy:
    return FailurePolicy(
        attempts=retry.attempts, initial_backoff=retry.initial_backoff_seconds,
        max_backoff=retry.max_backoff_seconds, multiplier=retry.multiplier, jitter=retry.jitter,
        never_retry=types["never_retry"], stop_on=types["stop_on"],
        dead_letter_topic=dead_letter_topic if on_failure == "dead_letter" else None,
        format=format, decode=decode,
    )


def resolve_exception(name: str) -> type[BaseException]:
    """``ValueError`` (a builtin) or ``package.module.Class`` -> the exception class."""
    module_name, _, attribute = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attribute) if module_name \
            else getattr(builtins, attribute)
    except (ImportError, AttributeError):
        raise ConfigError([f"{name!r} is not an exception type that can be imported"]) from None
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ConfigError([f"{name!r} is not an exception type"])
    return found


def check_format(message: Message, format: str | Decode) -> None:
    """Decode the message with its route's decoder (or a built-in format's, json or text),
    setting ``message.value_decoded`` / ``key_decoded``; raise PoisonMessage when it does not
    decode, SchemaRegistryUnavailable when the registry cannot tell its schema."""
    decode = built_in_decoder(format) if isinstance(format, str) else format
    if decode is not None:
        decode(message)


class Failures:
    """Attempts, backoff and dead letters for the loop's thread."""

    def __init__(
        self,
        policies: Mapping[str, FailurePolicy],
        *,
        sink: DeadLetterSink,
        group: str,
        observer: Observer,
        monotonic: Callable[[], float],
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        topic_ids: Mapping[str, str] | None = None,
    ) -> None:
        self._policies = policies
        #: Topic name -> id, as far as known (filled by others): part of each letter's id.
        self._topic_ids = topic_ids if topic_ids is not None else {}
        self._sink = sink
        self._group = group
        self._observer = observer
        self._monotonic = monotonic
        self._wall = wall
        self._rng = rng or random.Random()
        #: tp -> (offset, failed attempts, last error) of the message each partition waits on.
        self._attempts: dict[TP, tuple[int, int, BaseException]] = {}
        self._resume_at: dict[TP, float] = {}
        #: (topic, partition, offset) -> (failed attempts, last error): routes with concurrency.
        self._per_message: dict[tuple[str, int, int], tuple[int, BaseException]] = {}
        #: Topics whose values (or keys) are decoded before their handler runs.
        self._formats: dict[str, Decode] = {}
        for topic, p in policies.items():
            decode = p.decode or built_in_decoder(p.format)
            if decode is not None:
                self._formats[topic] = decode

    def format_of(self, topic: str) -> Decode | None:
        """The decoder a topic's messages go through before the handler (None: none)."""
        return self._formats.get(topic)

    @property
    def messages_failing(self) -> bool:
        """Whether a message of a route with concurrency failed and waits for its retry or
        its dead letter: when not, :meth:`message_exhausted` and :meth:`message_succeeded`
        have nothing to do, and the hot path skips them."""
        return bool(self._per_message)

    @property
    def checks_needed(self) -> bool:
        """Whether :meth:`check` can raise for some message: a route checks its format, or
        a message failed before. When false, the hot path skips the checks."""
        return bool(self._formats) or bool(self._attempts)

    @property
    def waiting(self) -> bool:
        return bool(self._resume_at)

    def check(self, message: Message) -> None:
        """Before the handler runs: re-raise the last error of a message that used up its
        attempts (only its dead letter is missing), or PoisonMessage for a value that does not
        decode in the route's format. Cheap when neither applies."""
        if self._attempts:
            earlier = self.exhausted_error(message)
            if earlier is not None:
                raise earlier
        if self._formats:
            decode = self._formats.get(message.topic)
            if decode is not None:
                decode(message)

    def exhausted_error(self, message: Message) -> BaseException | None:
        """The last error of a message that used up its attempts and only waits for its dead
        letter to be taken; None otherwise (call the handler)."""
        if not self._attempts:
            return None
        held = self._attempts.get((message.topic, message.partition))
        if held is None or held[0] != message.offset:
            return None
        if isinstance(held[2], SchemaRegistryUnavailable):
            return None  # never final: decode again, the registry may answer now
        return held[2] if held[1] >= self._policies[message.topic].attempts else None

    def decide(self, message: Message, error: BaseException) -> Verdict:
        """What :meth:`failed` would answer, without doing it (no attempt counted, no letter
        produced): a transaction decides first and acts only once it has committed."""
        policy = self._policies[message.topic]
        if isinstance(error, policy.stop_on):
            return Verdict.STOP
        _, reason = self._judge(message, error, policy)
        if reason is None:
            return Verdict.RETRY
        return Verdict.STOP if policy.dead_letter_topic is None else Verdict.DEAD_LETTERED

    def _judge(self, message: Message, error: BaseException,
               policy: FailurePolicy) -> tuple[int, str | None]:
        """This failure's attempt number, and the dead-letter reason if it is final."""
        held = self._attempts.get((message.topic, message.partition))
        return self._verdict_of(held[1] if held is not None and held[0] == message.offset
                                else 0, error, policy)

    def failed(self, message: Message, error: BaseException, *,
               key: bytes | None = None) -> Verdict:
        """Decide what a failure means; produces the dead letter when that is the answer
        (raises DeadLetterFailed if the broker would not take it and retrying cannot help).
        ``key`` is the message's dedup key, carried in the letter (None: not known)."""
        policy = self._policies[message.topic]
        tp = (message.topic, message.partition)
        if isinstance(error, policy.stop_on):
            return Verdict.STOP
        attempt, reason = self._judge(message, error, policy)
        if reason is None:
            return self._retry_later(message, tp, attempt, policy.delay(attempt, self._rng),
                                     error)
        if policy.dead_letter_topic is None:
            return Verdict.STOP
        if not self._send_letter(policy, message, error, reason, attempt, key):
            # Keep the attempt count: the next try goes straight to the dead-letter topic.
            return self._retry_later(message, tp, max(attempt, policy.attempts),
                                     policy.max_backoff, error, count=False)
        self._attempts.pop(tp, None)
        self._observer.dead_lettered(message, reason, error)
        return Verdict.DEAD_LETTERED

    def _send_letter(self, policy: FailurePolicy, message: Message, error: BaseException,
                     reason: str, attempt: int, key: bytes | None) -> bool:
        """Produce the message's dead letter; False when the broker did not take it and
        another try can help (raises DeadLetterFailed when it cannot)."""
        assert policy.dead_letter_topic is not None
        try:
            self._sink.send(policy.dead_letter_topic, message, provenance(
                message, error, group=self._group,
                topic_id=self._topic_ids.get(message.topic, ""), reason=reason,
                attempts=attempt, failed_at=self._wall(), key=key))
        except DeadLetterFailed as failure:
            self._observer.dead_letter_failed(message, failure)
            if not failure.retriable:
                raise
            return False
        return True

    def succeeded(self, message: Message) -> None:
        if self._attempts:
            self._attempts.pop((message.topic, message.partition), None)

    # --- per message: routes with concurrency ---------------------------------------------------
    # Many messages of a partition run at once, so attempts are kept per message (its
    # coordinates) with a retry time each, and no partition is paused: the caller holds the
    # failing message back (its key's or partition's later messages wait behind it).

    def message_failed(self, message: Message, error: BaseException, *,
                       key: bytes | None = None) -> tuple[Verdict, float]:
        """:meth:`failed` for one message among many in flight: returns the verdict and, for
        RETRY, the monotonic time of the next attempt (0.0 otherwise)."""
        policy = self._policies[message.topic]
        coordinates = (message.topic, message.partition, message.offset)
        if isinstance(error, policy.stop_on):
            return Verdict.STOP, 0.0
        held = self._per_message.get(coordinates)
        attempt, reason = self._verdict_of(held[0] if held else 0, error, policy)
        if reason is None:
            return Verdict.RETRY, self._retry_message(
                message, attempt, policy.delay(attempt, self._rng), error)
        if policy.dead_letter_topic is None:
            return Verdict.STOP, 0.0
        if not self._send_letter(policy, message, error, reason, attempt, key):
            return Verdict.RETRY, self._retry_message(
                message, max(attempt, policy.attempts), policy.max_backoff, error, count=False)
        self._per_message.pop(coordinates, None)
        self._observer.dead_lettered(message, reason, error)
        return Verdict.DEAD_LETTERED, 0.0

    def message_exhausted(self, message: Message) -> BaseException | None:
        """The last error of a message that used up its attempts and only waits for its dead
        letter; None otherwise (run the handler)."""
        if not self._per_message:
            return None
        held = self._per_message.get((message.topic, message.partition, message.offset))
        if held is None or held[0] < self._policies[message.topic].attempts:
            return None
        if isinstance(held[1], SchemaRegistryUnavailable):
            return None  # never final: decode again, the registry may answer now
        return held[1]

    def message_succeeded(self, message: Message) -> None:
        if self._per_message:
            self._per_message.pop((message.topic, message.partition, message.offset), None)

    def forget_messages(self, partitions: list[TP]) -> None:
        """Partitions revoked or lost: their messages' attempts start afresh elsewhere."""
        if self._per_message:
            gone = set(partitions)
            for coordinates in [c for c in self._per_message if c[:2] in gone]:
                del self._per_message[coordinates]

    def _retry_message(self, message: Message, attempt: int, delay: float,
                       error: BaseException, *, count: bool = True) -> float:
        self._per_message[(message.topic, message.partition, message.offset)] = (attempt, error)
        if count:
            self._observer.retry_scheduled(message, attempt, delay, error)
        return self._monotonic() + delay

    def _verdict_of(self, failed_before: int, error: BaseException,
                    policy: FailurePolicy) -> tuple[int, str | None]:
        """This failure's attempt number, and the dead-letter reason if it is final."""
        attempt = failed_before + 1
        if isinstance(error, PoisonMessage):
            return attempt, "deserialization"
        if isinstance(error, SchemaRegistryUnavailable):
            return attempt, None  # the registry's outage, not the message's fault: retried
        if isinstance(error, DedupKeyFailed):
            return attempt, "dedup_key"
        if isinstance(error, policy.never_retry) and attempt < policy.attempts:
            return attempt, "non_retryable"
        return attempt, "handler_error" if attempt >= policy.attempts else None

    def due(self) -> list[TP]:
        """Paused partitions whose backoff is over: resume them."""
        now = self._monotonic()
        ready = [tp for tp, at in self._resume_at.items() if at <= now]
        for tp in ready:
            del self._resume_at[tp]
        return ready

    def paused(self) -> list[TP]:
        return list(self._resume_at)

    def seconds_until_due(self) -> float | None:
        """Seconds until the first paused partition's backoff is over (0 when one already
        is); None when none waits. The loop's poll blocks no longer than this, so a retry
        runs when its backoff says rather than when the poll timeout ends."""
        if not self._resume_at:
            return None
        return max(0.0, min(self._resume_at.values()) - self._monotonic())

    def forget(self, partitions: list[TP]) -> None:
        """Partitions revoked or lost: their new owner starts the attempts afresh."""
        for tp in partitions:
            self._attempts.pop(tp, None)
            self._resume_at.pop(tp, None)

    def _retry_later(self, message: Message, tp: TP, attempt: int, delay: float,
                     error: BaseException, *, count: bool = True) -> Verdict:
        self._attempts[tp] = (message.offset, attempt, error)
        self._resume_at[tp] = self._monotonic() + delay
        if count:
            self._observer.retry_scheduled(message, attempt, delay, error)
        return Verdict.RETRY
