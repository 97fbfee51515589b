"""Generations of processed keys in the SQLite and PostgreSQL stores (MariaDB's in
test_mariadb_exactly_once.py), with a real broker:
events re-sent after their generation was sealed are applied once, by the process that claimed
them and by one started after a crash, which reads the sealed generations at start."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.integration.test_exactly_once import sealed_generations
from tests.support.kafka import create_topic, produce, unique_name
from tests.support.stores import StoreUnderTest

pytestmark = pytest.mark.integration

#: Keys a generation holds before it is sealed: small, so the runs seal several.
GENERATION_KEYS = 25


def _events(topic_bootstrap: tuple[str, str], numbers: list[int]) -> None:
    bootstrap, topic = topic_bootstrap
    produce(bootstrap, topic,
            [json.dumps({"event": f"evt-{n}", "account": "acc", "amount": 1}).encode()
             for n in numbers],
            headers=lambda i: [("idempotency-key", f"evt-{numbers[i]}".encode())],
            in_order=True)


def test_events_resent_after_their_generation_was_sealed_apply_once(
        kafka_bootstrap: str, tmp_path: Path, store: StoreUnderTest) -> None:
    applied, sealed = resent_after_the_seal(kafka_bootstrap, tmp_path, store,
                                            "handlers.ledger:apply")
    assert sorted(applied) == EVERY_EVENT
    assert sealed >= SEALS_AT_LEAST, sealed


#: What resent_after_the_seal's story applies, once each, and how many seals it makes at least.
EVERY_EVENT = sorted(f"evt-{n}" for n in range(120))
SEALS_AT_LEAST = 120 // GENERATION_KEYS - 1


def resent_after_the_seal(kafka_bootstrap: str, tmp_path: Path, store: StoreUnderTest,
                          handler: str) -> tuple[list[str], int]:
    """Events re-sent after their generation was sealed, to the process that sealed it and
    to one started after it was killed (``handler``: the ledger in the store's SQL). The
    events the ledger applied, and the generations sealed."""
    topic = create_topic(kafka_bootstrap, 1, prefix="generations")
    where = (kafka_bootstrap, topic)
    # Offsets 0-119: events 0-99, then 0-19 again (sealed by this process meanwhile).
    _events(where, [*range(100), *range(20)])
    config = consumer_config(kafka_bootstrap, unique_name("generations"), topic,
                             handler=handler, every_messages=10,
                             every_seconds=0.5, store=store.url)
    config["store"][store.generation_keys_setting] = GENERATION_KEYS
    first = ConsumerProcess(tmp_path, "first", config).start()
    try:
        wait_for(lambda: store.checkpoints() == {topic: 120}, timeout=60,
                 what=f"the checkpoint past offset 119 ({first.log_tail()})")
        first.kill()  # a crash: the next process knows the generations only from the store
    finally:
        first.stop_if_running()
    # Offsets 120-199: events 0-59 again, and 100-119 new.
    _events(where, [*range(60), *range(100, 120)])
    second = ConsumerProcess(tmp_path, "second", config).start()
    try:
        wait_for(lambda: store.checkpoints() == {topic: 200}, timeout=60,
                 what=f"the checkpoint past offset 199 ({second.log_tail()})")
        second.signal(signal.SIGTERM)
        assert second.wait() == 0, second.log_tail()
    finally:
        second.stop_if_running()
    applied = [event for (event,) in store.query("SELECT event FROM ledger_entries")]
    return applied, sealed_generations(store)
