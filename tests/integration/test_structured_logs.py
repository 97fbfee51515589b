"""`logging.format: json`: every line of a real run is one JSON object; lines about a message
carry its group, topic, partition and offset; the startup line shows the config masked."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config

from tests.support.kafka import create_topic, produce, unique_name, wait_for

pytestmark = pytest.mark.integration


def test_json_log_lines_carry_message_coordinates(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = create_topic(kafka_bootstrap, 1, prefix="jsonlogs")
    group = unique_name("jsonlogs")
    config = consumer_config(kafka_bootstrap, group, topic, handler="handlers.echo:handle")
    config["logging"] = {"format": "json"}
    config["log_level"] = "INFO"
    config["kafka"]["librdkafka"]["sasl.password"] = "hunter2"  # unused, but must be masked
    produce(kafka_bootstrap, topic, [b"a", b"b", b"c"])
    run = ConsumerProcess(tmp_path, "run", config).start()

    def records() -> list[dict[str, object]]:
        lines = run.log_file.read_text().splitlines() if run.log_file.exists() else []
        return [json.loads(line) for line in lines]

    try:
        wait_for(lambda: sum(r["logger"] == "consumer.handler" for r in records()) == 3,
                 timeout=30, what=f"three handler lines ({run.log_tail()})")
    finally:
        run.signal(signal.SIGTERM)
        assert run.wait() == 0
    lines = records()  # every line parses as JSON
    assert all(r["group"] == group for r in lines)
    handled = [r for r in lines if r["logger"] == "consumer.handler"]
    assert [(r["topic"], r["partition"], r["offset"]) for r in handled] == [
        (topic, 0, 0), (topic, 0, 1), (topic, 0, 2)]
    startup = next(r for r in lines if "starting with" in str(r["message"]))
    assert "hunter2" not in run.log_file.read_text()
    assert '"sasl.password": "***"' in str(startup["message"])


def test_json_log_lines_keep_the_fields_a_handler_passes_with_extra(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A handler logs with `extra={"order_id": ...}` through `context.logger` and through its
    own module logger: with `logging.format: json` each field is a key of the JSON line (and
    the context logger's coordinates are still there)."""
    topic = create_topic(kafka_bootstrap, 1, prefix="jsonextra")
    group = unique_name("jsonextra")
    config = consumer_config(kafka_bootstrap, group, topic,
                             handler="tests.support.extra_logging_handler:handle")
    config["logging"] = {"format": "json"}
    config["log_level"] = "INFO"
    produce(kafka_bootstrap, topic, [b"order-7"])
    run = ConsumerProcess(tmp_path, "run", config).start()

    def records() -> list[dict[str, object]]:
        lines = run.log_file.read_text().splitlines() if run.log_file.exists() else []
        return [json.loads(line) for line in lines]

    try:
        wait_for(lambda: any(r["message"] == "order priced" for r in records()),
                 timeout=30, what=f"the handler's lines ({run.log_tail()})")
    finally:
        run.signal(signal.SIGTERM)
        assert run.wait() == 0
    lines = records()
    received = next(r for r in lines if r["message"] == "order received")
    priced = next(r for r in lines if r["message"] == "order priced")
    assert received["order_id"] == "order-7", received
    assert (received["topic"], received["partition"], received["offset"]) == (topic, 0, 0)
    assert priced["order_id"] == "order-7" and priced["amount_cents"] == 1250, priced
