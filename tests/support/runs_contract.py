"""What a store that keeps runs of processed keys promises, whatever keeps them exact (SQLite's
one writer, PostgreSQL's exclusion constraint, MariaDB's turns per partition): each key of a run
is processed exactly as a row of its own would be, when claimed again, forgotten, replayed or
purged. A test class subclasses :class:`RunsContract` and provides a ``store`` fixture: a store
keeping runs, schema ensured, told :data:`TOPIC_IDS`. A database server's store (several
sessions at once) also subclasses :class:`ServerRunsContract` and provides ``database``."""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import pytest

from consumer.dedup import KeyFormat, key_function
from consumer.message import Message
from consumer.store import CheckpointRow, Claim, ClaimBatch, Store
from tests.support.processed_keys import processed_keys
from tests.support.stores import StoreUnderTest

G = "g"
T0, T1 = ("t", 0), ("t", 1)
TOPIC_IDS = {"t": "id-t", "u": "id-u"}
ORDERED = key_function("coordinates", TOPIC_IDS, key_format=KeyFormat(ordered_coordinates=True))


def claim(offset: int, partition: int = 0, topic: str = "t") -> Claim:
    """The claim the consumer makes for the message at these coordinates."""
    return Claim(ORDERED(Message(topic, partition, offset, b"", timestamp=0.0)), topic,
                 partition, offset)


def claims(offsets: range, partition: int = 0) -> list[Claim]:
    return [claim(o, partition) for o in offsets]


def keys_of(batch: Sequence[Claim]) -> set[bytes]:
    return {c.key for c in batch}


def stretches(offsets: range, partition: int = 0) -> ClaimBatch:
    """The claims of messages of topic ``t`` as the checkpoint makes them for a batch of plain
    messages: a :class:`ClaimBatch` of the key function's stretches."""
    found = ORDERED.stretches([Message("t", partition, o, b"", timestamp=0.0) for o in offsets])
    assert found is not None
    return ClaimBatch(found)


def opened_with(store: Store, offsets: range, opening: str, group: str = G,
                now: float = 1.0) -> AbstractSet[bytes]:
    """Begin a transaction claiming the messages at ``offsets`` of partition 0: ``begin``
    then ``claim`` of a claim per message, or ``open_batch`` with their stretches (as the
    checkpoint opens a batch of plain messages)."""
    if opening == "stretches":
        return store.open_batch(group, stretches(offsets), now)
    store.begin()
    return store.claim(group, claims(offsets), now)


def claimed(store: Store, batch: list[Claim], now: float = 1.0, group: str = G) -> set[bytes]:
    """Claim the batch in a transaction of its own; the new keys."""
    store.begin()
    new = store.claim(group, batch, now)
    store.commit()
    return new


def rows(store: Store) -> tuple[int, int]:
    """(key rows, run rows)."""
    return (store.execute("SELECT count(*) FROM consumer_processed_keys").fetchone()[0],
            store.execute("SELECT count(*) FROM consumer_processed_runs").fetchone()[0])


def offsets(store: Store, group: str = G) -> list[tuple[int, int]]:
    """(partition, offset) of every processed key of the group, a run's keys one each."""
    keys = processed_keys(lambda sql, params: store.execute(sql, params).fetchall(),
                          backend=store.dialect, group=group)
    return [(k.partition, k.offset) for k in keys]


