"""``python -m benchmarks.key_generations``: can generations of processed-keys tables keep a
batch's claim as cheap with 10 million keys held as with none? No broker, databases only.

A batch claims ``--batch-keys`` fresh random 16-byte keys in one durable transaction, as a store
checkpoint does (PostgreSQL: ``BEGIN``, one ``INSERT ... SELECT ... FROM unnest(...) ON CONFLICT
DO NOTHING RETURNING key``, ``COMMIT``; SQLite: ``BEGIN IMMEDIATE``, one prepared ``INSERT ...
ON CONFLICT DO NOTHING`` per key, ``COMMIT``, in WAL mode with ``synchronous=FULL`` and a 64 MB
page cache). Each store runs four variants, each in a database of its own:

* ``empty``: the processed-keys table, empty at the start of every run (the goal's yardstick);
* ``one-table``: the same table holding ``--keys`` keys: every random key dirties an index page
  of its own, which is what costs once the index outgrows the cache;
* ``generations-query``: the keys go into an empty *current generation* table, and in the same
  transaction the *sealed generation* (a read-only table holding ``--keys`` keys) is asked
  which of the inserted keys it holds (PostgreSQL: one ``key = ANY(...)``; SQLite: one prepared
  ``SELECT`` per key);
* ``generations-filter``: the same, but the sealed generation is asked only about the keys an
  in-memory Bloom filter of it (:class:`Bloom`, built once by reading the sealed keys) says it
  may hold, before the insert, which leaves them out: on PostgreSQL in the insert's own
  statement (one round trip a batch, as the one table's); the filter's checks are inside the
  batch's time;
* ``generation-column``: the filter's way, but both generations are one table whose primary
  key leads with a generation number, ``(group_id, generation, key)``: the sealed keys are
  generation 0, the measured ones generation 1. A new key's index page is then one of the
  current generation's few, as in a table of its own, and no claim needs a table name.

Every generation table is the one table's DDL under another name (primary key and age index).
The ballast is written in SQL: PostgreSQL ``decode(md5(i::text), 'hex')`` then ``VACUUM
ANALYZE`` (so the sealed table is read by index-only scans), SQLite ``randomblob(16)`` under a
1 GB page cache. The measured keys are ``os.urandom(16)``, never in the ballast.

A round runs each variant once, in the order above, ``--batches`` batches each; ``--rounds``
rounds. Before every run its database is reset: the tables that start empty are emptied
(PostgreSQL ``TRUNCATE``, SQLite ``DELETE``), the previous run's keys are deleted from the full
table (then PostgreSQL ``VACUUM``s it), and the store is checkpointed (PostgreSQL ``CHECKPOINT``,
unless ``--no-checkpoint``, so every run starts where full-page images are written again;
SQLite ``wal_checkpoint(TRUNCATE)``). A run's rate is its keys over the wall time of its batches;
the table gives the median (min-max) over the rounds, the median batch time, and the ratio of
the medians to ``empty``'s. Goal: within 10% of ``empty`` (ratio >= 0.9).

    python -m benchmarks.key_generations [--stores sqlite,postgres] [--keys 10000000]
        [--batches 300] [--batch-keys 1000] [--rounds 3] [--dir DIR] [--out FILE]

PostgreSQL needs ``CONSUMER_TEST_POSTGRES_DSN`` (a user that may create databases); the
databases it creates are dropped at the end.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import math
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchmarks.stats import Spread, met

STORES = ("sqlite", "postgres")
VARIANTS = ("empty", "one-table", "generations-query", "generations-filter",
            "generation-column")
GROUP = "bench"
TOPIC = "bench-topic"
BALLAST_TOPIC = "ballast"
GOAL_RATIO = 0.9
#: The one table, and the two generations (each the one table's DDL under its own name).
ONE_TABLE = "consumer_processed_keys"
CURRENT = "consumer_processed_keys_current"
SEALED = "consumer_processed_keys_sealed"
#: ``generation-column``'s one table, and its two generations as "table" names
#: (:func:`generation_of`).
GENERATIONS_TABLE = "consumer_processed_keys_gen"
CURRENT_COLUMN = f"{GENERATIONS_TABLE}:1"
SEALED_COLUMN = f"{GENERATIONS_TABLE}:0"
#: Keys per ``DELETE`` when a run's keys leave the full table.
FORGET_CHUNK = 10_000
SQLITE_CACHE_KB = 65_536
SQLITE_FILL_CACHE_KB = 1_000_000


def say(text: str) -> None:
    print(f"key-generations: {text}", file=sys.stderr, flush=True)


# --- the Bloom filter ------------------------------------------------------------------------


class Bloom:
    """A Bloom filter of 16-byte keys: at least ``bits_per_key`` bits a key in a
    ``bytearray`` of a power of two bits, and ``probes`` probes, each a slice of the key's own
    128 bits (read as a little-endian integer): the keys are random digests, so their bits
    serve as the hashes (``hash_name="slice"``); ``"blake2b"`` hashes them first
    (``blake2b(key, digest_size=16)``), for keys that are not uniform. Three probes and 16 bits
    a key: about 0.5% false positives, a third of the Python work of seven probes."""

    def __init__(self, keys: int, bits_per_key: int = 16, probes: int = 3,
                 hash_name: str = "slice") -> None:
        self.width = max(3, (keys * bits_per_key - 1).bit_length())
        if self.width * probes > 128:
            raise ValueError(f"{probes} probes of {self.width} bits exceed a 128-bit key")
        self.size = 1 << self.width
        self.bits = bytearray(self.size // 8)
        self.probes = probes
        self.hashed = hash_name == "blake2b"

    def _value(self, key: bytes) -> int:
        if self.hashed:
            key = hashlib.blake2b(key, digest_size=16).digest()
        return int.from_bytes(key, "little")

    def add_all(self, keys: Iterable[bytes]) -> int:
        """Adds the keys (one tight loop: 10 million keys take a while); how many."""
        bits, width, mask, value_of = self.bits, self.width, self.size - 1, self._value
        shifts = [probe * width for probe in range(self.probes)]
        added = 0
        for key in keys:
            value = value_of(key)
            for shift in shifts:
                position = (value >> shift) & mask
                bits[position >> 3] |= 1 << (position & 7)
            added += 1
        return added

    def flagged(self, keys: Iterable[bytes]) -> list[bytes]:
        """The keys the filter says it may hold (all it holds, and about 0.5% of the rest)."""
        bits, width, mask, value_of = self.bits, self.width, self.size - 1, self._value
        shifts = [probe * width for probe in range(self.probes)]
        maybe = []
        for key in keys:
            value = value_of(key)
            for shift in shifts:
                position = (value >> shift) & mask
                if not bits[position >> 3] >> (position & 7) & 1:
                    break
            else:
                maybe.append(key)
        return maybe

    def expected_fpr(self, keys: int) -> float:
        """The textbook false-positive rate with ``keys`` keys in: (1 - e^(-k n / m))^k."""
        return float((1 - math.exp(-self.probes * keys / self.size)) ** self.probes)


def generation_of(table: str) -> tuple[str, int | None]:
    """A "table" of ``generation-column`` (``name:generation``) as its table and generation;
    any other table, as itself and None."""
    name, _, generation = table.partition(":")
    return name, int(generation) if generation else None


# --- the databases ---------------------------------------------------------------------------


class Database(Protocol):
    """One variant's database, in autocommit, with the transaction made explicit."""

    def create_table(self, table: str) -> None: ...
    def fill(self, table: str, keys: int) -> None: ...
    def table_mb(self, table: str) -> float: ...
    def keys(self, table: str) -> Iterator[bytes]: ...
    def begin(self) -> None: ...
    def insert(self, table: str, keys: Sequence[bytes], offsets: Sequence[int],
               now: float) -> list[bytes]: ...
    def insert_unless_held(self, table: str, keys: Sequence[bytes], offsets: Sequence[int],
                           now: float, sealed: str, flagged: Sequence[bytes]) -> list[bytes]: ...
    def held(self, table: str, keys: Sequence[bytes]) -> set[bytes]: ...
    def commit(self) -> None: ...
    def empty_table(self, table: str) -> None: ...
    def forget(self, table: str, keys: Sequence[bytes]) -> None: ...
    def settle(self) -> None: ...
    def close(self) -> None: ...


