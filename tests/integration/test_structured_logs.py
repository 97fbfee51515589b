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
