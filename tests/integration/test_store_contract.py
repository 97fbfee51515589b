"""The store contract: every backend (SQLite file, real PostgreSQL) behaves the same.

Each test gets a fresh database: a SQLite file in tmp_path, or a fresh PostgreSQL schema that
the store's connections reach through ``options=-csearch_path=<schema>``.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from consumer.dedup import key_function
from consumer.errors import OffsetWentBackwards, StoreError, StoreSchemaError, StoreUnavailable
from consumer.message import Message
from consumer.store import CheckpointRow, Claim, Position, SchemaUpgrade, Store
from consumer.store.base import SCHEMA_VERSION
from consumer.store.postgres import PostgresStore
from consumer.store.sqlite import SQLiteStore
from tests.support.store_v1 import SCHEMA_V1

pytestmark = pytest.mark.integration

G = "group-a"
P0 = ("t", 0)
P1 = ("t", 1)


@dataclass
class Backend:
    """One test's database; ``open()`` connects another store to it (schema not ensured)."""

    name: str
    connect: Callable[[], Store]
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        store = self.connect()
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(scope="session")
def postgres_admin(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection for creating schemas and roles."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        yield conn


@contextlib.contextmanager
def postgres_backend(dsn: str, admin: psycopg.Connection[Any]) -> Iterator[Backend]:
    """A fresh schema on the real server; every store opened on it sees only that schema."""
    schema = f"contract_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    isolated = make_conninfo(dsn, options=f"-csearch_path={schema}")
    backend = Backend("postgresql", lambda: PostgresStore(isolated, connect_timeout=5))
    try:
        yield backend
    finally:
        backend.close_all()
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = str(tmp_path / "store.db")
        backend = Backend("sqlite", lambda: SQLiteStore(path))
        yield backend
        backend.close_all()
        return
    with postgres_backend(request.getfixturevalue("postgres_dsn"),
                          request.getfixturevalue("postgres_admin")) as backend:
        yield backend


@pytest.fixture
def pg_backend(postgres_dsn: str, postgres_admin: psycopg.Connection[Any]) -> Iterator[Backend]:
    with postgres_backend(postgres_dsn, postgres_admin) as backend:
        yield backend


@pytest.fixture
def store(backend: Backend) -> Store:
    """A store with our tables, and a ``scratch`` table standing in for a handler's own."""
    store = backend.open()
    store.ensure_schema()
    store.execute("CREATE TABLE scratch (id integer PRIMARY KEY, note text)")
    return store


def key(name: str) -> bytes:
    return name.encode().ljust(16, b".")


def claims(*names: str, partition: int = 0) -> list[Claim]:
    return [Claim(key(n), "t", partition, offset) for offset, n in enumerate(names)]


def scratch_ids(store: Store) -> list[int]:
    return [row[0] for row in store.execute("SELECT id FROM scratch ORDER BY id").fetchall()]


def stored_keys(store: Store, group: str = G) -> list[bytes]:
    rows = store.execute(
        "SELECT key FROM consumer_processed_keys WHERE group_id = %s ORDER BY key", (group,)
    ).fetchall()
    return [bytes(row[0]) for row in rows]


# --- schema ------------------------------------------------------------------------------------


def test_before_ensure_schema_our_tables_are_missing(backend: Backend) -> None:
    """A store call on a database without our tables says so (StoreSchemaError), not worse."""
    with pytest.raises(StoreSchemaError, match="store init"):
        backend.open().checkpoints(G)


def test_ensure_schema_creates_our_tables_and_records_the_version(backend: Backend) -> None:
    store = backend.open()
    store.ensure_schema()
    assert store.checkpoints(G) == {}
    assert stored_keys(store) == []
    assert store.execute("SELECT version FROM consumer_schema").fetchall() == [(SCHEMA_VERSION,)]


def test_ensure_schema_is_idempotent_and_keeps_data(backend: Backend) -> None:
    """Running it again (this process or another) neither fails nor loses rows."""
    store = backend.open()
    store.ensure_schema()
    store.assign(G, [P0], 1.0)
    store.ensure_schema()
    backend.open().ensure_schema()
    assert store.execute("SELECT version FROM consumer_schema").fetchall() == [(SCHEMA_VERSION,)]
    assert store.checkpoints(G) == {P0: None}


def test_other_schema_version_raises_schema_error_naming_both_versions(backend: Backend) -> None:
    store = backend.open()
    store.execute("CREATE TABLE consumer_schema (version integer NOT NULL)")
    store.execute("INSERT INTO consumer_schema VALUES (%s)", (SCHEMA_VERSION + 98,))
    with pytest.raises(StoreSchemaError) as raised:
        store.ensure_schema()
    message = str(raised.value)
    assert f"version {SCHEMA_VERSION + 98}" in message
    assert f"needs {SCHEMA_VERSION}" in message
    assert store.execute("SELECT version FROM consumer_schema").fetchall() == [
        (SCHEMA_VERSION + 98,)
    ], "a refused schema is left as it was"


def _v1_store(backend: Backend) -> Store:
    """A store as version 1 left it: its tables (not ours of today), rows inserted below."""
    store = backend.open()
    for statement in SCHEMA_V1[backend.name]:
        store.execute(statement)
    return store


def _event(topic: str, event_id: bytes) -> Message:
    return Message(topic, 0, 3, b"{}", headers=[("idempotency-key", event_id)], timestamp=0.0)


def _insert_v1_key(store: Store, group: str, message: Message) -> bytes:
    """The key version 1 claimed for the message: the digest, not scoped to its topic."""
    key = key_function("header:idempotency-key", {}, "group")(message)
    store.execute(
        'INSERT INTO consumer_processed_keys (group_id, key, topic, partition, "offset", '
        "processed_at) VALUES (%s, %s, %s, 0, 3, 1.0)", (group, key, message.topic))
    return key


def test_migration_from_version_1_scopes_one_groups_keys_as_the_code_computes_them(
    backend: Backend,
) -> None:
    """A version-1 store: group-a's orders key is rewritten to exactly the topic-scoped key the
    key function computes now, so the redelivered event is still skipped; its payments key is
    kept (that route is dedup_scope: group); group-b's key waits for group-b's consumer. The
    checkpoint row keeps its offset and gains an empty topic id. Running it again is a no-op."""
    old = _v1_store(backend)
    order, payment = _event("orders", b"evt-1"), _event("payments", b"pay-1")
    _insert_v1_key(old, G, order)
    _insert_v1_key(old, G, payment)
    b_key = _insert_v1_key(old, "group-b", order)
    old.execute("INSERT INTO consumer_checkpoints VALUES (%s, 'orders', 0, 4, 3, 1.0)", (G,))

    store = backend.open()
    upgrade = store.ensure_schema(G, group_scoped_topics={"payments"})
    assert upgrade == SchemaUpgrade(1, SCHEMA_VERSION, G, keys_scoped=1, keys_kept=1,
                                    groups_waiting=1)
    assert "from schema version 1 to 2" in upgrade.describe("here")
    assert store.execute("SELECT version FROM consumer_schema").fetchall() == [(2,)]
    by_topic = key_function("header:idempotency-key", {})
    by_group = key_function("header:idempotency-key", {}, "group")
    store.begin()
    assert store.claim(G, [Claim(by_topic(order), "orders", 0, 9),
                           Claim(by_group(payment), "payments", 0, 9)], 2.0) == set()
    store.rollback()
    assert stored_keys(store, "group-b") == [b_key], "another group's keys are its own"
    assert store.execute("SELECT topic_id, next_offset, epoch FROM consumer_checkpoints"
                         ).fetchall() == [(None, 4, 3)]
    assert store.ensure_schema(G, group_scoped_topics={"payments"}) is None

    other = backend.open()
    assert other.ensure_schema("group-b") == SchemaUpgrade(1, SCHEMA_VERSION, "group-b", 1, 0, 0)
    assert stored_keys(other, "group-b") == [by_topic(order)]


def test_a_failing_migration_leaves_version_1_untouched(backend: Backend) -> None:
    """The migration is one transaction: when a step fails (here a table of the handlers that
    happens to bear our new table's name), nothing of it stays and the store is still v1."""
    old = _v1_store(backend)
    _insert_v1_key(old, G, _event("orders", b"evt-1"))
    old.execute("CREATE TABLE consumer_keys_to_scope (note text)")
    with pytest.raises(StoreError):
        backend.open().ensure_schema(G)
    assert old.execute("SELECT version FROM consumer_schema").fetchall() == [(1,)]
    with pytest.raises((sqlite3.OperationalError, psycopg.errors.UndefinedColumn)):
        old.execute("SELECT topic_id FROM consumer_checkpoints")


def test_a_fresh_store_needs_no_migration(backend: Backend) -> None:
    assert backend.open().ensure_schema(G, group_scoped_topics={"t"}) is None


# --- assignment and checkpoint rows ---------------------------------------------------------


def test_assign_creates_rows_at_epoch_one_without_an_offset(store: Store) -> None:
    assert store.assign(G, [P0, P1], 1.0) == {P0: Position(None, 1), P1: Position(None, 1)}
    assert store.checkpoints(G) == {P0: None, P1: None}


def test_assign_again_bumps_the_epoch_and_returns_the_checkpoint(store: Store) -> None:
    store.assign(G, [P0, P1], 1.0)
    store.begin()
    assert store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1)], 2.0) == []
    store.commit()
    assert store.assign(G, [P0], 3.0) == {P0: Position(42, 2)}
    assert store.assign(G, [P0, P1], 4.0) == {P0: Position(42, 3), P1: Position(None, 2)}


