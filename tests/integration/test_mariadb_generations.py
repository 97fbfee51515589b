"""Generations of processed keys in the MariaDB store, on a real server: the contract
(tests/support/generations_contract.py) with the rotation row's InnoDB locks; forgetting keys
waits for no other claim; a migration cut short between its statements completes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.store import Claim, Store, mariadb_generations
from consumer.store.base import MARIADB_SCHEMA_VERSION
from consumer.store.mariadb import MariaDBStore
from tests.support.generations_contract import (
    G,
    ServerGenerationsContract,
    claimed,
    digests,
    generations,
    keys,
    version_4_with,
)
from tests.support.store_v4 import MARIADB as SCHEMA_V4
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration


@pytest.fixture
def database(tmp_path: Path, mariadb_url: str) -> Iterator[StoreUnderTest]:
    with fresh_store("mariadb", tmp_path, mariadb_url) as found:
        yield found


class TestMariaDBGenerations(ServerGenerationsContract):
    schema_v4 = SCHEMA_V4
    schema_version = MARIADB_SCHEMA_VERSION

    def opened(self, database: StoreUnderTest, generation_keys: int = 4) -> Store:
        return self.told(MariaDBStore(database.url, connect_timeout=5,
                                      generation_keys=generation_keys))

    def waiting_for_the_seal(self, database: StoreUnderTest) -> bool:
        return bool(database.scalar("SELECT count(*) FROM information_schema.innodb_trx "
                                    "WHERE trx_state = 'LOCK WAIT'"))

    def seal_waits(self, monkeypatch: pytest.MonkeyPatch, *, long: bool) -> float:
        return 1.0  # WAIT 1: InnoDB counts whole seconds, and the shortest is the longest

    def test_a_batch_forgetting_keys_while_others_claim_waits_for_none(
            self, store: Store, database: StoreUnderTest) -> None:
        """Forgetting counts into the generation's row, not the rotation lock's: a batch that
        releases a key while another member's batch is open is not held up by it."""
        mine = digests(2)
        claimed(store, mine)
        busy = self.opened(database)
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

    def test_a_migration_cut_short_completes_at_the_next_start(
            self, database: StoreUnderTest) -> None:
        """MariaDB commits each DDL statement on its own: a start that altered the table and
        stopped before the version row finishes at the next one."""
        old = digests(2)
        version_4_with(database, SCHEMA_V4, old)
        database.execute(mariadb_generations.ALTER_TO_5)
        store = self.opened(database)
        try:
            assert database.schema_version == MARIADB_SCHEMA_VERSION
            assert generations(database) == [(0, 2, True)]
            assert claimed(store, old) == set()
        finally:
            store.close()

    def test_a_generation_is_read_whole_in_pages_whatever_its_keys_length(
            self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        """Digests travel joined, other keys in hex (a version-3 store's ordered coordinates
        keys, 18 bytes); every key comes back once across the pages' edges."""
        monkeypatch.setattr(mariadb_generations, "PAGE_KEYS", 3)
        batch = [Claim(os.urandom(size), "t", 0, n)
                 for n, size in enumerate([16, 16, 18, 1, 64, 16, 16, 33, 16, 16])]
        store.begin()
        store.claim(G, batch, 1.0)
        store.commit()
        assert isinstance(store, MariaDBStore)
        read = list(mariadb_generations.keys_of(store.connection, G, 1))
        assert sorted(read) == sorted(keys(batch))
        assert list(mariadb_generations.keys_of(store.connection, G, 2)) == []
