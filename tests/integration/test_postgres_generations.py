"""Generations of processed keys in the PostgreSQL store, on a real server: the contract
(tests/support/generations_contract.py) with PostgreSQL's advisory rotation lock, and a message
pool, which keeps no filters, never claiming a sealed key again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consumer_process import wait_for

from consumer.message import StoreLike
from consumer.store import Store, postgres_generations, postgres_mark
from consumer.store.base import POSTGRES_SCHEMA_VERSION
from consumer.store.postgres import PostgresStore
from tests.support.generations_contract import (
    G,
    ServerGenerationsContract,
    claimed,
    digests,
    generations,
)
from tests.support.store_v4 import POSTGRESQL as SCHEMA_V4
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration


@pytest.fixture
def database(tmp_path: Path, postgres_dsn: str) -> Iterator[StoreUnderTest]:
    with fresh_store("postgresql", tmp_path, postgres_dsn) as found:
        yield found


class TestPostgresGenerations(ServerGenerationsContract):
    schema_v4 = SCHEMA_V4
    schema_version = POSTGRES_SCHEMA_VERSION

    def opened(self, database: StoreUnderTest, generation_keys: int = 4) -> Store:
        return self.told(PostgresStore(database.url, connect_timeout=5,
                                       generation_keys=generation_keys))

    def waiting_for_the_seal(self, database: StoreUnderTest) -> bool:
        return bool(database.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND wait_event = 'advisory'"))

    def seal_waits(self, monkeypatch: pytest.MonkeyPatch, *, long: bool) -> float:
        wait_ms = 10_000 if long else 200
        monkeypatch.setattr(postgres_generations, "ROTATION_WAIT_MS", wait_ms)
        return wait_ms / 1000

    def test_a_pool_never_claims_a_sealed_key_again(
            self, store: Store, database: StoreUnderTest) -> None:
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

    def test_a_seal_or_a_stale_claim_opens_the_batch_once_more(
            self, store: Store, database: StoreUnderTest,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """After the seal between the batch's empty transaction and the claiming one, and
        after a claim that found its generation sealed by another member, the batch opens its
        transaction once more, after reading the generations: not once before reading them
        too."""
        openings: list[str] = []
        begin = postgres_mark.begin

        def counted(db: Any, opening: str = postgres_mark.OPENING) -> bool:
            openings.append(opening)
            return begin(db, opening)

        claimed(store, digests(4))
        monkeypatch.setattr(postgres_mark, "begin", counted)
        assert claimed(store, digests(1, 4))  # seals generation 1, then claims
        assert [g[2] for g in generations(database)] == [True, False]
        assert len(openings) == 2, "the batch's own opening, and one after the seal"
        other = self.opened(database)
        try:
            claimed(other, digests(4, 10))
            claimed(other, digests(1, 14))  # seals generation 2 under this store's view
        finally:
            other.close()
        openings.clear()
        assert claimed(store, digests(1, 20))
        assert len(openings) == 2, "the batch's own opening, and one after reading again"

    def test_claims_that_never_all_end_at_once_do_not_starve_the_seal(
            self, store: Store, database: StoreUnderTest) -> None:
        """Two members claim one batch after another, each batch open three times the seal's
        first wait, the second half a batch behind the first: at any moment one of them still
        has one and a half waits to go, so a seal waiting the same moment each time never gets
        the lock. Each miss doubles the wait, and the generation is sealed."""
        hold = 3 * postgres_generations.ROTATION_WAIT_MS / 1000
        stop = threading.Event()
        claims = [0, 0]
        members = [self.opened(database, generation_keys=10**6) for _ in range(2)]  # no seals
        start = time.monotonic() + 0.5

        def claim_one_batch_after_another(index: int) -> None:
            busy, offset = members[index], 1_000 * (index + 1)
            ends = start + index * hold / 2
            stop.wait(ends - time.monotonic())
            while not stop.is_set():
                busy.begin()
                busy.claim(G, digests(1, offset), 1.0)
                claims[index] += 1
                ends += hold  # on a clock of its own: the half-batch lag does not drift
                stop.wait(ends - time.monotonic())
                busy.commit()
                offset += 1

        claimed(store, digests(4))
        threads = [threading.Thread(target=claim_one_batch_after_another, args=(i,))
                   for i in range(2)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: claims[1] > 0, timeout=10, what="the second member's claim")
            for offset in range(4, 16):  # each claim tries the seal: overdue from the fifth key
                assert claimed(store, digests(1, offset))
                if generations(database)[0][2]:
                    break
            assert generations(database)[0][2], "every seal gave up: the generation is open"
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            for member in members:
                member.close()
