"""The store contract on MariaDB (a real server), and what only the MariaDB store does.

The contract itself is :class:`tests.support.store_contract.StoreContract`. Each test gets a
fresh database on the server ``mariadb_url`` names (``scripts/mariadb_local.py`` starts one
when ``CONSUMER_TEST_MARIADB_URL`` is not set).
"""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from consumer.errors import StoreError, StoreSchemaError, StoreUnavailable
from consumer.store import CheckpointRow, Claim, open_store
from consumer.store.key_generations import GENERATION_KEYS
from consumer.store.mariadb import MariaDBStore
from tests.support.store_contract import (
    P0,
    Backend,
    G,
    MigratesFromVersion2,
    StoreContract,
    claims,
    key,
    scratch_ids,
)

pytestmark = pytest.mark.integration


def connect(url: str, **extra: Any) -> pymysql.connections.Connection:
    address = urllib.parse.urlsplit(url)
    return pymysql.connect(host=address.hostname, port=address.port,
                           user=urllib.parse.unquote(address.username or ""),
                           password=urllib.parse.unquote(address.password or ""),
                           database=address.path.lstrip("/") or None, autocommit=True, **extra)


def with_database(url: str, database: str, *, password: str | None = None) -> str:
    address = urllib.parse.urlsplit(url)
    netloc = address.netloc
    if password is not None:
        netloc = f"{address.username}:{password}@{address.hostname}:{address.port}"
    return urllib.parse.urlunsplit((address.scheme, netloc, f"/{database}", "", ""))


@pytest.fixture(scope="session")
def mariadb_admin(mariadb_url: str) -> Iterator[pymysql.connections.Connection]:
    conn = connect(mariadb_url)
    yield conn
    conn.close()


@contextlib.contextmanager
def mariadb_backend(url: str, admin: pymysql.connections.Connection, *,
                    generation_keys: int = GENERATION_KEYS) -> Iterator[Backend]:
    """A fresh database on the real server; every store opened on it sees only that one."""
    database = f"contract_{uuid.uuid4().hex[:12]}"
    admin.cursor().execute(f"CREATE DATABASE {database}")
    isolated = with_database(url, database)
    backend = Backend("mariadb", lambda: MariaDBStore(isolated, connect_timeout=5,
                                                      lock_wait_timeout=2,
                                                      generation_keys=generation_keys))
    try:
        yield backend
    finally:
        backend.close_all()
        admin.cursor().execute(f"DROP DATABASE {database}")


@pytest.fixture
def maria_backend(mariadb_url: str,
                  mariadb_admin: pymysql.connections.Connection) -> Iterator[Backend]:
    with mariadb_backend(mariadb_url, mariadb_admin) as backend:
        yield backend


class TestMariaDBStoreContract(StoreContract, MigratesFromVersion2):
    """The store contract on a real MariaDB server, a fresh database per test."""

    @pytest.fixture
    def backend(self, maria_backend: Backend) -> Backend:
        return maria_backend


class TestMariaDBStoreContractInSmallGenerations(StoreContract):
    """The store contract with a generation sealed every two keys: every claim meets sealed
    generations, and most batches seal one."""

    @pytest.fixture
    def backend(self, mariadb_url: str,
                mariadb_admin: pymysql.connections.Connection) -> Iterator[Backend]:
        with mariadb_backend(mariadb_url, mariadb_admin, generation_keys=2) as backend:
            yield backend


# --- MariaDB only ----------------------------------------------------------------------------


def test_mariadb_sessions_read_committed_with_ansi_quotes_and_the_configured_waits(
    maria_backend: Backend,
) -> None:
    """InnoDB's REPEATABLE READ (gap locks, an old snapshot) is not what the store runs."""
    store = maria_backend.open()
    row = store.execute("SELECT @@tx_isolation, @@sql_mode, @@innodb_lock_wait_timeout, "
                        "@@idle_transaction_timeout, @@autocommit").fetchone()
    assert row[0] == "READ-COMMITTED"
    assert "ANSI_QUOTES" in row[1].split(",")
    assert tuple(row[2:]) == (2, 60, 1)


def test_mariadb_same_offset_in_the_same_second_is_a_move_not_a_fence(
    maria_backend: Backend,
) -> None:
    """The fence counts rows the UPDATE matched (CLIENT.FOUND_ROWS): a row written again with
    the same offset and time changes nothing, and still is ours, not fenced."""
    store = maria_backend.open()
    store.ensure_schema()
    store.assign(G, [P0], 1.0)
    store.begin()
    assert store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1)], 2.0) == []
    assert store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1)], 2.0) == []
    store.commit()
    assert store.checkpoints(G) == {P0: 42}


