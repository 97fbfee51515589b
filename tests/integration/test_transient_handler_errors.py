"""A transient database error raised inside a handler (a lock timeout on PostgreSQL) is a store
error: the batch rolls back and is retried after backoff, never dead-lettered (real broker,
real PostgreSQL)."""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.contended_handler import SCHEMA
from tests.support.kafka import create_topic, produce, read_topic, unique_name
from tests.support.stores import StoreUnderTest

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("store", ["postgresql"], indirect=True)]


def _attempts(run: ConsumerProcess) -> int:
    if not run.record_file.exists():
        return 0
    return run.record_file.read_text().count("attempt ")


def _checkpoint_row(store: StoreUnderTest) -> object:
    try:
        rows = store.query("SELECT next_offset FROM consumer_checkpoints")
    except psycopg.Error:
        return None
    return rows[0][0] if rows else None


def test_lock_timeout_in_a_handler_retries_the_batch_and_applies_it_once(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """Another connection holds the row the handler updates: the handler's lock_timeout fires
    (LockNotAvailable) on each attempt while it is held. With `retry.attempts: 1` and a
    dead-letter topic, the message is still not dead-lettered: the batch rolls back and is
    retried; once the lock is released it is applied exactly once, and the consumer never
    stopped."""
    with psycopg.connect(store.url, autocommit=True) as setup:
        for statement in SCHEMA:
            setup.execute(statement)
        setup.execute("INSERT INTO contended VALUES (1, 0)")
    topic = create_topic(kafka_bootstrap, 1, prefix="locked")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(f"{topic}.dlq", num_partitions=1,
                                  replication_factor=1)])[f"{topic}.dlq"].result(30)
    group = unique_name("locked")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=1, store=store.url)
    config["routes"] = {topic: {"handler": "tests.support.contended_handler:apply",
                                "on_failure": "dead_letter", "retry": {"attempts": 1}}}
    run = ConsumerProcess(tmp_path, "locked", config)
    locker = psycopg.connect(store.url)
    try:
        locker.execute("SELECT hits FROM contended WHERE id = 1 FOR UPDATE")
        produce(kafka_bootstrap, topic, [b"only"])
        run.start()
        # The optimistic run and the message-by-message run are two attempts in one batch;
        # a third comes only from a retry of the batch (unless it was dead-lettered).
        wait_for(lambda: _attempts(run) >= 3 or "dead-lettered" in run.log_tail(50),
                 timeout=60, what=f"three attempts while the row is locked ({run.log_tail()})")
        locker.rollback()
        wait_for(lambda: _checkpoint_row(store) == 1, timeout=60,
                 what=f"the message to be applied ({run.log_tail()})")
        assert run.alive(), run.log_tail(40)
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail(40)
    finally:
        locker.close()
        run.stop_if_running()
    log = run.log_file.read_text(errors="replace")
    assert "dead-lettered" not in log, run.log_tail(40)
    assert store.query("SELECT value FROM applied") == [("only",)]
    assert store.scalar("SELECT hits FROM contended WHERE id = 1") == 1
    assert read_topic(kafka_bootstrap, f"{topic}.dlq", timeout=3) == []
    assert "LockNotAvailable" in log, run.log_tail(40)
