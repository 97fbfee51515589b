"""An event keeps one identity, on SQLite and PostgreSQL against a real broker: an empty
idempotency key is no key."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.chaos import check, make_ledger
from tests.support.kafka import create_topic, group_offsets, produce, unique_name
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgresql" else None
    with fresh_store(request.param, tmp_path, dsn) as under_test:
        yield under_test


def _consumed(bootstrap: str, group: str, topic: str) -> int:
    return group_offsets(bootstrap, group, topic, 1)[0] or 0


def test_events_with_an_empty_idempotency_key_are_all_applied(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """`idempotency-key: ""` is no key: each such event falls back to its coordinates, so two
    different events with an empty header are both applied (and so is one without it)."""
    ledger = make_ledger(5, accounts=2, resend_every=10**9)
    keys: list[bytes | None] = [b"", b"", None, b"e3", b""]
    topic = create_topic(kafka_bootstrap, 1, prefix="empty-key")
    produce(kafka_bootstrap, topic, (json.dumps(e).encode() for e in ledger.events),
            headers=lambda i: [("idempotency-key", k) for k in [keys[i]] if k is not None])
    group = unique_name("empty-key")
    config = consumer_config(kafka_bootstrap, group, topic, handler="handlers.ledger:apply",
                             every_messages=100, every_seconds=0.2, store=store.url)
    consumer = ConsumerProcess(tmp_path, "consumer", config).start()
    try:
        wait_for(lambda: _consumed(kafka_bootstrap, group, topic) == len(keys), timeout=60,
                 what=f"every message consumed ({consumer.log_tail()})")
        consumer.signal(signal.SIGTERM)
        assert consumer.wait() == 0, consumer.log_tail()
    finally:
        consumer.stop_if_running()
    verdict = check(store, ledger, group)
    assert verdict.exact, verdict
