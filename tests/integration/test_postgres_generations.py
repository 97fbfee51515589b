"""Generations of processed keys in the PostgreSQL store, on a real server: a key claimed in a
sealed generation is never claimed again, by this store, another member or a message pool,
including across a seal made under them; a generation is sealed only when no claim is open;
deleted keys still count at the seal; the retention drops sealed generations whole; version
4's keys stay processed after the migration."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from consumer_process import wait_for

from consumer.message import StoreLike
from consumer.store import Claim, postgres_generations
from consumer.store.base import POSTGRES_SCHEMA_VERSION
from consumer.store.postgres import PostgresStore
from tests.support.runs_contract import TOPIC_IDS
from tests.support.store_v4 import POSTGRESQL as SCHEMA_V4
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration

G = "g"


def digests(count: int, first_offset: int = 0) -> list[Claim]:
    """Claims of header-style keys: random digests, one row each."""
    return [Claim(os.urandom(16), "t", 0, first_offset + n) for n in range(count)]


def keys(batch: list[Claim]) -> set[bytes]:
    return {c.key for c in batch}


def claimed(store: PostgresStore, batch: list[Claim], now: float = 1.0) -> set[bytes]:
    store.begin()
    new = set(store.claim(G, batch, now))
    store.commit()
    return new


def generations(database: StoreUnderTest) -> list[tuple[int, int, bool]]:
    return [(n, count, sealed) for n, count, sealed in database.query(
        "SELECT generation, keys, newest_at IS NOT NULL FROM consumer_key_generations "
        "WHERE group_id = %s ORDER BY generation", (G,))]


@pytest.fixture
def database(tmp_path: Path, postgres_dsn: str) -> Iterator[StoreUnderTest]:
    with fresh_store("postgresql", tmp_path, postgres_dsn) as found:
        yield found


def opened(database: StoreUnderTest, generation_keys: int = 4) -> PostgresStore:
    store = PostgresStore(database.url, connect_timeout=5, generation_keys=generation_keys)
    store.ensure_schema(G)
    store.use_topic_ids(TOPIC_IDS)
    return store


@pytest.fixture
def store(database: StoreUnderTest) -> Iterator[PostgresStore]:
    store = opened(database)
    yield store
    store.close()


def test_a_full_generation_is_sealed_and_its_keys_stay_processed(
        store: PostgresStore, database: StoreUnderTest) -> None:
    first, second = digests(4), digests(4, 4)
    assert claimed(store, first) == keys(first)
    assert claimed(store, second) == keys(second)
    assert generations(database) == [(1, 4, True), (2, 0, False)]
    again = first[:2] + second[2:] + digests(2, 8)
    assert claimed(store, again) == keys(again[4:])
    assert claimed(store, first + second) == set()
    assert database.scalar("SELECT count(*) FROM consumer_processed_keys") == 10


def test_another_member_never_claims_a_sealed_key_again(database: StoreUnderTest) -> None:
    """The other member read the generations before the seal: its claim names a generation
    that is no longer current, fails, reads the sealed one and skips its keys."""
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
        store: PostgresStore, database: StoreUnderTest) -> None:
    """The rotation never waits: with a claim open elsewhere it is deferred, and the claims
    go on into the current generation; once nothing is open, it is sealed."""
    claimed(store, digests(4))
    busy = opened(database)
    try:
        busy.begin()
        held = digests(1, 500)
        busy.claim(G, held, 1.0)
        assert claimed(store, digests(1, 4))
        assert generations(database) == [(1, 0, False)], "sealed under an open claim"
        busy.commit()
        claimed(store, digests(1, 5))  # an eighth of four keys later: tried again
        assert [g[2] for g in generations(database)] == [True, False]
        assert claimed(store, held) == set()
    finally:
        busy.close()


def _waited_for_then_commit(busy: PostgresStore, database: StoreUnderTest) -> None:
    """Commit ``busy``'s batch once a session waits for an advisory lock (the seal)."""
    wait_for(lambda: database.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND wait_event = 'advisory'") > 0, timeout=10, what="the seal waiting")
    busy.commit()


def test_an_overdue_seal_waits_for_the_claims_open_then(
        store: PostgresStore, database: StoreUnderTest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Members claiming one batch after another seldom leave a moment with no claim open:
    once the generation holds a quarter more keys than its share, the seal waits for the
    claims open at the time."""
    monkeypatch.setattr(postgres_generations, "ROTATION_WAIT_MS", 10_000)
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
        store: PostgresStore, database: StoreUnderTest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_generations, "ROTATION_WAIT_MS", 200)
    claimed(store, digests(5))
    busy = opened(database)
    try:
        busy.begin()
        busy.claim(G, digests(1, 500), 1.0)
        began = time.monotonic()
        assert claimed(store, digests(1, 5))
        assert time.monotonic() - began >= 0.2, "the seal did not wait"
        assert generations(database) == [(1, 0, False)]
    finally:
        busy.close()


def test_keys_forgotten_before_the_seal_still_count(
        store: PostgresStore, database: StoreUnderTest) -> None:
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


def test_a_pool_never_claims_a_sealed_key_again(
        store: PostgresStore, database: StoreUnderTest) -> None:
    """A message pool keeps no filters: it asks the sealed generations about every key, and
    a claim naming a generation sealed meanwhile is made again."""
    pool = store.message_transactions(2)
    pool.open()
    applied: list[int] = []

    def work(db: StoreLike) -> None:
        applied.append(1)

    try:
        before = digests(1, 300)
        assert pool.apply(G, before[0], 1.0, work)  # its view: generation 1 current
        first = digests(4)
        claimed(store, first)
        claimed(store, digests(1, 4))  # seals generation 1 (five keys)
        assert [g[2] for g in generations(database)] == [True, False]
        assert not pool.apply(G, first[0], 1.0, work)
        assert not pool.apply(G, before[0], 1.0, work)
        outcomes = pool.apply_batch(G, first[1:] + digests(1, 9), 1.0, [work] * 4)
        assert outcomes == [False, False, False, True]
        assert len(applied) == 2
    finally:
        pool.close()


def test_retention_drops_sealed_generations_whole(
        store: PostgresStore, database: StoreUnderTest) -> None:
    claimed(store, digests(4), now=10.0)
    claimed(store, digests(2, 4), now=20.0)  # seals generation 1 (newest key at 10.0)
    claimed(store, digests(2, 6), now=30.0)
    assert store.purge_processed_keys(G, 15.0, 100) == 4
    assert [g[0] for g in generations(database)] == [2]
    assert store.purge_processed_keys(G, 25.0, 100) == 2
    assert database.scalar("SELECT forgotten FROM consumer_key_generations") == 2
    assert database.scalar("SELECT count(*) FROM consumer_processed_keys") == 2


def test_replay_forgets_keys_in_every_generation(
        store: PostgresStore, database: StoreUnderTest) -> None:
    first = digests(4)
    claimed(store, first)
    claimed(store, digests(2, 4))
    forgotten = store.replay(G, {("t", 0): 2}, forget_keys=True, now=2.0)
    assert forgotten == {("t", 0): 4}
    assert claimed(store, first) == keys(first[2:])


def test_version_4_keys_stay_processed_after_the_migration(
        database: StoreUnderTest) -> None:
    database.write(SCHEMA_V4)
    old = digests(3)
    with psycopg.connect(database.url, autocommit=True) as db:
        for c in old:
            db.execute("INSERT INTO consumer_processed_keys (group_id, key, topic, partition, "
                       "\"offset\", processed_at) VALUES (%s, %s, 't', 0, %s, 5.0)",
                       (G, c.key, c.offset))
    store = opened(database)
    try:
        assert database.schema_version == POSTGRES_SCHEMA_VERSION
        assert generations(database) == [(0, 3, True)]
        store.load_group(G)
        fresh = digests(2, 10)
        assert claimed(store, old + fresh) == keys(fresh)
        assert [g[0] for g in generations(database)] == [0, 1]
        assert database.scalar("SELECT count(*) FROM consumer_processed_keys "
                               "WHERE generation = 1") == 2
    finally:
        store.close()
