"""Dedup keys: what makes two deliveries "the same event", as a fixed-size digest.

Per route, one of:

- ``header:NAME`` (default ``header:idempotency-key``): the header's value; a message without the
  header falls back to its coordinates.
- ``coordinates``: topic id, partition and offset. The topic id (not the name) keeps a deleted
  and recreated topic from colliding with its predecessor.
- ``function:module:function``: ``function(message) -> bytes | str``.

Never the Kafka message key by default: many events share one.

Scope (``dedup_scope``, the last step of every key): ``topic`` (default) makes the key
identify an event within its topic, so two topics may carry the same id for different events;
``group`` lets one id span every topic of the group. A topic-scoped key is
``sha256(b"t\0" + topic + b"\0" + digest)[:16]``, reproducible in SQL: the store's schema
migration rewrites keys claimed before scoping existed into exactly this form.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from hashlib import blake2b
from typing import Literal

from consumer.errors import ConfigError
from consumer.message import Message
from consumer.routing import load_callable

KeyFunction = Callable[[Message], bytes]
DedupScope = Literal["topic", "group"]


def key_function(spec: str, topic_ids: Mapping[str, str],
                 scope: DedupScope = "topic") -> KeyFunction:
    """Build the digest function for one route's ``dedup_key`` and ``dedup_scope``."""
    inner = _digest_function(spec, topic_ids)
    if scope == "group":
        return inner

    def scoped(message: Message) -> bytes:
        return topic_scoped(message.topic, inner(message))

    return scoped


def topic_scoped(topic: str, digest: bytes) -> bytes:
    """The key of ``digest`` within ``topic`` (the migration computes the same in SQL)."""
    return hashlib.sha256(b"t\0" + topic.encode() + b"\0" + digest).digest()[:16]


def _digest_function(spec: str, topic_ids: Mapping[str, str]) -> KeyFunction:
    """The digest of the event's identity, before scoping."""
    prefixes: dict[str, bytes] = {}

    def coordinates(message: Message) -> bytes:
        # The id is read every time: ids are learnt later, and change when a topic is recreated.
        name = topic_ids.get(message.topic) or message.topic
        prefix = prefixes.get(name)
        if prefix is None:
            prefix = prefixes[name] = f"c\0{name}/".encode()
        return blake2b(prefix + b"%d/%d" % (message.partition, message.offset),
                       digest_size=16).digest()

    if spec == "coordinates":
        return coordinates
    kind, _, rest = spec.partition(":")
    if kind == "header" and rest:
        name = rest

        def from_header(message: Message) -> bytes:
            value = message.header(name)
            return coordinates(message) if value is None else _digest(b"h", value)

        return from_header
    if kind == "function" and rest:
        user_function = load_callable(rest, ("message",))

        def from_function(message: Message) -> bytes:
            value = user_function(message)
            if isinstance(value, str):
                value = value.encode()
            if not isinstance(value, bytes):
                raise TypeError(f"dedup function {rest} returned {type(value).__name__}, "
                                "expected bytes or str")
            return _digest(b"f", value)

        return from_function
    raise ConfigError([f"dedup_key: {spec!r} is not one of header:NAME, coordinates, "
                       "function:module:function"])


def _digest(kind: bytes, material: bytes) -> bytes:
    return hashlib.blake2b(kind + b"\0" + material, digest_size=16).digest()
