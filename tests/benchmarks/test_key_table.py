"""The processed-keys table benchmark starts every run from the same place: the runs' own keys
gone, whichever rows held them, the ballast kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.key_table import fill, forget_run, prepare_schema
from consumer.store import Claim, open_store
from consumer.store.sqlite import SQLiteStore
from tests.support.stores import fresh_store


def test_forget_run_leaves_none_of_the_runs_keys_on_sqlite(tmp_path: Path) -> None:
    """The consumer's claims of 100 consecutive offsets are a run of keys on SQLite: forgotten
    with the rest, so the next run claims them afresh. The ballast (another topic) stays."""
    path = tmp_path / "store.db"
    store = SQLiteStore(str(path))
    store.ensure_schema()
    store.begin()
    store.claim("g", [Claim(o.to_bytes(16, "big"), "run-topic", 0, o) for o in range(100)], 1.0)
    store.claim("g", [Claim(b"\xff" * 16, "ballast", 0, 0)], 1.0)
    store.commit()

    forget_run("sqlite", str(path), "g", "run-topic")

    store.begin()
    again = store.claim("g", [Claim(o.to_bytes(16, "big"), "run-topic", 0, o)
                              for o in range(100)], 2.0)
    ballast = store.claim("g", [Claim(b"\xff" * 16, "ballast", 0, 0)], 2.0)
    store.rollback()
    assert len(again) == 100
    assert ballast == set()


def test_the_sqlite_ballast_is_sealed_generations_the_store_honours(
        tmp_path: Path) -> None:
    """As the store leaves 7 keys in generations of 3: two full sealed ones and one of 1. A
    run's keys go into a current generation after them, and forget_run takes it away again."""
    path = tmp_path / "store.db"
    url = f"sqlite:///{path}"
    prepare_schema(url, "g")
    fill("sqlite", url, "g", 7, generation_keys=3)
    store = SQLiteStore(str(path), generation_keys=3)
    store.ensure_schema("g")
    rows = store.execute("SELECT generation, keys, newest_at IS NOT NULL "
                         "FROM consumer_key_generations ORDER BY generation").fetchall()
    assert rows == [(1, 3, 1), (2, 3, 1), (3, 1, 1)]
    ballast = [bytes(k) for (k,) in store.execute(
        "SELECT key FROM consumer_processed_keys ORDER BY generation")]
    store.begin()
    assert store.claim("g", [Claim(k, "ballast", 0, n) for n, k in enumerate(ballast)],
                       1.0) == set()
    assert store.claim("g", [Claim(b"\x01" * 16, "run-topic", 0, 0)], 1.0) == {b"\x01" * 16}
    store.commit()
    assert store.execute("SELECT max(generation) FROM consumer_key_generations"
                         ).fetchone() == (4,)
    forget_run("sqlite", url, "g", "run-topic")
    assert store.execute("SELECT max(generation) FROM consumer_key_generations"
                         ).fetchone() == (3,)


#: A server store's name in benchmarks.key_table, its backend and its URL's fixture.
SERVERS = {"postgres": ("postgresql", "postgres_dsn"), "mariadb": ("mariadb", "mariadb_url")}


@pytest.mark.integration
@pytest.mark.parametrize("server", list(SERVERS))
def test_a_server_ballast_is_sealed_generations_the_store_honours(
        tmp_path: Path, request: pytest.FixtureRequest, server: str) -> None:
    """The same on a real PostgreSQL and MariaDB server: the store reads the sealed ballast
    into its filters and refuses every key of it; forget_run leaves the ballast's generations,
    and the next run's store starts a generation after them."""
    backend, url_fixture = SERVERS[server]
    with fresh_store(backend, tmp_path, request.getfixturevalue(url_fixture)) as database:
        prepare_schema(database.url, "g")
        fill(server, database.url, "g", 7, generation_keys=3)
        assert database.query('SELECT generation, "keys", newest_at IS NOT NULL FROM '
                              "consumer_key_generations ORDER BY generation") == [
            (1, 3, True), (2, 3, True), (3, 1, True)]
        ballast = [bytes(k) for (k,) in database.query(
            'SELECT "key" FROM consumer_processed_keys ORDER BY generation')]
        new = Claim(b"\x01" * 16, "run-topic", 0, 0)
        store = open_store(database.url, postgres_generation_keys=3, mariadb_generation_keys=3)
        try:
            store.ensure_schema("g")
            store.load_group("g")
            store.begin()
            assert store.claim("g", [Claim(k, "ballast", 0, n) for n, k in enumerate(ballast)],
                               1.0) == set()
            assert store.claim("g", [new], 1.0) == {new.key}
            store.commit()
        finally:
            store.close()
        assert database.scalar("SELECT max(generation) FROM consumer_key_generations") == 4
        forget_run(server, database.url, "g", "run-topic")
        assert database.scalar("SELECT max(generation) FROM consumer_key_generations") == 3
        again = open_store(database.url, postgres_generation_keys=3, mariadb_generation_keys=3)
        try:
            again.load_group("g")
            again.begin()
            assert again.claim("g", [new], 1.0) == {new.key}
            again.commit()
        finally:
            again.close()