class RunsContract:
    def test_a_batch_of_consecutive_keys_is_one_row_and_every_key_is_processed(
            self, store: Store) -> None:
        batch = claims(range(0, 1000))
        assert claimed(store, batch) == keys_of(batch)
        assert rows(store) == (0, 1)
        assert offsets(store) == [(0, o) for o in range(1000)]
        assert claimed(store, batch) == set(), "redelivered: every key is a duplicate"

    def test_a_digest_key_is_a_row_beside_the_runs(self, store: Store) -> None:
        digest = Claim(b"\x07" * 16, "t", 0, 10)
        batch = [*claims(range(0, 10)), digest, *claims(range(11, 20))]
        assert claimed(store, batch) == keys_of(batch)
        assert rows(store) == (1, 2)
        assert claimed(store, [digest, claim(5)]) == set()

    def test_a_key_inside_a_run_is_processed_when_a_redriven_copy_claims_it(
            self, store: Store) -> None:
        """A redriven copy (another partition and offset) honours the key of a message a run
        holds, at its start, inside and at its end: a duplicate; the next message is new."""
        claimed(store, claims(range(0, 1000)))
        for inside in (0, 417, 999):
            honoured = Claim(claim(inside).key, "t", 2, 5000 + inside)
            assert claimed(store, [honoured, claim(1000 + inside)]) \
                == {claim(1000 + inside).key}, inside

    def test_a_run_overlapping_processed_keys_claims_only_the_new_ones(
            self, store: Store) -> None:
        """Run 100-199 and a lone key at 250; then a batch of 0-299 (a replay that kept its
        keys): only 0-99 and 200-299 but 250 are new, and the store holds each key once."""
        claimed(store, claims(range(100, 200)))
        claimed(store, [claim(250)])
        new = claimed(store, claims(range(0, 300)))
        assert new == {c.key for c in claims(range(0, 300))
                       if not 100 <= c.offset < 200 and c.offset != 250}
        assert offsets(store) == [(0, o) for o in range(300)]

    def test_one_batch_holding_a_message_twice_applies_it_once(self, store: Store) -> None:
        """A rewind can put offsets 5-9 in the pending batch twice: the second run overlaps
        the first, so the claim falls back to key by key and each key is new once."""
        batch = claims(range(0, 10)) + claims(range(5, 10))
        assert claimed(store, batch) == keys_of(claims(range(0, 10)))
        assert offsets(store) == [(0, o) for o in range(10)]

    def test_runs_are_per_group(self, store: Store) -> None:
        claimed(store, claims(range(0, 50)))
        assert claimed(store, claims(range(0, 50)), group="other") == keys_of(claims(range(50)))

    def test_unclaim_splits_a_run_around_the_key(self, store: Store) -> None:
        """A failed message's key is released from the middle, the start and the end of a
        run: those keys are new again, their neighbours still processed."""
        store.begin()
        store.claim(G, claims(range(0, 10)), 1.0)
        store.unclaim(G, [claim(4).key, claim(0).key, claim(9).key])
        store.commit()
        assert offsets(store) == [(0, o) for o in (1, 2, 3, 5, 6, 7, 8)]
        assert rows(store) == (0, 2)
        assert claimed(store, claims(range(0, 10))) == {claim(o).key for o in (0, 4, 9)}

    def test_replay_counts_and_forgets_the_keys_of_runs_from_the_target(
            self, store: Store) -> None:
        """Runs 0-99 and 100-199 of partition 0, 0-49 of partition 1: from offset 150 of
        partition 0 there are 50 keys; forgetting them cuts the run that straddles the
        target."""
        claimed(store, claims(range(0, 100)))
        claimed(store, claims(range(100, 200)))
        claimed(store, claims(range(0, 50), partition=1))
        targets = {("t", 0): 150, ("t", 1): 60}
        assert store.keys_from(G, targets) == {("t", 0): 50, ("t", 1): 0}
        assert store.keys_from(G, {("t", 0): 50}) == {("t", 0): 150}
        assert store.replay(G, {("t", 0): 150}, forget_keys=True, now=2.0) == {("t", 0): 50}
        assert offsets(store) == [(0, o) for o in range(150)] + [(1, o) for o in range(50)]
        assert claimed(store, claims(range(140, 160))) == keys_of(claims(range(150, 160)))

    def test_purge_counts_the_keys_of_the_runs_it_deletes(self, store: Store) -> None:
        claimed(store, claims(range(0, 300)), now=100.0)
        claimed(store, [Claim(b"\x01" * 16, "t", 0, 900)], now=100.0)
        claimed(store, claims(range(300, 310)), now=5_000.0)
        assert store.purge_processed_keys(G, older_than=1_000.0, limit=1_000) == 301
        assert offsets(store) == [(0, o) for o in range(300, 310)]
        assert store.purge_processed_keys(G, older_than=1_000.0, limit=1_000) == 0


    # --- a batch opened in one step (Store.open_batch) -----------------------------------------

    def test_a_batch_opens_with_its_new_keys_in_its_transaction(self, store: Store) -> None:
        positions = store.assign(G, [T0, T1], 1.0)
        batch = claims(range(0, 100)) + claims(range(0, 50), partition=1)
        assert store.open_batch(G, batch, 2.0) == keys_of(batch)
        store.rollback()
        assert offsets(store) == []
        assert store.open_batch(G, batch, 2.0) == keys_of(batch)
        assert store.write_checkpoints(G, [CheckpointRow("t", 0, 100, positions[T0].epoch),
                                           CheckpointRow("t", 1, 50, positions[T1].epoch)],
                                       2.0) == []
        store.commit()
        assert offsets(store) == [(0, o) for o in range(100)] + [(1, o) for o in range(50)]
        assert store.checkpoints(G) == {T0: 100, T1: 50}

    def test_a_batch_over_processed_keys_opens_with_only_the_new_ones(
            self, store: Store) -> None:
        """A replay that kept its keys: the runs overlapping processed keys are claimed again
        key by key."""
        claimed(store, claims(range(100, 200)))
        new = store.open_batch(G, claims(range(0, 300)), 2.0)
        store.commit()
        assert new == keys_of(claims(range(0, 100))) | keys_of(claims(range(200, 300)))
        assert offsets(store) == [(0, o) for o in range(300)]


