"""A batch that decided to retry a message and then rolled back (the store connection died
at COMMIT) leaves no trace on the Kafka client: no rewind, no pause. The retried batch applies
every event once, and no checkpoint row ever moves backwards."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support import commit_bomb
from tests.support.kafka import create_topic, produce, unique_name
from tests.support.scrape import endpoint, scrape
from tests.support.stores import StoreUnderTest

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("store", ["postgresql"], indirect=True)]


def _events(first: int, count: int) -> list[bytes]:
    return [json.dumps({"event": "flaky" if i == 2 else f"e{i}", "account": "a",
                        "amount": 1}).encode() for i in range(first, first + count)]


def test_retry_decided_in_a_batch_that_rolls_back_is_undone(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """Event 2 raises twice (the batch's whole run and its one-by-one run: a retry), then the
    COMMIT of that batch loses its connection. After the outage the batch applies all ten
    events once; the partition is neither rewound nor paused by the rolled-back decision, so
    no committed message is delivered again (the done count is exactly the messages) and the
    checkpoint row only ever moves forwards."""
    topic = create_topic(kafka_bootstrap, 1, prefix="retryrb")
    group = unique_name("retryrb")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=10,
                             every_seconds=None, store=store.url)
    config["routes"] = {topic: {"handler": "tests.support.commit_bomb:apply",
                                "dedup_key": "coordinates",
                                "retry": {"attempts": 5, "initial_backoff_seconds": 0.05,
                                          "max_backoff_seconds": 0.05}}}
    config["store"]["max_backoff_seconds"] = 0.5  # type: ignore[index]
    # The consumer creates its tables at start; the triggers need them first.
    run = ConsumerProcess(tmp_path, "schema",
                          {**config, "routes": {topic: "handlers.record:handle"}}).start()
    wait_for(lambda: _has_tables(store) or not run.alive(), timeout=60,
             what=f"the store's tables ({run.log_tail()})")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log_tail()
    commit_bomb.install(store.url)

    produce(kafka_bootstrap, topic, _events(0, 10), partition=lambda i: 0)
    run = ConsumerProcess(tmp_path, "run", config, env={"BOMB_DSN": store.url}).start()
    try:
        wait_for(lambda: not run.alive() or _row(store) == 10, timeout=60,
                 what=f"the first ten events ({run.log_tail()})")
        assert "store unavailable" in run.log_file.read_text(), "the COMMIT was not cut"
        # The next ten come after any rewound message: once they are in, those are too.
        produce(kafka_bootstrap, topic, _events(10, 10), partition=lambda i: 0)
        wait_for(lambda: not run.alive() or _row(store) == 20, timeout=60,
                 what=f"the next ten events ({run.log_tail()})")
        assert run.alive(), run.log_tail()

        def consumed() -> dict[int, float]:
            return scrape(endpoint(run)).by_partition("consumer_messages_consumed_total", topic)

        # The batch is done once the store's answer to its COMMIT is read (after the row).
        wait_for(lambda: sum(consumed().values()) >= 20, timeout=30,
                 what=f"the done count to reach the row ({run.log_tail()})")
        done = consumed()
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()
    assert done == {0: 20}, "committed messages were delivered again"
    moves = store.query("SELECT old, new FROM checkpoint_audit")
    assert all(old is None or new >= old for old, new in moves), moves
    events = [e for (e,) in store.query("SELECT event FROM ledger_entries")]
    assert sorted(events) == sorted(["flaky"] + [f"e{i}" for i in range(20) if i != 2])


def _has_tables(store: StoreUnderTest) -> bool:
    try:
        store.query("SELECT 1 FROM consumer_checkpoints")
    except Exception:
        return False
    return True


def _row(store: StoreUnderTest) -> object:
    rows = store.query("SELECT next_offset FROM consumer_checkpoints")
    return rows[0][0] if rows else None
