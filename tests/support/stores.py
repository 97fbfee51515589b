"""A fresh store per test, on every backend: a SQLite file, a PostgreSQL schema or a MariaDB
database of its own."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from consumer.store.base import (
    MARIADB_SCHEMA_VERSION,
    POSTGRES_SCHEMA_VERSION,
    SCHEMA_VERSION,
    SQLITE_SCHEMA_VERSION,
)
from consumer.store.postgres import SCHEMA_LOCK
from tests.support.processed_keys import ProcessedKey, processed_keys


@dataclass(frozen=True)
class StoreUnderTest:
    """A store URL for the consumer, and a way for the test to query the same database."""

    backend: str
    url: str

    @property
    def generation_keys_setting(self) -> str:
        """The ``store`` setting sizing a generation of processed keys on this backend."""
        return {"sqlite": "sqlite_generation_keys",
                "postgresql": "postgres_generation_keys",
                "mariadb": "mariadb_generation_keys"}[self.backend]

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read query (``%s`` placeholders) in its own connection."""
        if self.backend == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            with sqlite3.connect(path) as db:
                return db.execute(sql.replace("%s", "?"), params).fetchall()
        if self.backend == "mariadb":
            return _on_mariadb(self.url, sql, params)
        with psycopg.connect(self.url) as db:
            return db.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.query(sql, params)[0][0]

    def execute(self, sql: str) -> None:
        """Run one statement that returns no rows (DDL) in its own committed transaction."""
        if self.backend == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            with sqlite3.connect(path) as db:
                db.executescript(sql)
            return
        if self.backend == "mariadb":
            _on_mariadb(self.url, sql, ())
            return
        with psycopg.connect(self.url) as db:
            db.execute(sql)


    def write(self, statements: Sequence[str],
              rows: Sequence[tuple[str, tuple[Any, ...]]] = ()) -> None:
        """Run DDL, then inserts (``%s`` placeholders), in one committed transaction (SQLite
        and PostgreSQL: e.g. a store as an older version left it; on MariaDB, where DDL commits
        on its own, one statement after the other)."""
        if self.backend == "mariadb":
            from consumer.store.mariadb import MariaDBStore

            store = MariaDBStore(self.url)
            try:
                for statement in statements:
                    store.execute(statement)
                for sql, params in rows:
                    store.execute(sql, params)
            finally:
                store.close()
            return
        if self.backend == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as db:
                for statement in statements:
                    db.execute(statement)
                for sql, params in rows:
                    db.execute(sql.replace("%s", "?"), params)
            return
        with psycopg.connect(self.url) as db:
            for statement in statements:
                db.execute(statement)  # type: ignore[arg-type]
            for sql, params in rows:
                db.execute(sql, params)  # type: ignore[arg-type]

    @property
    def schema_version(self) -> int:
        """The version of our tables the consumer writes on this backend."""
        return {"sqlite": SQLITE_SCHEMA_VERSION,
                "postgresql": POSTGRES_SCHEMA_VERSION,
                "mariadb": MARIADB_SCHEMA_VERSION}.get(self.backend, SCHEMA_VERSION)

    def processed_keys(self, group: str | None = None) -> list[ProcessedKey]:
        """Every processed key (of ``group``), a run's keys one each."""
        return processed_keys(self.query, backend=self.backend, group=group)

    def processed_key_count(self, group: str | None = None) -> int:
        return len(self.processed_keys(group))

    def checkpoints(self) -> dict[str, int | None]:
        """Each topic's checkpoint row (one partition per topic), or {} while the consumer has
        not created its tables yet."""
        try:
            return dict(self.query("SELECT topic, next_offset FROM consumer_checkpoints"))
        except Exception:  # no such table yet
            return {}


def _on_mariadb(url: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """One statement on a connection of the product's own (ANSI_QUOTES, READ COMMITTED)."""
    from consumer.store.mariadb import MariaDBStore

    store = MariaDBStore(url)
    try:
        return store.execute(sql, params).fetchall()
    finally:
        store.close()


@contextmanager
def fresh_store(backend: str, tmp_path: Path, postgres_dsn: str | None) -> Iterator[StoreUnderTest]:
    """``postgres_dsn``: the server's address, a MariaDB ``mysql://`` URL for "mariadb"."""
    if backend == "sqlite":
        yield StoreUnderTest("sqlite", f"sqlite:///{tmp_path / 'store.db'}")
        return
    if backend == "mariadb":
        if postgres_dsn is None:
            raise AssertionError("the mariadb backend needs the mariadb_url fixture")
        with _mariadb_database(postgres_dsn) as url:
            yield StoreUnderTest("mariadb", url)
        return
    if postgres_dsn is None:
        raise AssertionError("the postgresql backend needs the postgres_dsn fixture")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        install_btree_gist(admin)
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield StoreUnderTest("postgresql", _url(postgres_dsn, schema))
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def install_btree_gist(admin: psycopg.Connection[Any]) -> None:
    """btree_gist in the database's public schema, once: a store creates it where it is
    missing, in the first schema of its search path, and a test's schema is dropped after it
    (with whatever depends on it, other tests' runs tables too)."""
    with admin.transaction():
        admin.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        admin.execute("CREATE EXTENSION IF NOT EXISTS btree_gist SCHEMA public")


def _url(dsn: str, schema: str) -> str:
    """The DSN, as a URL whose connections use ``schema`` first."""
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options=-csearch_path%3D{schema}"


@contextmanager
def _mariadb_database(server_url: str) -> Iterator[str]:
    """A database of its own on the MariaDB server; the URL names it."""
    import urllib.parse

    database = f"t_{uuid.uuid4().hex[:12]}"
    _on_mariadb(server_url, f"CREATE DATABASE {database}", ())
    address = urllib.parse.urlsplit(server_url)
    try:
        yield urllib.parse.urlunsplit((address.scheme, address.netloc, f"/{database}", "", ""))
    finally:
        _on_mariadb(server_url, f"DROP DATABASE {database}", ())