def test_write_checkpoints_moves_only_rows_whose_epoch_is_ours(backend: Backend,
                                                               store: Store) -> None:
    """P1 was assigned again by a newer owner: its row stays, and it is reported fenced."""
    store.assign(G, [P0, P1], 1.0)
    backend.open().assign(G, [P1], 2.0)
    store.begin()
    fenced = store.write_checkpoints(
        G, [CheckpointRow("t", 0, 10, 1), CheckpointRow("t", 1, 20, 1)], 3.0
    )
    store.commit()
    assert fenced == [P1]
    assert store.checkpoints(G) == {P0: 10, P1: None}


def test_write_checkpoints_fences_a_partition_without_a_row(store: Store) -> None:
    store.assign(G, [P0], 1.0)
    store.begin()
    fenced = store.write_checkpoints(
        G, [CheckpointRow("t", 0, 5, 1), CheckpointRow("t", 7, 5, 1)], 2.0
    )
    store.commit()
    assert fenced == [("t", 7)]
    assert store.checkpoints(G) == {P0: 5}


def test_write_checkpoints_of_another_group_fences(store: Store) -> None:
    store.assign(G, [P0], 1.0)
    store.begin()
    assert store.write_checkpoints("group-b", [CheckpointRow("t", 0, 5, 1)], 2.0) == [P0]
    store.rollback()


