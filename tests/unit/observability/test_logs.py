"""consumer.observability.logs: human lines by default, JSON lines on request; message lines carry
the message's group, topic, partition and offset."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from consumer.clock import ManualClock
from consumer.errors import HandlerFailed, KafkaError, KafkaFatalError
from consumer.message import Context, Message, Scope
from consumer.observability.event_log import LoggingObserver
from consumer.observability.logs import HumanFormatter, JsonFormatter


def capture(formatter: logging.Formatter) -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    return stream, handler


def log_from_handler(formatter: logging.Formatter) -> str:
    stream, handler = capture(formatter)
    logger = logging.getLogger("consumer.handler")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        Context(Scope("payments"), Message("orders", 2, 41, b"x")).logger.info("order %s", "o-1")
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_json_lines_carry_the_message_coordinates() -> None:
    record = json.loads(log_from_handler(JsonFormatter(group="payments")))
    assert record["message"] == "order o-1"
    assert record["level"] == "INFO"
    assert record["logger"] == "consumer.handler"
    assert {k: record[k] for k in ("group", "topic", "partition", "offset")} == {
        "group": "payments", "topic": "orders", "partition": 2, "offset": 41}
    assert record["time"].endswith("Z")


def test_human_lines_append_the_message_coordinates() -> None:
    line = log_from_handler(HumanFormatter()).rstrip("\n")
    assert line.endswith("consumer.handler: order o-1 "
                         "[group=payments topic=orders partition=2 offset=41]")


def test_json_lines_without_a_message_still_name_the_group() -> None:
    stream, handler = capture(JsonFormatter(group="payments"))
    logger = logging.getLogger("consumer.engine")
    logger.addHandler(handler)
    try:
        logger.warning("assigned %s", "t[0]")
    finally:
        logger.removeHandler(handler)
    record = json.loads(stream.getvalue())
    assert record["group"] == "payments" and "topic" not in record


def test_a_handler_failure_line_carries_its_coordinates_as_fields() -> None:
    stream, handler = capture(JsonFormatter(group="payments"))
    logger = logging.getLogger("consumer.engine")
    logger.addHandler(handler)
    try:
        LoggingObserver().failed(HandlerFailed("orders", 1, 1234, ValueError("bad")))
    finally:
        logger.removeHandler(handler)
    record = json.loads(stream.getvalue())
    assert (record["topic"], record["partition"], record["offset"]) == ("orders", 1, 1234)
    assert record["level"] == "ERROR"


def kafka_error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == "consumer.engine"]
    caplog.clear()
    return lines


def test_a_repeated_client_error_is_logged_once_then_counted_every_30_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="consumer.engine")
    clock = ManualClock(start=0.0)
    observer = LoggingObserver(clock)
    down = KafkaError("_TRANSPORT", "k1:9092/1: Connect failed: Connection refused")
    observer.kafka_error(down)
    assert kafka_error_lines(caplog) == [
        "Kafka error _TRANSPORT: k1:9092/1: Connect failed: Connection refused"]
    for _ in range(59):  # a broker outage: an error every half second
        clock.advance(0.5)
        observer.kafka_error(down)
    assert kafka_error_lines(caplog) == []
    observer.kafka_error(KafkaError("_ALL_BROKERS_DOWN", "1/1 brokers are down"))
    assert kafka_error_lines(caplog) == ["Kafka error _ALL_BROKERS_DOWN: 1/1 brokers are down"]
    clock.advance(0.5)
    observer.kafka_error(down)  # 30 s after the first line
    assert kafka_error_lines(caplog) == [
        "Kafka client still failing: _TRANSPORT (60 times in the last 30 s; latest: "
        "k1:9092/1: Connect failed: Connection refused)"]
    for _ in range(60):
        clock.advance(0.5)
        observer.kafka_error(down)
    assert kafka_error_lines(caplog) == [
        "Kafka client still failing: _TRANSPORT (60 times in the last 30 s; latest: "
        "k1:9092/1: Connect failed: Connection refused)"]


def test_a_client_error_back_after_a_quiet_30_s_is_logged_in_full(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="consumer.engine")
    clock = ManualClock(start=0.0)
    observer = LoggingObserver(clock)
    down = KafkaError("_TRANSPORT", "Connection refused")
    observer.kafka_error(down)
    clock.advance(1)
    observer.kafka_error(down)
    clock.advance(30)  # the outage ended; the next one is news
    observer.kafka_error(down)
    assert kafka_error_lines(caplog) == ["Kafka error _TRANSPORT: Connection refused"] * 2


def test_fatal_client_errors_are_always_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="consumer.engine")
    observer = LoggingObserver(ManualClock(start=0.0))
    fenced = KafkaFatalError("_FENCED", "fenced by a newer instance")
    for _ in range(3):
        observer.kafka_error(fenced)
    assert kafka_error_lines(caplog) == ["Kafka error _FENCED: fenced by a newer instance"] * 3


def json_line(formatter: logging.Formatter, emit: Callable[[logging.Logger], None]) -> Any:
    stream, handler = capture(formatter)
    logger = logging.getLogger("consumer.handler")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return json.loads(stream.getvalue())


def test_json_lines_keep_every_extra_field_and_the_exception() -> None:
    class Amount:
        def __str__(self) -> str:
            return "12.50 EUR"

    def emit(logger: logging.Logger) -> None:
        try:
            raise ValueError("no price")
        except ValueError:
            logger.exception("pricing failed", extra={"order_id": "o-7", "amount": Amount(),
                                                      "lines": [1, 2]})

    record = json_line(JsonFormatter(group="payments"), emit)
    assert (record["order_id"], record["amount"], record["lines"]) == ("o-7", "12.50 EUR", [1, 2])
    assert record["level"] == "ERROR" and record["group"] == "payments"
    assert "ValueError: no price" in record["exception"]
    assert "trace_id" not in record and "span_id" not in record  # no span active


def test_json_lines_carry_the_active_spans_trace_and_span_ids() -> None:
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("process orders") as span:
        record = json_line(JsonFormatter(), lambda logger: logger.info("inside"))
        ids = span.get_span_context()
    assert record["trace_id"] == f"{ids.trace_id:032x}"
    assert record["span_id"] == f"{ids.span_id:016x}"
    assert len(record["trace_id"]) == 32 and len(record["span_id"]) == 16