def test_mariadb_a_sent_closing_at_the_same_offset_commits(maria_backend: Backend) -> None:
    """The closing block counts matched rows too (``ROW_COUNT()`` under
    ``CLIENT.FOUND_ROWS``): a row sent again at its offset and time commits, not fenced."""
    store = maria_backend.open()
    store.ensure_schema()
    store.assign(G, [P0], 1.0)
    claim = Claim(bytes(range(16)), "t", 0, 41)
    assert store.open_batch(G, [claim], 2.0) == {claim.key}
    assert store.send_close(G, [CheckpointRow("t", 0, 42, 1)], 2.0).result() == []
    store.begin()
    assert store.send_close(G, [CheckpointRow("t", 0, 42, 1)], 2.0).result() == []
    assert store.checkpoints(G) == {P0: 42}


def test_mariadb_a_sent_closing_that_waited_out_a_row_lock_commits_nothing(
    maria_backend: Backend,
) -> None:
    """Another session holds the partition's row (an assignment under way): the closing's
    UPDATE gives up after innodb_lock_wait_timeout, before the block's COMMIT. Its answer
    is StoreUnavailable and the batch is rolled back there, not left open for the next
    batch's START TRANSACTION to commit."""
    store = maria_backend.open()
    store.ensure_schema()
    store.execute("CREATE TABLE scratch (id integer PRIMARY KEY, note text)")
    store.assign(G, [P0], 1.0)
    holder = maria_backend.open().connection
    holder.begin()
    holder.execute("SELECT * FROM consumer_checkpoints FOR UPDATE")
    claim = Claim(bytes(range(16)), "t", 0, 9)
    assert store.open_batch(G, [claim], 2.0) == {claim.key}
    store.execute("INSERT INTO scratch VALUES (1, 'in the batch')")
    closing = store.send_close(G, [CheckpointRow("t", 0, 10, 1)], 2.0)
    with pytest.raises(StoreUnavailable, match="mariadb_lock_wait_timeout_seconds"):
        closing.result()
    holder.rollback()
    assert store.open_batch(G, [claim], 3.0) == {claim.key}, "the first batch's key committed"
    store.rollback()
    assert scratch_ids(maria_backend.open()) == []
    assert store.checkpoints(G) == {P0: None}


def test_mariadb_topic_names_differ_by_case(maria_backend: Backend) -> None:
    """Kafka's topic names are case-sensitive; the store compares them byte for byte."""
    store = maria_backend.open()
    store.ensure_schema()
    assert len(store.assign(G, [("orders", 0), ("Orders", 0)], 1.0)) == 2
    assert store.checkpoints(G) == {("orders", 0): None, ("Orders", 0): None}


def test_mariadb_store_claiming_schema_version_1_is_refused(maria_backend: Backend) -> None:
    store = maria_backend.open()
    store.execute("CREATE TABLE consumer_schema (version integer NOT NULL)")
    store.execute("INSERT INTO consumer_schema VALUES (1)")
    with pytest.raises(StoreSchemaError, match="no MariaDB store ever had it"):
        store.ensure_schema()


def test_mariadb_lock_wait_timeout_is_unavailable_and_names_the_setting(
    maria_backend: Backend,
) -> None:
    """A key held uncommitted by another session: after innodb_lock_wait_timeout (here 2 s)
    the claim is StoreUnavailable (retried), and the message names the setting."""
    store = maria_backend.open()
    store.ensure_schema()
    holder = maria_backend.open()
    holder.begin()
    holder.claim(G, claims("a"), 1.0)
    store.begin()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="mariadb_lock_wait_timeout_seconds"):
        store.claim(G, claims("a"), 1.0)
    assert 1.5 < time.monotonic() - started < 10
    store.rollback()
    holder.rollback()


def test_mariadb_opens_from_a_mysql_url(mariadb_url: str) -> None:
    store = open_store(mariadb_url)
    assert store.dialect == "mariadb"
    store.ping()
    store.close()


def test_mariadb_wrong_password_is_refused_as_schema_error(mariadb_url: str) -> None:
    store = MariaDBStore(with_database(mariadb_url, "checkpoint", password="wrong-Pa55"),
                         connect_timeout=5)
    with pytest.raises(StoreSchemaError, match="refused the connection") as raised:
        store.ensure_schema()
    assert "wrong-Pa55" not in str(raised.value)


def test_mariadb_unknown_database_is_schema_error_not_an_outage(mariadb_url: str) -> None:
    missing = f"no_such_db_{uuid.uuid4().hex[:8]}"
    with pytest.raises(StoreSchemaError) as raised:
        MariaDBStore(with_database(mariadb_url, missing), connect_timeout=5).ping()
    assert missing in str(raised.value)


def test_mariadb_unreachable_is_unavailable_and_the_message_hides_the_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = MariaDBStore(f"mysql://app:s3cret-Pa55@127.0.0.1:{port}/db", connect_timeout=1)
    for call in (store.ensure_schema, store.ping, lambda: store.assign(G, [P0], 1.0)):
        with pytest.raises(StoreUnavailable) as raised:
            call()
        assert str(port) in str(raised.value), "the message says where"
        assert "s3cret-Pa55" not in str(raised.value)