POSTGRES_TABLE = """CREATE TABLE {table} (
    group_id text NOT NULL, key bytea NOT NULL, topic text NOT NULL,
    partition integer NOT NULL, "offset" bigint NOT NULL,
    processed_at double precision NOT NULL,
    PRIMARY KEY (group_id, key))"""
POSTGRES_GENERATIONS_TABLE = """CREATE TABLE IF NOT EXISTS {table} (
    group_id text NOT NULL, generation integer NOT NULL, key bytea NOT NULL,
    topic text NOT NULL, partition integer NOT NULL, "offset" bigint NOT NULL,
    processed_at double precision NOT NULL,
    PRIMARY KEY (group_id, generation, key))"""
POSTGRES_AGE_INDEX = """CREATE INDEX IF NOT EXISTS {table}_group_age
    ON {table} (group_id, processed_at)"""
POSTGRES_FILL = """INSERT INTO {table} (group_id, key, topic, partition, "offset", processed_at
        {gen_col})
    SELECT %s, decode(md5(i::text), 'hex'), %s, 0, i, extract(epoch from now()) {gen_val}
    FROM generate_series(1, %s) AS i"""
POSTGRES_INSERT = """INSERT INTO {table} (group_id, key, topic, partition, "offset", processed_at
        {gen_col})
    SELECT %s, k, %s, %s, o, %s {gen_val} FROM unnest(%s::bytea[], %s::bigint[]) AS u(k, o)
    ON CONFLICT DO NOTHING RETURNING key"""
