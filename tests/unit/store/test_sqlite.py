"""The store contract on SQLite (files in tmp_path, no server), and what only SQLite does.

The contract itself is :class:`tests.support.store_contract.StoreContract`; its PostgreSQL half
is an integration test (``tests/integration/test_store_contract.py``).
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.errors import ConfigError, StoreUnavailable
from consumer.settings import StoreSettings
from consumer.store import open_configured
from consumer.store.sqlite import SQLiteStore
from tests.support.store_contract import (
    P0,
    Backend,
    G,
    MigratesFromVersion1,
    MigratesFromVersion2,
    StoreContract,
)


class TestSQLiteStoreContract(StoreContract, MigratesFromVersion1, MigratesFromVersion2):
    """The store contract on a fresh SQLite file per test."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        path = str(tmp_path / "store.db")
        backend = Backend("sqlite", lambda: SQLiteStore(path))
        yield backend
        backend.close_all()


class TestSQLiteStoreContractInSmallGenerations(StoreContract):
    """The store contract again with a generation sealed every two keys, so that every claim
    also asks sealed generations (consumer.store.key_generations)."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        path = str(tmp_path / "store.db")
        backend = Backend("sqlite", lambda: SQLiteStore(path, generation_keys=2))
        yield backend
        backend.close_all()


# --- SQLite only --------------------------------------------------------------------------------


def test_sqlite_locked_file_is_unavailable_after_the_busy_timeout(tmp_path: Path) -> None:
    path = str(tmp_path / "locked.db")
    store = SQLiteStore(path, busy_timeout_ms=150)
    store.ensure_schema()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            store.begin()
        waited = time.monotonic() - started
        assert 0.1 <= waited < 3.0, f"waited {waited:.3f} s, not about busy_timeout"
        with pytest.raises(StoreUnavailable):
            store.assign(G, [P0], 1.0)
        assert store.checkpoints(G) == {}, "WAL readers are not blocked by the writer"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.begin()
    store.commit()
    store.close()


def test_sqlite_uses_wal_and_synchronous_full(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "durable.db"))
    assert store.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert store.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 10_000
    assert store.execute("PRAGMA cache_size").fetchone()[0] == -64 * 1024  # 64 MB
    store.close()
    check = sqlite3.connect(str(tmp_path / "durable.db"))
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal", "WAL persists in the file"
    check.close()


def test_the_configured_page_cache_reaches_the_store(tmp_path: Path) -> None:
    settings = StoreSettings(url=f"sqlite:///{tmp_path / 'cache.db'}", sqlite_cache_mb=256)
    store = open_configured(settings)
    assert store.execute("PRAGMA cache_size").fetchone()[0] == -256 * 1024
    store.close()


def test_sqlite_refuses_concurrent_writers_with_a_config_error(tmp_path: Path) -> None:
    """SQLite takes one writer at a time: routes with concurrency above 1 cannot each commit
    a transaction of their own, so the store refuses them, saying what to do."""
    store = SQLiteStore(str(tmp_path / "store.db"))
    try:
        with pytest.raises(ConfigError, match=r"one writer at a time.*PostgreSQL or MariaDB store"):
            store.message_transactions(4)
    finally:
        store.close()


def test_a_waiting_writer_gets_the_file_between_anothers_back_to_back_batches(
    tmp_path: Path,
) -> None:
    """Two stores share one file; one commits batch after batch, taking the write lock again
    within microseconds of releasing it. The other's begin gets its turn at the next batch
    boundary instead of waiting (SQLite's busy handler polls, up to 100 ms apart) until the
    busy one stops or its busy timeout ends."""
    path = str(tmp_path / "shared.db")
    busy = SQLiteStore(path, busy_timeout_ms=5_000)
    busy.ensure_schema(G)
    waiting = SQLiteStore(path, busy_timeout_ms=5_000)
    batches = 0
    stop = threading.Event()

    def back_to_back() -> None:
        nonlocal batches
        while not stop.is_set():
            busy.begin()
            time.sleep(0.1)  # the batch's handlers, holding the write lock
            busy.commit()
            batches += 1

    writer = threading.Thread(target=back_to_back)
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while batches < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batches >= 2, "the busy store never committed two batches"
        started = time.monotonic()
        waiting.begin()
        waited = time.monotonic() - started
        waiting.commit()
    finally:
        stop.set()
        writer.join(timeout=10)
        busy.close()
        waiting.close()
    assert waited < 1.0, f"waited {waited:.2f} s for a turn"


def test_a_store_opening_a_file_another_connection_is_writing_waits_its_turn(
    tmp_path: Path,
) -> None:
    """Switching a file to WAL needs it to itself, and SQLite fails that switch at once, busy
    timeout or not, while another connection holds the write lock of a file not in WAL yet:
    the store tries again until the writer commits."""
    path = str(tmp_path / "new.db")
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE made_by_another (x)")
    release = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    release.start()
    try:
        store = SQLiteStore(path, busy_timeout_ms=5_000)
    finally:
        release.join()
        writer.close()
    assert store.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.ensure_schema(G)
    store.close()


def test_a_store_that_never_gets_the_file_to_switch_to_wal_gives_up_at_the_busy_timeout(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "held.db")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE made_by_another (x)")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"cannot open the SQLite store at .*locked"):
            SQLiteStore(path, busy_timeout_ms=300)
        waited = time.monotonic() - started
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert 0.15 <= waited < 3.0, f"gave up after {waited:.3f} s, not about the busy timeout"


def _open_new_files_in_step(folder: str, files: int, start: Any, errors: Any) -> None:
    """One process of the test below: open file after file of ``folder`` as the others do."""
    failures = []
    for number in range(files):
        start.wait(timeout=30)
        try:
            store = SQLiteStore(str(Path(folder) / f"{number}.db"))
            store.ensure_schema(G)
            store.close()
        except StoreUnavailable as error:
            failures.append(str(error))
    errors.put(failures)


def test_processes_opening_one_new_file_at_the_same_moment_all_open_it(tmp_path: Path) -> None:
    """Members started together on one new file: each opens it, none dies at start with
    "database is locked" (before the retry, 6 processes failed in about one file in five)."""
    processes, files = 6, 30
    context = multiprocessing.get_context("spawn")
    start, errors = context.Barrier(processes), context.Queue()
    members = [context.Process(target=_open_new_files_in_step,
                               args=(str(tmp_path), files, start, errors))
               for _ in range(processes)]
    for member in members:
        member.start()
    try:
        failures = [failure for _ in members for failure in errors.get(timeout=120)]
    finally:
        for member in members:
            member.join(timeout=30)
    assert failures == [], f"{len(failures)} opens failed, as: {failures[0]}"
    assert [member.exitcode for member in members] == [0] * processes
