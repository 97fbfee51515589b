"""Each route's decoder: what turns a message's value (and key) into ``message.value_decoded``
(``key_decoded``) before its handler runs, chosen once at wiring time from the route's
``format`` and ``key_format``.

A route without either has no decoder at all: its messages pay nothing. A decoder raises
:class:`PoisonMessage` for data that does not decode (dead-lettered at once, reason
``deserialization``; the letter keeps the original bytes), and lets
:class:`~consumer.errors.SchemaRegistryUnavailable` through (retried, never a dead letter).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from consumer.errors import ConfigError, SchemaRegistryUnavailable
from consumer.message import Message
from consumer.routing import load_callable
from consumer.settings import REGISTRY_FORMATS, RouteSettings, SchemaRegistrySettings

#: decode(message): sets the message's decoded value and/or key, or raises.
Decode = Callable[[Message], None]
#: One field's decoder: decode(data, message) -> decoded data.
FieldDecoder = Callable[[bytes | None, Message], Any]


class PoisonMessage(Exception):
    """The value (or key) does not decode in the route's declared format."""


def _json(data: bytes | None, message: Message) -> Any:
    return json.loads(data or b"null")


def _text(data: bytes | None, message: Message) -> Any:
    return (data or b"").decode("utf-8")


_BUILT_IN: dict[str, FieldDecoder] = {"json": _json, "text": _text}


def build_decoders(routes: Mapping[str, RouteSettings],
                   registry: SchemaRegistrySettings | None) -> dict[str, Decode]:
    """Per topic with a format (or key format), its decoder; raises ConfigError naming every
    decoder or protobuf class that cannot be imported. One registry client for all."""
    decoders: dict[str, Decode] = {}
    problems: list[str] = []
    client: Any = None
    for topic, route in routes.items():
        fields: list[FieldDecoder | None] = []
        for fmt, class_path, setting in ((route.format, route.protobuf_message, "format"),
                                         (route.key_format, route.key_protobuf_message,
                                          "key_format")):
            if fmt is None or fmt == "bytes":
                fields.append(None)
                continue
            try:
                if fmt in REGISTRY_FORMATS:
                    if client is None:
                        client = _client(registry)
                    fields.append(_registry_field(fmt, client, registry, class_path,
                                                  key=setting == "key_format"))
                else:
                    fields.append(_BUILT_IN.get(fmt) or load_callable(fmt, ("data", "message")))
            except ConfigError as error:
                fields.append(None)
                problems.extend(f"routes.{topic}.{setting}: {p}" for p in error.problems)
        value, key = fields
        if value is not None or key is not None:
            decoders[topic] = _decoder(value, key, route.format, route.key_format)
    if problems:
        raise ConfigError(problems)
    return decoders


def built_in_decoder(fmt: str) -> Decode | None:
    """The decoder of a built-in format (json, text) of values; None for any other."""
    value = _BUILT_IN.get(fmt)
    return None if value is None else _decoder(value, None, fmt, None)


def _client(registry: SchemaRegistrySettings | None) -> Any:
    if registry is None:  # settings validation requires it; this is the typed check
        raise ConfigError(["schema_registry.url: required by a registry format"])
    from consumer.kafka.schema_registry import registry_client

    return registry_client(registry)


def _registry_field(fmt: str, client: Any, registry: SchemaRegistrySettings | None,
                    class_path: str | None, *, key: bool) -> FieldDecoder:
    from consumer.kafka.schema_registry import registry_decoder

    assert registry is not None  # checked by _client
    message_class = _load_class(class_path) if class_path is not None else None
    try:
        return registry_decoder(fmt, client, registry, key=key, message_class=message_class)
    except Exception as error:  # e.g. a class that is not a generated protobuf message
        raise ConfigError([f"{fmt} decoder cannot be built: {type(error).__name__}: "
                           f"{error}"]) from None


def _load_class(path: str) -> type:
    module_name, _, attribute = path.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute, None)
    except Exception as error:
        raise ConfigError([f"importing {module_name!r} raised {type(error).__name__}: "
                           f"{error}; is it on handler_path?"]) from None
    if not isinstance(found, type):
        raise ConfigError([f"{path} is not a class (the generated protobuf message class, "
                           "e.g. orders_pb2:Order)"])
    return found


def _decoder(value: FieldDecoder | None, key: FieldDecoder | None, value_format: str,
             key_format: str | None) -> Decode:
    """One message's decoding: the value's, then the key's (what is not configured is
    skipped at build time, not per message)."""

    def decode_value(message: Message) -> None:
        message.value_decoded = _field(value, message.value, message, value_format,  # type: ignore[arg-type]
                                       "value")

    def decode_key(message: Message) -> None:
        message.key_decoded = _field(key, message.key, message, key_format, "key")  # type: ignore[arg-type]

    def decode_both(message: Message) -> None:
        decode_value(message)
        decode_key(message)

    if key is None:
        return decode_value
    return decode_key if value is None else decode_both


def _field(decode: FieldDecoder, data: bytes | None, message: Message, fmt: str,
           field: str) -> Any:
    try:
        return decode(data, message)
    except SchemaRegistryUnavailable:
        raise
    except Exception as error:
        raise PoisonMessage(f"{field} is not valid {fmt}: {type(error).__name__}: "
                            f"{error}") from error