#: The same, but not the keys the sealed generation holds among ``flagged`` (the filter's):
#: one statement, so one round trip. The sealed table is written no more, so the statement's
#: snapshot sees all it will ever hold.
POSTGRES_INSERT_UNLESS_SEALED = """WITH sealed AS (
        SELECT key FROM {sealed} WHERE group_id = %s {sealed_where}
            AND key = ANY(%s::bytea[]))
    INSERT INTO {table} (group_id, key, topic, partition, "offset", processed_at {gen_col})
    SELECT %s, k, %s, %s, o, %s {gen_val} FROM unnest(%s::bytea[], %s::bigint[]) AS u(k, o)
    WHERE k NOT IN (SELECT key FROM sealed)
    ON CONFLICT DO NOTHING RETURNING key"""
POSTGRES_HELD = ("SELECT key FROM {table} WHERE group_id = %s {gen_where} "
                 "AND key = ANY(%s::bytea[])")
POSTGRES_FORGET = ("DELETE FROM {table} WHERE group_id = %s {gen_where} "
                   "AND key = ANY(%s::bytea[])")


def sql(template: str, table: str, **more: str) -> str:
    """``template`` for ``table``, which may be a generation of ``generation-column``'s table
    (:func:`generation_of`): then its column, value and condition are filled in."""
    name, generation = generation_of(table)
    if generation is None:
        return template.format(table=name, gen_col="", gen_val="", gen_where="", **more)
    return template.format(table=name, gen_col=", generation", gen_val=f", {generation}",
                           gen_where=f"AND generation = {generation}", **more)


