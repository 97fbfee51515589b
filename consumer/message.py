"""What a handler receives: the :class:`Message`, the :class:`Context` beside it, and ``TP``,
a partition's coordinates. Public: handlers import from here, so these names stay.

A :class:`RecordMessage` reads value, key, headers and timestamp from the client's record only
when asked, on the thread running the handler. ``context.db`` and ``context.execute`` reach
the store's open transaction, and raise AttributeError when no store is configured. Imports
nothing of ours.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

from confluent_kafka import Message as _Record

if TYPE_CHECKING:
    from opentelemetry.trace import Span

#: A partition's coordinates: (topic, partition).
TP = tuple[str, int]


class Message:
    """One Kafka record: coordinates, key, value and headers.

    The Kafka source hands over a :class:`RecordMessage`, which reads value, key, headers and
    timestamp from the client's record only when asked, so a handler pays for what it reads.
    """

    __slots__ = ("_headers", "_key", "_key_decoded", "_timestamp", "_value", "_value_decoded",
                 "offset", "partition", "topic")

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
        self._value = value
        self._key = key
        self._headers = headers or []
        self._timestamp = timestamp

    @property
    def value(self) -> bytes | None:
        return self._value

    @property
    def key(self) -> bytes | None:
        return self._key

    @property
    def headers(self) -> list[tuple[str, bytes | None]]:
        return self._headers

    @property
    def timestamp(self) -> float | None:
        """Seconds since the epoch of the record's timestamp, or None when it has none."""
        return self._timestamp

    @property
    def value_decoded(self) -> Any:
        """The value decoded in the route's ``format`` (a dict for avro and json_schema, the
        message class's instance for protobuf, what a custom decoder returned; None for a
        null value). Decoded once, before the handler runs."""
        try:
            return self._value_decoded
        except AttributeError:
            raise AttributeError(
                f"message.value_decoded: route {self.topic!r} decodes no values; set its "
                "format (avro, protobuf, json_schema, json, text or module:function)"
            ) from None

    @value_decoded.setter
    def value_decoded(self, decoded: Any) -> None:
        self._value_decoded = decoded

    @property
    def key_decoded(self) -> Any:
        """The key decoded in the route's ``key_format``; as :attr:`value_decoded`."""
        try:
            return self._key_decoded
        except AttributeError:
            raise AttributeError(
                f"message.key_decoded: route {self.topic!r} decodes no keys; set its key_format"
            ) from None

    @key_decoded.setter
    def key_decoded(self, decoded: Any) -> None:
        self._key_decoded = decoded

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


class RecordMessage(Message):
    """A message over a confluent-kafka record: coordinates copied, the rest read on demand."""

    __slots__ = ("_record",)

    def __init__(self, record: Any, topic: str, partition: int, offset: int) -> None:
        self._record = record
        self.topic = topic
        self.partition = partition
        self.offset = offset

    @staticmethod
    def of_records(records: Sequence[Any], topic: str | None) -> list[Message]:
        """A message over each of ``records`` that carries no error (a client's error
        travels as a record; the caller reads those), in order. ``topic``: the one topic every
        record is of, or None to read each record's.

        The same as calling the class per record, without its ``__init__``: each message is
        made empty (:class:`_RecordMessageFilledInPlace`) and filled in place.
        """
        messages: list[Message] = []
        append = messages.append
        made = _RecordMessageFilledInPlace
        for record in records:
            if record.error() is None:
                message = made()
                message._record = record
                message.topic = topic or record.topic()
                message.partition = record.partition()
                message.offset = record.offset()
                append(message)
        return messages

    @property
    def value(self) -> bytes | None:
        return self._record.value()  # type: ignore[no-any-return]

    @property
    def key(self) -> bytes | None:
        return self._record.key()  # type: ignore[no-any-return]

    @property
    def headers(self) -> list[tuple[str, bytes | None]]:
        return self._record.headers() or []

    @property
    def timestamp(self) -> float | None:
        kind, stamp = self._record.timestamp()
        return stamp / 1000.0 if kind else None


def any_with_headers(messages: Sequence[Message]) -> bool:
    """Whether any of ``messages`` has a header. Over the client's records (the Kafka source's
    messages) the records are asked directly, without a Python call per message: 50 ns a
    message against 120 through :attr:`Message.headers`, in a loop over polls of 1,000 made
    just before."""
    try:
        return any(map(_headers_of_record, map(_record_of, messages)))
    except (AttributeError, TypeError):  # a message not over a client's record
        return any(message.headers for message in messages)


