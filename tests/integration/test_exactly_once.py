"""Exactly-once database effects against a real broker, on SQLite and on PostgreSQL: crashes,
a zombie, duplicate deliveries, a failing message, and Kafka offsets reset by Kafka's own tool."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.chaos import Chaos, check, make_ledger, produce_ledger, until_applied
from tests.support.kafka import create_topic, group_offsets, produce, unique_name
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration

CHAOS_MESSAGES = int(os.environ.get("CONSUMER_CHAOS_MESSAGES", "100000"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgresql" else None
    with fresh_store(request.param, tmp_path, dsn) as under_test:
        yield under_test


def _ledger_config(bootstrap: str, group: str, topic: str, store: StoreUnderTest,
                   **checkpoint: object) -> dict[str, object]:
    config = consumer_config(bootstrap, group, topic, handler="handlers.ledger:apply",
                             every_messages=500, every_seconds=1.0, store=store.url,
                             max_poll_interval_ms=7000)
    config["checkpoint"].update(checkpoint)  # type: ignore[union-attr]
    return config


def test_chaos_kills_and_a_zombie_apply_every_change_exactly_once(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """Three members on 6 partitions, 100,000 balance changes (1% re-sent at later offsets),
    at least 20 SIGKILLs at random moments and one member frozen with SIGSTOP past
    max.poll.interval.ms, then resumed: every balance is exact, no event applied twice or lost,
    and the processed keys number the distinct events."""
    ledger = make_ledger(CHAOS_MESSAGES)
    topic = create_topic(kafka_bootstrap, 6, prefix="chaos")
    produce_ledger(kafka_bootstrap, topic, ledger)
    group = unique_name("chaos")
    chaos = Chaos(tmp_path, _ledger_config(kafka_bootstrap, group, topic, store))
    _run_chaos(chaos, store, CHAOS_MESSAGES, kills=20)
    until_applied(store, ledger, timeout=max(300, CHAOS_MESSAGES / 500),
                  what=f"every event applied ({chaos.logs()})")
    chaos.stop()

    verdict = check(store, ledger, group)
    assert chaos.kills >= 20 and chaos.freezes == 1
    assert verdict.exact, verdict
    assert verdict.processed_keys == len(ledger.events)


@pytest.mark.parametrize("variant", ["no-keys-checkpoint-outside", "no-keys-no-fence"])
def test_chaos_checker_catches_a_broken_consumer(
    kafka_bootstrap: str, tmp_path: Path, variant: str
) -> None:
    """The same chaos against a consumer with a guarantee removed (SQLite store): the checker
    reports events applied twice, so a pass above means something."""
    with fresh_store("sqlite", tmp_path, None) as sqlite_store:
        count = 20_000
        ledger = make_ledger(count, resend_every=10**9)
        topic = create_topic(kafka_bootstrap, 6, prefix="broken")
        produce_ledger(kafka_bootstrap, topic, ledger)
        group = unique_name("broken")
        config = _ledger_config(kafka_bootstrap, group, topic, sqlite_store)
        chaos = Chaos(tmp_path, config, env={"RECORD_SLEEP_SECONDS": "0"},
                      module=["tests.support.broken_consumer", variant])
        _run_chaos(chaos, sqlite_store, count, kills=6)
        until_applied(sqlite_store, ledger, timeout=180, what=f"every event ({chaos.logs()})")
        chaos.stop()
        verdict = check(sqlite_store, ledger, group)
    assert verdict.duplicated_events > 0, verdict


def _run_chaos(chaos: Chaos, store: StoreUnderTest, total: int, *, kills: int) -> None:
    """Kill a random member each time a random share of the remaining events is applied (so
    the kills spread over the whole run); freeze one member once, half way through."""
    chaos.start()

    def applied() -> int:
        try:
            return int(store.scalar("SELECT count(*) FROM ledger_entries"))
        except Exception:  # No batch committed yet: the table does not exist.
            return 0

    while chaos.kills + chaos.freezes < kills + 1:
        done = applied()
        left = kills + 1 - chaos.kills - chaos.freezes
        share = max(1, (total - done) // (left + 2))
        target = min(total - 1, done + chaos.rng.randint(1, 2 * share))
        wait_for(lambda t=target: applied() >= t, timeout=120,  # type: ignore[misc]
                 what=f"progress to {target} entries ({chaos.logs()})", interval=0.05)
        chaos.restart_dead()
        if chaos.freezes == 0 and chaos.kills >= kills // 2:
            # Past max.poll.interval.ms (7 s) and the session (6 s), with a margin.
            chaos.freeze_one(seconds=10)
        else:
            chaos.kill_one()
    chaos.restart_dead()


def test_same_event_at_two_offsets_is_applied_once(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """An event produced twice (same idempotency-key, different offsets) changes the balance
    once; both offsets are consumed and checkpointed."""
    topic = create_topic(kafka_bootstrap, 1, prefix="dup")
    event = {"event": "pay-1", "account": "alice", "amount": 250}
    other = {"event": "pay-2", "account": "alice", "amount": 5}
    produce(kafka_bootstrap, topic, [json.dumps(e).encode() for e in (event, other, event)],
            headers=lambda i: [("idempotency-key", [b"pay-1", b"pay-2", b"pay-1"][i])])
    group = unique_name("dup")
    run = ConsumerProcess(tmp_path, "dup", _ledger_config(kafka_bootstrap, group, topic, store))
    run.start()
    try:
        wait_for(lambda: _row(store, "SELECT next_offset FROM consumer_checkpoints") == 3,
                 timeout=60, what=f"the checkpoint row to reach offset 3 ({run.log_tail()})")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0
    finally:
        run.stop_if_running()
    assert store.query("SELECT balance FROM accounts WHERE id = 'alice'") == [(255,)]
    assert store.scalar("SELECT count(*) FROM ledger_entries") == 2
    assert group_offsets(kafka_bootstrap, group, topic, 1) == {0: 3}


def test_failing_message_rolls_back_alone(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """In one batch over two partitions, the message that raises leaves no write behind; the
    other partition's messages and the earlier ones of its own partition commit; the process
    exits 1 naming the message, and its partition's checkpoint stops exactly there."""
    topic = create_topic(kafka_bootstrap, 2, prefix="failing")
    events = [{"event": f"f{i}", "account": f"acc-{i % 2}", "amount": 1 if i != 7 else "bad"}
              for i in range(20)]
    produce(kafka_bootstrap, topic, [json.dumps(e).encode() for e in events],
            partition=lambda i: i % 2,
            headers=lambda i: [("idempotency-key", f"f{i}".encode())])
    group = unique_name("failing")
    config = _ledger_config(kafka_bootstrap, group, topic, store, every_messages=20,
                            every_seconds=30)
    config["routes"][topic] = {"handler": "handlers.ledger:apply", "on_failure": "stop",
                               "retry": {"attempts": 1}}
    run = ConsumerProcess(tmp_path, "failing", config).start()
    assert run.wait(timeout=60) == 1, run.log_tail()
    assert f"handler failed on {topic}[1]@3" in run.log_file.read_text()
    applied = {e for (e,) in store.query("SELECT event FROM ledger_entries")}
    # Partition 1 holds events 1, 3, 5, 7, ...: event 7 is offset 3 there.
    assert applied == {f"f{i}" for i in range(0, 20, 2)} | {"f1", "f3", "f5"}
    rows = dict(((t, p), o) for t, p, o in store.query(
        "SELECT topic, partition, next_offset FROM consumer_checkpoints"))
    assert rows == {(topic, 0): 10, (topic, 1): 3}
    keys = store.scalar("SELECT count(*) FROM consumer_processed_keys")
    assert keys == len(applied)