class Postgres:
    """A database of its own on the DSN's server (``checkpoint``: ``CHECKPOINT`` at settle)."""

    def __init__(self, dsn: str, checkpoint: bool) -> None:
        import psycopg

        self._db = psycopg.connect(dsn, autocommit=True)
        self.checkpoint = checkpoint

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cursor = self._db.execute(sql, params)
        return cursor.fetchall() if cursor.description else []

    def create_table(self, table: str) -> None:
        name, generation = generation_of(table)
        self._run((POSTGRES_TABLE if generation is None else POSTGRES_GENERATIONS_TABLE)
                  .format(table=name))
        self._run(POSTGRES_AGE_INDEX.format(table=name))

    def fill(self, table: str, keys: int) -> None:
        self._run(sql(POSTGRES_FILL, table), (GROUP, BALLAST_TOPIC, keys))
        self._run(f"VACUUM ANALYZE {generation_of(table)[0]}")

    def table_mb(self, table: str) -> float:
        return float(self._run("SELECT pg_total_relation_size(%s)",
                               (generation_of(table)[0],))[0][0]) / 1e6

    def keys(self, table: str) -> Iterator[bytes]:
        with self._db.transaction(), self._db.cursor(name="sealed_keys") as cursor:
            cursor.itersize = 100_000
            cursor.execute(sql("SELECT key FROM {table} WHERE group_id = %s {gen_where}", table),
                           (GROUP,))
            for (key,) in cursor:
                yield bytes(key)

    def begin(self) -> None:
        self._run("BEGIN")

    def insert(self, table: str, keys: Sequence[bytes], offsets: Sequence[int],
               now: float) -> list[bytes]:
        rows = self._run(sql(POSTGRES_INSERT, table),
                         (GROUP, TOPIC, 0, now, list(keys), list(offsets)))
        return [bytes(row[0]) for row in rows]

    def insert_unless_held(self, table: str, keys: Sequence[bytes], offsets: Sequence[int],
                           now: float, sealed: str, flagged: Sequence[bytes]) -> list[bytes]:
        if not flagged:
            return self.insert(table, keys, offsets, now)
        sealed_name, sealed_generation = generation_of(sealed)
        sealed_where = "" if sealed_generation is None else f"AND generation = {sealed_generation}"
        rows = self._run(sql(POSTGRES_INSERT_UNLESS_SEALED, table, sealed=sealed_name,
                             sealed_where=sealed_where),
                         (GROUP, list(flagged), GROUP, TOPIC, 0, now, list(keys),
                          list(offsets)))
        return [bytes(row[0]) for row in rows]

    def held(self, table: str, keys: Sequence[bytes]) -> set[bytes]:
        rows = self._run(sql(POSTGRES_HELD, table), (GROUP, list(keys)))
        return {bytes(row[0]) for row in rows}

    def commit(self) -> None:
        self._run("COMMIT")

    def empty_table(self, table: str) -> None:
        name, generation = generation_of(table)
        if generation is None:
            self._run(f"TRUNCATE {name}")
        else:
            self._run(f"DELETE FROM {name} WHERE generation = {generation}")
            self._run(f"VACUUM {name}")

    def forget(self, table: str, keys: Sequence[bytes]) -> None:
        for first in range(0, len(keys), FORGET_CHUNK):
            self._run(sql(POSTGRES_FORGET, table),
                      (GROUP, list(keys[first:first + FORGET_CHUNK])))
        self._run(f"VACUUM {generation_of(table)[0]}")

    def settle(self) -> None:
        if self.checkpoint:
            self._run("CHECKPOINT")

    def close(self) -> None:
        self._db.close()


SQLITE_TABLE = """CREATE TABLE {table} (
    group_id TEXT NOT NULL, key BLOB NOT NULL, topic TEXT NOT NULL,
    partition INTEGER NOT NULL, "offset" INTEGER NOT NULL, processed_at REAL NOT NULL,
    PRIMARY KEY (group_id, key))"""
SQLITE_GENERATIONS_TABLE = """CREATE TABLE IF NOT EXISTS {table} (
    group_id TEXT NOT NULL, generation INTEGER NOT NULL, key BLOB NOT NULL,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    processed_at REAL NOT NULL,
    PRIMARY KEY (group_id, generation, key))"""
SQLITE_AGE_INDEX = """CREATE INDEX IF NOT EXISTS {table}_group_age
    ON {table} (group_id, processed_at)"""
SQLITE_FILL = """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
    INSERT INTO {table} (group_id, key, topic, partition, "offset", processed_at {gen_col})
    SELECT ?, randomblob(16), ?, 0, i, ? {gen_val} FROM n"""
SQLITE_INSERT = """INSERT INTO {table} (group_id, key, topic, partition, "offset", processed_at
        {gen_col})
    VALUES (?, ?, ?, ?, ?, ? {gen_val}) ON CONFLICT DO NOTHING"""
