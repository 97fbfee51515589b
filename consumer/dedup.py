"""Dedup keys: what makes two deliveries "the same event", as a fixed-size digest.

Per route, one of:

- ``header:NAME`` (default ``header:idempotency-key``): the header's value; a message without the
  header falls back to its coordinates.
- ``coordinates``: topic id, partition and offset. The topic id (not the name) keeps a deleted
  and recreated topic from colliding with its predecessor.
- ``function:module:function``: ``function(message) -> bytes | str``. If it raises (or returns
  something else), the message is poison: :class:`DedupKeyFailed`, dead-lettered or a stop.

Never the Kafka message key by default: many events share one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from hashlib import blake2b

from consumer.errors import ConfigError, DedupKeyFailed
from consumer.message import Message
from consumer.routing import load_callable

KeyFunction = Callable[[Message], bytes]


def key_function(spec: str, topic_ids: Mapping[str, str]) -> KeyFunction:
    """Build the digest function for one route's ``dedup_key`` setting."""
    prefixes: dict[str, bytes] = {}

    def coordinates(message: Message) -> bytes:
        topic = message.topic
        prefix = prefixes.get(topic)
        if prefix is None:
            topic_id = topic_ids.get(topic)
            prefix = f"c\0{topic if topic_id is None else topic_id}/".encode()
            if topic_id is not None:  # the ids may be learnt later: keep asking till then
                prefixes[topic] = prefix
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
            try:
                value = user_function(message)
                if isinstance(value, str):
                    value = value.encode()
                if not isinstance(value, bytes):
                    raise TypeError(f"it returned {type(value).__name__}, expected bytes or str")
            except Exception as error:
                raise DedupKeyFailed(rest, message.topic, message.partition, message.offset,
                                     error) from error
            return _digest(b"f", value)

        return from_function
    raise ConfigError([f"dedup_key: {spec!r} is not one of header:NAME, coordinates, "
                       "function:module:function"])


def _digest(kind: bytes, material: bytes) -> bytes:
    return hashlib.blake2b(kind + b"\0" + material, digest_size=16).digest()
