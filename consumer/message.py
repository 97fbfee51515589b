"""The message a handler receives, and the context beside it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Message:
    """One Kafka record: coordinates, key, value and headers, decoded lazily on request."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
        timestamp: float | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.value = value
        self.key = key
        self.headers = headers or []
        #: Seconds since the epoch of the record's timestamp, or None when the broker has none.
        self.timestamp = timestamp

    def text(self, encoding: str = "utf-8") -> str:
        """The value as text (an empty string for a null value)."""
        return (self.value or b"").decode(encoding)

    def json(self) -> Any:
        """The value parsed as JSON."""
        return json.loads(self.value or b"null")

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    def __repr__(self) -> str:
        return f"Message({self.topic}[{self.partition}]@{self.offset})"


class Context:
    """What a handler gets beside the message.

    - ``group``: the consumer group.
    - ``logger``: a logger bound to the message's group, topic, partition and offset.
    - ``idempotency_key``: a hex string that is the same for every delivery of this event (the
      route's dedup key); pass it to downstream systems that are not in the store.
    - ``db``: with a store, the connection inside the open transaction; write your effects
      with it and they commit exactly once, together with the checkpoint.
    - ``execute(sql, params)``: run SQL on ``db`` with ``%s`` placeholders on every store.

    Attributes are built only when a handler asks for them, so the hot path stays cheap.
    """

    __slots__ = ("_key", "_key_function", "_logger", "_store", "group", "message")

    def __init__(
        self,
        group: str,
        message: Message,
        *,
        store: StoreLike | None = None,
        key: bytes | None = None,
        key_function: Callable[[Message], bytes] | None = None,
    ) -> None:
        self.group = group
        self.message = message
        self._store = store
        self._key = key
        self._key_function = key_function
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        if self._logger is None:
            m = self.message
            self._logger = logging.LoggerAdapter(
                logging.getLogger("consumer.handler"),
                {"group": self.group, "topic": m.topic, "partition": m.partition,
                 "offset": m.offset},
            )
        return self._logger

    @property
    def idempotency_key(self) -> str:
        if self._key is None:
            if self._key_function is None:
                raise AttributeError("this route has no dedup key")
            self._key = self._key_function(self.message)
        return self._key.hex()

    @property
    def db(self) -> Any:
        if self._store is None:
            raise AttributeError(
                "context.db needs a store: set store.url (sqlite:///… or postgresql://…)"
            )
        return self._store.connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._store is None:
            raise AttributeError(
                "context.execute needs a store: set store.url (sqlite:///… or postgresql://…)"
            )
        return self._store.execute(sql, params)


class StoreLike(Protocol):
    @property
    def connection(self) -> Any: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