SQLITE_HELD = "SELECT 1 FROM {table} WHERE group_id = ? {gen_where} AND key = ?"
SQLITE_FORGET = "DELETE FROM {table} WHERE group_id = ? {gen_where} AND key = ?"


class SQLite:
    """A file of its own: WAL, ``synchronous=FULL``, a 64 MB page cache, autocommit."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KB}")
        self._cursor = self._db.cursor()

    def create_table(self, table: str) -> None:
        name, generation = generation_of(table)
        self._db.execute((SQLITE_TABLE if generation is None else SQLITE_GENERATIONS_TABLE)
                         .format(table=name))
        self._db.execute(SQLITE_AGE_INDEX.format(table=name))

    def fill(self, table: str, keys: int) -> None:
        self._db.execute(f"PRAGMA cache_size = -{SQLITE_FILL_CACHE_KB}")
        self._db.execute(sql(SQLITE_FILL, table), (keys, GROUP, BALLAST_TOPIC, time.time()))
        self._db.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KB}")

    def table_mb(self, table: str) -> float:
        table = generation_of(table)[0]
        try:
            row = self._db.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ? OR name LIKE ?",
                                   (table, f"sqlite_autoindex_{table}_%")).fetchone()
            index = self._db.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ?",
                                     (f"{table}_group_age",)).fetchone()
            return float((row[0] or 0) + (index[0] or 0)) / 1e6
        except sqlite3.OperationalError:  # a SQLite built without the dbstat table: the file
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            return float(pages * self._db.execute("PRAGMA page_size").fetchone()[0]) / 1e6

    def keys(self, table: str) -> Iterator[bytes]:
        for (key,) in self._db.execute(
                sql("SELECT key FROM {table} WHERE group_id = ? {gen_where}", table), (GROUP,)):
            yield key

    def begin(self) -> None:
        self._cursor.execute("BEGIN IMMEDIATE")

    def insert(self, table: str, keys: Sequence[bytes], offsets: Sequence[int],
               now: float) -> list[bytes]:
        statement, cursor, new = sql(SQLITE_INSERT, table), self._cursor, []
        for key, offset in zip(keys, offsets, strict=True):
            cursor.execute(statement, (GROUP, key, TOPIC, 0, offset, now))
            if cursor.rowcount == 1:
                new.append(key)
        return new

    def insert_unless_held(self, table: str, keys: Sequence[bytes], offsets: Sequence[int],
                           now: float, sealed: str, flagged: Sequence[bytes]) -> list[bytes]:
        seen = self.held(sealed, flagged) if flagged else set()
        pairs = [(k, o) for k, o in zip(keys, offsets, strict=True) if k not in seen]
        return self.insert(table, [k for k, _ in pairs], [o for _, o in pairs], now)

    def held(self, table: str, keys: Sequence[bytes]) -> set[bytes]:
        statement, cursor = sql(SQLITE_HELD, table), self._cursor
        return {key for key in keys if cursor.execute(statement, (GROUP, key)).fetchone()}

    def commit(self) -> None:
        self._cursor.execute("COMMIT")

    def empty_table(self, table: str) -> None:
        self._db.execute(sql("DELETE FROM {table} WHERE true {gen_where}", table))

    def forget(self, table: str, keys: Sequence[bytes]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany(sql(SQLITE_FORGET, table), ((GROUP, k) for k in keys))
        self._db.execute("COMMIT")

    def settle(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self._db.close()


class Databases:
    """Creates each variant's database (PostgreSQL: ``CREATE DATABASE`` on the DSN's server;
    SQLite: a file in ``folder``) and, at the end, drops them."""

    def __init__(self, store: str, folder: Path, run_id: str, checkpoint: bool) -> None:
        self.store = store
        self._folder = folder
        self._run_id = run_id
        self._checkpoint = checkpoint
        self._created: list[str] = []

    def open(self, variant: str) -> Database:
        name = f"keygen_{self._run_id}_{variant.replace('-', '_')}"
        if self.store == "sqlite":
            return SQLite(self._folder / f"{name}.db")
        import psycopg
        from psycopg.conninfo import make_conninfo

        with psycopg.connect(postgres_dsn(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        self._created.append(name)
        return Postgres(make_conninfo(postgres_dsn(), dbname=name), self._checkpoint)

    def drop_all(self) -> None:
        if not self._created:
            return
        import psycopg

        with psycopg.connect(postgres_dsn(), autocommit=True) as db:
            for name in self._created:
                db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_dsn() -> str:
    dsn = os.environ.get("CONSUMER_TEST_POSTGRES_DSN")
    if not dsn:
        raise SystemExit("key-generations: postgres needs CONSUMER_TEST_POSTGRES_DSN")
    return dsn


# --- the variants and their runs -------------------------------------------------------------


@dataclass
class Run:
    keys_per_s: float
    batch_ms: float
    #: Keys the filter was asked about, and those it said the sealed table may hold.
    checked: int = 0
    flagged: int = 0


@dataclass
class Variant:
    """One variant of a store: its database, where its keys go, and its runs."""

    name: str
    db: Database
    table: str
    #: The full table (one-table) or the sealed generation, if any: held ``keys`` keys.
    full: str | None = None
    sealed: str | None = None
    bloom: Bloom | None = None
    keys: int = 0
    fill_s: float = 0.0
    full_mb: float = 0.0
    bloom_s: float = 0.0
    runs: list[Run] = field(default_factory=list)
    #: The keys the last run claimed (the reset takes them out again).
    claimed: list[bytes] = field(default_factory=list)

    @property
    def rate(self) -> Spread | None:
        return Spread.of(run.keys_per_s for run in self.runs)


def prepare(name: str, db: Database, keys: int, hash_name: str) -> Variant:
    """The variant's tables, filled; for ``generations-filter``, the sealed table's filter."""
    column = name == "generation-column"
    generations = name.startswith("generations") or column
    current, sealed = (CURRENT_COLUMN, SEALED_COLUMN) if column else (CURRENT, SEALED)
    variant = Variant(name, db, current if generations else ONE_TABLE, keys=0)
    for table in (current, sealed) if generations else (ONE_TABLE,):
        db.create_table(table)
    full = sealed if generations else ONE_TABLE if name == "one-table" else None
    if full is None:
        return variant
    began = time.monotonic()
    db.fill(full, keys)
    variant.fill_s = time.monotonic() - began
    variant.full_mb, variant.keys = db.table_mb(full), keys
    variant.full = full
    variant.sealed = sealed if generations else None
    say(f"{name}: {keys:,} keys written to {full} in {variant.fill_s:.1f} s "
        f"({variant.full_mb:,.0f} MB with its indexes)")
    if name in ("generations-filter", "generation-column"):
        began = time.monotonic()
        variant.bloom = Bloom(keys, hash_name=hash_name)
        added = variant.bloom.add_all(db.keys(sealed))
        variant.bloom_s = time.monotonic() - began
        if added != keys:
            raise RuntimeError(f"the filter read {added:,} keys of {keys:,}")
        say(f"{name}: filter of {added:,} keys built in {variant.bloom_s:.1f} s "
            f"({len(variant.bloom.bits) / 1e6:.1f} MB)")
    return variant


def reset(variant: Variant) -> None:
    """Back to the state before the first run: the tables that start empty emptied, the last
    run's keys out of the full table, then the store checkpointed (:meth:`Database.settle`)."""
    if variant.table != variant.full:
        variant.db.empty_table(variant.table)
    elif variant.claimed:
        variant.db.forget(variant.table, variant.claimed)
    variant.claimed = []
    variant.db.settle()