_record_of = attrgetter("_record")
_headers_of_record = _Record.headers


class _RecordMessageFilledInPlace(RecordMessage):
    """A :class:`RecordMessage` as :meth:`RecordMessage.of_records` makes it: called with no
    arguments, the class makes an empty message without running a Python ``__init__`` (it has
    CPython's own), and the caller fills it in. On Python 3.11, which calls a class's Python
    ``__init__`` through a slow generic path, making a poll's messages this way cost 186 ns a
    message against 226 with ``object.__new__(RecordMessage)`` (``python -m
    benchmarks.loop_in_memory``, medians of six alternated runs), and calling ``RecordMessage``
    costs more still."""

    __slots__ = ()
    __init__ = object.__init__


class Scope:
    """What every context of one route shares: the group, the store, the dedup key function."""

    __slots__ = ("group", "key_function", "store")

    def __init__(self, group: str, *, store: StoreLike | None = None,
                 key_function: Callable[[Message], bytes] | None = None) -> None:
        self.group = group
        self.store = store
        self.key_function = key_function


class Context:
    """What a handler gets beside the message.

    - ``group``: the consumer group.
    - ``logger``: a logger bound to the message's group, topic, partition and offset.
    - ``idempotency_key``: a hex string that is the same for every delivery of this event (the
      route's dedup key); pass it to downstream systems that are not in the store.
    - ``db``: with a store, the connection inside the open transaction; write your effects
      with it and they commit exactly once, together with the checkpoint.
    - ``execute(sql, params)``: run SQL on ``db`` with ``%s`` placeholders on every store
      (an ``async def`` handler on PostgreSQL awaits it: ``db`` is an ``AsyncConnection``).
    - ``span``: the OpenTelemetry span of this handler call (with ``tracing.enabled``); add
      attributes or events to it. With tracing off, a span that records nothing.

    Attributes are built only when a handler asks for them, so the hot path stays cheap.
    """

    __slots__ = ("_key", "_logger", "_scope", "message")

    def __init__(self, scope: Scope, message: Message, key: bytes | None = None) -> None:
        self._scope = scope
        self.message = message
        self._key = key
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @staticmethod
    def of(scope: Scope, message: Message, key: bytes | None = None) -> Context:
        """The same as ``Context(scope, message, key)``, made for less: every mode makes one
        per message with it. Python 3.11 calls a class's Python ``__init__`` through a slow
        generic path; this is a plain function call that makes the context empty and fills
        it in. With a no-op handler taking ``(message, context)``, direct mode's Python cost
        599 ns a message against 664 with the class called (``python -m
        benchmarks.loop_in_memory``, lowest of six alternated runs)."""
        context: Context = _ContextFilledInPlace()
        context._scope = scope
        context.message = message
        context._key = key
        context._logger = None
        return context

    @property
    def group(self) -> str:
        return self._scope.group

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        if self._logger is None:
            m = self.message
            self._logger = _BoundLogger(
                logging.getLogger("consumer.handler"),
                {"group": self._scope.group, "topic": m.topic, "partition": m.partition,
                 "offset": m.offset},
            )
        return self._logger

    @property
    def idempotency_key(self) -> str:
        if self._key is None:
            key_function = self._scope.key_function
            if key_function is None:
                raise AttributeError("this route has no dedup key")
            self._key = key_function(self.message)
        return self._key.hex()

    @property
    def db(self) -> Any:
        store = self._scope.store
        if store is None:
            raise AttributeError(
                "context.db needs a store: set store.url (sqlite:///… or postgresql://…)"
            )
        return store.connection

    @property
    def span(self) -> Span:
        from opentelemetry import trace  # read only by handlers that ask for it

        return trace.get_current_span()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        store = self._scope.store
        if store is None:
            raise AttributeError(
                "context.execute needs a store: set store.url (sqlite:///… or postgresql://…)"
            )
        return store.execute(sql, params)


class _ContextFilledInPlace(Context):
    """A :class:`Context` as :meth:`Context.of` makes it: empty, without a Python
    ``__init__``, then filled in."""

    __slots__ = ()
    __init__ = object.__init__


class _BoundLogger(logging.LoggerAdapter[logging.Logger]):
    """Binds the message's coordinates and keeps the fields a call passes with ``extra=``
    (a plain LoggerAdapter replaces them with its own before Python 3.13)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


class StoreLike(Protocol):
    @property
    def connection(self) -> Any: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
