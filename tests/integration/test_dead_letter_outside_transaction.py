"""With a store, a dead letter is produced after the batch's COMMIT, never while the store's
transaction (and SQLite's write lock) is open: a dead-letter topic that does not exist yet
makes the producer wait up to its timeout, and meanwhile other writers get the file."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.failing_handlers import records
from tests.support.kafka import (
    create_named_topic,
    create_topic,
    group_offsets,
    produce,
    read_topic,
    unique_name,
)

pytestmark = pytest.mark.integration


def test_dead_letter_waits_for_the_broker_outside_the_store_transaction(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Message 5 fails (never retried) while its dead-letter topic is missing. After its
    handler failed in the message-by-message run, another writer takes SQLite's write lock
    within 5 s (today the lock was held through the producer's 30 s wait). Once the topic
    exists the letter is produced once, the handler never runs for it again, and the offsets
    reach the end."""
    topic = create_topic(kafka_bootstrap, 1, prefix="dltxn")
    bodies = [{"n": i, "kind": "fail" if i == 5 else "good"} for i in range(20)]
    produce(kafka_bootstrap, topic, (json.dumps(b).encode() for b in bodies),
            partition=lambda i: 0)
    group = unique_name("dltxn")
    path = tmp_path / "store.db"
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=20,
                             every_seconds=1.0, store=f"sqlite:///{path}")
    config["routes"] = {topic: {"handler": "tests.support.failing_handlers:apply",
                                "format": "json",
                                "retry": {"attempts": 3, "never_retry":
                                          ["tests.support.failing_handlers.AlwaysFails"],
                                          "initial_backoff_seconds": 0.05,
                                          "max_backoff_seconds": 0.5}}}
    run = ConsumerProcess(tmp_path, "run", config).start()

    def failed_calls() -> int:
        return sum(1 for _, _, n, _, o, _ in records(str(run.record_file)) if n == 5)

    try:
        wait_for(lambda: failed_calls() >= 2 or not run.alive(), timeout=60,
                 what=f"the message-by-message run to fail on message 5 ({run.log_tail()})")
        other = sqlite3.connect(path, isolation_level=None, timeout=5)
        try:
            other.execute("BEGIN IMMEDIATE")  # raises 'database is locked' after 5 s
            other.execute("ROLLBACK")
        finally:
            other.close()
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(f"{topic}.dlq", num_partitions=1,
                                      replication_factor=1)])[f"{topic}.dlq"].result(30)
        wait_for(lambda: not run.alive()
                 or group_offsets(kafka_bootstrap, group, topic, 1) == {0: 20},
                 timeout=120, what=f"offsets at the end ({run.log_tail()})")
        assert run.alive(), run.log_tail()
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()
    letters = read_topic(kafka_bootstrap, f"{topic}.dlq")
    assert [dict(m.headers())["dlq.original.offset"] for m in letters] == [b"5"]  # type: ignore[attr-defined]
    assert failed_calls() == 2


def test_shutdown_right_after_a_dead_letter_repeats_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The last message of a partition is dead-lettered and SIGTERM arrives before the
    partition is fetched again (fetches wait up to 5 s here): the shutdown checkpoint still
    moves the store's row and Kafka's offset past the letter, so a planned restart handles
    nothing again (before, the row stayed at the failed message: a restart ran it again)."""
    topic = create_topic(kafka_bootstrap, 1, prefix="dlstop")
    dlq = f"{topic}.dlq"
    create_named_topic(kafka_bootstrap, dlq)
    bodies = [{"n": i, "kind": "fail" if i == 4 else "good"} for i in range(5)]
    produce(kafka_bootstrap, topic, (json.dumps(b).encode() for b in bodies),
            partition=lambda i: 0)
    group = unique_name("dlstop")
    path = tmp_path / "store.db"
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=100,
                             every_seconds=0.2, store=f"sqlite:///{path}")
    config["kafka"]["librdkafka"]["fetch.wait.max.ms"] = "5000"  # type: ignore[index]
    config["routes"] = {topic: {"handler": "tests.support.failing_handlers:apply",
                                "format": "json", "retry": {"attempts": 1}}}
    run = ConsumerProcess(tmp_path, "run", config).start()
    try:
        wait_for(lambda: len(read_topic(kafka_bootstrap, dlq)) == 1 or not run.alive(),
                 timeout=60, what=f"the dead letter of message 4 ({run.log_tail()})")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT next_offset FROM consumer_checkpoints").fetchall() == [(5,)]
    assert group_offsets(kafka_bootstrap, group, topic, 1) == {0: 5}

    assert len(read_topic(kafka_bootstrap, dlq)) == 1
    handled = [(n, outcome) for _, _, n, _, outcome, _ in records(str(run.record_file))]
    assert {n for n, outcome in handled if outcome == "handled"} == {0, 1, 2, 3}, handled
    assert {n for n, outcome in handled if outcome == "raised"} == {4}, handled