def claim_batch(variant: Variant, keys: Sequence[bytes], offsets: Sequence[int],
                run: Run) -> int:
    """One durable transaction: the keys inserted, and for a generations variant, the sealed
    generation asked about them: all the inserted ones after the insert
    (``generations-query``), or, in the same statement as the insert (PostgreSQL), those the
    filter flags (``generations-filter``); how many were new."""
    db = variant.db
    db.begin()
    if variant.bloom is not None and variant.sealed is not None:
        flagged = variant.bloom.flagged(keys)
        run.checked += len(keys)
        run.flagged += len(flagged)
        new = db.insert_unless_held(variant.table, keys, offsets, time.time(), variant.sealed,
                                    flagged)
    else:
        new = db.insert(variant.table, keys, offsets, time.time())
        if variant.sealed is not None:
            seen = db.held(variant.sealed, new)
            new = [key for key in new if key not in seen]
    db.commit()
    return len(new)


def measure_run(variant: Variant, batches: int, batch_keys: int, first_offset: int) -> Run:
    """``batches`` batches of fresh random keys (made before the clock starts)."""
    keys = [os.urandom(16) for _ in range(batches * batch_keys)]
    offsets = range(first_offset, first_offset + len(keys))
    run = Run(0.0, 0.0)
    times = []
    started = time.perf_counter()
    for batch in range(batches):
        first = batch * batch_keys
        began = time.perf_counter()
        new = claim_batch(variant, keys[first:first + batch_keys],
                          offsets[first:first + batch_keys], run)
        times.append(time.perf_counter() - began)
        if new != batch_keys:
            raise RuntimeError(f"{variant.name}: {batch_keys - new} fresh keys were refused")
    wall = time.perf_counter() - started
    variant.claimed = keys
    run.keys_per_s = len(keys) / wall
    run.batch_ms = statistics.median(times) * 1000
    return run


