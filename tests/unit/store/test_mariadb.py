"""What the MariaDB store decides without a server: which errors a handler raises are the
store's, not its message's (``consumer.store.mariadb_session.is_transient``: InnoDB's deadlock and
lock wait timeout, a lost or killed connection), and how a ``mysql://`` URL opens it. The
store against a real server: tests/integration/test_store_contract_mariadb.py."""

from __future__ import annotations

import pymysql
import pytest

from consumer.settings import StoreSettings
from consumer.store import open_configured
from consumer.store.mariadb import MariaDBStore
from consumer.store.mariadb_session import (
    COMMIT,
    ROLLBACK,
    START,
    is_transient,
    transaction_statement,
)


@pytest.mark.parametrize("error", [
    pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"),
    pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"),
    pymysql.err.OperationalError(2006, "MySQL server has gone away"),
    pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"),
    pymysql.err.OperationalError(1927, "Connection was killed"),
    pymysql.err.OperationalError(4031, "The client was disconnected by the server"),
    pymysql.err.InterfaceError(0, ""),
], ids=lambda e: f"{type(e).__name__}-{e.args[0]}")
def test_store_errors_are_transient(error: pymysql.err.MySQLError) -> None:
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    pymysql.err.IntegrityError(1062, "Duplicate entry"),
    pymysql.err.ProgrammingError(1146, "Table doesn't exist"),
    pymysql.err.ProgrammingError(1064, "You have an error in your SQL syntax"),
    pymysql.err.DataError(1406, "Data too long for column"),
    ValueError("bad message"),
], ids=lambda e: f"{type(e).__name__}-{e.args[0]}")
def test_a_messages_own_failures_are_not_transient(error: BaseException) -> None:
    assert not is_transient(error)


def test_a_mysql_url_opens_the_mariadb_store_with_the_configured_waits() -> None:
    """Nothing connects yet: an unreachable server is retried by the loop, not fatal here."""
    settings = StoreSettings(url="mysql://app:pw@db.example:3307/ledger",
                             mariadb_lock_wait_timeout_seconds=3,
                             mariadb_idle_transaction_timeout_seconds=30)
    store = open_configured(settings)
    assert isinstance(store, MariaDBStore)
    assert store.dialect == "mariadb"
    assert (store._lock_wait, store._idle) == (3, 30)
    assert store._where == "mysql://app@db.example:3307/ledger", "no password in messages"


@pytest.mark.parametrize(("sql", "statement"), [
    ("COMMIT", "COMMIT"),
    ("  commit work;", "COMMIT"),
    ("ROLLBACK", "ROLLBACK"),
    ("rollback work", "ROLLBACK"),
    ("BEGIN", "BEGIN"),
    ("begin work", "BEGIN"),
    ("START TRANSACTION", "START TRANSACTION"),
    ("start  transaction read write", "START TRANSACTION"),
    ("/* a comment */ COMMIT", "COMMIT"),
    ("-- a comment\n# another\n  Rollback", "ROLLBACK"),
    ("/* two\nlines */ begin", "BEGIN"),
    # not transaction statements: a savepoint's, a compound block, lookalikes, the store's own
    ("ROLLBACK TO SAVEPOINT handler", None),
    ("rollback work to savepoint handler", None),
    ("BEGIN NOT ATOMIC SELECT 1; END", None),
    ("SELECT 'COMMIT'", None),
    ("COMMITTED_ROWS", None),
    ("INSERT INTO commits VALUES (1)", None),
    ("/* COMMIT */ SELECT 1", None),
    ("-- COMMIT\nSELECT 1", None),
    (COMMIT, None),
    (ROLLBACK, None),
    (START, None),
])
def test_a_handlers_transaction_statements_are_told_by_their_first_words(
        sql: str, statement: str | None) -> None:
    """What the connection refuses while a batch is open (the real refusal, end to end:
    tests/integration/test_refused_transaction_statements.py)."""
    assert transaction_statement(sql) == statement
