"""The store contract: what every backend (a SQLite file, a real PostgreSQL or MariaDB server)
does alike.

:class:`StoreContract` holds the tests; each backend's test module subclasses it and provides a
``backend`` fixture giving each test a fresh database: ``tests/unit/store/test_sqlite.py`` (SQLite
files in tmp_path, run with the unit tests), ``tests/integration/test_store_contract.py``
(a fresh PostgreSQL schema per test, reached through ``options=-csearch_path=<schema>``) and
``tests/integration/test_store_contract_mariadb.py`` (a fresh MariaDB database per test).
Column names that a dialect reserves (``key``, ``partition`` on MariaDB) are double-quoted,
which every store reads as a name.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import psycopg
import pymysql
import pytest

from consumer.dedup import KeyFormat, key_function
from consumer.errors import (
    OffsetWentBackwards,
    StoreError,
    StoreSchemaError,
    TransactionEndRefused,
)
from consumer.message import TP, Message
from consumer.store import CheckpointRow, Claim, ClaimBatch, Position, SchemaUpgrade, Store
from consumer.store.claim_batch import EveryKey
from tests.support.store_v1 import SCHEMA_V1
from tests.support.store_v2 import SCHEMA_V2

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


def key(name: str) -> bytes:
    return name.encode().ljust(16, b".")


def claims(*names: str, partition: int = 0) -> list[Claim]:
    return [Claim(key(n), "t", partition, offset) for offset, n in enumerate(names)]


#: The topic id the stretches below are named after.
ORDERS_ID = {"orders": "id-1"}


def stretch_batch(*stretches: tuple[int, int, int]) -> tuple[ClaimBatch, list[Claim]]:
    """Messages of topic ``orders`` at offsets ``first`` to ``end`` - 1 of ``partition``, for
    each (partition, first, end), claimed as the checkpoint does: a :class:`ClaimBatch` from
    the key function's stretches; and the same claims one per message."""
    keys = key_function("coordinates", ORDERS_ID, key_format=KeyFormat(ordered_coordinates=True))
    messages = [Message("orders", partition, offset, b"{}", timestamp=0.0)
                for partition, first, end in stretches for offset in range(first, end)]
    found = keys.stretches(messages)
    assert found is not None
    return ClaimBatch(found), [Claim(keys(m), m.topic, m.partition, m.offset) for m in messages]


def assigned_rows(positions: Mapping[TP, Position]) -> dict[TP, tuple[int | None, int]]:
    """Each position's row: offset and epoch. Where the store reads from which offset it
    holds no key of the partition, that is at or above the row's offset."""
    for position in positions.values():
        assert position.new_keys_from is None \
            or position.new_keys_from >= (position.next_offset or 0), position
    return {tp: (p.next_offset, p.epoch) for tp, p in positions.items()}


def scratch_ids(store: Store) -> list[int]:
    return [row[0] for row in store.execute("SELECT id FROM scratch ORDER BY id").fetchall()]


def stored_keys(store: Store, group: str = G) -> list[bytes]:
    rows = store.execute(
        'SELECT "key" FROM consumer_processed_keys WHERE group_id = %s ORDER BY "key"', (group,)
    ).fetchall()
    return [bytes(row[0]) for row in rows]


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


