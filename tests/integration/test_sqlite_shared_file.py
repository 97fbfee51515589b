"""Several consumer processes share one SQLite file: while one holds a long batch
transaction, the others' assignments and batches wait for it (up to
store.sqlite_busy_timeout_seconds) instead of failing, so members join and leave during long
batches and every one of them exits 0, with each event applied exactly once."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.chaos import check, make_ledger, produce_ledger, until_applied
from tests.support.kafka import create_topic, unique_name
from tests.support.stores import fresh_store

pytestmark = pytest.mark.integration

EVENTS = 2_000
SLEEP = "0.01"  # per message: each batch of 100 holds the file's write lock about 1 s
LONG_BATCH = 8.0  # seconds another writer holds the file while members leave and join


def test_three_processes_on_one_sqlite_file_survive_rebalances_during_long_batches(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A and B share the file, handlers taking a while. A long write transaction (LONG_BATCH
    seconds, longer than SQLite's old fixed 5 s wait) holds the file while A leaves and C
    joins: A's final checkpoint, C's start and everyone's assignments wait for it instead of
    failing. B and C finish the topic; every exit code is 0 and the ledger is exact."""
    ledger = make_ledger(EVENTS)
    topic = create_topic(kafka_bootstrap, 6, prefix="shared")
    produce_ledger(kafka_bootstrap, topic, ledger)
    group = unique_name("shared")
    with fresh_store("sqlite", tmp_path, None) as store:
        config = consumer_config(kafka_bootstrap, group, topic,
                                 handler="tests.support.failing_handlers:slow_ledger",
                                 every_messages=100, every_seconds=2.0, store=store.url)
        env = {"LEDGER_SLEEP_SECONDS": SLEEP}
        members = {name: ConsumerProcess(tmp_path, name, config, env=env)
                   for name in ("a", "b", "c")}

        def applied() -> int:
            try:
                return int(store.scalar("SELECT count(*) FROM ledger_entries"))
            except Exception:
                return 0

        def state() -> str:
            return f"{applied()} applied; " + " | ".join(
                f"{n}: {'up' if m.alive() else 'exited'}, log: {m.log_tail(8)}"
                for n, m in members.items() if m.process is not None)

        codes: dict[str, int] = {}
        try:
            members["a"].start()
            members["b"].start()
            with _telling(state):
                wait_for(lambda: all(members[n].owned_partitions() for n in "ab")
                         and applied() > 0, timeout=90, what="a and b at work")
            with _long_transaction(store.url.removeprefix("sqlite:///")):
                members["a"].signal(signal.SIGTERM)
                members["c"].start()
                time.sleep(LONG_BATCH)  # the transaction's own work
            codes["a"] = members["a"].wait(timeout=60)
            with _telling(state):
                until_applied(store, ledger, timeout=240, what="every event")
            for name in ("b", "c"):
                members[name].signal(signal.SIGTERM)
            codes.update({name: members[name].wait(timeout=60) for name in ("b", "c")})
        finally:
            for member in members.values():
                member.stop_if_running()
        assert codes == {"a": 0, "b": 0, "c": 0}, state()
        verdict = check(store, ledger, group)
        assert verdict.exact, verdict


@contextmanager
def _telling(state: Callable[[], str]) -> Iterator[None]:
    """A wait that fails says what the members were doing at its deadline, not at its start."""
    try:
        yield
    except AssertionError as error:
        raise AssertionError(f"{error}; {state()}") from None


@contextmanager
def _long_transaction(path: str) -> Iterator[None]:
    """Another writer's long batch: the file's write lock, held for the block."""
    db = sqlite3.connect(path, isolation_level=None, timeout=120)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("CREATE TABLE IF NOT EXISTS other_writer (n INTEGER)")
        db.execute("INSERT INTO other_writer VALUES (1)")
        yield
        db.execute("COMMIT")
    finally:
        db.close()
