"""Exactly-once effects with concurrency on PostgreSQL, against a real broker: a route with
``concurrency: 16`` applies each balance change in a transaction of its own; SIGKILLs mid-run
and a member frozen with SIGSTOP (its transactions left open) while the group moves on. The
ledger checker (tests/support/chaos.py) compares every balance and journal entry with what was
produced, and the row audit sees any checkpoint row moving backwards."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.audit import install_audit
from tests.support.chaos import (
    Chaos,
    assert_exact_after_chaos,
    check,
    make_ledger,
    produce_ledger,
    run_chaos,
    until_consumed,
)
from tests.support.ending import ENDING_ROUTE, SEQUENTIAL_ROUTE, run_fixed, run_until_it_stops
from tests.support.kafka import create_topic, group_offsets, unique_name
from tests.support.ledger_concurrent import SCHEMA
from tests.support.stores import StoreUnderTest

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("store", ["postgresql"], indirect=True)]

MESSAGES = int(os.environ.get("CONSUMER_CONCURRENT_MESSAGES", "20000"))
CONCURRENCY = 16
#: SIGKILLs in the three-member chaos: each costs the group a rebalance (a session timeout).
CHAOS_KILLS = int(os.environ.get("CONSUMER_CONCURRENT_CHAOS_KILLS", "8"))


def _config(bootstrap: str, group: str, topic: str, store: StoreUnderTest,
            handler: str = "apply", **postgres: float) -> dict[str, Any]:
    config = consumer_config(bootstrap, group, topic, store=store.url, every_messages=500,
                             every_seconds=1.0, max_poll_interval_ms=7000)
    config["routes"] = {topic: {"handler": f"tests.support.ledger_concurrent:{handler}",
                                "concurrency": CONCURRENCY, "ordering": "key"}}
    config["store"].update({f"postgres_{name}_seconds": value
                            for name, value in postgres.items()})
    config["log_level"] = "INFO"  # 20,000 messages: per-message debug lines cost the run
    return config


def _prepared(bootstrap: str, store: StoreUnderTest, prefix: str) -> tuple[Any, str, str]:
    ledger = make_ledger(MESSAGES)
    topic = create_topic(bootstrap, 6, prefix=prefix)
    produce_ledger(bootstrap, topic, ledger)
    install_audit(store)
    for statement in SCHEMA:
        store.execute(statement)
    return ledger, topic, unique_name(prefix)


def _applied(store: StoreUnderTest) -> int:
    return int(store.scalar("SELECT count(*) FROM ledger_entries"))


# The healthy run of this one-member crash test is covered, with three members and a zombie,
# by test_three_members_killed_and_a_zombie_apply_every_change_exactly_once below; what stays
# here is its broken twin, proof that the checker sees a consumer without key claims.
@pytest.mark.parametrize("defect", ["no-claim"])
def test_concurrency_16_applies_every_change_exactly_once_through_sigkills(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path, defect: str | None
) -> None:
    """20,000 balance changes over 6 partitions (1% re-sent at later offsets), 16 handlers at
    once, SIGKILLed three times at random moments and restarted, with the key claim removed
    (``no-claim``): the checker sees changes applied twice. (With ``defect=None`` the same run
    is exact: every balance, no change applied twice or lost, the processed keys number the
    distinct events, no checkpoint row moved back.) The broken consumer is killed once: its
    re-sent changes alone apply twice, and each restart waits out a session timeout."""
    ledger, topic, group = _prepared(kafka_bootstrap, store, "conc-kill")
    config = _config(kafka_bootstrap, group, topic, store)
    module = ["consumer"] if defect is None else ["tests.support.broken_concurrent"]
    kills = 3 if defect is None else 1
    rng = random.Random()
    runs = [ConsumerProcess(tmp_path, "run0", config, module=module).start()]
    try:
        for kill in range(kills):
            target = int(MESSAGES * (kill + rng.uniform(0.3, 0.9)) / (kills + 1))
            wait_for(lambda t=target: _applied(store) >= t,  # type: ignore[misc]
                     timeout=300, interval=0.05,
                     what=f"{target} changes applied ({runs[-1].log_tail()})")
            runs[-1].kill()
            runs.append(ConsumerProcess(tmp_path, f"run{kill + 1}", config,
                                        module=module).start())
        until_consumed(store, kafka_bootstrap, group, [topic], timeout=max(300, MESSAGES / 50),
                       what=f"the end ({runs[-1].log_tail()})")
        runs[-1].signal(signal.SIGTERM)
        assert runs[-1].wait() == 0, runs[-1].log_tail()
    finally:
        for run in runs:
            run.stop_if_running()
    verdict = check(store, ledger, group, audited=True)
    assert store.scalar("SELECT count(*) FROM handler_sessions") > 1
    if defect is not None:
        assert verdict.duplicated_events > 0 and verdict.processed_keys == 0, verdict
        return
    assert verdict.exact, verdict
    assert verdict.processed_keys == len(ledger.events)


@pytest.mark.parametrize("wake", ["early", "late"])
def test_a_frozen_member_with_open_transactions_applies_nothing_twice(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path, wake: str
) -> None:
    """Two members; one is frozen with SIGSTOP mid-run, its workers' transactions open (keys
    claimed, effects written, no COMMIT). The other takes its partitions and moves every row
    past where the frozen member stopped; its claims of the frozen member's keys wait for
    those transactions (each attempt bounded by lock_timeout, then retried, never
    dead-lettered). ``early``: the zombie is continued then, and commits its open
    transactions while the new owner's claims wait (they see the keys: duplicates).
    ``late``: it stays frozen until the new owner consumed everything, which it can only do
    once the server ended the frozen sessions (idle_in_transaction timeout), rolling them
    back; continued, its transactions are gone. Either way the zombie's rows are fenced or
    its partitions lost: every change exactly once, no row moved back."""
    ledger, topic, group = _prepared(kafka_bootstrap, store, f"conc-zombie-{wake}")
    config = _config(kafka_bootstrap, group, topic, store, lock_timeout=2,
                     idle_in_transaction_timeout=10)
    members = [ConsumerProcess(tmp_path, f"member{i}", config).start() for i in range(2)]
    retired: list[ConsumerProcess] = []

    def tend() -> None:
        for i, member in enumerate(members):
            if i == 1 and not member.alive():  # the zombie stops (fenced); a fresh one rejoins
                retired.append(member)
                members[i] = ConsumerProcess(tmp_path, f"{member.name}-again", config).start()

    try:
        wait_for(lambda: _applied(store) >= MESSAGES // 4, timeout=300, interval=0.05,
                 what=f"a quarter applied ({members[0].log_tail()})")
        zombie, taker = members
        zombie.signal(signal.SIGSTOP)
        frozen_rows = _rows(store, group)

        def passed() -> bool:
            rows = _rows(store, group)
            return len(rows) == 6 and all(
                rows[tp][0] > frozen_rows.get(tp, (0, 0))[0] for tp in rows)

        wait_for(passed, timeout=120, interval=0.2,
                 what=f"the other member to move every row on ({taker.log_tail()})")
        if wake == "late":
            until_consumed(store, kafka_bootstrap, group, [topic],
                           timeout=max(300, MESSAGES / 50),
                           what=f"the new owner to finish, the zombie frozen ({taker.log_tail()})")
        zombie.signal(signal.SIGCONT)
        members = [taker, zombie]

        def finished() -> bool:
            tend()
            try:
                until_consumed(store, kafka_bootstrap, group, [topic], timeout=0.1, what="")
            except AssertionError:
                return False
            return True

        wait_for(finished, timeout=max(300, MESSAGES / 50), interval=1.0,
                 what=f"the end ({taker.log_tail()})")
        for member in members:
            member.signal(signal.SIGTERM)
        for member in members:
            member.wait()
    finally:
        for member in members + retired:
            member.stop_if_running()
    verdict = check(store, ledger, group, audited=True)
    assert verdict.exact, verdict
    assert verdict.processed_keys == len(ledger.events)
    taken = taker.log_file.read_text(errors="replace")
    assert "dead letter" not in taken.lower()
    if wake == "late":
        assert "postgres_lock_timeout_seconds" in taken, "the new owner waited for the zombie"


def test_three_members_killed_and_a_zombie_apply_every_change_exactly_once(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """The chaos of the single-threaded ledger test (tests/support/chaos.py) with ``concurrency:
    16`` and the default micro-batches (8): three members on 6 partitions, 20,000 balance
    changes (1% re-sent at later offsets), eight SIGKILLs at random moments (each a rebalance),
    and one member frozen with SIGSTOP at a checkpoint while workers hold their transactions
    open (keys claimed, effects written, no COMMIT). The group takes its partitions and
    checkpoints past it (the server ends the frozen sessions after
    ``postgres_idle_in_transaction_timeout_seconds``); continued, the zombie attempts its late
    checkpoint and the epoch fence refuses it. Every balance exact, no change applied twice or
    lost, the processed keys number the distinct events, no checkpoint row moved back.
    Run with ``defect="no-claim"`` (tests/support/broken_concurrent.py), the verdict reports
    changes applied twice.

    Two of the three member slots run the same ledger as an ``async def`` handler awaiting its
    statements (a transaction per message on the event loop's pool), as in a group half-way
    through a rolling change from one to the other: both paths claim the same keys, each
    restart keeps its slot's kind, and the zombie is whichever member the gate catches. (With
    the async claim made to always apply, this run reported 1,324 changes applied twice.)"""
    ledger, topic, group = _prepared(kafka_bootstrap, store, "conc-chaos")
    postgres = {"lock_timeout": 2.0, "idle_in_transaction_timeout": 5.0}
    config = _config(kafka_bootstrap, group, topic, store, **postgres)
    awaiting = _config(kafka_bootstrap, group, topic, store, "apply_async", **postgres)
    assert "micro_batch_messages" not in config["store"]  # the default is what runs
    chaos = Chaos(tmp_path, config, slot_configs={1: awaiting, 2: awaiting})
    try:
        run_chaos([chaos], store, kills=CHAOS_KILLS)
        until_consumed(store, kafka_bootstrap, group, [topic], tend=chaos,
                       timeout=max(300, MESSAGES / 50), what=f"the end ({chaos.logs()})")
    finally:
        chaos.stop()
    assert_exact_after_chaos(store, ledger, group, chaos, kills=CHAOS_KILLS)
    assert chaos.zombie_open_transactions > 0, "the zombie held no transaction open"
    assert store.scalar("SELECT count(*) FROM handler_sessions") > 1
    assert {kind for (kind,) in store.query("SELECT DISTINCT kind FROM handler_sessions")} \
        == {"def", "async def"}, "both kinds of member applied changes"


def _rows(store: StoreUnderTest, group: str) -> dict[tuple[str, int], tuple[int, int]]:
    return {(t, p): (o or 0, e) for t, p, o, e in store.query(
        "SELECT topic, partition, next_offset, epoch FROM consumer_checkpoints "
        "WHERE group_id = %s", (group,))}


def test_a_handler_committing_its_messages_transaction_stops_the_consumer_with_nothing_lost(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """concurrency 4, one partition of 8 messages: the handler commits its transaction at
    offset 3. The connection refuses; the consumer exits 1 saying why; nothing of offset 3
    committed (neither its write nor its key), and Kafka's offset stops at or before it."""
    topic, group, _, log = run_until_it_stops(
        kafka_bootstrap, store, tmp_path, "conc-commit",
        "tests.support.ledger_concurrent:commit_at_three")
    assert "a handler must never end that transaction" in log
    assert 3 not in [offset for (offset,) in store.query('SELECT "offset" FROM handled')]
    claimed = [offset for (offset,) in store.query(
        'SELECT "offset" FROM consumer_processed_keys')]
    assert claimed and 3 not in claimed
    committed = group_offsets(kafka_bootstrap, group, topic, 1)[0]
    assert committed is None or committed <= 3


@pytest.mark.parametrize("handler", ["commit_statement_at_three", "commit_and_begin_at_three"])
@pytest.mark.parametrize("route", [ENDING_ROUTE, SEQUENTIAL_ROUTE], ids=["concurrency", "batch"])
def test_a_handler_sending_a_commit_statement_stops_the_consumer_and_the_restart_loses_nothing(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path, route: dict[str, Any],
    handler: str
) -> None:
    """One partition of 8 messages: at offset 3 the handler sends a ``COMMIT`` statement,
    which committed its key ahead of its write (and the keys of the messages after it, not
    run yet, claimed in the same transaction: a micro-batch with concurrency 4, the batch
    without), maybe followed by a ``BEGIN`` of its own. The consumer exits 1 naming it, with
    those keys forgotten again; the fixed handler then applies every offset exactly once."""
    topic, group, config, log = run_until_it_stops(
        kafka_bootstrap, store, tmp_path, "conc-commit-sql",
        f"tests.support.ledger_concurrent:{handler}", route)
    assert ("ended its message's transaction with a statement" in log if route is ENDING_ROUTE
            else "ended the store's transaction" in log)

    run_fixed(kafka_bootstrap, store, tmp_path, topic, group, config)
