"""A dead letter's ``dlq.*`` headers: written when a message is dead-lettered, read back when it
is redriven. The one place that names them, so the producer of letters and redrive cannot drift.

A letter is the original message (key, value, headers) plus its provenance: where it came from,
which group gave up on it and why, when, after how many attempts; its dedup key
(``dlq.original.dedup-key``), so a redriven copy stays the same event; and a stable id
(``dlq.id``), so two letters for one message (a crash after the produce, before the store
commits) are recognisable as one.

Redriving a letter republishes the original message on its original topic without the ``dlq.*``
headers, with ``dlq.redriven.from`` (the letter's coordinates) and the original's dedup key in
:data:`~consumer.dedup.HONOURED_KEY_HEADER`, which the consumer honours on every route. Letters
from older versions carry no ``dlq.id`` nor ``dlq.original.dedup-key``: they read back with
``id == ""`` and ``dedup_key is None``.
"""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from consumer.dedup import HONOURED_KEY_HEADER, honoured_key
from consumer.message import Message

#: Every provenance header starts with this; a redriven copy carries none of a letter's.
PROVENANCE = "dlq."
#: The same for every letter of one message in one group (32 hex characters).
ID = "dlq.id"
ORIGINAL_TOPIC = "dlq.original.topic"
ORIGINAL_PARTITION = "dlq.original.partition"
ORIGINAL_OFFSET = "dlq.original.offset"
#: The original's record timestamp in seconds ("" when it had none).
ORIGINAL_TIMESTAMP = "dlq.original.timestamp"
#: The original's dedup key as hex; absent when it was not known (e.g. its function raised).
ORIGINAL_DEDUP_KEY = "dlq.original.dedup-key"
GROUP = "dlq.group"
#: deserialization, dedup_key, non_retryable or handler_error.
REASON = "dlq.reason"
EXCEPTION_TYPE = "dlq.exception.type"
EXCEPTION_MESSAGE = "dlq.exception.message"
EXCEPTION_TRACEBACK = "dlq.exception.traceback"
ATTEMPTS = "dlq.attempts"
#: Wall-clock seconds when the message was dead-lettered.
FAILED_AT = "dlq.failed.at"
#: On a redriven copy: the letter it came from, ``topic/partition/offset``.
REDRIVEN_FROM = "dlq.redriven.from"

TRACEBACK_LIMIT = 4_000
MESSAGE_LIMIT = 1_000


def letter_id(group: str, message: Message, topic_id: str = "") -> str:
    """The same for every letter of this message in this group: its group, topic (and topic id
    when known), partition, offset and timestamp (which tells a recreated topic's message at
    the same offset apart), digested to 32 hex characters."""
    material = "\0".join((group, message.topic, topic_id, str(message.partition),
                          str(message.offset), _timestamp(message)))
    return hashlib.blake2b(material.encode(), digest_size=16).hexdigest()


def provenance(message: Message, error: BaseException, *, group: str, topic_id: str,
               reason: str, attempts: int, failed_at: float,
               key: bytes | None) -> list[tuple[str, bytes]]:
    """The headers a letter of ``message`` carries besides the message's own. ``topic_id``:
    the topic's id as far as known ("" otherwise); ``key``: its dedup key (None: not known)."""
    trace = "".join(traceback.format_exception(error))[-TRACEBACK_LIMIT:]
    fields = {
        ID: letter_id(group, message, topic_id),
        ORIGINAL_TOPIC: message.topic,
        ORIGINAL_PARTITION: str(message.partition),
        ORIGINAL_OFFSET: str(message.offset),
        ORIGINAL_TIMESTAMP: _timestamp(message),
        GROUP: group,
        REASON: reason,
        EXCEPTION_TYPE: type(error).__qualname__,
        EXCEPTION_MESSAGE: str(error)[:MESSAGE_LIMIT],
        EXCEPTION_TRACEBACK: trace,
        ATTEMPTS: str(attempts),
        FAILED_AT: f"{failed_at:.3f}",
    }
    if key is not None:
        fields[ORIGINAL_DEDUP_KEY] = key.hex()
    return [(name, value.encode()) for name, value in fields.items()]


@dataclass(frozen=True)
class DeadLetter:
    """A letter read back from a dead-letter topic."""

    message: Message
    original_topic: str
    original_partition: int
    original_offset: int
    failed_at: float
    exception_type: str
    reason: str
    #: ``dlq.id``: the same for every letter of one message ("" in older letters).
    id: str = ""
    #: ``dlq.original.dedup-key``: the original event's dedup key (None: not carried).
    dedup_key: bytes | None = None

    @property
    def where(self) -> str:
        m = self.message
        return f"{m.topic}[{m.partition}]@{m.offset}"

    @classmethod
    def parse(cls, message: Message) -> DeadLetter:
        def header(name: str, default: str = "") -> str:
            value = message.header(name)
            return value.decode(errors="replace") if value is not None else default

        return cls(message, header(ORIGINAL_TOPIC),
                   int(header(ORIGINAL_PARTITION, "-1")),
                   int(header(ORIGINAL_OFFSET, "-1")),
                   float(header(FAILED_AT, "0") or 0), header(EXCEPTION_TYPE),
                   header(REASON), header(ID),
                   honoured_key(message.header(ORIGINAL_DEDUP_KEY)))

    def original(self) -> Message:
        """The message as it was, to republish on its original topic: without provenance
        (nor a stale honoured key it gets anew from :meth:`redrive_headers`)."""
        m = self.message
        drop = HONOURED_KEY_HEADER if self.dedup_key is not None else None
        return Message(self.original_topic, -1, -1, m.value, key=m.key,
                       headers=[(k, v) for k, v in m.headers
                                if not k.startswith(PROVENANCE) and k != drop])

    def redrive_headers(self) -> list[tuple[str, bytes]]:
        """What a redriven copy carries besides the original's headers: where it came from,
        and the original event's dedup key when the letter has it."""
        m = self.message
        headers = [(REDRIVEN_FROM, f"{m.topic}/{m.partition}/{m.offset}".encode())]
        if self.dedup_key is not None:
            headers.append((HONOURED_KEY_HEADER, self.dedup_key.hex().encode()))
        return headers


@dataclass(frozen=True)
class Filters:
    """Which letters to redrive: failed in [since, until), of one exception type, from one
    original partition. None: any."""

    since: float | None = None
    until: float | None = None
    exception_type: str | None = None
    partition: int | None = None

    def keep(self, letter: DeadLetter) -> bool:
        return ((self.since is None or letter.failed_at >= self.since)
                and (self.until is None or letter.failed_at < self.until)
                and (self.exception_type is None or letter.exception_type == self.exception_type)
                and (self.partition is None or letter.original_partition == self.partition))


def with_first_letters(letters: Iterable[DeadLetter]
                       ) -> Iterator[tuple[DeadLetter, DeadLetter | None]]:
    """Each letter with the earlier letter of the same message (same ``dlq.id``), or None when
    it is the first: only first letters are republished. Letters without an id are each a
    first."""
    first_of: dict[str, DeadLetter] = {}
    for letter in letters:
        first = first_of.get(letter.id) if letter.id else None
        if letter.id and first is None:
            first_of[letter.id] = letter
        yield letter, first


def _timestamp(message: Message) -> str:
    return "" if message.timestamp is None else f"{message.timestamp:.3f}"
