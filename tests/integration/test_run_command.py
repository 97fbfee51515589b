"""`consumer run` at its edges: a failing handler, an invalid config, an unreachable broker."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config

from tests.support.kafka import create_topic, group_offsets, produce, unique_name, wait_for

pytestmark = pytest.mark.integration


def test_handler_failure_stops_without_committing_past_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A handler that raises on message 1234 of a 1-partition topic: the process exits 1 naming
    topic, partition and offset, and the group's committed offset is exactly that message."""
    topic = create_topic(kafka_bootstrap, 1, prefix="failing")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(3000)))
    group = unique_name("failing")
    config = consumer_config(kafka_bootstrap, group, topic, handler="handlers.record:fail_on",
                             every_messages=100)
    config["routes"][topic] = {"handler": "handlers.record:fail_on", "on_failure": "stop",
                               "retry": {"attempts": 1}}
    run = ConsumerProcess(tmp_path, "run", config, env={"RECORD_FAIL_ON": "1234"}).start()
    assert run.wait() == 1
    log = run.log_file.read_text()
    assert f"handler failed on {topic}[0]@1234" in log
    assert "ValueError: refusing value '1234'" in log
    assert [int(v) for _, _, v in run.records()] == list(range(1234))
    assert group_offsets(kafka_bootstrap, group, topic, 1) == {0: 1234}


def test_invalid_config_exits_2_before_connecting(tmp_path: Path) -> None:
    """Wrong type, unknown key, both triggers off and a handler that does not import: exit 2,
    one line per problem naming the setting, and nothing logged about Kafka."""
    config = {
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "group_id": "g",
                  "poll_batch_size": "many", "colour": "blue",
                  "librdkafka": {"sasl.password": "hunter2"}},
        "routes": {"t": "handlers.missing_module:handle"},
        "checkpoint": {"every_messages": None, "every_seconds": None},
    }
    run = ConsumerProcess(tmp_path, "bad", config).start()
    assert run.wait() == 2
    lines = run.log_file.read_text().splitlines()
    assert any(line.startswith("config: kafka.poll_batch_size:") for line in lines)
    assert "config: kafka.colour: unknown setting" in lines
    assert any(line.startswith("config: checkpoint: every_messages and every_seconds are both")
               for line in lines)
    assert not any("Kafka" in line for line in lines)
    assert "hunter2" not in run.log_file.read_text()


def test_missing_handler_exits_2(tmp_path: Path) -> None:
    """A valid config whose handler module does not exist: exit 2 naming the route."""
    config = consumer_config("127.0.0.1:1", "g", "t", handler="handlers.nope:handle")
    run = ConsumerProcess(tmp_path, "nohandler", config).start()
    assert run.wait() == 2
    assert "config: routes.t.handler: cannot import module 'handlers.nope'" in (
        run.log_file.read_text())


def test_unreachable_broker_is_retried_with_a_clear_message(tmp_path: Path) -> None:
    """No broker at the address: the consumer says so and retries instead of crashing, and a
    SIGTERM while it waits ends it cleanly."""
    config = consumer_config("127.0.0.1:1", unique_name("nobroker"), "t")
    run = ConsumerProcess(tmp_path, "nobroker", config).start()
    try:
        wait_for(lambda: "cannot reach Kafka at 127.0.0.1:1 (attempt 2" in run.log_tail(50),
                 timeout=30, what="two attempts to reach the broker")
        assert run.alive()
        assert "Traceback" not in run.log_file.read_text()
        run.signal(signal.SIGTERM)
        assert run.wait() == 0
    finally:
        run.stop_if_running()
