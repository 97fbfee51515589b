"""The store contract on PostgreSQL (a real server), and what only PostgreSQL does.

The contract itself is :class:`tests.support.store_contract.StoreContract`; its SQLite half runs
with the unit tests (``tests/unit/store/test_sqlite.py``). Each test gets a fresh PostgreSQL
schema that the store's connections reach through ``options=-csearch_path=<schema>``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from consumer.errors import StoreError, StoreSchemaError, StoreUnavailable
from consumer.store import Store
from consumer.store.key_generations import GENERATION_KEYS
from consumer.store.postgres import PostgresStore
from tests.support.store_contract import (
    P0,
    Backend,
    G,
    MigratesFromVersion1,
    MigratesFromVersion2,
    StoreContract,
    claims,
    key,
    scratch_ids,
    stored_keys,
)
from tests.support.stores import install_btree_gist

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def postgres_admin(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection for creating schemas and roles."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        yield conn


@contextlib.contextmanager
def postgres_backend(dsn: str, admin: psycopg.Connection[Any], *,
                     generation_keys: int = GENERATION_KEYS) -> Iterator[Backend]:
    """A fresh schema on the real server; every store opened on it sees only that schema."""
    schema = f"contract_{uuid.uuid4().hex[:12]}"
    install_btree_gist(admin)
    admin.execute(f"CREATE SCHEMA {schema}")
    isolated = make_conninfo(dsn, options=f"-csearch_path={schema}")
    backend = Backend("postgresql", lambda: PostgresStore(
        isolated, connect_timeout=5, generation_keys=generation_keys))
    try:
        yield backend
    finally:
        backend.close_all()
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def pg_backend(postgres_dsn: str, postgres_admin: psycopg.Connection[Any]) -> Iterator[Backend]:
    with postgres_backend(postgres_dsn, postgres_admin) as backend:
        yield backend


class TestPostgresStoreContract(StoreContract, MigratesFromVersion1, MigratesFromVersion2):
    """The store contract on a real PostgreSQL server, a fresh schema per test."""

    @pytest.fixture
    def backend(self, pg_backend: Backend) -> Backend:
        return pg_backend


class TestPostgresStoreContractInSmallGenerations(StoreContract):
    """The store contract with a generation sealed every two keys: every claim meets sealed
    generations, and most batches seal one."""

    @pytest.fixture
    def backend(self, postgres_dsn: str,
                postgres_admin: psycopg.Connection[Any]) -> Iterator[Backend]:
        with postgres_backend(postgres_dsn, postgres_admin, generation_keys=2) as backend:
            yield backend


# --- PostgreSQL only -------------------------------------------------------------------------


def test_postgres_unknown_role_is_refused_as_schema_error(postgres_dsn: str) -> None:
    """Refused credentials are not an outage: retrying cannot help, so it is not
    StoreUnavailable. (The local test server trusts 127.0.0.1, so an unknown role is how
    credentials get refused there; see the wrong-password test.)"""
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    dsn = make_conninfo(postgres_dsn, user=role, password="Pa55-of-nobody")
    with pytest.raises(StoreSchemaError, match="refused the connection") as raised:
        PostgresStore(dsn, connect_timeout=5).ensure_schema()
    assert role in str(raised.value), "the message says which role"
    assert "Pa55-of-nobody" not in str(raised.value)


def test_postgres_wrong_password_is_refused_as_schema_error(
    postgres_dsn: str, postgres_admin: psycopg.Connection[Any]
) -> None:
    role = f"pw_{uuid.uuid4().hex[:8]}"
    admin = postgres_admin
    admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right-password'")
    try:
        wrong = make_conninfo(postgres_dsn, user=role, password="wrong-password")
        with pytest.raises(psycopg.OperationalError):  # The server under test checks passwords.
            psycopg.connect(wrong, connect_timeout=5).close()
        with pytest.raises(StoreSchemaError, match="refused the connection") as raised:
            PostgresStore(wrong, connect_timeout=5).ensure_schema()
        assert "wrong-password" not in str(raised.value)
    finally:
        admin.execute(f"DROP ROLE {role}")


def test_postgres_unknown_database_is_schema_error_not_an_outage(postgres_dsn: str) -> None:
    """A misspelt database name never heals by retrying; treating it as StoreUnavailable makes
    the consumer retry forever instead of exiting with a configuration problem."""
    missing = f"no_such_db_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(make_conninfo(postgres_dsn, dbname=missing), connect_timeout=5)
    with pytest.raises(StoreSchemaError) as raised:
        store.ensure_schema()
    assert missing in str(raised.value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_postgres_unreachable_is_unavailable_and_the_message_hides_the_password(
    postgres_dsn: str,
) -> None:
    port = free_port()
    dsn = make_conninfo(postgres_dsn, port=str(port), password="s3cret-Pa55")
    store = PostgresStore(dsn, connect_timeout=1)
    for call in (store.ensure_schema, store.ping, lambda: store.assign(G, [P0], 1.0)):
        with pytest.raises(StoreUnavailable) as raised:
            call()
        assert str(port) in str(raised.value), "the message says where"
        assert "s3cret-Pa55" not in str(raised.value)
        assert "s3cret-Pa55" not in repr(raised.value.__cause__)


def test_postgres_url_dsn_password_is_hidden_too(postgres_dsn: str) -> None:
    port = free_port()
    store = PostgresStore(f"postgresql://app:s3cret-Pa55@127.0.0.1:{port}/db", connect_timeout=1)
    with pytest.raises(StoreUnavailable) as raised:
        store.ping()
    assert "s3cret-Pa55" not in str(raised.value)


def drop_connection_mid_batch(store: Store, admin: psycopg.Connection[Any]) -> None:
    """Open a batch with one write and a handler's savepoint, then have the server kill the
    store's connection; the handler's next statement sees the drop."""
    store.execute("CREATE TABLE scratch (id integer PRIMARY KEY, note text)")
    store.begin()
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "in the batch"))
    store.savepoint()
    admin.execute("SELECT pg_terminate_backend(%s)", (store.connection.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        store.execute("INSERT INTO scratch VALUES (%s, %s)", (2, "in the handler"))


def test_postgres_connection_lost_mid_batch_is_unavailable_for_the_rest_of_the_batch(
    pg_backend: Backend, postgres_admin: psycopg.Connection[Any]
) -> None:
    """After the drop, the batch's next store call (StoreCheckpoint rolls back the handler's
    savepoint) raises StoreUnavailable, so the loop pauses and retries the batch; not a
    StoreError from a fresh connection that has no savepoint, which stops the consumer."""
    store = pg_backend.open()
    store.ensure_schema()
    drop_connection_mid_batch(store, postgres_admin)
    with pytest.raises(StoreUnavailable):
        store.rollback_to_savepoint()


def test_postgres_connection_lost_mid_batch_never_commits_writes_outside_it(
    pg_backend: Backend, postgres_admin: psycopg.Connection[Any]
) -> None:
    """Statements after the drop must not run on a silently reopened connection: it is in
    autocommit, so their writes would commit at once, outside the batch that rolls back."""
    store = pg_backend.open()
    store.ensure_schema()
    drop_connection_mid_batch(store, postgres_admin)
    with contextlib.suppress(StoreError, psycopg.Error):
        store.execute("INSERT INTO scratch VALUES (%s, %s)", (3, "after the drop"))
    store.rollback()
    assert scratch_ids(pg_backend.open()) == [], "a write committed outside its batch"


def test_postgres_a_claim_waits_for_a_key_another_batch_holds_then_skips_it(
    pg_backend: Backend, postgres_admin: psycopg.Connection[Any]
) -> None:
    """Two members claim the same key (a zombie and the partition's new owner): the second
    claim waits for the first batch, and once that commits finds the key processed and
    claims only its other keys, in a transaction that still commits."""
    first, second = pg_backend.open(), pg_backend.open()
    first.ensure_schema()
    first.begin()
    assert first.claim(G, claims("a"), 1.0) == {key("a")}
    pid = second.connection.info.backend_pid  # connected before the claim starts
    answer: list[set[bytes]] = []

    def claim_second() -> None:
        second.begin()
        answer.append(second.claim(G, claims("a", "b"), 2.0))
        second.commit()

    worker = threading.Thread(target=claim_second, daemon=True)
    worker.start()
    deadline = time.monotonic() + 10
    while not postgres_admin.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
            (pid,)).fetchone():
        assert time.monotonic() < deadline, "the second claim never waited for the first"
        assert worker.is_alive(), f"the second claim did not wait: {answer}"
        time.sleep(0.01)
    first.commit()
    worker.join(10)
    assert answer == [{key("b")}]
    assert stored_keys(first) == [key("a"), key("b")]