def test_write_checkpoints_refuses_to_move_a_row_backwards(store: Store) -> None:
    """Our epoch, but an offset below the row's: the UPDATE itself refuses it, and the store
    raises OffsetWentBackwards (not Fenced) naming both offsets; the row keeps its offset."""
    store.assign(G, [P0, P1], 1.0)
    store.begin()
    store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1), CheckpointRow("t", 1, 7, 1)], 2.0)
    store.commit()
    store.begin()
    with pytest.raises(OffsetWentBackwards) as raised:
        store.write_checkpoints(
            G, [CheckpointRow("t", 1, 9, 1), CheckpointRow("t", 0, 40, 1)], 3.0
        )
    store.rollback()
    assert (raised.value.topic, raised.value.partition) == P0
    assert (raised.value.old, raised.value.new) == (42, 40)
    assert store.checkpoints(G) == {P0: 42, P1: 7}


def test_write_checkpoints_at_the_same_offset_is_no_move_and_no_error(store: Store) -> None:
    store.assign(G, [P0], 1.0)
    store.begin()
    assert store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1)], 2.0) == []
    assert store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1)], 3.0) == []
    store.commit()
    assert store.checkpoints(G) == {P0: 42}


def test_a_fenced_row_below_ours_is_reported_fenced_not_backwards(backend: Backend,
                                                                 store: Store) -> None:
    """A newer owner took P0 (epoch 2): our lower offset is a zombie's write, so Fenced wins."""
    store.assign(G, [P0], 1.0)
    store.begin()
    store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1)], 2.0)
    store.commit()
    backend.open().assign(G, [P0], 3.0)
    store.begin()
    assert store.write_checkpoints(G, [CheckpointRow("t", 0, 10, 1)], 4.0) == [P0]
    store.rollback()


