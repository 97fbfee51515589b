"""OpenTelemetry spans: one CONSUMER span per handler call, a child of the producer's context.

Off unless ``tracing.enabled``; then the composition root (:func:`consumer.app.build_loop`)
asks :class:`Tracing` once for a router whose handlers are wrapped (:meth:`Tracing.router`),
a dead-letter sink that writes the failed call's trace context into the letter
(:meth:`Tracing.sink`) and an observer that settles each span's outcome
(:attr:`Tracing.observer`). With tracing off none of this exists: the loop calls the handlers
themselves, as before.

A span is named ``process <topic>``, started with its parent read from the message's W3C
``traceparent`` / ``tracestate`` headers (the last value of each, like
:meth:`~consumer.message.Message.header`), carries the messaging semantic-convention
attributes and ends with ``checkpoint_consumer.outcome``:

- ``success``: the handler returned.
- ``retry`` / ``dead_letter`` / ``stop``: the handler raised (exception recorded, status
  ERROR); the span stays open until the failure policy has decided, then ends with its verdict.
- ``dead_letter`` without a handler call (a value that does not decode, or a message whose
  attempts were used up before its letter was taken): a span of its own, for the letter.
- ``duplicate`` (with a store): the event's key was already applied, the handler was not
  called; a span with no duration, when the batch commits (one batch at a time) or when the
  message's claim finds its key (handlers on workers: :meth:`Tracing.duplicate`).
- ``rerun``: a store batch was rolled back and this message's handler runs again.

While the handler runs its span is current on its thread: ``context.span`` returns it and JSON
logs carry its ``trace_id`` / ``span_id``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from consumer.errors import ConsumerError
from consumer.events import Observer
from consumer.kafka.protocol import DeadLetterSink
from consumer.message import Context, Message
from consumer.routing import Handler, Router, is_async

#: The span attribute that says how the message ended.
OUTCOME = "checkpoint_consumer.outcome"
#: Headers the W3C trace-context propagator reads and writes.
TRACE_HEADERS = ("traceparent", "tracestate")

_Coordinates = tuple[str, int, int]


class HeaderGetter(Getter[Message]):
    """The propagator's view of a message's headers: the last value of a name, as text."""

    def get(self, carrier: Message, key: str) -> list[str] | None:
        value = carrier.header(key)
        return None if value is None else [value.decode("latin-1")]

    def keys(self, carrier: Message) -> list[str]:
        return [name for name, _ in carrier.headers]


_GETTER = HeaderGetter()


def parent_of(message: Message) -> otel_context.Context:
    """The producer's context carried in ``message``'s headers (empty when it has none)."""
    return propagate.extract(message, getter=_GETTER)


def trace_headers(span: Span) -> list[tuple[str, bytes]]:
    """``span``'s context as W3C headers, to carry in a message produced on its behalf."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return [(name, value.encode()) for name, value in carrier.items()]


