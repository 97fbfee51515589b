"""Dedup keys: what makes two deliveries "the same event", as a fixed-size digest.

Per route, one of:

- ``header:NAME`` (default ``header:idempotency-key``): the header's value; a message without the
  header, or with an empty value, falls back to its coordinates (an empty key is no key: never
  one key shared by every such event).
- ``coordinates``: topic id, partition and offset. The topic id (not the name) keeps a deleted
  and recreated topic from colliding with its predecessor. Written in one of two forms, which
  the store decides (:class:`KeyFormat`): *ordered*, 8 bytes naming the topic then the
  partition (2 bytes) and offset (6 bytes) big-endian, so a partition's keys sort by offset
  and a store's key index grows at one place per partition instead of on a random page per
  key (stores created at schema version 3); or a *digest* (stores created before, and runs
  without a store), so keys claimed before stay findable.
- ``function:module:function``: ``function(message) -> bytes | str``. If it raises (or returns
  something else), the message is poison: :class:`DedupKeyFailed`, dead-lettered or a stop.

Never the Kafka message key by default: many events share one.

On every route, a valid ``checkpoint-consumer.dedup-key`` header (32 hex characters) is the
final key, before anything else: ``consumer dlq redrive`` puts the dead-lettered event's own key
there, so a redriven copy (at a new offset) is the same event as the original, whatever made
that key. An invalid value is ignored, with one warning per route.

Key functions are built at wiring time and called for every message, on the poll thread: keep
them cheap. Once built, only a ``function:`` key raises (:class:`DedupKeyFailed`). A
``coordinates`` key reads ``topic_ids`` on every call, so ids learnt later apply at once.

Scope (``dedup_scope``, the last step of every key): ``topic`` (default) makes the key
identify an event within its topic, so two topics may carry the same id for different events;
``group`` lets one id span every topic of the group. A topic-scoped key is
``sha256(b"t\0" + topic + b"\0" + digest)[:16]``, reproducible in SQL: the store's schema
migration rewrites keys claimed before scoping existed into exactly this form. An ordered
coordinates key names its topic already and is never digested again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Literal, Protocol, cast

from consumer.errors import ConfigError, DedupKeyFailed
from consumer.message import Message, any_with_headers
from consumer.routing import load_callable

DedupScope = Literal["topic", "group"]

#: The header carrying a redriven event's original dedup key, as hex: honoured on every route.
HONOURED_KEY_HEADER = "checkpoint-consumer.dedup-key"
KEY_SIZE = 16  # bytes of every digest

log = logging.getLogger("consumer.dedup")


#: A route's key from the message and its headers (read once per message by the caller: each
#: read of a client record's headers builds a new list), unless the honoured header names one.
RouteKey = Callable[[Message, list[tuple[str, bytes | None]]], bytes]


class KeyFormat:
    """The form of coordinates keys: ordered (``ordered_coordinates``) or digests. The store
    decides, once, before the first message (``Store.ordered_coordinates`` after
    ``ensure_schema``); every key function of a consumer reads the one instance on each call."""

    __slots__ = ("ordered_coordinates",)

    def __init__(self, *, ordered_coordinates: bool = False) -> None:
        self.ordered_coordinates = ordered_coordinates


#: An ordered coordinates key: topic (8 bytes), partition (2), offset (6). Coordinates past
#: these bounds are written as a digest (as an older store writes them).
_TOPIC_BYTES = 8
_MAX_PARTITION = 1 << 16
_MAX_OFFSET = 1 << 48


@dataclass(frozen=True, slots=True)
class KeyStretch:
    """Messages at offsets ``first`` to ``end - 1`` of one partition, each keyed by its ordered
    coordinates key: ``prefix`` (its topic's 8 bytes), then partition and offset. Their keys
    are consecutive numbers, so a store may claim them as one range without making a key per
    message (:meth:`key` makes one)."""

    topic: str
    partition: int
    first: int
    end: int
    prefix: bytes

    def key(self, offset: int) -> bytes:
        return self.prefix + ((self.partition << 48) | offset).to_bytes(8, "big")


class KeyFunction(Protocol):
    """One route's dedup key: ``key_function(message)`` is a message's key, and
    ``key_function.keys(messages)`` a batch's, the same keys at a lower cost per message (the
    store's hot path). ``keys`` raises :class:`DedupKeyFailed` for the first message whose
    ``function:`` key fails (ask per message to learn which others do).
    ``key_function.stretches(messages)`` says the same keys as :class:`KeyStretch` es, when
    every message's key is its ordered coordinates key (else None), at a fraction of the cost.

    A plain function with attributes, not a class: a message's key is asked for on every
    path, and calling an instance's ``__call__`` measured about 0.15 µs more per message."""

    keys: Callable[[Sequence[Message]], list[bytes]]
    stretches: Callable[[Sequence[Message]], list[KeyStretch] | None]

    def __call__(self, message: Message, /) -> bytes: ...


def _key_function(one: Callable[[Message], bytes],
                  coordinates: _CoordinatesKey | None) -> KeyFunction:
    """``one`` with its batch forms: where a message without headers is keyed by its
    coordinates (``header:`` and ``coordinates`` routes), ``coordinates`` writes those keys in
    one loop; elsewhere (``function:``) each message is asked in turn."""
    function = cast(KeyFunction, one)
    if coordinates is None:
        function.keys = lambda messages: [one(message) for message in messages]
        function.stretches = lambda messages: None
    else:
        function.keys = lambda messages: coordinates.keys(messages, one)
        function.stretches = coordinates.stretches
    return function


def key_function(spec: str, topic_ids: Mapping[str, str], scope: DedupScope = "topic",
                 key_format: KeyFormat | None = None) -> KeyFunction:
    """Build the key function for one route's ``dedup_key`` and ``dedup_scope``. The
    honoured header comes first and is final: nothing digests or scopes its key again; an
    ordered coordinates key is final too."""
    scoped = _scoping(scope)
    coordinates = _CoordinatesKey(topic_ids, scoped, key_format or KeyFormat())
    coordinates_key = coordinates.key  # bound once: called for most messages
    if spec == "coordinates":
        return _key_function(
            _honouring(lambda message, headers: coordinates_key(message)), coordinates)
    kind, _, rest = spec.partition(":")
    if kind == "header" and rest:
        name = rest

        def from_header(message: Message, headers: list[tuple[str, bytes | None]]) -> bytes:
            value = _last_value(headers, name) if headers else None
            if not value:
                return coordinates_key(message)
            return scoped(message.topic, _digest(b"h", value))

        return _key_function(_honouring(from_header), coordinates)
    if kind == "function" and rest:
        user_function = load_callable(rest, ("message",))

        def from_function(message: Message, headers: object) -> bytes:
            try:
                value = user_function(message)
                if isinstance(value, str):
                    value = value.encode()
                if not isinstance(value, bytes):
                    raise TypeError(f"it returned {type(value).__name__}, expected bytes or str")
            except Exception as error:
                raise DedupKeyFailed(rest, message.topic, message.partition, message.offset,
                                     error) from error
            return scoped(message.topic, _digest(b"f", value))

        return _key_function(_honouring(from_function), None)
    raise ConfigError([f"dedup_key: {spec!r} is not one of header:NAME, coordinates, "
                       "function:module:function"])


def _scoping(scope: DedupScope) -> Callable[[str, bytes], bytes]:
    """The last step of a digest key: within its topic, or as it is (group scope)."""
    if scope == "group":
        return lambda topic, digest: digest
    prefixes: dict[str, bytes] = {}

    def scoped(topic: str, digest: bytes) -> bytes:
        prefix = prefixes.get(topic)
        if prefix is None:
            prefix = prefixes[topic] = _scope_prefix(topic)
        return hashlib.sha256(prefix + digest).digest()[:KEY_SIZE]

    return scoped


class _CoordinatesKey:
    """A message's coordinates key, in the form the store chose (:class:`KeyFormat`)."""

    __slots__ = ("_digest_prefixes", "_format", "_ordered", "_scoped", "_topic_ids")

    def __init__(self, topic_ids: Mapping[str, str], scoped: Callable[[str, bytes], bytes],
                 key_format: KeyFormat) -> None:
        self._topic_ids = topic_ids
        self._scoped = scoped
        self._format = key_format
        self._digest_prefixes: dict[str, bytes] = {}
        self._ordered = OrderedPrefixes(topic_ids)

    def key(self, message: Message) -> bytes:
        partition, offset = message.partition, message.offset
        if self._format.ordered_coordinates and 0 <= partition < _MAX_PARTITION \
                and 0 <= offset < _MAX_OFFSET:
            return self._ordered.of(message.topic) \
                + ((partition << 48) | offset).to_bytes(8, "big")
        topic = message.topic
        name = self._topic_ids.get(topic) or topic
        prefix = self._digest_prefixes.get(name)
        if prefix is None:
            prefix = self._digest_prefixes[name] = f"c\0{name}/".encode()
        return self._scoped(topic, blake2b(prefix + b"%d/%d" % (partition, offset),
                                           digest_size=KEY_SIZE).digest())

    def keys(self, messages: Sequence[Message], route_key: Callable[[Message], bytes]
             ) -> list[bytes]:
        """The keys of a batch whose messages without headers are keyed by their coordinates:
        those written here in one loop, the others by ``route_key`` (a header may name their
        key). What :meth:`key` and ``route_key`` would return, at about half the cost."""
        if not self._format.ordered_coordinates:
            return [route_key(message) for message in messages]
        keys: list[bytes] = []
        append = keys.append
        topic, prefix = None, b""
        for message in messages:
            partition, offset = message.partition, message.offset
            if message.headers or not (0 <= partition < _MAX_PARTITION
                                       and 0 <= offset < _MAX_OFFSET):
                append(route_key(message))
                continue
            if message.topic != topic:
                topic = message.topic
                prefix = self._ordered.of(topic)
            append(prefix + ((partition << 48) | offset).to_bytes(8, "big"))
        return keys


    def stretches(self, messages: Sequence[Message]) -> list[KeyStretch] | None:
        """The batch's keys as stretches of consecutive offsets of one partition, when every
        message is keyed by its ordered coordinates (the store's form, no header on any
        message, coordinates in range); else None."""
        if not self._format.ordered_coordinates or any_with_headers(messages):
            return None  # a header may name a message's key
        stretches: list[KeyStretch] = []
        topic: str | None = None
        prefix = b""
        partition = first = end = -1
        for message in messages:
            offset = message.offset
            if offset == end and message.partition == partition and message.topic == topic:
                end += 1
                continue
            if topic is not None:
                if end > _MAX_OFFSET:
                    return None
                stretches.append(KeyStretch(topic, partition, first, end, prefix))
            if message.topic != topic:
                topic = message.topic
                prefix = self._ordered.of(topic)
            partition, first, end = message.partition, offset, offset + 1
            if not (0 <= partition < _MAX_PARTITION and 0 <= offset < _MAX_OFFSET):
                return None
        if topic is not None:
            if end > _MAX_OFFSET:
                return None
            stretches.append(KeyStretch(topic, partition, first, end, prefix))
        return stretches


class OrderedPrefixes:
    """The first 8 bytes of each topic's ordered coordinates keys, by the topic's name: its
    id's (:func:`ordered_prefix`), or its name's while the id is not known. ``topic_ids`` is
    read on every call: ids are learnt later, and change when a topic is recreated."""

    __slots__ = ("_by_name", "topic_ids")

    def __init__(self, topic_ids: Mapping[str, str]) -> None:
        self.topic_ids = topic_ids
        self._by_name: dict[str, bytes] = {}

    def of(self, topic: str) -> bytes:
        name = self.topic_ids.get(topic) or topic
        prefix = self._by_name.get(name)
        if prefix is None:
            prefix = self._by_name[name] = ordered_prefix(name)
        return prefix


def ordered_prefix(name: str) -> bytes:
    """The first 8 bytes of every ordered coordinates key of the topic with this id (or, while
    its id is not known, this name)."""
    return blake2b(b"o\0" + name.encode(), digest_size=_TOPIC_BYTES).digest()


def topic_scoped(topic: str, digest: bytes) -> bytes:
    """The key of ``digest`` within ``topic`` (the migration computes the same in SQL)."""
    return hashlib.sha256(_scope_prefix(topic) + digest).digest()[:KEY_SIZE]


def _scope_prefix(topic: str) -> bytes:
    return b"t\0" + topic.encode() + b"\0"


def honoured_key(value: bytes | None) -> bytes | None:
    """The key an honoured header's value names, or None when it is not 32 hex characters."""
    if value is None or len(value) != 2 * KEY_SIZE:
        return None
    try:
        key = bytes.fromhex(value.decode("ascii"))
    except ValueError:  # UnicodeDecodeError is one too
        return None
    return key if len(key) == KEY_SIZE else None  # fromhex skips spaces


def _honouring(inner: RouteKey) -> Callable[[Message], bytes]:
    warned = False

    def key(message: Message) -> bytes:
        nonlocal warned
        headers = message.headers
        for name, _ in headers:  # a plain loop: this runs for every message
            if name == HONOURED_KEY_HEADER:
                value = _last_value(headers, HONOURED_KEY_HEADER)
                honoured = honoured_key(value)
                if honoured is not None:
                    return honoured
                if not warned:
                    warned = True
                    log.warning("ignoring header %s=%r on %r: not a dedup key (32 hex "
                                "characters); the route's own dedup key applies (warned once "
                                "per route)", HONOURED_KEY_HEADER, value, message)
                break
        return inner(message, headers)

    return key


def _last_value(headers: list[tuple[str, bytes | None]], name: str) -> bytes | None:
    """The last value of header ``name`` (as :meth:`Message.header` answers), or None."""
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return found


def _digest(kind: bytes, material: bytes) -> bytes:
    return hashlib.blake2b(kind + b"\0" + material, digest_size=KEY_SIZE).digest()
