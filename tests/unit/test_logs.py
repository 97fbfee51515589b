"""consumer.logs: human lines by default, JSON lines on request; message lines carry the
message's group, topic, partition and offset."""

from __future__ import annotations

import io
import json
import logging

from consumer.errors import HandlerFailed
from consumer.logs import HumanFormatter, JsonFormatter
from consumer.message import Context, Message
from consumer.observer import LoggingObserver


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
        Context("payments", Message("orders", 2, 41, b"x")).logger.info("order %s", "o-1")
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
