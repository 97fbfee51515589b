"""Tracing on a real broker: messages produced with a W3C ``traceparent`` yield CONSUMER spans
that are children of it, with the messaging attributes and their outcome (success, retry,
dead letter), and the dead letter on the broker carries the failed call's trace context.

The first test runs the loop in this process (``build_loop`` with the real Kafka client and
dead-letter producer), its spans kept by the SDK's in-memory exporter; the second runs
``consumer run`` exporting over OTLP/HTTP to a receiver in this test."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from consumer_process import ConsumerProcess, consumer_config
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from consumer.app import build_loop
from consumer.message import Context, Message
from consumer.observability.tracing import OUTCOME
from consumer.routing import Route, Router
from consumer.settings import Settings
from tests.support.kafka import create_named_topic, create_topic, produce, read_topic, unique_name
from tests.support.stores import StoreUnderTest

pytestmark = pytest.mark.integration

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
#: Per offset, the producer span each message was produced under.
PARENTS = {0: 0x00F067AA0BA902B7, 1: 0x00F067AA0BA902B8, 2: 0x00F067AA0BA902B9}


def spans_of(settings: Settings, topic: str, handle: Callable[[Message, Context], None], *,
             count: int) -> tuple[ReadableSpan, ...]:
    """Run the loop in this process (``build_loop``, the real client) with ``handle`` on
    ``topic`` until ``count`` spans have ended (60 s at most); the spans, kept by the SDK's
    in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    loop = build_loop(settings, Router([Route(topic, handle, "test:handle")]),
                      tracer=provider.get_tracer("test"))
    assert loop.start()
    deadline = time.monotonic() + 60
    try:
        while len(exporter.get_finished_spans()) < count:
            assert time.monotonic() < deadline, [
                s.attributes for s in exporter.get_finished_spans()]
            loop.run_once()
    finally:
        loop.close()
        provider.shutdown()
    return exporter.get_finished_spans()


def test_spans_are_children_of_the_produced_traceparent_for_success_retry_and_dead_letter(
        kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, 1, prefix="tracing")
    create_named_topic(kafka_bootstrap, f"{topic}.dlq")
    produce(kafka_bootstrap, topic, [b"ok", b"flaky", b"bad"], headers=lambda i: [
        ("traceparent", f"00-{TRACE_ID:032x}-{PARENTS[i]:016x}-01".encode())], in_order=True)
    failures: dict[bytes, int] = {}

    def handle(message: Message, _context: Context) -> None:
        value = message.value or b""
        failures[value] = failures.get(value, 0) + 1
        if value == b"bad" or (value == b"flaky" and failures[value] == 1):
            raise RuntimeError(f"cannot handle {value!r}")

    group = unique_name("tracing")
    settings = Settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "group_id": group,
               "poll_timeout_seconds": 0.1},
        routes={topic: {"handler": "handlers.echo:handle", "retry": {
            "attempts": 2, "initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.05}}},
        checkpoint={"every_messages": 100, "every_seconds": 1.0},
        store={"url": "none"},
    )
    spans = spans_of(settings, topic, handle, count=5)  # ok; flaky twice; bad twice
    assert [(s.attributes or {})["messaging.kafka.offset"] for s in spans] == [0, 1, 1, 2, 2]
    assert [(s.attributes or {})[OUTCOME] for s in spans] == [
        "success", "retry", "success", "retry", "dead_letter"]
    for span in spans:
        attributes = span.attributes or {}
        offset = int(str(attributes["messaging.kafka.offset"]))
        assert span.kind is SpanKind.CONSUMER and span.name == f"process {topic}"
        assert span.parent is not None
        assert (span.parent.trace_id, span.parent.span_id) == (TRACE_ID, PARENTS[offset])
        assert attributes["messaging.system"] == "kafka"
        assert attributes["messaging.destination.name"] == topic
        assert attributes["messaging.destination.partition.id"] == "0"
        assert attributes["messaging.consumer.group.name"] == group
        failed = attributes[OUTCOME] != "success"
        assert (span.status.status_code is StatusCode.ERROR) == failed
        assert [e.name for e in span.events] == (["exception"] if failed else [])

    [letter] = read_topic(kafka_bootstrap, f"{topic}.dlq")
    carried = [v for k, v in letter.headers() if k == "traceparent"]  # type: ignore[attr-defined]
    assert carried == [f"00-{TRACE_ID:032x}-{spans[4].context.span_id:016x}-01".encode()]


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
def test_with_concurrency_and_a_store_a_duplicate_gets_a_span_without_a_handler_call(
        kafka_bootstrap: str, store: StoreUnderTest) -> None:
    """Handlers on workers, a transaction per message: the second message of an event finds
    its key claimed and is not handled; it gets a span of its own all the same (outcome
    ``duplicate``, a child of its own producer span), as it does one batch at a time."""
    topic = create_topic(kafka_bootstrap, 1, prefix="tracing-dup")
    events = [b"event-a", b"event-b", b"event-a"]
    produce(kafka_bootstrap, topic, [b"{}"] * 3, in_order=True, headers=lambda i: [
        ("traceparent", f"00-{TRACE_ID:032x}-{PARENTS[i]:016x}-01".encode()),
        ("idempotency-key", events[i])])
    handled: list[int] = []

    def handle(message: Message, _context: Context) -> None:
        handled.append(message.offset)

    settings = Settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "group_id": unique_name("tracing-dup"),
               "poll_timeout_seconds": 0.1},
        routes={topic: {"handler": "handlers.echo:handle", "concurrency": 4}},
        checkpoint={"every_messages": 100, "every_seconds": 1.0},
        store={"url": store.url},
    )
    finished = spans_of(settings, topic, handle, count=3)
    assert len(handled) == 2 and sorted(handled) != [0, 2]  # one of offsets 0 and 2, and 1
    spans = {int(str((s.attributes or {})["messaging.kafka.offset"])): s for s in finished}
    duplicate = 2 if 0 in handled else 0
    assert {o: (s.attributes or {})[OUTCOME] for o, s in spans.items()} == {
        **{o: "success" for o in handled}, duplicate: "duplicate"}
    assert spans[duplicate].parent is not None
    assert spans[duplicate].parent.span_id == PARENTS[duplicate]
    assert spans[duplicate].kind is SpanKind.CONSUMER