def test_replay_moves_a_row_backwards_on_purpose_and_fences_its_owner(store: Store) -> None:
    store.assign(G, [P0], 1.0)
    store.begin()
    store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1)], 2.0)
    store.commit()
    store.replay(G, {P0: 10}, forget_keys=False, now=3.0)
    assert store.checkpoints(G) == {P0: 10}
    store.begin()
    assert store.write_checkpoints(G, [CheckpointRow("t", 0, 11, 1)], 4.0) == [P0]
    store.rollback()
    assert store.assign(G, [P0], 5.0) == {P0: Position(10, 3)}
    store.begin()
    assert store.write_checkpoints(G, [CheckpointRow("t", 0, 11, 3)], 6.0) == []
    store.commit()
    assert store.checkpoints(G) == {P0: 11}


def test_checkpoints_lists_the_rows_of_one_group(store: Store) -> None:
    store.assign(G, [P0, P1, ("u", 3)], 1.0)
    store.assign("group-b", [P0], 1.0)
    store.begin()
    store.write_checkpoints(G, [CheckpointRow("u", 3, 9, 1)], 2.0)
    store.write_checkpoints("group-b", [CheckpointRow("t", 0, 77, 1)], 2.0)
    store.commit()
    assert store.checkpoints(G) == {P0: None, P1: None, ("u", 3): 9}
    assert store.checkpoints("group-b") == {P0: 77}
    assert store.checkpoints("nobody") == {}


# --- processed keys --------------------------------------------------------------------------


def test_claim_returns_only_keys_not_claimed_before(store: Store) -> None:
    store.begin()
    assert store.claim(G, claims("a", "b"), 1.0) == {key("a"), key("b")}
    assert store.claim(G, claims("b", "c", "a", "d"), 1.0) == {key("c"), key("d")}
    store.commit()
    store.begin()
    assert store.claim(G, claims("a", "e"), 2.0) == {key("e")}
    store.commit()


def test_key_repeated_within_one_claim_is_new_once_and_stored_once(store: Store) -> None:
    store.begin()
    assert store.claim(G, claims("a", "x", "a", "a"), 1.0) == {key("a"), key("x")}
    store.commit()
    assert stored_keys(store) == [key("a"), key("x")]


def test_claim_of_nothing_is_nothing(store: Store) -> None:
    store.begin()
    assert store.claim(G, [], 1.0) == set()
    store.commit()


def test_keys_are_claimed_per_group(store: Store) -> None:
    store.begin()
    assert store.claim(G, claims("a"), 1.0) == {key("a")}
    assert store.claim("group-b", claims("a"), 1.0) == {key("a")}
    assert store.claim("group-b", claims("a"), 1.0) == set()
    store.commit()


def test_unclaim_forgets_keys_of_that_group_only(store: Store) -> None:
    store.begin()
    store.claim(G, claims("a", "b"), 1.0)
    store.claim("group-b", claims("a"), 1.0)
    store.unclaim(G, [key("a")])
    assert store.claim(G, claims("a", "b"), 1.0) == {key("a")}
    assert store.claim("group-b", claims("a"), 1.0) == set()
    store.unclaim(G, [])
    store.commit()


def test_purge_deletes_only_keys_older_than_the_cutoff_at_most_limit_per_call(
    backend: Backend, store: Store,
) -> None:
    store.begin()
    store.claim(G, claims("old1", "old2", "old3"), 100.0)
    store.claim("group-b", claims("old4"), 100.0)
    store.claim(G, claims("new1", "new2"), 200.0)
    store.claim(G, claims("edge"), 150.0)
    store.claim(G, claims("old5", partition=1), 100.0)
    store.commit()
    assert store.purge_processed_keys(G, 150.0, 3) == 3
    assert store.purge_processed_keys(G, 150.0, 3) == 1
    assert store.purge_processed_keys(G, 150.0, 3) == 0
    assert stored_keys(store) == sorted([key("edge"), key("new1"), key("new2")])
    assert stored_keys(store, "group-b") == [key("old4")], "another group's key is not ours"
    assert stored_keys(backend.open()) == stored_keys(store), "purge commits on its own"


def test_purge_of_one_group_leaves_another_groups_keys(backend: Backend, store: Store) -> None:
    """Two groups share one database: group-b's purge (its own retention) deletes only its
    keys; group-a's keys of the same age stay, however short group-b's retention is."""
    store.begin()
    store.claim(G, claims("a1", "a2"), 100.0)
    store.claim("group-b", claims("b1", "b2"), 100.0)
    store.commit()
    assert store.purge_processed_keys("group-b", 150.0, 10) == 2
    assert stored_keys(store) == sorted([key("a1"), key("a2")])
    assert stored_keys(store, "group-b") == []
    assert store.purge_processed_keys(G, 150.0, 10) == 2
    assert stored_keys(store) == []


