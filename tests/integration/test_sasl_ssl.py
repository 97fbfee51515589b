"""Everything that talks to Kafka does so over a SASL_SSL listener (SCRAM-SHA-512 over TLS,
certificates made at start) with configuration only: `consumer run` (its group consumer and its
dead-letter producer), `consumer lag`, `consumer replay` and `consumer dlq redrive`. A wrong
password stops the consumer at start with a clear error (exit 2), and no secret (the SASL
password, the store DSN's password) shows in logs, `consumer check`, /metrics or dead letters.

The broker is the tests' own (``secured_kafka``); the tests set up topics and read results
through its PLAINTEXT listener, and give the consumer the SASL_SSL one only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config

from consumer.errors import EXIT_CONFIG
from tests.support.kafka import create_topic, unique_name
from tests.support.secured_kafka import SecuredKafka

pytestmark = pytest.mark.integration


def _secured_kafka_config(kafka: SecuredKafka, password_file: Path, group: str,
                          topic: str) -> dict[str, object]:
    config = consumer_config(kafka.bootstrap, group, topic,
                             sasl_password_file=str(password_file))
    config["kafka"]["librdkafka"].update(kafka.librdkafka())  # type: ignore[index]
    return config


def test_a_wrong_password_stops_the_consumer_at_start_naming_listener_and_mechanism(
    secured_kafka: SecuredKafka, tmp_path: Path
) -> None:
    """No retry loop: the broker refused the credentials, and retrying cannot fix them."""
    topic = create_topic(secured_kafka.plaintext_bootstrap, 1, prefix="sasl-wrong")
    password_file = tmp_path / "sasl-password"
    password_file.write_text("not-the-password\n")
    config = _secured_kafka_config(secured_kafka, password_file, unique_name("wrong"), topic)
    began = time.monotonic()
    run = ConsumerProcess(tmp_path, "wrong", config).start()
    try:
        code = run.wait(timeout=30)
    finally:
        run.stop_if_running()
    log = run.log_file.read_text()
    assert code == EXIT_CONFIG, log
    assert time.monotonic() - began < 20, log
    assert secured_kafka.bootstrap in log
    assert "SCRAM-SHA-512" in log
    assert "kafka.sasl_password_file" in log
    assert "not-the-password" not in log