def measure(store: str, folder: Path, *, keys: int, batches: int, batch_keys: int, rounds: int,
            checkpoint: bool, hash_name: str, names: Sequence[str]) -> list[Variant]:
    """The variants of one store, alternated within each round."""
    databases = Databases(store, folder, uuid.uuid4().hex[:8], checkpoint)
    variants: list[Variant] = []
    try:
        for name in names:
            variants.append(prepare(name, databases.open(name), keys, hash_name))
        offset = 0
        for round_no in range(rounds):
            for variant in variants:
                reset(variant)
                run = measure_run(variant, batches, batch_keys, offset)
                offset += batches * batch_keys
                variant.runs.append(run)
                say(f"{store:<8} {variant.name:<18} round {round_no + 1}/{rounds}: "
                    f"{run.keys_per_s:,.0f} keys/s, median batch {run.batch_ms:.2f} ms")
        return variants
    finally:
        for variant in variants:
            variant.db.close()
        databases.drop_all()


# --- the report ------------------------------------------------------------------------------


def postgres_settings() -> str:
    """The server's version and what makes its commits durable, read from it."""
    import psycopg

    with psycopg.connect(postgres_dsn(), autocommit=True) as db:
        def show(name: str) -> str:
            row = db.execute(f"SHOW {name}").fetchone()
            return str(row[0]) if row else "?"

        settings = ", ".join(f"{name}={show(name)}" for name in (
            "shared_buffers", "max_wal_size", "synchronous_commit", "fsync", "full_page_writes"))
        return f"PostgreSQL {show('server_version')} ({settings})"


def header(stores: Sequence[str], args: argparse.Namespace) -> list[str]:
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [f"Machine: {os.cpu_count()} CPUs (os.cpu_count()); {when}."]
    if "postgres" in stores:
        checkpoint = "a CHECKPOINT before each run" if args.checkpoint else "no CHECKPOINT"
        lines.append(f"{postgres_settings()}; {checkpoint}.")
    if "sqlite" in stores:
        lines.append(f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL, "
                     f"cache_size={SQLITE_CACHE_KB // 1024} MB).")
    lines.append(f"{args.batches} batches of {args.batch_keys:,} fresh random keys per run, "
                 f"{args.rounds} round(s); ballast {args.keys:,} keys; "
                 f"goal: ratio to empty >= {GOAL_RATIO}.")
    return lines


