"""Which errors a handler raises are the PostgreSQL store's, not its message's
(``consumer.store.postgres.is_transient``): the whole transaction-rollback class (a deadlock, a
serialization failure), a lock or statement timeout, a lost or shut-down connection. psycopg 3
does not derive DeadlockDetected nor SerializationFailure from TransactionRollback, so the
classes alone miss them: the SQLSTATE decides."""

from __future__ import annotations

import psycopg
import pytest

from consumer.store.postgres import is_transient


@pytest.mark.parametrize("error", [
    psycopg.errors.DeadlockDetected("deadlock detected"),
    psycopg.errors.SerializationFailure("could not serialize access"),
    psycopg.errors.TransactionRollback("transaction rollback"),
    psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
    psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    psycopg.OperationalError("server closed the connection unexpectedly"),
], ids=type)
def test_store_errors_are_transient(error: psycopg.Error) -> None:
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    psycopg.errors.UniqueViolation("duplicate key value"),
    psycopg.errors.CheckViolation("violates check constraint"),
    psycopg.errors.UndefinedTable("relation does not exist"),
    ValueError("bad message"),
], ids=type)
def test_a_messages_own_failures_are_not_transient(error: BaseException) -> None:
    assert not is_transient(error)
