"""Dedup keys are scoped to their route (topic) by default, against a real broker and store:
two topics may carry the same idempotency-key value for different events."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from consumer.dedup import key_function
from consumer.message import Message
from tests.support.kafka import create_topic, produce, unique_name
from tests.support.store_v1 import SCHEMA_V1
from tests.support.stores import StoreUnderTest

pytestmark = pytest.mark.integration


def _run_two_topics(bootstrap: str, store: StoreUnderTest, tmp_path: Path,
                    route: dict[str, object]) -> list[tuple[str, str]]:
    """An ``orders`` and a ``payments`` topic, each with an event carrying idempotency-key
    ``same-1`` (orders also re-sends its event); returns (topic, event) of every ledger row."""
    orders = create_topic(bootstrap, 1, prefix="orders")
    payments = create_topic(bootstrap, 1, prefix="payments")
    order = json.dumps({"event": "order-1", "account": "shop", "amount": 100}).encode()
    payment = json.dumps({"event": "payment-1", "account": "bank", "amount": 7}).encode()
    same = lambda i: [("idempotency-key", b"same-1")]  # noqa: E731
    produce(bootstrap, orders, [order, order], headers=same)
    produce(bootstrap, payments, [payment], headers=same)
    config = consumer_config(bootstrap, unique_name("scope"), orders,
                             handler="handlers.ledger:apply", every_messages=10,
                             every_seconds=0.5, store=store.url)
    config["routes"] = {topic: {"handler": "handlers.ledger:apply", **route}
                        for topic in (orders, payments)}
    run = ConsumerProcess(tmp_path, "scope", config).start()
    try:
        wait_for(lambda: store.checkpoints() == {orders: 2, payments: 1}, timeout=60,
                 what=f"both topics checkpointed to their ends ({run.log_tail()})")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()
    rows = store.query("SELECT topic, event FROM ledger_entries ORDER BY event")
    return [(str(t).split("-")[0], str(e)) for t, e in rows]


def test_same_key_on_two_topics_is_two_events(kafka_bootstrap: str, store: StoreUnderTest,
                                              tmp_path: Path) -> None:
    """orders and payments both carry idempotency-key same-1: both events are applied (the
    key is scoped to its topic), while the order re-sent on its own topic is applied once."""
    applied = _run_two_topics(kafka_bootstrap, store, tmp_path, {})
    assert applied == [("orders", "order-1"), ("payments", "payment-1")]


def test_group_scope_lets_one_event_id_span_the_topics(kafka_bootstrap: str,
                                                       store: StoreUnderTest,
                                                       tmp_path: Path) -> None:
    """dedup_scope: group on both routes: same-1 is one event, applied once whichever topic
    delivers it first."""
    applied = _run_two_topics(kafka_bootstrap, store, tmp_path, {"dedup_scope": "group"})
    assert len(applied) == 1


def test_a_version_1_store_is_migrated_at_start_and_its_old_events_still_skip(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """A store left by version 1 holds evt-1's key (claimed before keys were scoped). The
    consumer migrates it at start, logging from/to version and the keys rewritten; the
    redelivered evt-1 is skipped, evt-2 is applied, and the store is at version 3."""
    topic = create_topic(kafka_bootstrap, 1, prefix="migrate")
    group = unique_name("migrate")
    events = [{"event": f"evt-{i}", "account": "acc", "amount": i} for i in (1, 2)]
    produce(kafka_bootstrap, topic, [json.dumps(e).encode() for e in events],
            headers=lambda i: [("idempotency-key", f"evt-{i + 1}".encode())])
    old = Message(topic, 0, 0, b"", headers=[("idempotency-key", b"evt-1")], timestamp=0.0)
    v1_key = key_function("header:idempotency-key", {}, "group")(old)
    store.write(SCHEMA_V1[store.backend], [(
        'INSERT INTO consumer_processed_keys (group_id, key, topic, partition, "offset", '
        "processed_at) VALUES (%s, %s, %s, 0, 0, 1.0)", (group, v1_key, topic))])

    config = consumer_config(kafka_bootstrap, group, topic, handler="handlers.ledger:apply",
                             every_messages=10, every_seconds=0.5, store=store.url)
    run = ConsumerProcess(tmp_path, "migrate", config).start()
    try:
        wait_for(lambda: store.checkpoints() == {topic: 2}, timeout=60,
                 what=f"the checkpoint to reach 2 ({run.log_tail()})")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()
    assert store.query("SELECT event FROM ledger_entries") == [("evt-2",)]
    assert store.query("SELECT version FROM consumer_schema") == [(store.schema_version,)]
    log = run.log_file.read_text()
    assert f"migrated from schema version 1 to {store.schema_version}" in log
    assert f"1 processed keys of group {group} rewritten" in log