def _row(store: StoreUnderTest, sql: str) -> object:
    try:
        rows = store.query(sql)
    except Exception:
        return None
    return rows[0][0] if rows else None


@pytest.mark.parametrize("policy", ["fail", "follow", "ignore"])
def test_reset_with_kafkas_own_tool_is_detected(
    kafka_bootstrap: str, tmp_path: Path, policy: str
) -> None:
    """After a run, kafka-consumer-groups --reset-offsets --to-earliest moves the group's Kafka
    offset (without our marker). On restart: fail -> exit 1 naming both offsets; follow ->
    resume at Kafka's offset, every message a duplicate, no effect applied twice; ignore ->
    resume at the store's offset."""
    import kafka_local

    with fresh_store("sqlite", tmp_path, None) as store:
        topic = create_topic(kafka_bootstrap, 1, prefix="reset")
        events = [{"event": f"r{i}", "account": "acc", "amount": 1} for i in range(5)]
        produce(kafka_bootstrap, topic, [json.dumps(e).encode() for e in events],
                headers=lambda i: [("idempotency-key", f"r{i}".encode())])
        group = unique_name("reset")
        config = _ledger_config(kafka_bootstrap, group, topic, store)
        first = ConsumerProcess(tmp_path, "first", config).start()
        wait_for(lambda: _row(store, "SELECT next_offset FROM consumer_checkpoints") == 5,
                 timeout=60, what=f"the first run to checkpoint 5 ({first.log_tail()})")
        first.signal(signal.SIGTERM)
        assert first.wait() == 0

        tool = kafka_local.run_tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            ["--bootstrap-server", kafka_bootstrap, "--group", group, "--topic", topic,
             "--reset-offsets", "--to-earliest", "--execute"],
        )
        assert tool == 0
        assert group_offsets(kafka_bootstrap, group, topic, 1) == {0: 0}

        config["store"]["on_external_reset"] = policy  # type: ignore[index]
        second = ConsumerProcess(tmp_path, "second", config).start()
        if policy == "fail":
            assert second.wait(timeout=60) == 1
            log = second.log_file.read_text()
            assert "Kafka's committed offset is 0 but the store's checkpoint is 5" in log
        else:
            wait_for(lambda: f"store.on_external_reset={policy}" in second.log_tail(200),
                     timeout=60, what=f"the reset to be reported ({second.log_tail()})")
            wait_for(lambda: group_offsets(kafka_bootstrap, group, topic, 1) == {0: 5},
                     timeout=60, what=f"Kafka's offset back at 5 ({second.log_tail()})")
            second.signal(signal.SIGTERM)
            assert second.wait() == 0
            assert f"resuming at {0 if policy == 'follow' else 5}" in second.log_file.read_text()
        assert store.scalar("SELECT count(*) FROM ledger_entries") == 5
        assert store.query("SELECT balance FROM accounts") == [(5,)]
