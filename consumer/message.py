"""The message a handler receives, and the context beside it."""

from __future__ import annotations

import json
import logging
from typing import Any


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
    """What a handler gets beside the message: the group, and a logger bound to the message's
    coordinates (built only when a handler asks for it, so the hot path stays cheap)."""

    __slots__ = ("_logger", "group", "message")

    def __init__(self, group: str, message: Message) -> None:
        self.group = group
        self.message = message
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