class Tracing:
    """Spans for one consumer group's handler calls (see the module's docstring)."""

    def __init__(self, tracer: Tracer, *, group: str, duplicates: bool = False) -> None:
        self._tracer = tracer
        self._group = group
        #: Spans of failed calls whose verdict is not known yet, by message coordinates.
        self._pending: dict[_Coordinates, Span] = {}
        #: With a store (``duplicates``): messages that got a span since the last batch
        #: committed (the rest of the batch were duplicates). None: not tracked.
        self._seen: set[_Coordinates] | None = set() if duplicates else None
        self._lock = threading.Lock()  # handlers of routes with concurrency run on workers
        #: Settles spans on the failure policy's verdicts; add it to the loop's observers.
        self.observer: Observer = _Outcomes(self)

    # --- wiring, once --------------------------------------------------------------------------

    def router(self, router: Router) -> Router:
        """``router`` with every route's handler called inside a span (a handler of the
        message alone is called through its adapter, so every mode goes through the span)."""
        return Router([dataclasses.replace(route, handler=self.wrap(route.handler, route.topic),
                                           message_only=None)
                       for route in (router.route_for(topic) for topic in router.topics)])

    def sink(self, sink: DeadLetterSink) -> DeadLetterSink:
        """``sink`` whose letters carry the failed call's trace context."""
        return _TracedSink(sink, self)

    def wrap(self, handler: Handler, topic: str) -> Handler:
        """``handler`` called inside a CONSUMER span (an ``async def`` stays one)."""
        if is_async(handler):
            return self._wrap_async(handler)  # type: ignore[arg-type]
        calling = self._calling

        def traced(message: Message, context: Context) -> None:
            with calling(message):
                handler(message, context)

        return traced

    def _wrap_async(self, handler: Callable[[Message, Context], Awaitable[None]]
                    ) -> Callable[[Message, Context], Awaitable[None]]:
        calling = self._calling

        async def traced(message: Message, context: Context) -> None:
            with calling(message):
                await handler(message, context)

        return traced

    @contextmanager
    def _calling(self, message: Message) -> Iterator[None]:
        """The span of one handler call, current while it runs; its outcome once it returns
        (success) or raises (decided by the failure policy, see :meth:`_failed`)."""
        span = self._start(message)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        except BaseException as error:
            self._failed(message, span, error)
            raise
        finally:
            otel_context.detach(token)
        span.set_attribute(OUTCOME, "success")
        span.end()

    # --- spans ---------------------------------------------------------------------------------

    def _start(self, message: Message) -> Span:
        coordinates = (message.topic, message.partition, message.offset)
        with self._lock:
            earlier = self._pending.pop(coordinates, None)
            if self._seen is not None:
                self._seen.add(coordinates)
        if earlier is not None:  # a rolled-back store batch runs this message again
            _end(earlier, "rerun")
        return self._tracer.start_span(
            f"process {message.topic}", context=parent_of(message), kind=SpanKind.CONSUMER,
            attributes=self._attributes(message))

    def _attributes(self, message: Message) -> dict[str, str | int]:
        return {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": message.topic,
            "messaging.destination.partition.id": str(message.partition),
            "messaging.kafka.offset": message.offset,
            "messaging.consumer.group.name": self._group,
            "messaging.message.id": f"{message.topic}/{message.partition}/{message.offset}",
        }

    def _failed(self, message: Message, span: Span, error: BaseException) -> None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__qualname__}: {error}"))
        with self._lock:
            self._pending[(message.topic, message.partition, message.offset)] = span

    def failed_span(self, message: Message) -> Span:
        """The span of ``message``'s failed call, still open; a new one when no handler was
        called (a value that does not decode), settled by the letter's verdict too."""
        with self._lock:
            span = self._pending.get((message.topic, message.partition, message.offset))
        if span is None:
            span = self._start(message)
            span.set_status(Status(StatusCode.ERROR, "dead-lettered without a handler call"))
            with self._lock:
                self._pending[(message.topic, message.partition, message.offset)] = span
        return span

    def settle(self, message: Message, outcome: str, **attributes: str | int) -> None:
        """The failure policy's verdict on ``message``: its open span ends with it."""
        with self._lock:
            span = self._pending.pop((message.topic, message.partition, message.offset), None)
        if span is not None:
            span.set_attributes(attributes)
            _end(span, outcome)

    def settle_all(self, outcome: str) -> None:
        """The consumer stops: every open span ends with ``outcome``."""
        with self._lock:
            spans, self._pending = list(self._pending.values()), {}
        for span in spans:
            _end(span, outcome)

    def duplicate(self, message: Message) -> None:
        """A worker found ``message``'s key applied before (handlers on workers, a transaction
        per message): its span, with no handler call."""
        _end(self._start(message), "duplicate")

    def batch_done(self, messages: Iterable[Message]) -> None:
        """A store batch committed ``messages``: those that got no span were duplicates."""
        with self._lock:
            seen, self._seen = self._seen, set()
        if seen is None:
            self._seen = None
            return
        for message in messages:
            if (message.topic, message.partition, message.offset) not in seen:
                _end(self._start(message), "duplicate")
        with self._lock:
            self._seen = set()  # not the duplicates' own spans


def _end(span: Span, outcome: str) -> None:
    span.set_attribute(OUTCOME, outcome)
    span.end()


class _Outcomes(Observer):
    """Ends the spans of failed calls with the failure policy's verdict."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing

    def retry_scheduled(self, message: Message, attempt: int, delay: float,
                        error: BaseException) -> None:
        self._tracing.settle(message, "retry", **{"checkpoint_consumer.attempt": attempt})

    def dead_lettered(self, message: Message, reason: str, error: BaseException) -> None:
        self._tracing.settle(message, "dead_letter",
                             **{"checkpoint_consumer.dead_letter.reason": reason})

    def messages_done(self, messages: list[Message]) -> None:
        self._tracing.batch_done(messages)

    def failed(self, error: ConsumerError) -> None:
        self._tracing.settle_all("stop")

    def stopped(self) -> None:
        self._tracing.settle_all("stop")


class _TracedSink:
    """A dead-letter sink whose letters carry the failed call's ``traceparent`` (in place of
    the original's, which is that span's parent), so a redriven copy continues the trace."""

    def __init__(self, sink: DeadLetterSink, tracing: Tracing) -> None:
        self._sink = sink
        self._tracing = tracing

    def send(self, topic: str, message: Message, provenance: list[tuple[str, bytes]]) -> None:
        span = self._tracing.failed_span(message)
        headers = [(name, value) for name, value in message.headers
                   if name not in TRACE_HEADERS]
        letter = Message(message.topic, message.partition, message.offset, message.value,
                         key=message.key, headers=[*headers, *trace_headers(span)],
                         timestamp=message.timestamp)
        self._sink.send(topic, letter, provenance)

    def __getattr__(self, name: str) -> Any:  # close() and the like reach the real sink
        return getattr(self._sink, name)

