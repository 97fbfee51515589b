"""What a database server's store keeping processed keys in generations promises, whatever lock
carries the concurrency (PostgreSQL's advisory lock, MariaDB's rotation row): a key claimed in
a sealed generation is never claimed again, by this store or another member, including across a
seal made under them; a generation is sealed only when no claim is open, and once overdue the
seal waits a moment for the claims open then; deleted keys still count at the seal; the
retention drops sealed generations whole; version 4's keys stay processed after the migration.

A test class subclasses :class:`ServerGenerationsContract` and provides a ``database`` fixture
(an empty database of its own on the server) and the methods below."""

from __future__ import annotations

import abc
import os
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from consumer_process import wait_for

from consumer.store import Claim, Store
from tests.support.runs_contract import TOPIC_IDS
from tests.support.stores import StoreUnderTest

G = "g"


def digests(count: int, first_offset: int = 0) -> list[Claim]:
    """Claims of header-style keys: random digests, one row each."""
    return [Claim(os.urandom(16), "t", 0, first_offset + n) for n in range(count)]


def keys(batch: list[Claim]) -> set[bytes]:
    return {c.key for c in batch}


def claimed(store: Store, batch: list[Claim], now: float = 1.0) -> set[bytes]:
    store.begin()
    new = set(store.claim(G, batch, now))
    store.commit()
    return new


def generations(database: StoreUnderTest) -> list[tuple[int, int, bool]]:
    return [(n, count, bool(sealed)) for n, count, sealed in database.query(
        'SELECT generation, "keys", newest_at IS NOT NULL FROM consumer_key_generations '
        "WHERE group_id = %s ORDER BY generation", (G,))]


def version_4_with(database: StoreUnderTest, schema: Sequence[str], old: list[Claim]) -> None:
    """A version-4 store (``schema``, as released) holding ``old``'s keys as rows."""
    database.write(schema, [(
        'INSERT INTO consumer_processed_keys (group_id, "key", topic, "partition", "offset", '
        "processed_at) VALUES (%s, %s, 't', 0, %s, 5.0)", (G, c.key, c.offset)) for c in old])