def table(results: dict[str, list[Variant]]) -> list[str]:
    lines = ["| store | variant | keys held | keys/s median (min-max) | batch ms (median) "
             "| ratio to empty | within 10% |",
             "|---|---|---:|---|---:|---:|---|"]
    for store, variants in results.items():
        empty = next(v.rate for v in variants if v.name == "empty")
        for variant in variants:
            rate = variant.rate
            if rate is None or empty is None:
                continue
            ratio = rate.ratio(empty) or 0.0
            batch_ms = statistics.median(run.batch_ms for run in variant.runs)
            lines.append(f"| {store} | {variant.name} | {variant.keys:,} | {rate.median:,.0f} "
                         f"({rate.low:,.0f}-{rate.high:,.0f}) | {batch_ms:.2f} | {ratio:.2f} "
                         f"| {met(ratio, GOAL_RATIO)} |")
    return lines


def notes(results: dict[str, list[Variant]]) -> list[str]:
    lines = []
    for store, variants in results.items():
        for variant in variants:
            if variant.full is not None:
                lines.append(f"- {store} {variant.name}: {variant.full} filled with "
                             f"{variant.keys:,} keys in {variant.fill_s:.1f} s "
                             f"({variant.full_mb:,.0f} MB with its indexes).")
            bloom = variant.bloom
            if bloom is None:
                continue
            checked = sum(run.checked for run in variant.runs)
            flagged = sum(run.flagged for run in variant.runs)
            rate = flagged / checked if checked else 0.0
            expected = bloom.expected_fpr(variant.keys)
            lines.append(
                f"- {store} {variant.name}: Bloom filter of {variant.keys:,} keys, "
                f"{bloom.size / max(1, variant.keys):.0f} bits a key, {bloom.probes} probes "
                f"({'blake2b' if bloom.hashed else 'the key bytes'} as the hash); built in "
                f"{variant.bloom_s:.1f} s (reading the sealed keys once), "
                f"{len(bloom.bits) / 1e6:.1f} MB; false positives measured {flagged:,} of "
                f"{checked:,} fresh keys = {rate:.3%} (expected {expected:.3%}), "
                "each one a key asked of the sealed table.")
    return lines


def report(results: dict[str, list[Variant]], args: argparse.Namespace) -> str:
    stores = list(results)
    return "\n".join(["# Processed keys: one table or generations", "",
                      *header(stores, args), "", *table(results), "", *notes(results)]) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.key_generations",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default=",".join(STORES),
                        help="comma-separated, of: " + ", ".join(STORES))
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated, of: " + ", ".join(VARIANTS) + " (empty always)")
    parser.add_argument("--keys", type=int, default=10_000_000,
                        help="keys in the full table and in the sealed generation")
    parser.add_argument("--batches", type=int, default=300, help="batches per measured run")
    parser.add_argument("--batch-keys", type=int, default=1000, help="keys per batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the SQLite files go (default: a new temporary folder in /tmp;"
                             " removed at the end either way)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--checkpoint", action=argparse.BooleanOptionalAction, default=True,
                        help="PostgreSQL CHECKPOINT before every run (default: yes)")
    parser.add_argument("--filter-hash", choices=("slice", "blake2b"), default="slice",
                        help="the Bloom filter's hash: the key's own bytes, or blake2b of them")
    args = parser.parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if unknown := [s for s in stores if s not in STORES]:
        parser.error(f"unknown stores: {', '.join(unknown)}")
    chosen = {v.strip() for v in args.variants.split(",") if v.strip()} | {"empty"}
    if unknown := sorted(chosen - set(VARIANTS)):
        parser.error(f"unknown variants: {', '.join(unknown)}")
    names = [name for name in VARIANTS if name in chosen]
    if "postgres" in stores:
        postgres_dsn()
    results: dict[str, list[Variant]] = {}
    with tempfile.TemporaryDirectory(prefix="key_generations_",
                                     dir=args.dir or "/tmp") as folder:
        for store in stores:
            results[store] = measure(store, Path(folder), keys=args.keys, batches=args.batches,
                                     batch_keys=args.batch_keys, rounds=args.rounds,
                                     checkpoint=args.checkpoint, hash_name=args.filter_hash,
                                     names=names)
    text = report(results, args)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
