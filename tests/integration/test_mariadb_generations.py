"""Generations of processed keys in the MariaDB store, on a real server: a key claimed in a
sealed generation is never claimed again, by this store or another member, including across a
seal made under them; a generation is sealed only when no claim is open; deleted keys still
count at the seal; the retention drops sealed generations whole; version 4's keys stay
processed after the migration."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from consumer_process import wait_for

from consumer.store import Claim
from consumer.store.base import MARIADB_SCHEMA_VERSION
from consumer.store.mariadb import MariaDBStore
from tests.support.runs_contract import TOPIC_IDS
from tests.support.store_v4 import MARIADB as SCHEMA_V4
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration

G = "g"


def digests(count: int, first_offset: int = 0) -> list[Claim]:
    """Claims of header-style keys: random digests, one row each."""
    return [Claim(os.urandom(16), "t", 0, first_offset + n) for n in range(count)]


def keys(batch: list[Claim]) -> set[bytes]:
    return {c.key for c in batch}


def claimed(store: MariaDBStore, batch: list[Claim], now: float = 1.0) -> set[bytes]:
    store.begin()
    new = set(store.claim(G, batch, now))
    store.commit()
    return new


def generations(database: StoreUnderTest) -> list[tuple[int, int, bool]]:
    return [(n, count, bool(sealed)) for n, count, sealed in database.query(
        'SELECT generation, "keys", newest_at IS NOT NULL FROM consumer_key_generations '
        "WHERE group_id = %s ORDER BY generation", (G,))]


@pytest.fixture
def database(tmp_path: Path, mariadb_url: str) -> Iterator[StoreUnderTest]:
    with fresh_store("mariadb", tmp_path, mariadb_url) as found:
        yield found


def opened(database: StoreUnderTest, generation_keys: int = 4) -> MariaDBStore:
    store = MariaDBStore(database.url, connect_timeout=5, generation_keys=generation_keys)
    store.ensure_schema(G)
    store.use_topic_ids(TOPIC_IDS)
    return store


@pytest.fixture
def store(database: StoreUnderTest) -> Iterator[MariaDBStore]:
    store = opened(database)
    yield store
    store.close()


def test_a_full_generation_is_sealed_and_its_keys_stay_processed(
        store: MariaDBStore, database: StoreUnderTest) -> None:
    first, second = digests(4), digests(4, 4)
    assert claimed(store, first) == keys(first)
    assert claimed(store, second) == keys(second)
    assert generations(database) == [(1, 4, True), (2, 0, False)]
    again = first[:2] + second[2:] + digests(2, 8)
    assert claimed(store, again) == keys(again[4:])
    assert claimed(store, first + second) == set()
    assert database.scalar("SELECT count(*) FROM consumer_processed_keys") == 10


def test_another_member_never_claims_a_sealed_key_again(database: StoreUnderTest) -> None:
    """The other member knew generation 1 as current; it was sealed since: its next batch
    reads the sealed generation and skips its keys."""
    one, other = opened(database), opened(database)
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


def test_a_member_started_later_reads_the_sealed_generations(database: StoreUnderTest) -> None:
    one = opened(database)
    first = digests(4)
    claimed(one, first)
    claimed(one, digests(4, 4))  # seals generation 1 first
    one.close()
    later = opened(database)
    try:
        later.load_group(G)
        fresh = digests(1, 50)
        assert claimed(later, first[:2] + fresh) == keys(fresh)
    finally:
        later.close()


def test_no_generation_is_sealed_while_another_session_claims(
        store: MariaDBStore, database: StoreUnderTest) -> None:
    """The rotation does not wait until overdue: with a claim open elsewhere it is deferred,
    and the claims go on into the current generation; once nothing is open, it is sealed."""
    claimed(store, digests(4))
    busy = opened(database)
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


def _waited_for_then_commit(busy: MariaDBStore, database: StoreUnderTest) -> None:
    """Commit ``busy``'s batch once a session waits for a row lock (the seal)."""
    wait_for(lambda: database.scalar(
        "SELECT count(*) FROM information_schema.innodb_trx "
        "WHERE trx_state = 'LOCK WAIT'") > 0, timeout=10, what="the seal waiting")
    busy.commit()


def test_an_overdue_seal_waits_for_the_claims_open_then(
        store: MariaDBStore, database: StoreUnderTest) -> None:
    """Members claiming one batch after another seldom leave a moment with no claim open:
    once the generation holds a quarter more keys than its share, the seal waits for the
    claims open at the time."""
    claimed(store, digests(5))  # four keys a generation: five are a quarter more
    busy = opened(database)
    try:
        busy.begin()
        held = digests(1, 500)
        busy.claim(G, held, 1.0)
        ender = threading.Thread(target=_waited_for_then_commit, args=(busy, database))
        ender.start()
        assert claimed(store, digests(1, 5))
        ender.join()
        assert generations(database)[0] == (1, 6, True)
        assert claimed(store, held) == set()
    finally:
        busy.close()