class _Collector(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on loopback: keeps each export request it is sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        super().__init__(("127.0.0.1", 0), _CollectorHandler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"

    def spans(self) -> list[tuple[str, Any]]:
        """(service.name, span) of every span received."""
        found = []
        for request in list(self.requests):
            for resource_spans in request.resource_spans:
                service = next((a.value.string_value for a in resource_spans.resource.attributes
                                if a.key == "service.name"), "")
                found += [(service, span) for scope in resource_spans.scope_spans
                          for span in scope.spans]
        return found


class _CollectorHandler(BaseHTTPRequestHandler):
    server: _Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.requests.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(ExportTraceServiceResponse().SerializeToString())

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_consumer_run_exports_its_spans_over_otlp_to_the_configured_endpoint(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """``consumer run`` with ``tracing.otlp_endpoint``: the SDK's OTLP/HTTP exporter sends the
    spans to a receiver on loopback (this test's), with the configured service name, each span
    a child of the traceparent its message was produced with; the last ones are flushed when
    the consumer stops on SIGTERM."""
    topic = create_topic(kafka_bootstrap, 1, prefix="otlp")
    produce(kafka_bootstrap, topic, [b"first", b"second"], headers=lambda i: [
        ("traceparent", f"00-{TRACE_ID:032x}-{PARENTS[i]:016x}-01".encode())], in_order=True)
    collector = _Collector()
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    config = consumer_config(kafka_bootstrap, unique_name("otlp"), topic)
    config["tracing"] = {"enabled": True, "service_name": "otlp-test",
                         "otlp_endpoint": collector.endpoint}
    run = ConsumerProcess(tmp_path, "otlp", config).start()
    try:
        run.wait_records(2)
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()
        collector.shutdown()
    spans = collector.spans()
    assert {service for service, _ in spans} == {"otlp-test"}, spans
    by_offset = {next(a.value.int_value for a in span.attributes
                      if a.key == "messaging.kafka.offset"): span for _, span in spans}
    assert sorted(by_offset) == [0, 1], spans
    for offset, span in by_offset.items():
        assert span.trace_id == TRACE_ID.to_bytes(16, "big")
        assert span.parent_span_id == PARENTS[offset].to_bytes(8, "big")
        assert span.kind == span.SPAN_KIND_CONSUMER
