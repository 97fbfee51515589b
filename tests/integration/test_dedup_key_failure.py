"""A ``function:`` dedup key that raises is a poison message, with a store and without: it is
dead-lettered with reason ``dedup_key`` (or, with ``on_failure: stop``, the consumer stops
cleanly naming it), and the consumer keeps applying every other message exactly once."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.kafka import (
    create_named_topic,
    create_topic,
    group_offsets,
    produce,
    read_topic,
    unique_name,
)
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration

TOTAL = 30
POISON = {7, 12}  # values that are not JSON: the dedup key function raises on them


@pytest.fixture(params=["none", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest | None]:
    if request.param == "none":
        yield None
        return
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgresql" else None
    with fresh_store(request.param, tmp_path, dsn) as under_test:
        yield under_test


def _value(i: int) -> bytes:
    return b"not json %d" % i if i in POISON else json.dumps({"id": f"e{i}"}).encode()


def _start(bootstrap: str, tmp_path: Path, store: StoreUnderTest | None,
           on_failure: str) -> tuple[ConsumerProcess, str, str]:
    topic = create_topic(bootstrap, 1, prefix="dedupfn")
    create_named_topic(bootstrap, f"{topic}.dlq")
    produce(bootstrap, topic, (_value(i) for i in range(TOTAL)), partition=lambda i: 0)
    group = unique_name("dedupfn")
    config = consumer_config(bootstrap, group, topic, every_messages=10, every_seconds=1.0,
                             store="none" if store is None else store.url)
    config["routes"] = {topic: {"handler": "tests.support.dedup_functions:apply",
                                "dedup_key": "function:tests.support.dedup_functions:json_id",
                                "on_failure": on_failure,
                                "retry": {"attempts": 3, "initial_backoff_seconds": 0.05,
                                          "max_backoff_seconds": 0.1}}}
    env = {} if store is None else {"EFFECTS_IN_STORE": "1"}
    return ConsumerProcess(tmp_path, "run", config, env=env).start(), topic, group


def _effects(run: ConsumerProcess, store: StoreUnderTest | None) -> Counter[int]:
    if store is None:
        lines = run.record_file.read_text().splitlines() if run.record_file.exists() else []
        return Counter(int(line.split()[1]) for line in lines)
    return Counter(o for (o,) in store.query('SELECT "offset" FROM dedup_effects'))


def test_raising_dedup_key_is_dead_lettered_and_the_rest_applied_once(
    kafka_bootstrap: str, store: StoreUnderTest | None, tmp_path: Path
) -> None:
    """Two values the dedup key function cannot parse: each lands once in <topic>.dlq with
    reason dedup_key after one attempt, the consumer keeps running, every other message is
    applied exactly once, and the group's offset reaches the end."""
    run, topic, group = _start(kafka_bootstrap, tmp_path, store, "dead_letter")
    try:
        wait_for(lambda: not run.alive()
                 or group_offsets(kafka_bootstrap, group, topic, 1) == {0: TOTAL},
                 timeout=90, what=f"offsets at the end of {topic} ({run.log_tail()})")
        assert run.alive(), run.log_tail()
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()
    effects = _effects(run, store)
    assert set(effects) == set(range(TOTAL)) - POISON
    assert max(effects.values()) == 1, effects
    letters = read_topic(kafka_bootstrap, f"{topic}.dlq")
    headers = [dict(letter.headers()) for letter in letters]  # type: ignore[attr-defined]
    assert sorted(int(h["dlq.original.offset"]) for h in headers) == sorted(POISON)
    assert {h["dlq.reason"] for h in headers} == {b"dedup_key"}
    assert {h["dlq.attempts"] for h in headers} == {b"1"}
    assert {h["dlq.exception.type"] for h in headers} == {b"DedupKeyFailed"}


def test_raising_dedup_key_with_on_failure_stop_stops_cleanly_naming_it(
    kafka_bootstrap: str, store: StoreUnderTest | None, tmp_path: Path
) -> None:
    """on_failure: stop: exit 1 with a message naming the dedup key function and the
    message's coordinates, no traceback; offsets committed up to, not past, it."""
    run, topic, group = _start(kafka_bootstrap, tmp_path, store, "stop")
    try:
        assert run.wait(timeout=60) == 1, run.log_tail()
    finally:
        run.stop_if_running()
    log = run.log_file.read_text()
    assert f"{topic}[0]@7" in log, log[-3000:]
    assert "dedup key function tests.support.dedup_functions:json_id raised" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert group_offsets(kafka_bootstrap, group, topic, 1) == {0: 7}
    assert set(_effects(run, store)) == set(range(7))
