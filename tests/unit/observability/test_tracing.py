"""consumer.observability.tracing: a CONSUMER span per handler call, child of the producer's
``traceparent``, with the messaging attributes and the message's outcome; dead letters carry
the failed call's context. Spans land in the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from consumer.app import build_loop
from consumer.clock import ManualClock
from consumer.message import Context, Message, Scope
from consumer.observability.tracing import OUTCOME, HeaderGetter, Tracing
from consumer.routing import Route, Router, is_async
from consumer.settings import TracingSettings
from consumer.testing import InMemoryDeadLetterSink, InMemorySource
from tests.support.wiring import loop_settings

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01".encode()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[trace.Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test")
    provider.shutdown()


def run(handler: Callable[[Message, Context], Any] | Callable[[Message], Any],
        tracer: trace.Tracer | None, *,
        route: dict[str, object], values: list[bytes], turns: int = 3,
        store: dict[str, object] | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
        ) -> InMemoryDeadLetterSink:
    source = InMemorySource({"t": [[]]})
    for value in values:
        source.append("t", 0, value, headers=headers if headers is not None
                      else [("traceparent", TRACEPARENT)])
    letters = InMemoryDeadLetterSink()
    clock = ManualClock()
    loop = build_loop(loop_settings(["t"], group="g", route=route, store=store, every_messages=1),
                      Router([Route.of("t", handler, "x:y")]), source=source, clock=clock,
                      dead_letters=letters, tracer=tracer)
    loop.start()
    try:
        for _ in range(turns):
            loop.run_once()
            clock.advance(60)  # past any retry backoff
    finally:
        loop.close()
    return letters


def outcomes(exporter: InMemorySpanExporter) -> list[str]:
    return [str((span.attributes or {})[OUTCOME]) for span in exporter.get_finished_spans()]


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [s.attributes for s in spans]
    return spans[0]


def test_a_handler_call_is_a_consumer_span_child_of_the_producers_traceparent(
        tracer: trace.Tracer, exporter: InMemorySpanExporter) -> None:
    seen: list[trace.Span] = []

    def handler(message: Message, context: Context) -> None:
        seen.append(context.span)
        context.span.set_attribute("order.id", "42")

    run(handler, tracer, route={"on_failure": "stop"}, values=[b"v"])
    span = only(exporter)
    assert span.kind is SpanKind.CONSUMER
    assert span.name == "process t"
    assert span.parent is not None
    assert (span.parent.trace_id, span.parent.span_id) == (TRACE_ID, PARENT_ID)
    assert span.context.trace_id == TRACE_ID
    assert seen[0].get_span_context().span_id == span.context.span_id  # context.span is it
    assert dict(span.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "t",
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 0,
        "messaging.consumer.group.name": "g",
        "messaging.message.id": "t/0/0",
        "order.id": "42",
        OUTCOME: "success",
    }
    assert span.status.status_code is StatusCode.UNSET


def test_a_message_without_traceparent_starts_a_new_trace(
        tracer: trace.Tracer, exporter: InMemorySpanExporter) -> None:
    run(lambda m, c: None, tracer, route={"on_failure": "stop"}, values=[b"v"], headers=[])
    assert only(exporter).parent is None


@pytest.mark.parametrize("store", [None, {"url": "sqlite:///:memory:"}], ids=["direct", "store"])
def test_a_handler_of_the_message_alone_is_called_inside_its_span(
        tracer: trace.Tracer, exporter: InMemorySpanExporter,
        store: dict[str, object] | None) -> None:
    inside: list[bool] = []

    def handle(message: Message) -> None:
        inside.append(trace.get_current_span().is_recording())

    run(handle, tracer, route={"on_failure": "stop"}, values=[b"v"], store=store)
    assert (inside, outcomes(exporter)) == ([True], ["success"])


def test_a_failed_call_records_its_exception_and_ends_with_retry_then_success(
        tracer: trace.Tracer, exporter: InMemorySpanExporter) -> None:
    calls: list[int] = []

    def handler(message: Message, context: Context) -> None:
        calls.append(message.offset)
        if len(calls) == 1:
            raise ValueError("flaky")

    run(handler, tracer, route={"retry": {"attempts": 3}}, values=[b"v"])
    retry, success = exporter.get_finished_spans()
    assert outcomes(exporter) == ["retry", "success"]
    assert retry.status.status_code is StatusCode.ERROR
    assert [e.name for e in retry.events] == ["exception"]
    assert (retry.events[0].attributes or {})["exception.type"] == "ValueError"
    assert (retry.attributes or {})["checkpoint_consumer.attempt"] == 1
    assert retry.parent is not None and success.parent is not None
    assert retry.parent.span_id == success.parent.span_id == PARENT_ID


def test_a_dead_letter_carries_the_failed_calls_trace_context(
        tracer: trace.Tracer, exporter: InMemorySpanExporter) -> None:
    def handler(message: Message, context: Context) -> None:
        raise RuntimeError("broken")

    letters = run(handler, tracer, route={"retry": {"attempts": 1}}, values=[b"v"])
    span = only(exporter)
    assert (span.attributes or {})[OUTCOME] == "dead_letter"
    assert (span.attributes or {})["checkpoint_consumer.dead_letter.reason"] == "handler_error"
    assert span.status.status_code is StatusCode.ERROR
    [(_, letter, _)] = letters.sent
    carried = [value for name, value in letter.headers if name == "traceparent"]
    assert carried == [f"00-{TRACE_ID:032x}-{span.context.span_id:016x}-01".encode()]


def test_a_value_that_does_not_decode_gets_a_dead_letter_span_without_a_handler_call(
        tracer: trace.Tracer, exporter: InMemorySpanExporter) -> None:
    called: list[Message] = []
    letters = run(lambda m, c: called.append(m), tracer,
                  route={"format": "json", "retry": {"attempts": 3}}, values=[b"{not json"])
    assert called == []
    span = only(exporter)
    assert (span.attributes or {})[OUTCOME] == "dead_letter"
    assert (span.attributes or {})["checkpoint_consumer.dead_letter.reason"] == \
        "deserialization"
    assert span.parent is not None and span.parent.span_id == PARENT_ID
    [(_, letter, _)] = letters.sent
    assert letter.header("traceparent") == \
        f"00-{TRACE_ID:032x}-{span.context.span_id:016x}-01".encode()


def test_a_failure_that_stops_the_consumer_ends_its_span_with_stop(
        tracer: trace.Tracer, exporter: InMemorySpanExporter) -> None:
    def handler(message: Message, context: Context) -> None:
        raise RuntimeError("fatal")

    with pytest.raises(Exception, match="fatal"):
        run(handler, tracer, route={"on_failure": "stop", "retry": {"attempts": 1}},
            values=[b"v"])
    assert outcomes(exporter) == ["stop"]


def test_with_a_store_a_duplicate_gets_a_span_without_a_handler_call(
        tracer: trace.Tracer, exporter: InMemorySpanExporter, tmp_path: Path) -> None:
    called: list[int] = []
    run(lambda m, c: called.append(m.offset), tracer, route={"on_failure": "stop"},
        values=[b"a", b"a"], store={"url": f"sqlite:///{tmp_path / 'store.db'}"},
        headers=[("traceparent", TRACEPARENT), ("idempotency-key", b"same-event")])
    assert called == [0]
    assert outcomes(exporter) == ["success", "duplicate"]
    duplicate = exporter.get_finished_spans()[1]
    assert (duplicate.attributes or {})["messaging.kafka.offset"] == 1


def test_without_a_tracer_handlers_are_called_as_they_are_and_context_span_records_nothing(
        exporter: InMemorySpanExporter) -> None:
    seen: list[trace.Span] = []
    run(lambda m, c: seen.append(c.span), None, route={"on_failure": "stop"}, values=[b"v"])
    assert not seen[0].is_recording()
    assert exporter.get_finished_spans() == ()


def test_an_async_handler_stays_async_and_runs_inside_its_span(
        tracer: trace.Tracer, exporter: InMemorySpanExporter) -> None:
    seen: list[int] = []

    async def handler(message: Message, context: Context) -> None:
        seen.append(context.span.get_span_context().span_id)

    traced = Tracing(tracer, group="g").wrap(handler, "t")
    assert is_async(traced)
    message = Message("t", 0, 5, b"v", headers=[("traceparent", TRACEPARENT)])
    asyncio.run(traced(message, Context(Scope("g"), message)))  # type: ignore[arg-type]
    span = only(exporter)
    assert seen == [span.context.span_id]
    assert (span.attributes or {})[OUTCOME] == "success"


def test_the_header_getter_reads_the_last_value_of_a_name() -> None:
    message = Message("t", 0, 0, b"", headers=[("traceparent", b"a"), ("traceparent", b"b"),
                                               ("other", None)])
    assert HeaderGetter().get(message, "traceparent") == ["b"]
    assert HeaderGetter().get(message, "missing") is None
    assert HeaderGetter().keys(message) == ["traceparent", "traceparent", "other"]


def test_tracing_is_off_unless_enabled() -> None:
    assert TracingSettings().enabled is False
    assert TracingSettings().otlp_endpoint is None