class ServerRunsContract(abc.ABC):
    """Runs among several sessions of one server (members, a zombie): a test class provides
    ``database`` and says how to open a store on it, and how to see a session wait."""

    @abc.abstractmethod
    def opened(self, database: StoreUnderTest) -> Store:
        """A store on ``database``, schema ensured, told :data:`TOPIC_IDS`."""

    @abc.abstractmethod
    def unopened(self, database: StoreUnderTest) -> Store:
        """A store on ``database`` whose schema nobody ensured (replay's, the purger's)."""

    @abc.abstractmethod
    def waiting_for_a_lock(self, database: StoreUnderTest) -> bool:
        """Whether a session of the server waits for a lock now."""

    def test_a_batch_over_three_partitions_is_three_rows_and_every_key_is_processed(
            self, store: Store) -> None:
        """A poll interleaves partitions; the runs still follow each partition (SQLite's
        split takes only consecutive claims)."""
        batch = [claim(o, p) for o in range(0, 400) for p in (0, 1, 2)]  # interleaved, as polled
        assert claimed(store, batch) == keys_of(batch)
        assert rows(store) == (0, 3)
        assert offsets(store) == sorted((p, o) for o in range(400) for p in (0, 1, 2))
        assert claimed(store, batch) == set(), "redelivered: every key is a duplicate"

    @abc.abstractmethod
    def idle_bounded(self, database: StoreUnderTest, seconds: int) -> Store:
        """A store on ``database`` whose server ends a transaction left idle ``seconds``."""

    @pytest.mark.parametrize("opening", ["claims", "stretches"])
    def test_a_batch_claiming_keys_another_session_holds_waits_for_its_outcome(
            self, database: StoreUnderTest, opening: str) -> None:
        """Session A holds run 0-99 uncommitted; session B's batch of 50-149 waits for it. A
        commits: B gets 100-149. The same with A rolling back: B gets all of 50-149. Batches
        opened claim by claim, and by their stretches."""
        for outcome in ("commit", "rollback"):
            group = f"g-{outcome}"
            first, second = self.opened(database), self.opened(database)
            opened_with(first, range(0, 100), opening, group)
            got: dict[str, Any] = {}

            def other(second: Store = second, group: str = group,
                      got: dict[str, Any] = got) -> None:
                got["new"] = set(opened_with(second, range(50, 150), opening, group))
                second.commit()

            thread = threading.Thread(target=other)
            thread.start()
            self._wait_for_a_lock_wait(database)
            assert thread.is_alive() and "new" not in got, "B waits while A holds its keys"
            first.commit() if outcome == "commit" else first.rollback()
            thread.join(30)
            assert not thread.is_alive()
            expected = range(100, 150) if outcome == "commit" else range(50, 150)
            assert got["new"] == keys_of(claims(expected)), outcome
            first.close()
            second.close()

    def test_a_member_frozen_after_opening_stretches_holds_its_keys_only_to_the_idle_bound(
            self, database: StoreUnderTest) -> None:
        """A member opens a batch of plain messages, then is frozen (it sends nothing more):
        the server ends its transaction at the idle bound, and the new owner, waiting on its
        keys meanwhile, claims every one of them well before its own lock wait gives up."""
        frozen, owner = self.idle_bounded(database, 1), self.opened(database)
        try:
            batch = claims(range(0, 100))
            assert frozen.open_batch(G, stretches(range(0, 100)), 1.0) == keys_of(batch)
            assert owner.open_batch(G, stretches(range(0, 100)), 2.0) == keys_of(batch), \
                "the frozen member's keys are free once the server ended its transaction"
            owner.commit()
            assert offsets(owner) == [(0, o) for o in range(100)]
        finally:
            frozen.close()
            owner.close()

    def test_replay_and_the_purge_see_the_runs_on_a_store_they_open_themselves(
            self, database: StoreUnderTest) -> None:
        """`consumer replay` and the purger open a store of their own and never ensure its
        schema: they still count, forget and purge the keys of runs."""
        store = self.opened(database)
        try:
            claimed(store, claims(range(0, 100)), now=100.0)
            for operation in ("replay", "purge"):
                other = self.unopened(database)
                try:
                    if operation == "replay":
                        assert other.keys_from(G, {("t", 0): 50}) == {("t", 0): 50}
                        assert other.replay(G, {("t", 0): 90}, forget_keys=True, now=2.0) \
                            == {("t", 0): 10}
                    else:
                        assert other.purge_processed_keys(
                            G, older_than=1_000.0, limit=1_000) == 90
                finally:
                    other.close()
            assert offsets(store) == []
        finally:
            store.close()

    def _wait_for_a_lock_wait(self, database: StoreUnderTest, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.waiting_for_a_lock(database):
                return
            time.sleep(0.02)
        raise AssertionError(f"no session waited for a lock within {timeout} s")