class StoreContract:
    """Every store backend passes these. Subclasses provide the ``backend`` fixture."""

    @pytest.fixture
    def store(self, backend: Backend) -> Store:
        """A store with our tables, and a ``scratch`` table standing in for a handler's own."""
        store = backend.open()
        store.ensure_schema()
        store.execute("CREATE TABLE scratch (id integer PRIMARY KEY, note text)")
        return store

    # --- schema -----------------------------------------------------------------------------------

    def test_before_ensure_schema_our_tables_are_missing(self, backend: Backend) -> None:
        """A store call on a database without our tables says so (StoreSchemaError), not worse."""
        with pytest.raises(StoreSchemaError, match="store init"):
            backend.open().checkpoints(G)

    def test_ensure_schema_creates_our_tables_and_records_the_version(
        self, backend: Backend
    ) -> None:
        store = backend.open()
        store.ensure_schema()
        assert store.checkpoints(G) == {}
        assert stored_keys(store) == []
        assert store.execute("SELECT version FROM consumer_schema").fetchall() \
            == [(store.schema_version,)]

    def test_ensure_schema_is_idempotent_and_keeps_data(self, backend: Backend) -> None:
        """Running it again (this process or another) neither fails nor loses rows."""
        store = backend.open()
        store.ensure_schema()
        store.assign(G, [P0], 1.0)
        store.ensure_schema()
        backend.open().ensure_schema()
        assert store.execute("SELECT version FROM consumer_schema").fetchall() \
            == [(store.schema_version,)]
        assert store.checkpoints(G) == {P0: None}

    def test_other_schema_version_raises_schema_error_naming_both_versions(
        self, backend: Backend
    ) -> None:
        store = backend.open()
        store.execute("CREATE TABLE consumer_schema (version integer NOT NULL)")
        store.execute("INSERT INTO consumer_schema VALUES (%s)", (store.schema_version + 98,))
        with pytest.raises(StoreSchemaError) as raised:
            store.ensure_schema()
        message = str(raised.value)
        assert f"version {store.schema_version + 98}" in message
        assert f"needs {store.schema_version}" in message
        assert store.execute("SELECT version FROM consumer_schema").fetchall() == [
            (store.schema_version + 98,)
        ], "a refused schema is left as it was"

    def test_a_fresh_store_needs_no_migration(self, backend: Backend) -> None:
        assert backend.open().ensure_schema(G, group_scoped_topics={"t"}) is None

    def test_a_new_store_orders_its_coordinates_keys(self, backend: Backend) -> None:
        """A new store records the ordered form (a PostgreSQL or MariaDB store: ordered, kept
        as runs);
        every store opened on it reads the form back (the key functions follow it)."""
        store = backend.open()
        assert store.ordered_coordinates is False, "unknown before ensure_schema"
        store.ensure_schema(G)
        assert store.ordered_coordinates is True
        form = "runs" if backend.name in ("postgresql", "mariadb") else "ordered"
        assert store.execute("SELECT coordinates_keys FROM consumer_schema").fetchall() \
            == [(form,)]
        other = backend.open()
        other.ensure_schema(G)
        assert other.ordered_coordinates is True

    def test_ordered_coordinates_keys_are_claimed_once(self, store: Store) -> None:
        """The ordered form is a key like any other: claimed once, found again after."""
        keys = key_function("coordinates", {"orders": "id-1"},
                            key_format=KeyFormat(ordered_coordinates=True))
        messages = [Message("orders", p, o, b"{}", timestamp=0.0)
                    for p in (0, 1) for o in (0, 1, 1_000_000)]
        batch = [Claim(keys(m), m.topic, m.partition, m.offset) for m in messages]
        store.begin()
        assert store.claim(G, batch, 1.0) == {c.key for c in batch}
        store.commit()
        store.begin()
        assert store.claim(G, batch, 2.0) == set()
        store.rollback()

    def test_a_batch_of_stretches_is_claimed_as_runs_with_no_key_made(self, store: Store) -> None:
        store.use_topic_ids(ORDERS_ID)
        batch, each = stretch_batch((0, 10, 20), (1, 5, 8), (0, 20, 25))
        store.begin()
        new = store.claim(G, batch, 1.0)
        assert isinstance(new, EveryKey) and len(new) == 18
        assert set(new) == {c.key for c in each}
        store.commit()
        assert stored_keys(store) == [], "kept as runs, not a row per key"
        assert store.execute("SELECT count(*) FROM consumer_processed_runs").fetchone()[0] == 3
        store.begin()
        assert store.claim(G, each, 2.0) == set()
        assert store.claim(G, stretch_batch((0, 10, 25))[0], 2.0) == set()
        store.rollback()

    def test_a_batch_of_stretches_meeting_processed_keys_gets_exactly_the_new_ones(
        self, store: Store,
    ) -> None:
        store.use_topic_ids(ORDERS_ID)
        _, before = stretch_batch((0, 12, 14))
        store.begin()
        store.claim(G, before, 1.0)
        store.commit()
        batch, each = stretch_batch((0, 10, 20), (1, 0, 3))
        store.begin()
        new = store.claim(G, batch, 2.0)
        assert set(new) == {c.key for c in each} - {c.key for c in before}
        assert len(new) == 11
        store.commit()
        store.begin()
        assert store.claim(G, batch, 3.0) == set()
        store.rollback()

    def test_a_batch_of_stretches_holding_a_message_twice_claims_it_once(
        self, store: Store,
    ) -> None:
        store.use_topic_ids(ORDERS_ID)
        batch, each = stretch_batch((0, 10, 15), (0, 12, 14))
        assert len(batch.stretches) == 2
        store.begin()
        new = store.claim(G, batch, 1.0)
        assert len(new) == 5 and set(new) == {c.key for c in each}
        store.commit()

    @pytest.mark.parametrize(("before", "expected"), [
        ((), range(10, 20)),
        (((0, 5, 12),), range(12, 20)),  # a run from below reaching into the batch
        (((0, 15, 17),), [*range(10, 15), *range(17, 20)]),  # a run inside it
        (((0, 19, 30),), range(10, 19)),  # a run from its last key on
        (((0, 20, 30), (0, 0, 10)), range(10, 20)),  # runs touching both ends, not in it
    ], ids=["nothing before", "below", "inside", "at its end", "touching"])
    def test_opening_a_batch_of_stretches_claims_exactly_its_new_keys(
        self, store: Store, before: tuple[tuple[int, int, int], ...], expected: range,
    ) -> None:
        """open_batch, as a checkpoint opens a batch (a store may try the runs whole first)."""
        store.use_topic_ids(ORDERS_ID)
        for earlier in before:
            store.open_batch(G, stretch_batch(earlier)[0], 1.0)
            store.commit()
        batch, each = stretch_batch((0, 10, 20), (1, 0, 3))
        new = store.open_batch(G, batch, 2.0)
        assert set(new) == {c.key for c in each if c.partition == 1 or c.offset in expected}
        assert len(new) == len(set(new))
        store.commit()
        store.begin()
        assert store.claim(G, each, 3.0) == set(), "every key of the batch is processed now"
        beyond = stretch_batch((0, 30, 35))[1]
        assert store.claim(G, beyond, 3.0) == {c.key for c in beyond}, "and none past them"
        store.rollback()

    def test_opening_a_batch_of_stretches_holding_a_message_twice_claims_it_once(
        self, store: Store,
    ) -> None:
        store.use_topic_ids(ORDERS_ID)
        batch, each = stretch_batch((0, 10, 15), (0, 12, 14))
        new = store.open_batch(G, batch, 1.0)
        assert len(new) == 5 and set(new) == {c.key for c in each}
        store.commit()

    def test_a_batch_of_no_stretches_claims_nothing(self, store: Store) -> None:
        """A checkpoint with nothing polled (a revoke, the interval) claims an empty batch."""
        store.use_topic_ids(ORDERS_ID)
        store.begin()
        assert len(store.claim(G, ClaimBatch([]), 1.0)) == 0
        store.commit()

    def test_stretches_named_after_a_topic_id_the_store_was_not_told_are_claimed_once(
        self, store: Store,
    ) -> None:
        """The store names a topic after its id only once told it (use_topic_ids); until
        then it claims another name's stretches key by key, still once each."""
        batch, each = stretch_batch((0, 10, 20))
        store.begin()
        assert set(store.claim(G, batch, 1.0)) == {c.key for c in each}
        store.commit()
        store.begin()
        assert store.claim(G, each, 2.0) == set()
        store.rollback()

    # --- assignment and checkpoint rows -----------------------------------------------------------

    def test_assign_creates_rows_at_epoch_one_without_an_offset(self, store: Store) -> None:
        assert assigned_rows(store.assign(G, [P0, P1], 1.0)) == {P0: (None, 1), P1: (None, 1)}
        assert store.checkpoints(G) == {P0: None, P1: None}

    def test_assign_again_bumps_the_epoch_and_returns_the_checkpoint(self, store: Store) -> None:
        store.assign(G, [P0, P1], 1.0)
        store.begin()
        assert store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1)], 2.0) == []
        store.commit()
        assert assigned_rows(store.assign(G, [P0], 3.0)) == {P0: (42, 2)}
        assert assigned_rows(store.assign(G, [P0, P1], 4.0)) == {P0: (42, 3), P1: (None, 2)}

    def test_write_checkpoints_moves_only_rows_whose_epoch_is_ours(self, backend: Backend,
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

    def test_write_checkpoints_fences_a_partition_without_a_row(self, store: Store) -> None:
        store.assign(G, [P0], 1.0)
        store.begin()
        fenced = store.write_checkpoints(
            G, [CheckpointRow("t", 0, 5, 1), CheckpointRow("t", 7, 5, 1)], 2.0
        )
        store.commit()
        assert fenced == [("t", 7)]
        assert store.checkpoints(G) == {P0: 5}

    def test_write_checkpoints_of_another_group_fences(self, store: Store) -> None:
        store.assign(G, [P0], 1.0)
        store.begin()
        assert store.write_checkpoints("group-b", [CheckpointRow("t", 0, 5, 1)], 2.0) == [P0]
        store.rollback()

    def test_write_checkpoints_refuses_to_move_a_row_backwards(self, store: Store) -> None:
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

    def test_write_checkpoints_at_the_same_offset_is_no_move_and_no_error(
        self, store: Store
    ) -> None:
        store.assign(G, [P0], 1.0)
        store.begin()
        assert store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1)], 2.0) == []
        assert store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1)], 3.0) == []
        store.commit()
        assert store.checkpoints(G) == {P0: 42}

    def test_a_fenced_row_below_ours_is_reported_fenced_not_backwards(self, backend: Backend,
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

    def test_replay_moves_a_row_backwards_on_purpose_and_fences_its_owner(
        self, store: Store
    ) -> None:
        store.assign(G, [P0], 1.0)
        store.begin()
        store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1)], 2.0)
        store.commit()
        store.replay(G, {P0: 10}, forget_keys=False, now=3.0)
        assert store.checkpoints(G) == {P0: 10}
        store.begin()
        assert store.write_checkpoints(G, [CheckpointRow("t", 0, 11, 1)], 4.0) == [P0]
        store.rollback()
        assert assigned_rows(store.assign(G, [P0], 5.0)) == {P0: (10, 3)}
        store.begin()
        assert store.write_checkpoints(G, [CheckpointRow("t", 0, 11, 3)], 6.0) == []
        store.commit()
        assert store.checkpoints(G) == {P0: 11}

    def test_following_a_reset_back_moves_our_row_back_and_a_fenced_one_not(
        self, backend: Backend, store: Store
    ) -> None:
        """store.on_external_reset follow: the row moves back to Kafka's offset under our
        epoch, and the next checkpoints move it forward from there; a row a newer owner
        holds stays where it is, and so does a row already below the offset."""
        store.assign(G, [P0, P1], 1.0)
        store.begin()
        store.write_checkpoints(G, [CheckpointRow("t", 0, 42, 1), CheckpointRow("t", 1, 5, 1)],
                                2.0)
        store.commit()
        store.follow_back(G, P0, 10, epoch=1)
        store.follow_back(G, P1, 7, epoch=1)
        assert store.checkpoints(G) == {P0: 10, P1: 5}
        store.begin()
        assert store.write_checkpoints(G, [CheckpointRow("t", 0, 12, 1)], 3.0) == []
        store.commit()
        backend.open().assign(G, [P0], 4.0)
        store.follow_back(G, P0, 1, epoch=1)
        assert store.checkpoints(G) == {P0: 12, P1: 5}

    # --- closing a batch: its rows and its commit in one step ---------------------------------

    def test_close_batch_commits_the_rows_with_the_batch(self, store: Store) -> None:
        store.assign(G, [P0, P1], 1.0)
        claim = Claim(bytes(range(16)), "t", 0, 9)
        assert store.open_batch(G, [claim], 2.0) == {claim.key}
        rows = [CheckpointRow("t", 0, 10, 1), CheckpointRow("t", 1, 3, 1)]
        assert store.close_batch(G, rows, 2.0) == []
        store.rollback()  # nothing is left open to roll back: the batch stands
        assert store.checkpoints(G) == {P0: 10, P1: 3}
        assert store.open_batch(G, [claim], 3.0) == set()
        store.rollback()

    def test_close_batch_with_a_fenced_row_commits_nothing_and_names_it(
        self, backend: Backend, store: Store
    ) -> None:
        """P1 was assigned again by a newer owner: nothing of the batch commits (not its key,
        not P0's row), P1 is reported fenced, and the next batch on the same store commits."""
        store.assign(G, [P0, P1], 1.0)
        backend.open().assign(G, [P1], 2.0)
        claim = Claim(bytes(range(16)), "t", 0, 9)
        assert store.open_batch(G, [claim], 3.0) == {claim.key}
        rows = [CheckpointRow("t", 0, 10, 1), CheckpointRow("t", 1, 20, 1)]
        assert store.close_batch(G, rows, 3.0) == [P1]
        store.rollback()
        assert store.checkpoints(G) == {P0: None, P1: None}
        assert store.open_batch(G, [claim], 4.0) == {claim.key}
        assert store.close_batch(G, [CheckpointRow("t", 0, 10, 1)], 4.0) == []
        assert store.checkpoints(G) == {P0: 10, P1: None}

    @pytest.mark.parametrize("closing", ["close_batch", "send_close"])
    def test_closing_a_batch_moving_a_row_backwards_raises_and_commits_nothing(
        self, store: Store, closing: str
    ) -> None:
        """``send_close`` raises when sent or by its answer (PostgreSQL and MariaDB read
        it later); nothing of the batch committed either way."""
        store.assign(G, [P0], 1.0)
        store.begin()
        assert store.close_batch(G, [CheckpointRow("t", 0, 42, 1)], 2.0) == []
        claim = Claim(bytes(range(16)), "t", 0, 39)
        store.open_batch(G, [claim], 3.0)
        backwards = [CheckpointRow("t", 0, 40, 1)]
        with pytest.raises(OffsetWentBackwards):
            if closing == "send_close":
                store.send_close(G, backwards, 3.0).result()
            else:
                store.close_batch(G, backwards, 3.0)
        store.rollback()
        assert store.checkpoints(G) == {P0: 42}
        assert store.open_batch(G, [claim], 4.0) == {claim.key}
        store.rollback()

    # --- a batch's closing sent, its answer read later -----------------------------------------

    def test_a_sent_closing_commits_before_its_answer_is_read(
        self, backend: Backend, store: Store
    ) -> None:
        """``send_close``: another session sees the batch's key, effects and row committed
        while the sender has not read the answer (PostgreSQL and MariaDB: the server commits
        on its own; SQLite answers at once); ``result()`` then reports nothing fenced."""
        store.assign(G, [P0], 1.0)
        claim = Claim(bytes(range(16)), "t", 0, 9)
        assert store.open_batch(G, [claim], 2.0) == {claim.key}
        store.execute("INSERT INTO scratch VALUES (1, 'a')")
        closing = store.send_close(G, [CheckpointRow("t", 0, 10, 1)], 2.0)
        # the stores on a server send the COMMIT and read its answer later
        assert closing.pending is (backend.name in ("postgresql", "mariadb"))
        other = backend.open()
        deadline = time.monotonic() + 10.0
        while other.checkpoints(G) != {P0: 10}:
            assert time.monotonic() < deadline, "the sent closing did not commit within 10 s"
            time.sleep(0.01)
        assert scratch_ids(other) == [1]
        assert closing.result() == []
        assert store.open_batch(G, [claim], 3.0) == set()  # processed
        store.rollback()

    def test_the_store_reads_a_sent_closing_before_its_next_statement(self, store: Store) -> None:
        """Nobody asked for the answer before the next batch: that batch opens and closes
        all the same, and the first closing's answer waits for whoever asks."""
        store.assign(G, [P0], 1.0)
        first, second = Claim(bytes(range(16)), "t", 0, 9), Claim(bytes(range(1, 17)), "t", 0, 10)
        assert store.open_batch(G, [first], 2.0) == {first.key}
        closing = store.send_close(G, [CheckpointRow("t", 0, 10, 1)], 2.0)
        assert store.open_batch(G, [second], 3.0) == {second.key}
        assert store.close_batch(G, [CheckpointRow("t", 0, 11, 1)], 3.0) == []
        assert closing.result() == []
        assert store.checkpoints(G) == {P0: 11}

    @pytest.mark.parametrize("partitions", [1, 2, 3, 7])
    def test_a_sent_closing_with_a_fenced_row_commits_nothing_and_names_it(
        self, backend: Backend, store: Store, partitions: int
    ) -> None:
        """As :meth:`close_batch` fenced: the answer names P1 and nothing of the batch
        committed; the next batch on the same store commits. Over one partition (P1 alone)
        to seven: a server store writes a few rows out one by one, more in one join."""
        others = [("t", p) for p in range(2, partitions)]
        ours = [P1] if partitions == 1 else [P0, P1, *others]
        store.assign(G, ours, 1.0)
        backend.open().assign(G, [P1], 2.0)
        claim = Claim(bytes(range(16)), "t", 0, 9)
        assert store.open_batch(G, [claim], 3.0) == {claim.key}
        rows = [CheckpointRow(t, p, 20 + p, 1) for t, p in ours]
        assert store.send_close(G, rows, 3.0).result() == [P1]
        store.rollback()
        assert store.checkpoints(G) == {tp: None for tp in ours}
        assert store.open_batch(G, [claim], 4.0) == {claim.key}
        unfenced = [row for row in rows if (row.topic, row.partition) != P1]
        assert store.send_close(G, unfenced, 4.0).result() == []
        assert store.checkpoints(G) == {tp: None if tp == P1 else 20 + tp[1] for tp in ours}

    @pytest.mark.parametrize("partitions", [1, 2, 3, 7])
    def test_a_sent_closing_moves_every_row_it_carries(self, store: Store,
                                                       partitions: int) -> None:
        """Each row moves to its own offset, over one partition to seven; a row sent again
        at its offset moves nothing and is still ours."""
        ours = [("t", p) for p in range(partitions)]
        store.assign(G, ours, 1.0)
        for offset, now in ((10, 2.0), (10, 3.0), (15, 4.0)):
            rows = [CheckpointRow(t, p, offset + p, 1) for t, p in ours]
            store.begin()
            assert store.send_close(G, rows, now).result() == []
            assert store.checkpoints(G) == {(t, p): offset + p for t, p in ours}

    def test_checkpoints_lists_the_rows_of_one_group(self, store: Store) -> None:
        store.assign(G, [P0, P1, ("u", 3)], 1.0)
        store.assign("group-b", [P0], 1.0)
        store.begin()
        store.write_checkpoints(G, [CheckpointRow("u", 3, 9, 1)], 2.0)
        store.write_checkpoints("group-b", [CheckpointRow("t", 0, 77, 1)], 2.0)
        store.commit()
        assert store.checkpoints(G) == {P0: None, P1: None, ("u", 3): 9}
        assert store.checkpoints("group-b") == {P0: 77}
        assert store.checkpoints("nobody") == {}

    # --- processed keys ---------------------------------------------------------------------------

    def test_claim_returns_only_keys_not_claimed_before(self, store: Store) -> None:
        store.begin()
        assert store.claim(G, claims("a", "b"), 1.0) == {key("a"), key("b")}
        assert store.claim(G, claims("b", "c", "a", "d"), 1.0) == {key("c"), key("d")}
        store.commit()
        store.begin()
        assert store.claim(G, claims("a", "e"), 2.0) == {key("e")}
        store.commit()

    def test_key_repeated_within_one_claim_is_new_once_and_stored_once(self, store: Store) -> None:
        store.begin()
        assert store.claim(G, claims("a", "x", "a", "a"), 1.0) == {key("a"), key("x")}
        store.commit()
        assert stored_keys(store) == [key("a"), key("x")]

    def test_a_batch_whose_first_claim_meets_a_processed_key_keeps_the_rest(
        self,
        store: Store,
    ) -> None:
        """A claim that opens a batch and meets a key committed before leaves a transaction
        that holds the new keys, takes the batch's rows and writes, and commits them."""
        store.assign(G, [P0], 1.0)
        store.begin()
        store.claim(G, claims("a"), 1.0)
        store.commit()
        store.begin()
        assert store.claim(G, claims("a", "b", "c"), 2.0) == {key("b"), key("c")}
        assert store.write_checkpoints(G, [CheckpointRow("t", 0, 3, 1)], 2.0) == []
        store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "effect"))
        store.commit()
        assert stored_keys(store) == [key("a"), key("b"), key("c")]
        assert store.checkpoints(G) == {P0: 3}
        assert scratch_ids(store) == [1]

    def test_batches_meeting_processed_keys_now_and_then_claim_each_key_once(
        self,
        store: Store,
    ) -> None:
        """Forty batches, every seventh one meeting a key of an earlier batch: each claim
        answers exactly its new keys (whatever way the store claims after a conflict)."""
        committed: list[str] = []
        for batch in range(40):
            fresh = [f"n{batch}-{i}" for i in range(3)]
            old = [committed[batch]] if batch % 7 == 6 else []
            store.begin()
            assert store.claim(G, claims(*old, *fresh), float(batch)) == {key(n) for n in fresh}
            store.commit()
            committed += fresh
        assert stored_keys(store) == sorted(key(n) for n in committed)

    def test_a_claim_meeting_a_processed_key_after_other_writes_keeps_them(
        self,
        store: Store,
    ) -> None:
        store.begin()
        store.claim(G, claims("a"), 1.0)
        store.commit()
        store.begin()
        store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "before the claim"))
        assert store.claim(G, claims("a", "b"), 2.0) == {key("b")}
        store.commit()
        assert scratch_ids(store) == [1]
        assert stored_keys(store) == [key("a"), key("b")]

    def test_a_claim_records_each_keys_group_coordinates_and_time(self, store: Store) -> None:
        store.begin()
        store.claim(G, [Claim(key("a"), "orders", 3, 17), Claim(key("b"), "payments", 0, 5)],
                    42.5)
        store.commit()
        rows = store.execute(
            'SELECT "key", topic, "partition", "offset", processed_at FROM consumer_processed_keys '
            'WHERE group_id = %s ORDER BY "key"', (G,)).fetchall()
        assert [(bytes(k), t, p, o, float(at)) for k, t, p, o, at in rows] == [
            (key("a"), "orders", 3, 17, 42.5), (key("b"), "payments", 0, 5, 42.5)]

    def test_a_large_claim_meeting_one_processed_key_at_its_end_keeps_every_other_key(
        self,
        store: Store,
    ) -> None:
        """Batches of 1,001 keys, more than a store claims in one statement: the second one's
        last key was processed before, so what its first statements inserted must neither
        stay twice nor be lost."""
        first = [f"k{i}" for i in range(1001)]
        second = [f"m{i}" for i in range(1000)] + ["k1000"]
        store.begin()
        assert store.claim(G, claims(*first), 1.0) == {key(n) for n in first}
        store.commit()
        store.begin()
        assert store.claim(G, claims(*second), 2.0) == {key(n) for n in second[:-1]}
        store.commit()
        assert stored_keys(store) == sorted(key(n) for n in first + second[:-1])

    def test_claim_of_nothing_is_nothing(self, store: Store) -> None:
        store.begin()
        assert store.claim(G, [], 1.0) == set()
        store.commit()

    def test_keys_are_claimed_per_group(self, store: Store) -> None:
        store.begin()
        assert store.claim(G, claims("a"), 1.0) == {key("a")}
        assert store.claim("group-b", claims("a"), 1.0) == {key("a")}
        assert store.claim("group-b", claims("a"), 1.0) == set()
        store.commit()

    def test_unclaim_forgets_keys_of_that_group_only(self, store: Store) -> None:
        store.begin()
        store.claim(G, claims("a", "b"), 1.0)
        store.claim("group-b", claims("a"), 1.0)
        store.unclaim(G, [key("a")])
        assert store.claim(G, claims("a", "b"), 1.0) == {key("a")}
        assert store.claim("group-b", claims("a"), 1.0) == set()
        store.unclaim(G, [])
        store.commit()

    def test_purge_deletes_only_keys_older_than_the_cutoff_at_most_limit_per_call(
        self,
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

    def test_purge_of_one_group_leaves_another_groups_keys(
        self, backend: Backend, store: Store
    ) -> None:
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

    # --- transactions -----------------------------------------------------------------------------

    def test_rollback_discards_claims_checkpoint_rows_and_writes(self, store: Store) -> None:
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

    @pytest.mark.parametrize("ending", ["commit", "rollback"])
    def test_transaction_open_tells_when_a_handler_ended_the_batch(self, store: Store,
                                                                  ending: str) -> None:
        """A handler calling commit() or rollback() on context.db ends the batch's
        transaction, and the store sees it without a round trip; or the store's connection
        refuses (SQLite, MariaDB), and the store says so. Its next batch is whole."""
        store.begin()
        store.claim(G, claims("a"), 1.0)
        assert store.transaction_open()
        try:
            getattr(store.connection, ending)()
        except TransactionEndRefused:  # refused at once (MariaDB): the batch stays whole
            assert store.transaction_open()
        except Exception:  # refused by the database (SQLite): the store says so next
            with pytest.raises(TransactionEndRefused, match=ending.upper()):
                store.transaction_open()
            assert store.transaction_open()
        else:
            assert not store.transaction_open()
        store.rollback()
        store.begin()
        store.unclaim(G, [key("a")])
        store.commit()
        assert stored_keys(store) == []
        store.begin()
        assert store.transaction_open()
        store.rollback()

    def test_rollback_outside_a_transaction_is_harmless(self, store: Store) -> None:
        store.rollback()
        store.begin()
        store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "kept"))
        store.commit()
        store.rollback()
        assert scratch_ids(store) == [1]

    def test_savepoint_rollback_discards_only_the_writes_inside_it(self, store: Store) -> None:
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
        self,
        store: Store,
    ) -> None:
        """A handler whose SQL fails (here a duplicate key) rolls back alone; the batch goes on."""
        store.begin()
        store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "first"))
        store.savepoint()
        with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation,
                            pymysql.err.IntegrityError)):
            store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "duplicate"))
        store.rollback_to_savepoint()
        store.execute("INSERT INTO scratch VALUES (%s, %s)", (2, "after"))
        store.commit()
        assert scratch_ids(store) == [1, 2]

    def test_uncommitted_work_is_invisible_to_a_second_connection(self, backend: Backend,
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
        self,
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

    # --- for handlers -----------------------------------------------------------------------------

    def test_execute_takes_percent_s_placeholders(self, store: Store) -> None:
        store.execute("INSERT INTO scratch (id, note) VALUES (%s, %s)", (7, "it's 100%"))
        store.execute("INSERT INTO scratch (id, note) VALUES (%s, %s)", [8, None])
        rows = store.execute("SELECT id, note FROM scratch WHERE id >= %s ORDER BY id", (7,))
        assert rows.fetchall() == [(7, "it's 100%"), (8, None)]

    def test_connection_is_the_one_execute_uses(self, store: Store) -> None:
        """``context.db`` and ``context.execute`` write in the same transaction."""
        store.begin()
        store.execute("INSERT INTO scratch VALUES (%s, %s)", (1, "via execute"))
        count = store.connection.execute("SELECT count(*) FROM scratch").fetchone()[0]
        store.rollback()
        assert count == 1
        assert scratch_ids(store) == []

    def test_ping_answers_on_a_healthy_store(self, store: Store) -> None:
        """ping() raises StoreUnavailable when the database does not answer; a healthy one passes
        and stays usable afterwards."""
        assert store.ping() is None  # type: ignore[func-returns-value]
        assert store.checkpoints("nobody") == {}


class MigratesFromVersion1:
    """Stores that existed at schema version 1 (SQLite, PostgreSQL) upgrade from it. A store
    added later (MariaDB) was never at version 1 and has nothing to migrate."""

    def test_migration_from_version_1_scopes_one_groups_keys_as_the_code_computes_them(
        self,
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
        assert upgrade == SchemaUpgrade(1, store.schema_version, G, keys_scoped=1, keys_kept=1,
                                        groups_waiting=1)
        assert f"from schema version 1 to {store.schema_version}" in upgrade.describe("here")
        assert store.execute("SELECT version FROM consumer_schema").fetchall() == [
            (store.schema_version,)]
        assert store.ordered_coordinates is False, "keys claimed before keep their form"
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
        assert other.ensure_schema("group-b") == \
            SchemaUpgrade(1, other.schema_version, "group-b", 1, 0, 0)
        assert stored_keys(other, "group-b") == [by_topic(order)]

    def test_a_failing_migration_leaves_version_1_untouched(self, backend: Backend) -> None:
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


class MigratesFromVersion2:
    """Every store (SQLite, PostgreSQL, MariaDB) existed at schema version 2."""

    def test_migration_from_version_2_keeps_coordinates_keys_findable(
        self, backend: Backend
    ) -> None:
        """A version-2 store holds digest coordinates keys; after the migration it still
        says digest, so the key functions compute exactly the keys it holds and a redelivered
        message is skipped. Its checkpoint rows are untouched; running it again is a no-op."""
        ids = {"orders": "id-orders-1"}
        old = backend.open()
        for statement in SCHEMA_V2[backend.name]:
            old.execute(statement)
        delivered = Message("orders", 0, 7, b"{}", timestamp=0.0)
        by_header = _event("orders", b"evt-1")
        v2_keys = [key_function("coordinates", ids)(delivered),
                   key_function("header:idempotency-key", ids)(by_header)]
        for key, message in zip(v2_keys, (delivered, by_header), strict=True):
            old.execute(
                'INSERT INTO consumer_processed_keys (group_id, "key", topic, "partition", '
                '"offset", processed_at) VALUES (%s, %s, %s, 0, %s, 1.0)',
                (G, key, message.topic, message.offset))
        old.execute('INSERT INTO consumer_checkpoints (group_id, topic, "partition", '
                    "next_offset, epoch, updated_at, topic_id) "
                    "VALUES (%s, 'orders', 0, 8, 3, 1.0, 'id-orders-1')", (G,))

        store = backend.open()
        upgrade = store.ensure_schema(G)
        assert upgrade == SchemaUpgrade(2, store.schema_version, None, 0, 0, 0)
        assert f"from schema version 2 to {store.schema_version}" in upgrade.describe("here")
        assert "coordinates dedup keys stay digests" in upgrade.describe("here")
        assert store.execute("SELECT version, coordinates_keys FROM consumer_schema"
                             ).fetchall() == [(store.schema_version, "digest")]
        assert store.ordered_coordinates is False
        key_format = KeyFormat(ordered_coordinates=store.ordered_coordinates)
        again = [key_function("coordinates", ids, key_format=key_format)(delivered),
                 key_function("header:idempotency-key", ids, key_format=key_format)(by_header)]
        assert again == v2_keys
        store.begin()
        assert store.claim(G, [Claim(k, "orders", 0, 7) for k in again], 2.0) == set()
        store.rollback()
        assert store.checkpoints(G) == {("orders", 0): 8}
        assert store.ensure_schema(G) is None
        reopened = backend.open()
        assert reopened.ensure_schema(G) is None
        assert reopened.ordered_coordinates is False