def test_an_overdue_seal_gives_up_after_its_wait(
        store: MariaDBStore, database: StoreUnderTest) -> None:
    claimed(store, digests(5))
    busy = opened(database)
    try:
        busy.begin()
        busy.claim(G, digests(1, 500), 1.0)
        began = time.monotonic()
        assert claimed(store, digests(1, 5))
        assert time.monotonic() - began >= 1.0, "the seal did not wait"
        assert generations(database) == [(1, 0, False)]
    finally:
        busy.close()


def test_keys_forgotten_before_the_seal_still_count(
        store: MariaDBStore, database: StoreUnderTest) -> None:
    """A seal counts the keys ever claimed into the generation, so a member that claimed as
    many keys itself as are left still reads the generation if another claimed some."""
    other = opened(database)
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
        third = opened(database)
        try:
            claimed(third, digests(1, 200))
            assert claimed(third, theirs) == set()
            assert claimed(third, mine[:2]) == keys(mine[:2]), "forgotten keys are new again"
        finally:
            third.close()
    finally:
        other.close()


def test_a_batch_forgetting_keys_while_others_claim_waits_for_none(
        store: MariaDBStore, database: StoreUnderTest) -> None:
    """Forgetting counts into the generation's row, not the rotation lock's: a batch that
    releases a key while another member's batch is open is not held up by it."""
    mine = digests(2)
    claimed(store, mine)
    busy = opened(database)
    try:
        busy.begin()
        busy.claim(G, digests(1, 500), 1.0)
        store.begin()
        store.claim(G, digests(1, 10), 1.0)
        began = time.monotonic()
        store.unclaim(G, [mine[0].key])
        store.commit()
        assert time.monotonic() - began < 1.0
        busy.commit()
    finally:
        busy.close()
    assert database.scalar("SELECT forgotten FROM consumer_key_generations") == 1


def test_retention_drops_sealed_generations_whole(
        store: MariaDBStore, database: StoreUnderTest) -> None:
    claimed(store, digests(4), now=10.0)
    claimed(store, digests(2, 4), now=20.0)  # seals generation 1 (newest key at 10.0)
    claimed(store, digests(2, 6), now=30.0)
    assert store.purge_processed_keys(G, 15.0, 100) == 4
    assert [g[0] for g in generations(database)] == [2]
    assert store.purge_processed_keys(G, 25.0, 100) == 2
    assert database.scalar("SELECT forgotten FROM consumer_key_generations") == 2
    assert database.scalar("SELECT count(*) FROM consumer_processed_keys") == 2


def test_replay_forgets_keys_in_every_generation(
        store: MariaDBStore, database: StoreUnderTest) -> None:
    first = digests(4)
    claimed(store, first)
    claimed(store, digests(2, 4))
    forgotten = store.replay(G, {("t", 0): 2}, forget_keys=True, now=2.0)
    assert forgotten == {("t", 0): 4}
    assert claimed(store, first) == keys(first[2:])


def test_version_4_keys_stay_processed_after_the_migration(
        database: StoreUnderTest) -> None:
    old = digests(3)
    database.write(SCHEMA_V4, [(
        'INSERT INTO consumer_processed_keys (group_id, "key", topic, "partition", "offset", '
        "processed_at) VALUES (%s, %s, 't', 0, %s, 5.0)", (G, c.key, c.offset)) for c in old])
    store = opened(database)
    try:
        assert database.schema_version == MARIADB_SCHEMA_VERSION
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


def test_a_migration_cut_short_completes_at_the_next_start(
        database: StoreUnderTest) -> None:
    """MariaDB commits each DDL statement on its own: a start that altered the table and
    stopped before the version row finishes at the next one."""
    old = digests(2)
    database.write(SCHEMA_V4, [(
        'INSERT INTO consumer_processed_keys (group_id, "key", topic, "partition", "offset", '
        "processed_at) VALUES (%s, %s, 't', 0, %s, 5.0)", (G, c.key, c.offset)) for c in old])
    from consumer.store import mariadb_generations
    database.execute(mariadb_generations.ALTER_TO_5)
    store = opened(database)
    try:
        assert database.schema_version == MARIADB_SCHEMA_VERSION
        assert generations(database) == [(0, 2, True)]
        assert claimed(store, old) == set()
    finally:
        store.close()
