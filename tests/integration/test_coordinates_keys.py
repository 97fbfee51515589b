"""Coordinates keys on a real broker and store: a new store writes them in offset order, a
store migrated from schema version 2 keeps the digests it holds, so its old events still skip."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from confluent_kafka import TopicCollection
from confluent_kafka.admin import AdminClient
from consumer_process import ConsumerProcess, consumer_config, wait_for

from consumer.dedup import KeyFormat, key_function
from consumer.message import Message
from tests.support.kafka import create_topic, produce, unique_name
from tests.support.store_v2 import SCHEMA_V2
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration


def _topic_id(bootstrap: str, topic: str) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    described = admin.describe_topics(TopicCollection([topic]), request_timeout=10)
    return str(described[topic].result(timeout=10).topic_id)


def _run(bootstrap: str, store: StoreUnderTest, tmp_path: Path, topic: str,
         group: str) -> str:
    """Consume the topic's three events (no idempotency-key header: coordinates keys) to the
    end and stop; returns the consumer's log."""
    config = consumer_config(bootstrap, group, topic, handler="handlers.ledger:apply",
                             every_messages=10, every_seconds=0.5, store=store.url)
    run = ConsumerProcess(tmp_path, "coordinates", config).start()
    try:
        wait_for(lambda: store.checkpoints() == {topic: 3}, timeout=60,
                 what=f"the checkpoint to reach 3 ({run.log_tail()})")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()
    return run.log_file.read_text()


def _events(bootstrap: str) -> tuple[str, list[Message]]:
    topic = create_topic(bootstrap, 1, prefix="coordinates")
    values = [json.dumps({"event": f"evt-{i}", "account": "acc", "amount": i}).encode()
              for i in range(3)]
    produce(bootstrap, topic, values)
    return topic, [Message(topic, 0, offset, b"", timestamp=0.0) for offset in range(3)]


def _stored(store: StoreUnderTest, group: str) -> list[tuple[int, bytes]]:
    return [(k.offset, k.key) for k in store.processed_keys(group)]


def test_a_new_store_writes_coordinates_keys_in_offset_order(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    topic, messages = _events(kafka_bootstrap)
    group = unique_name("ordered")
    _run(kafka_bootstrap, store, tmp_path, topic, group)

    ids = {topic: _topic_id(kafka_bootstrap, topic)}
    ordered = key_function("header:idempotency-key", ids,
                           key_format=KeyFormat(ordered_coordinates=True))
    assert _stored(store, group) == [(m.offset, ordered(m)) for m in messages]
    form = "runs" if store.backend == "postgresql" else "ordered"  # kept as runs there
    assert store.query("SELECT coordinates_keys FROM consumer_schema") == [(form,)]
    if store.backend == "postgresql":  # told apart by the topic id, as the key function names it
        assert store.scalar("SELECT count(*) FROM consumer_processed_keys") == 0
        assert store.scalar("SELECT count(*) FROM consumer_processed_runs") >= 1


def test_a_version_2_store_keeps_its_digest_keys_and_old_events_still_skip(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """Version 2 applied evt-0: its digest key is in the store, and the row stands at 0, as
    after a replay to offset 0 that kept the keys. The consumer migrates at start and reads
    from 0: evt-0 is skipped by its old key, evt-1 and evt-2 are applied, and their keys are
    digests like the old one."""
    topic, messages = _events(kafka_bootstrap)
    group = unique_name("digest")
    ids = {topic: _topic_id(kafka_bootstrap, topic)}
    digest = key_function("header:idempotency-key", ids)
    store.write(SCHEMA_V2[store.backend], [
        ('INSERT INTO consumer_processed_keys (group_id, key, topic, partition, "offset", '
         "processed_at) VALUES (%s, %s, %s, 0, 0, 1.0)", (group, digest(messages[0]), topic)),
        ("INSERT INTO consumer_checkpoints (group_id, topic, partition, next_offset, epoch, "
         "updated_at, topic_id) VALUES (%s, %s, 0, 0, 1, 1.0, %s)", (group, topic, ids[topic])),
    ])

    log = _run(kafka_bootstrap, store, tmp_path, topic, group)

    assert f"migrated from schema version 2 to {store.schema_version}" in log
    assert store.query("SELECT event FROM ledger_entries ORDER BY event") == [
        ("evt-1",), ("evt-2",)], "evt-0 was applied by version 2: its key still matches"
    assert _stored(store, group) == [(m.offset, digest(m)) for m in messages]
    assert store.query("SELECT version, coordinates_keys FROM consumer_schema") == [
        (store.schema_version, "digest")]


def test_keys_written_ahead_of_a_running_consumer_are_still_skipped_once(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> None:
    """A PostgreSQL store answers a batch's claim later for keys above every key it held at
    assignment; something else writes keys ahead of the running consumer (offsets 15 to 17):
    the consumer finds them at the next batch's answer, runs that batch again asking first,
    and applies each other event once and those three never."""
    topic = create_topic(kafka_bootstrap, 1, prefix="keys-ahead")
    group = unique_name("keys-ahead")

    def events(first: int, count: int) -> None:
        produce(kafka_bootstrap, topic, [
            json.dumps({"event": f"evt-{i}", "account": "acc", "amount": 1}).encode()
            for i in range(first, first + count)])

    with fresh_store("postgresql", tmp_path, postgres_dsn) as store:
        config = consumer_config(kafka_bootstrap, group, topic, handler="handlers.ledger:apply",
                                 every_messages=5, every_seconds=0.5, store=store.url)
        run = ConsumerProcess(tmp_path, "ahead", config).start()
        try:
            events(0, 10)
            wait_for(lambda: store.checkpoints() == {topic: 10}, timeout=60,
                     what=f"the checkpoint to reach 10 ({run.log_tail()})")
            store.write([], [("""INSERT INTO consumer_processed_runs
                (group_id, key_head, key_offsets, topic, partition, first_offset, last_offset,
                 processed_at)
                SELECT group_id, key_head, int8range(15, 18), topic, partition, 15, 17,
                       processed_at FROM consumer_processed_runs WHERE group_id = %s LIMIT 1""",
                              (group,))])
            events(10, 10)
            wait_for(lambda: store.checkpoints() == {topic: 20}, timeout=60,
                     what=f"the checkpoint to reach 20 ({run.log_tail()})")
            run.signal(signal.SIGTERM)
            assert run.wait() == 0, run.log_tail()
        finally:
            run.stop_if_running()
        applied = store.query('SELECT "offset" FROM ledger_entries ORDER BY "offset"')
        assert [offset for (offset,) in applied] == [*range(15), 18, 19]
        assert store.scalar("SELECT balance FROM accounts WHERE id = 'acc'") == 17
        assert "processed keys were found" in run.log_file.read_text()
