"""A real deadlock under a handler of a server store's batch, on MariaDB and PostgreSQL.

The batch's transaction is the deadlock's victim: InnoDB picks the transaction that changed
fewer rows (the other session changed 2,000), PostgreSQL the session whose wait finds the
cycle first (the batch's, which has waited longest). InnoDB rolls its victim's whole
transaction back, the batch's claimed keys and the effects of the handlers before with it,
and the connection is in autocommit again; PostgreSQL's stays in the failed transaction. A
handler that lets the error go has the batch retried; one that catches it and goes on must
not write outside the batch, nor let the checkpoint move past effects that are gone."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from consumer.clock import ManualClock
from consumer.errors import ConsumerError, SwallowedDatabaseError
from consumer.message import Context, Message
from consumer.store import open_store
from consumer.store.mariadb_session import parameters
from tests.support.processed_keys import processed_keys
from tests.support.store_harness import GROUP, HeaderedSource, make_store_loop
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration

MESSAGES = 5


@pytest.fixture(params=["mariadb", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    server = request.getfixturevalue("mariadb_url" if request.param == "mariadb"
                                     else "postgres_dsn")
    with fresh_store(request.param, tmp_path, server) as found:
        found.execute("CREATE TABLE effects (position INT NOT NULL)")
        found.execute("CREATE TABLE pair (id INT PRIMARY KEY, v INT NOT NULL)")
        found.execute("INSERT INTO pair VALUES (1, 0), (2, 0)")
        found.execute("CREATE TABLE ballast (id INT PRIMARY KEY, v INT NOT NULL)")
        found.execute("INSERT INTO ballast SELECT seq, 0 FROM seq_1_to_2000"
                      if request.param == "mariadb" else
                      "INSERT INTO ballast SELECT n, 0 FROM generate_series(1, 2000) AS n")
        yield found


class Deadlocker:
    """A handler writing one ``effects`` row per message. The first time it handles offset
    ``at`` it first locks ``pair`` row 1 while another session, which changed every
    ``ballast`` row, holds row 2; it asks for row 2, and once it waits the other session
    asks for row 1: a deadlock.
    ``after``: what it does with the deadlock: ``raise`` it, ``write`` (catch it, then write
    its effect) or ``return`` (catch it and return)."""

    def __init__(self, database: StoreUnderTest, at: int, after: str) -> None:
        self.database = database
        self.at = at
        self.after = after
        self.deadlocks: list[str] = []

    def __call__(self, message: Message, context: Context) -> None:
        if message.offset == self.at and not self.deadlocks:
            try:
                self._deadlock(context)
            except (pymysql.err.OperationalError, psycopg.errors.DeadlockDetected) as error:
                self.deadlocks.append(type(error).__name__)
                if self.after == "raise":
                    raise
                if self.after == "return":
                    return
        context.execute("INSERT INTO effects VALUES (%s)", (message.offset,))

    def _deadlock(self, context: Context) -> None:
        other = Other(self.database)
        try:
            other.execute("UPDATE ballast SET v = v + 1")
            other.execute("UPDATE pair SET v = v + 1 WHERE id = 2")
            context.execute("UPDATE pair SET v = v + 1 WHERE id = 1")
            closing = threading.Thread(target=self._close_the_cycle, args=(other,))
            closing.start()
            try:
                context.execute("UPDATE pair SET v = v + 1 WHERE id = 2")  # waits: a cycle
            finally:
                closing.join(timeout=30)
                other.commit()
        finally:
            other.close()

    def _close_the_cycle(self, other: Other) -> None:
        """Once the batch waits for row 2, ask for row 1: the batch has waited longest."""
        _wait_for_a_lock_wait(self.database)
        other.execute("UPDATE pair SET v = v + 1 WHERE id = 1")


class Other:
    """The other session, in a transaction until :meth:`commit`."""

    def __init__(self, database: StoreUnderTest) -> None:
        self._conn: Any = (
            pymysql.connect(**{**parameters(database.url, 5)[0], "autocommit": False,
                               "cursorclass": pymysql.cursors.Cursor})
            if database.backend == "mariadb" else psycopg.connect(database.url))

    def execute(self, sql: str) -> None:
        self._conn.cursor().execute(sql)

    def commit(self) -> None:
        self._conn.commit()

    def close(self) -> None:
        self._conn.close()


def _wait_for_a_lock_wait(database: StoreUnderTest, timeout: float = 10.0) -> None:
    """Until the batch waits for its ``pair`` row (other tests' waits on the server, which
    share it, do not count: only this test updates ``pair``)."""
    waits = ("SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT' "
             "AND trx_query LIKE 'UPDATE pair%%'"
             if database.backend == "mariadb" else
             "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
             "AND query LIKE 'UPDATE pair%%'")
    deadline = time.monotonic() + timeout
    while not database.scalar(waits):
        if time.monotonic() > deadline:
            raise AssertionError("the other session never waited for row 1")
        time.sleep(0.2)  # InnoDB refreshes innodb_trx once it was not read for 0.1 s


def run_to_the_end(database: StoreUnderTest, handler: Deadlocker) -> dict[str, Any]:
    """Consume the topic's five messages in one batch, retrying after the backoff until the
    checkpoint reaches the end (twenty turns at most). A run that stops with an error is
    started again, on a fresh store and loop (a restart), at most twice. What was committed,
    and the errors the runs stopped with."""
    stops: list[str] = []
    for _ in range(3):
        store = open_store(database.url)
        store.ensure_schema()
        source = HeaderedSource({"t": [[f"evt-{n}".encode() for n in range(MESSAGES)]]})
        clock = ManualClock()
        loop, _ = make_store_loop(source, store, handler, clock=clock,  # type: ignore[arg-type]
                                  every_messages=MESSAGES, every_seconds=1.0)
        try:
            assert loop.start()
            for _ in range(20):
                loop.run_once()
                if loop.committed_offsets().get(("t", 0)) == MESSAGES:
                    break
                clock.advance(1.0)  # past the retry's backoff
            break
        except ConsumerError as error:
            stops.append(type(error).__name__)
        finally:
            store.close()
    return {
        "effects": [n for (n,) in database.query("SELECT position FROM effects ORDER BY 1")],
        "checkpoint": database.scalar("SELECT next_offset FROM consumer_checkpoints"),
        "keys": len(processed_keys(database.query, backend=database.backend, group=GROUP)),
        "stops": stops,
    }


@pytest.mark.parametrize("after", ["raise", "write", "return"])
def test_a_deadlock_under_a_handler_leaves_every_effect_applied_once(
        database: StoreUnderTest, after: str) -> None:
    """Caught or not, at the batch's middle message or its last (``return``: the handler
    writes nothing after the deadlock, so only the checkpoint's statement would follow it):
    every effect is in once, with its key and the checkpoint, and the consumer never stops.
    On MariaDB the batch is retried as after an outage; on PostgreSQL, where the transaction
    stays failed, it runs again message by message."""
    handler = Deadlocker(database, at=MESSAGES - 1 if after == "return" else 2, after=after)

    committed = run_to_the_end(database, handler)

    assert handler.deadlocks == ["OperationalError" if database.backend == "mariadb"
                                 else "DeadlockDetected"]
    assert committed == {"effects": list(range(MESSAGES)), "checkpoint": MESSAGES,
                         "keys": MESSAGES, "stops": []}


def test_a_handler_swallowing_its_database_error_on_postgresql_stops_naming_it(
        tmp_path: Path, postgres_dsn: str) -> None:
    """Caught every time (a duplicate key, not a transient error): the batch cannot commit,
    runs again message by message, and the consumer stops there naming the handler and the
    message; nothing of the batch committed."""
    def swallow_at_2(message: Message, context: Context) -> None:
        if message.offset == 2:
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                context.execute("INSERT INTO pair VALUES (1, 0)")
            return
        context.execute("INSERT INTO effects VALUES (%s)", (message.offset,))

    with fresh_store("postgresql", tmp_path, postgres_dsn) as database:
        database.execute("CREATE TABLE effects (position INT NOT NULL)")
        database.execute("CREATE TABLE pair (id INT PRIMARY KEY, v INT NOT NULL)")
        database.execute("INSERT INTO pair VALUES (1, 0)")
        store = open_store(database.url)
        store.ensure_schema()
        source = HeaderedSource({"t": [[f"evt-{n}".encode() for n in range(MESSAGES)]]})
        clock = ManualClock()
        loop, _ = make_store_loop(source, store, swallow_at_2,  # type: ignore[arg-type]
                                  clock=clock, every_messages=MESSAGES, every_seconds=1.0)
        try:
            assert loop.start()
            with pytest.raises(SwallowedDatabaseError) as stopped:
                for _ in range(5):
                    loop.run_once()
                    clock.advance(1.0)
        finally:
            store.close()
        effects = database.query("SELECT position FROM effects")
        checkpoint = database.query("SELECT next_offset FROM consumer_checkpoints")

    assert (stopped.value.handler, stopped.value.offset) == ("tests:handler", 2)
    assert effects == []
    assert checkpoint in ([], [(None,)])


def test_a_lock_wait_timeout_caught_in_a_mariadb_handler_keeps_its_batch(
        tmp_path: Path, mariadb_url: str) -> None:
    """A lock wait timeout rolls back only its statement (InnoDB's default): a handler that
    catches it and goes on is still inside the batch, whose every effect commits at the
    first try. (Taking it for a rollback would retry the batch for ever.)"""
    calls: list[int] = []

    with fresh_store("mariadb", tmp_path, mariadb_url) as database:
        database.execute("CREATE TABLE effects (position INT NOT NULL)")
        database.execute("CREATE TABLE pair (id INT PRIMARY KEY, v INT NOT NULL)")
        database.execute("INSERT INTO pair VALUES (1, 0)")
        holder = Other(database)
        holder.execute("UPDATE pair SET v = v + 1 WHERE id = 1")  # held until the end

        def wait_at_2(message: Message, context: Context) -> None:
            calls.append(message.offset)
            if message.offset == 2:
                with contextlib.suppress(pymysql.err.OperationalError):
                    context.execute("UPDATE pair SET v = v + 1 WHERE id = 1")  # 1205
            context.execute("INSERT INTO effects VALUES (%s)", (message.offset,))

        store = open_store(database.url, mariadb_lock_wait_timeout=1)
        store.ensure_schema()
        source = HeaderedSource({"t": [[f"evt-{n}".encode() for n in range(MESSAGES)]]})
        loop, _ = make_store_loop(source, store, wait_at_2,  # type: ignore[arg-type]
                                  clock=ManualClock(), every_messages=MESSAGES)
        try:
            assert loop.start()
            loop.run_once()
            loop.run_once()  # an idle poll reads the store's answer to the batch's COMMIT
            committed = loop.committed_offsets().get(("t", 0))
        finally:
            store.close()
            holder.close()
        effects = [n for (n,) in database.query("SELECT position FROM effects ORDER BY 1")]

    assert calls == list(range(MESSAGES))  # each handler once: no retry
    assert (committed, effects) == (MESSAGES, list(range(MESSAGES)))