# --- transactions ----------------------------------------------------------------------------


def test_rollback_discards_claims_checkpoint_rows_and_writes(store: Store) -> None:
    store.assign(G, [P0], 1.0)
    store.begin()
    store.claim(G, claims("a"), 2.0)
    store.write_checkpoints(G, [CheckpointRow("t", 0, 5, 1)], 2.0)
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "effect"))
    store.rollback()
    assert store.checkpoints(G) == {P0: None}
    assert stored_keys(store) == []
    assert scratch_ids(store) == []
    store.begin()
    assert store.claim(G, claims("a"), 3.0) == {key("a")}
    store.rollback()


def test_rollback_outside_a_transaction_is_harmless(store: Store) -> None:
    store.rollback()
    store.begin()
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "kept"))
    store.commit()
    store.rollback()
    assert scratch_ids(store) == [1]


def test_savepoint_rollback_discards_only_the_writes_inside_it(store: Store) -> None:
    store.begin()
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "before"))
    store.claim(G, claims("a"), 1.0)
    store.savepoint()
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (2, "rolled back"))
    store.claim(G, claims("b"), 1.0)
    store.rollback_to_savepoint()
    store.savepoint()
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (3, "released"))
    store.release_savepoint()
    store.commit()
    assert scratch_ids(store) == [1, 3]
    assert stored_keys(store) == [key("a")]


def test_savepoint_rollback_recovers_the_transaction_after_a_failed_statement(
    store: Store,
) -> None:
    """A handler whose SQL fails (here a duplicate key) rolls back alone; the batch goes on."""
    store.begin()
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "first"))
    store.savepoint()
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):
        store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "duplicate"))
    store.rollback_to_savepoint()
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (2, "after"))
    store.commit()
    assert scratch_ids(store) == [1, 2]


def test_uncommitted_work_is_invisible_to_a_second_connection(backend: Backend,
                                                              store: Store) -> None:
    store.assign(G, [P0], 1.0)
    other = backend.open()
    store.begin()
    store.claim(G, claims("a"), 2.0)
    store.write_checkpoints(G, [CheckpointRow("t", 0, 5, 1)], 2.0)
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "effect"))
    assert other.checkpoints(G) == {P0: None}
    assert stored_keys(other) == []
    assert scratch_ids(other) == []
    store.rollback()


def test_commit_makes_keys_rows_and_writes_visible_to_a_second_connection(
    backend: Backend, store: Store
) -> None:
    store.assign(G, [P0], 1.0)
    store.begin()
    store.claim(G, claims("a"), 2.0)
    store.write_checkpoints(G, [CheckpointRow("t", 0, 5, 1)], 2.0)
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "effect"))
    store.commit()

    other = backend.open()
    assert other.checkpoints(G) == {P0: 5}
    assert stored_keys(other) == [key("a")]
    assert scratch_ids(other) == [1]
    other.begin()
    assert other.claim(G, claims("a"), 3.0) == set()
    other.rollback()


# --- for handlers ---------------------------------------------------------------------------


def test_execute_takes_percent_s_placeholders(store: Store) -> None:
    store.execute("INSERT INTO scratch (id, note) VALUES (%s, %s)", (7, "it's 100%"))
    store.execute("INSERT INTO scratch (id, note) VALUES (%s, %s)", [8, None])
    rows = store.execute("SELECT id, note FROM scratch WHERE id >= %s ORDER BY id", (7,))
    assert rows.fetchall() == [(7, "it's 100%"), (8, None)]


def test_connection_is_the_one_execute_uses(store: Store) -> None:
    """``context.db`` and ``context.execute`` write in the same transaction."""
    store.begin()
    store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "via execute"))
    count = store.connection.execute("SELECT count(*) FROM scratch").fetchone()[0]
    store.rollback()
    assert count == 1
    assert scratch_ids(store) == []


def test_ping_answers_on_a_healthy_store(store: Store) -> None:
    """ping() raises StoreUnavailable when the database does not answer; a healthy one passes
    and stays usable afterwards."""
    assert store.ping() is None  # type: ignore[func-returns-value]
    assert store.checkpoints("nobody") == {}


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
    store.close()
    check = sqlite3.connect(str(tmp_path / "durable.db"))
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal", "WAL persists in the file"
    check.close()