def kill_connection_mid_batch(store: MariaDBStore,
                              admin: pymysql.connections.Connection) -> None:
    """Open a batch with one write and a handler's savepoint, then have the server kill the
    store's connection; the handler's next statement sees the drop."""
    store.execute("CREATE TABLE scratch (id integer PRIMARY KEY, note text)")
    store.begin()
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "in the batch"))
    store.savepoint()
    admin.cursor().execute(f"KILL CONNECTION {store.connection.thread_id()}")
    with pytest.raises(pymysql.err.MySQLError):
        store.execute("INSERT INTO scratch VALUES (%s, %s)", (2, "in the handler"))


def test_mariadb_connection_lost_mid_batch_is_unavailable_and_commits_nothing_outside_it(
    maria_backend: Backend, mariadb_admin: pymysql.connections.Connection
) -> None:
    """After the drop the batch's next store call is StoreUnavailable (the loop retries the
    batch); no statement runs on a silently reopened connection, outside the batch."""
    store = maria_backend.open()
    store.ensure_schema()
    assert isinstance(store, MariaDBStore)
    kill_connection_mid_batch(store, mariadb_admin)
    with pytest.raises(StoreUnavailable):
        store.rollback_to_savepoint()
    with contextlib.suppress(StoreError, pymysql.err.MySQLError):
        store.execute("INSERT INTO scratch VALUES (%s, %s)", (3, "after the drop"))
    store.rollback()
    assert scratch_ids(maria_backend.open()) == [], "a write committed outside its batch"
    store.begin()
    assert store.claim(G, claims("a"), 1.0) == {key("a")}, "the next batch reconnects"
    store.rollback()


def test_mariadb_a_batch_opens_with_its_first_statement_in_one_round_trip(
    maria_backend: Backend,
) -> None:
    """The batch's START TRANSACTION is sent and not waited for: its answer is read after
    the batch's first statement went out, and that statement runs inside the batch."""
    store = maria_backend.open()
    store.ensure_schema()
    assert isinstance(store, MariaDBStore)
    store.execute("CREATE TABLE scratch (id integer PRIMARY KEY, note text)")
    store.begin()
    assert store.connection.unanswered == 1, "the batch waited for START's answer"
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "in the batch"))
    assert store.connection.unanswered == 0
    store.rollback()
    assert scratch_ids(maria_backend.open()) == [], "the first statement ran outside the batch"


def test_mariadb_a_batch_is_open_before_its_first_statement(maria_backend: Backend) -> None:
    """A batch whose handlers ran no statement yet is open: the check after a handler reads
    the sent START's answer, not the status of the statement before it."""
    store = maria_backend.open()
    store.ensure_schema()
    store.begin()
    assert store.transaction_open()
    store.commit()


def test_mariadb_answers_owed_are_read_in_order_and_an_error_among_them_raised(
    maria_backend: Backend,
) -> None:
    """Statements sent without waiting are answered in order before the next one's answer;
    an error among them is raised with it, and the connection stays in step."""
    conn = maria_backend.open().connection
    conn.send("SET @a = 1")
    conn.send("SET @b = 2")
    assert conn.execute("SELECT @a, @b").fetchone() == (1, 2)
    conn.send("SELECT no_such_column")
    with pytest.raises(pymysql.err.MySQLError, match="no_such_column"):
        conn.execute("SET @c = 3")
    assert conn.execute("SELECT @c").fetchone() == (3,), "the next statement still ran"
    conn.send("SET @d = 4")
    conn.ping()  # a command PyMySQL answers itself: the owed answer is read first
    assert conn.unanswered == 0
    assert conn.execute("SELECT @d").fetchone() == (4,)


def test_mariadb_connection_lost_after_a_batch_opens_is_unavailable(
    maria_backend: Backend, mariadb_admin: pymysql.connections.Connection
) -> None:
    """The server drops the connection while the batch's START is owed its answer: the
    batch's first statement is StoreUnavailable, and the next batch connects again."""
    store = maria_backend.open()
    store.ensure_schema()
    assert isinstance(store, MariaDBStore)
    store.begin()
    mariadb_admin.cursor().execute(f"KILL CONNECTION {store.connection.thread_id()}")
    with pytest.raises(StoreUnavailable):
        store.claim(G, claims("a"), 1.0)
    store.rollback()
    store.begin()
    assert store.claim(G, claims("a"), 1.0) == {key("a")}
    store.commit()


def test_mariadb_ddl_in_a_handler_ends_the_batch_and_the_store_says_so(
    maria_backend: Backend,
) -> None:
    """MariaDB commits implicitly on DDL: the batch's claimed keys committed with it. The
    store stops the batch at the handler's savepoint with an error naming the cause, instead
    of carrying on and checkpointing over messages whose keys are spent."""
    store = maria_backend.open()
    store.ensure_schema()
    store.begin()
    assert store.claim(G, claims("a", "b"), 1.0) == {key("a"), key("b")}
    store.savepoint()
    store.execute("CREATE TABLE IF NOT EXISTS made_in_a_handler (id integer)")
    with pytest.raises(StoreError, match="commits implicitly on DDL"):
        store.release_savepoint()
    store.rollback()