class ServerGenerationsContract(abc.ABC):
    #: The backend's schema version 4, as released (tests/support/store_v4.py).
    schema_v4: Sequence[str]
    #: Its schema version now.
    schema_version: int

    @abc.abstractmethod
    def opened(self, database: StoreUnderTest, generation_keys: int = 4) -> Store:
        """A store on ``database``, its schema ensured and told TOPIC_IDS, sealing a generation
        every ``generation_keys`` keys."""

    @abc.abstractmethod
    def waiting_for_the_seal(self, database: StoreUnderTest) -> bool:
        """Whether a session waits for the group's rotation lock."""

    @abc.abstractmethod
    def seal_waits(self, monkeypatch: pytest.MonkeyPatch, *, long: bool) -> float:
        """Make an overdue seal wait long (for a test to end the claim it waits for) or
        briefly; how long it waits, in seconds."""

    @staticmethod
    def told(store: Store) -> Store:
        store.ensure_schema(G)
        store.use_topic_ids(TOPIC_IDS)
        return store

    @pytest.fixture
    def store(self, database: StoreUnderTest) -> Iterator[Store]:
        store = self.opened(database)
        yield store
        store.close()

    def test_a_full_generation_is_sealed_and_its_keys_stay_processed(
            self, store: Store, database: StoreUnderTest) -> None:
        first, second = digests(4), digests(4, 4)
        assert claimed(store, first) == keys(first)
        assert claimed(store, second) == keys(second)
        assert generations(database) == [(1, 4, True), (2, 0, False)]
        again = first[:2] + second[2:] + digests(2, 8)
        assert claimed(store, again) == keys(again[4:])
        assert claimed(store, first + second) == set()
        assert database.scalar("SELECT count(*) FROM consumer_processed_keys") == 10

    def test_another_member_never_claims_a_sealed_key_again(
            self, database: StoreUnderTest) -> None:
        """The other member knew generation 1 as current; it was sealed since: its next
        claim learns so, reads the sealed generation and skips its keys."""
        one, other = self.opened(database), self.opened(database)
        try:
            early = digests(1, 100)
            assert claimed(other, early) == keys(early)  # its view: generation 1 current
            first = digests(4)
            assert claimed(one, first) == keys(first)
            assert claimed(one, digests(1, 4))  # sealed generation 1 first
            assert [g[2] for g in generations(database)] == [True, False]
            again = first + digests(2, 10)
            assert claimed(other, again) == keys(again[4:])
        finally:
            one.close()
            other.close()

    def test_a_member_started_later_reads_the_sealed_generations(
            self, database: StoreUnderTest) -> None:
        one = self.opened(database)
        first = digests(4)
        claimed(one, first)
        claimed(one, digests(4, 4))  # seals generation 1 first
        one.close()
        later = self.opened(database)
        try:
            later.load_group(G)
            fresh = digests(1, 50)
            assert claimed(later, first[:2] + fresh) == keys(fresh)
        finally:
            later.close()

    def test_no_generation_is_sealed_while_another_session_claims(
            self, store: Store, database: StoreUnderTest) -> None:
        """The rotation does not wait until overdue: with a claim open elsewhere it is
        deferred, and the claims go on into the current generation; once nothing is open, it
        is sealed."""
        claimed(store, digests(4))
        busy = self.opened(database)
        try:
            busy.begin()
            held = digests(1, 500)
            busy.claim(G, held, 1.0)
            assert claimed(store, digests(1, 4))
            assert generations(database) == [(1, 0, False)], "sealed under an open claim"
            busy.commit()
            claimed(store, digests(1, 5))  # tried again
            assert [g[2] for g in generations(database)] == [True, False]
            assert claimed(store, held) == set()
        finally:
            busy.close()

    def _commit_once_the_seal_waits(self, busy: Store, database: StoreUnderTest) -> None:
        wait_for(lambda: self.waiting_for_the_seal(database), timeout=10,
                 what="the seal waiting")
        busy.commit()

    def test_an_overdue_seal_waits_for_the_claims_open_then(
            self, store: Store, database: StoreUnderTest,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """Members claiming one batch after another seldom leave a moment with no claim open:
        once the generation holds a quarter more keys than its share, the seal waits for the
        claims open at the time."""
        self.seal_waits(monkeypatch, long=True)
        claimed(store, digests(5))  # four keys a generation: five are a quarter more
        busy = self.opened(database)
        try:
            busy.begin()
            held = digests(1, 500)
            busy.claim(G, held, 1.0)
            ender = threading.Thread(target=self._commit_once_the_seal_waits,
                                     args=(busy, database))
            ender.start()
            assert claimed(store, digests(1, 5))
            ender.join()
            assert generations(database)[0] == (1, 6, True)
            assert claimed(store, held) == set()
        finally:
            busy.close()

    def test_an_overdue_seal_gives_up_after_its_wait(
            self, store: Store, database: StoreUnderTest,
            monkeypatch: pytest.MonkeyPatch) -> None:
        wait = self.seal_waits(monkeypatch, long=False)
        claimed(store, digests(5))
        busy = self.opened(database)
        try:
            busy.begin()
            busy.claim(G, digests(1, 500), 1.0)
            began = time.monotonic()
            assert claimed(store, digests(1, 5))
            assert time.monotonic() - began >= wait, "the seal did not wait"
            assert generations(database) == [(1, 0, False)]
        finally:
            busy.close()

    def test_keys_forgotten_before_the_seal_still_count(
            self, store: Store, database: StoreUnderTest) -> None:
        """A seal counts the keys ever claimed into the generation, so a member that claimed
        as many keys itself as are left still reads the generation if another claimed some."""
        other = self.opened(database)
        try:
            theirs = digests(2, 100)
            claimed(other, theirs)
            mine = digests(4)
            claimed(store, mine)
            store.begin()
            store.unclaim(G, [c.key for c in mine[:2]])
            store.commit()
            claimed(store, digests(1, 4))  # seals: 6 claimed into generation 1, 2 forgotten
            assert generations(database)[0] == (1, 6, True)
            third = self.opened(database)
            try:
                claimed(third, digests(1, 200))
                assert claimed(third, theirs) == set()
                assert claimed(third, mine[:2]) == keys(mine[:2]), \
                    "forgotten keys are new again"
            finally:
                third.close()
        finally:
            other.close()

    def test_retention_drops_sealed_generations_whole(
            self, store: Store, database: StoreUnderTest) -> None:
        claimed(store, digests(4), now=10.0)
        claimed(store, digests(2, 4), now=20.0)  # seals generation 1 (newest key at 10.0)
        claimed(store, digests(2, 6), now=30.0)
        assert store.purge_processed_keys(G, 15.0, 100) == 4
        assert [g[0] for g in generations(database)] == [2]
        assert store.purge_processed_keys(G, 25.0, 100) == 2
        assert database.scalar("SELECT forgotten FROM consumer_key_generations") == 2
        assert database.scalar("SELECT count(*) FROM consumer_processed_keys") == 2

    def test_replay_forgets_keys_in_every_generation(self, store: Store) -> None:
        first = digests(4)
        claimed(store, first)
        claimed(store, digests(2, 4))
        forgotten = store.replay(G, {("t", 0): 2}, forget_keys=True, now=2.0)
        assert forgotten == {("t", 0): 4}
        assert claimed(store, first) == keys(first[2:])

    def test_version_4_keys_stay_processed_after_the_migration(
            self, database: StoreUnderTest) -> None:
        old = digests(3)
        version_4_with(database, self.schema_v4, old)
        store = self.opened(database)
        try:
            assert database.schema_version == self.schema_version
            assert generations(database) == [(0, 3, True)]
            store.load_group(G)
            fresh = digests(2, 10)
            assert claimed(store, old + fresh) == keys(fresh)
            assert [g[0] for g in generations(database)] == [0, 1]
            assert database.scalar("SELECT count(*) FROM consumer_processed_keys "
                                   "WHERE generation = 1") == 2
            assert store.ensure_schema(G) is None, "migrated once"
        finally:
            store.close()
