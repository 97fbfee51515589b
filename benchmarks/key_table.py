"""``python -m benchmarks.key_table``: does a store's cost per message grow with the processed
keys it already holds?

For each store, two databases of the consumer's own schema: one whose processed-keys table is
empty and one holding ``--keys`` keys (10 million by default) of the very group the runs use,
each a random 16-byte digest like a real key (of another topic, so the runs' own keys never
collide with them), stamped now so the retention keeps them. The framework contender (``consumer
run``, no-op handler, checkpoint every 1,000 messages or 1 s, the store's durable defaults)
reads the first ``--messages`` of a preloaded topic against each, alternating, ``--rounds``
rounds. Before every round the runs' own keys and checkpoint rows are deleted and the Kafka
group is deleted, so every round claims the same keys afresh from offset 0. Goal: the full
table within 10% of the empty one (ratio >= 0.9).

Needs KAFKA_BOOTSTRAP_SERVERS, and for PostgreSQL and MariaDB ``CONSUMER_TEST_POSTGRES_DSN`` /
``CONSUMER_TEST_MARIADB_URL`` (a user that may create databases): ``make bench-keys`` starts
all three.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from benchmarks import machine, topic
from benchmarks.contenders import FRAMEWORK
from benchmarks.curve import rotated
from benchmarks.measure import ChildRun, RunResult, run_child
from benchmarks.stats import Spread

STORES = ("sqlite", "postgres", "mariadb")
BALLAST_TOPIC = "ballast"
GOAL_RATIO = 0.9
RESULTS = Path(__file__).parent / "results" / "key_table.md"


def say(text: str) -> None:
    print(f"bench-keys: {text}", flush=True)


@dataclass
class Variant:
    """One database of a store: its URL, the keys it held before the runs, and the runs."""

    store: str
    keys: int
    url: str
    group: str
    runs: list[RunResult] = field(default_factory=list)
    fill_s: float = 0.0
    #: The processed-keys table with its indexes, once filled.
    size_mb: float = 0.0

    @property
    def rate(self) -> Spread | None:
        return Spread.of(r.rate for r in self.runs if r.ok)


# --- the databases ---------------------------------------------------------------------------


class Databases:
    """Creates (and at the end drops) the benchmark's databases on one store's server."""

    def __init__(self, store: str, workdir: Path, run_id: str) -> None:
        self.store = store
        self._workdir = workdir
        self._run_id = run_id
        self._created: list[str] = []

    def create(self, name: str) -> str:
        """A new, empty database; its URL."""
        name = f"keys_{self._run_id}_{name}"
        if self.store == "sqlite":
            return f"sqlite:///{self._workdir / name}.db"
        base = self.server_url()
        with self._admin() as execute:
            execute(f"DROP DATABASE IF EXISTS {name}")
            execute(f"CREATE DATABASE {name}")
        self._created.append(name)
        parts = urlsplit(base)
        return urlunsplit(parts._replace(path=f"/{name}"))

    def drop_all(self) -> None:
        if self._created:
            with self._admin() as execute:
                for name in self._created:
                    execute(f"DROP DATABASE IF EXISTS {name}")

    def server_url(self) -> str:
        variable = {"postgres": "CONSUMER_TEST_POSTGRES_DSN",
                    "mariadb": "CONSUMER_TEST_MARIADB_URL"}[self.store]
        url = os.environ.get(variable)
        if not url:
            raise SystemExit(f"bench-keys: {self.store} needs {variable}")
        return url

    @contextmanager
    def _admin(self) -> Iterator[Callable[[str], None]]:
        url = self.server_url()
        if self.store == "postgres":
            import psycopg

            with psycopg.connect(url, autocommit=True) as db:
                def run_on_postgres(sql: str) -> None:
                    db.execute(sql)

                yield run_on_postgres
            return
        with _mariadb(url) as db, db.cursor() as cursor:
            def run_on_mariadb(sql: str) -> None:
                cursor.execute(sql)

            yield run_on_mariadb


@contextmanager
def _mariadb(url: str) -> Iterator[Any]:
    import pymysql

    parts = urlsplit(url)
    db = pymysql.connect(host=parts.hostname, port=parts.port or 3306, user=parts.username,
                         password=parts.password or "", database=parts.path.lstrip("/") or None,
                         autocommit=True)
    try:
        with db.cursor() as cursor:
            cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')")
        yield db
    finally:
        db.close()


def prepare_schema(url: str, group: str) -> None:
    """The consumer's own schema, made by the consumer's own store."""
    from consumer.store import open_store

    store = open_store(url)
    try:
        store.ensure_schema(group)
    finally:
        store.close()


def fill(store: str, url: str, group: str, keys: int) -> None:
    """``keys`` random 16-byte keys of ``group`` (topic :data:`BALLAST_TOPIC`), stamped now."""
    now = time.time()
    if store == "sqlite":
        db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            db.execute("PRAGMA cache_size = -1000000")  # 1 GB for the fill only
            db.execute("BEGIN")
            db.execute(
                """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
                   INSERT INTO consumer_processed_keys
                       (group_id, key, topic, partition, "offset", processed_at)
                   SELECT ?, randomblob(16), ?, 0, i, ? FROM n""",
                (keys, group, BALLAST_TOPIC, now))
            db.execute("COMMIT")
        finally:
            db.close()
    elif store == "postgres":
        import psycopg

        with psycopg.connect(url, autocommit=True) as db:
            db.execute(
                """INSERT INTO consumer_processed_keys
                       (group_id, key, topic, partition, "offset", processed_at)
                   SELECT %s, decode(md5(i::text), 'hex'), %s, 0, i, %s
                   FROM generate_series(1, %s) AS i""", (group, BALLAST_TOPIC, now, keys))
            db.execute("VACUUM ANALYZE consumer_processed_keys")
    else:
        with _mariadb(url) as db, db.cursor() as cursor:
            # In key order: InnoDB appends to its clustered index instead of splitting pages
            # all over it (about 5 s a million instead of minutes).
            cursor.execute(
                f"""INSERT INTO consumer_processed_keys
                       (group_id, "key", topic, "partition", "offset", processed_at)
                   SELECT %s, UNHEX(MD5(seq)) AS k, %s, 0, seq, %s
                   FROM seq_1_to_{keys} ORDER BY k""", (group, BALLAST_TOPIC, now))
            cursor.execute("ANALYZE TABLE consumer_processed_keys")


def table_size_mb(store: str, url: str) -> float:
    """The processed-keys table and its indexes on disk."""
    if store == "sqlite":
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            pages = db.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN ('consumer_processed_keys', "
                "'sqlite_autoindex_consumer_processed_keys_1', "
                "'consumer_processed_keys_group_age')").fetchone()[0]
        except sqlite3.OperationalError:  # a build without the dbstat table
            pages = Path(url.removeprefix("sqlite:///")).stat().st_size
        finally:
            db.close()
        return float(pages) / 1e6
    if store == "postgres":
        import psycopg

        with psycopg.connect(url) as db:
            row = db.execute("SELECT pg_total_relation_size('consumer_processed_keys')")
            return float(row.fetchone()[0]) / 1e6  # type: ignore[index]
    with _mariadb(url) as db, db.cursor() as cursor:
        cursor.execute("SELECT data_length + index_length FROM information_schema.tables "
                       "WHERE table_schema = DATABASE() "
                       "AND table_name = 'consumer_processed_keys'")
        return float(cursor.fetchone()[0]) / 1e6


def forget_run(store: str, url: str, group: str, run_topic: str) -> None:
    """Delete the runs' own keys and the group's checkpoint rows (the ballast stays)."""
    statements = [("DELETE FROM consumer_processed_keys WHERE group_id = ? AND topic = ?",
                   (group, run_topic)),
                  ("DELETE FROM consumer_checkpoints WHERE group_id = ?", (group,))]
    if store == "sqlite":
        db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            for sql, args in statements:
                db.execute(sql, args)
        finally:
            db.close()
    elif store == "postgres":
        import psycopg

        with psycopg.connect(url, autocommit=True) as db:
            for sql, args in statements:
                db.execute(sql.replace("?", "%s"), args)
    else:
        with _mariadb(url) as db, db.cursor() as cursor:
            for sql, args in statements:
                cursor.execute(sql.replace("?", "%s"), args)


def delete_group(bootstrap: str, group: str) -> None:
    """The group's committed offsets go with it: the next round starts at offset 0."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_consumer_groups([group], request_timeout=15).values():
        try:
            future.result(timeout=30)
        except KafkaException as error:
            if "GROUP_ID_NOT_FOUND" not in str(error):
                raise


# --- the runs --------------------------------------------------------------------------------


def measure(store: str, run: ChildRun, *, keys: int, rounds: int, workdir: Path,
            run_id: str) -> list[Variant]:
    databases = Databases(store, workdir, run_id)
    try:
        group = f"keys-{run_id}-{store}"
        variants = []
        for name, held in (("empty", 0), ("full", keys)):
            url = databases.create(name)
            variant = Variant(store, held, url, f"{group}-{name}")
            prepare_schema(url, variant.group)
            if held:
                began = time.monotonic()
                fill(store, url, variant.group, held)
                variant.fill_s = time.monotonic() - began
                variant.size_mb = table_size_mb(store, url)
                say(f"{store}: {held:,} keys written in {variant.fill_s:.0f} s "
                    f"({variant.size_mb:,.0f} MB with its indexes)")
            variants.append(variant)
        for round_no in range(rounds):
            for variant in rotated(variants, round_no):
                forget_run(store, variant.url, variant.group, run.topic)
                delete_group(run.bootstrap, variant.group)
                options: dict[str, Any] = {"settings": {"store": {"url": variant.url}}}
                result = run_child(Path(sys.executable), FRAMEWORK, options, run,
                                   contender=f"keys-{store}-{variant.keys}",
                                   round_no=round_no + 1, group=variant.group)
                variant.runs.append(result)
                rate = f"{result.rate:,.0f} msg/s" if result.rate else f"failed: {result.error}"
                say(f"{store:<8} {variant.keys:>11,} keys, round {round_no + 1}/{rounds}: {rate}")
        return variants
    finally:
        databases.drop_all()


def durability(store: str) -> str:
    """What the store's server does at a commit (a non-durable server is no measurement)."""
    if store == "sqlite":
        return "synchronous=FULL, WAL, the store's defaults (a 2 MB page cache)"
    url = Databases(store, Path("."), "").server_url()
    if store == "postgres":
        import psycopg

        with psycopg.connect(url) as db:
            found = {name: db.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                     for name in ("fsync", "synchronous_commit", "full_page_writes",
                                  "wal_compression", "shared_buffers", "max_wal_size")}
    else:
        with _mariadb(url) as db, db.cursor() as cursor:
            names = ("innodb_flush_log_at_trx_commit", "innodb_doublewrite",
                     "innodb_buffer_pool_size")
            cursor.execute("SELECT " + ", ".join(f"@@{name}" for name in names))
            found = dict(zip(names, cursor.fetchone(), strict=True))
    return ", ".join(f"{name}={value}" for name, value in found.items())


def render(results: dict[str, list[Variant]], *, messages: int, rounds: int,
           described: str) -> str:
    lines = [
        "# The processed-keys table at scale",
        "",
        f"`python -m benchmarks.key_table` ({described}): `consumer run` with each store, no-op "
        f"handler, checkpoint every 1,000 messages or 1 s, {messages:,} messages per run, "
        f"{rounds} rounds alternating an empty processed-keys table with a full one (keys of "
        "the same group). Median (min-max) msg/s. Goal: full >= "
        f"{GOAL_RATIO}x empty.",
        "",
        *(f"- {store}: {durability(store)}" for store in results),
        "",
        "| store | keys before the run | table and indexes | msg/s | full / empty | goal |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for store, variants in results.items():
        empty, full = variants
        for variant in variants:
            spread = variant.rate
            text = "failed" if spread is None else (
                f"{spread.median:,.0f} ({spread.low:,.0f}-{spread.high:,.0f})")
            ratio, verdict = "", ""
            if variant is full and spread is not None and empty.rate is not None:
                value = spread.median / empty.rate.median
                ratio = f"{value:.2f}x"
                verdict = "met" if value >= GOAL_RATIO else "not met"
            size = f"{variant.size_mb:,.0f} MB" if variant.size_mb else ""
            lines.append(f"| {store} | {variant.keys:,} | {size} | {text} | {ratio} | "
                         f"{verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.key_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stores = [s for s in args.stores.split(",") if s]
    unknown = set(stores) - set(STORES)
    if unknown:
        parser.error(f"unknown stores {sorted(unknown)}; choose from {', '.join(STORES)}")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("bench-keys: set KAFKA_BOOTSTRAP_SERVERS, or run `make bench-keys`",
              file=sys.stderr)
        return 2
    settings = {store: durability(store) for store in stores}
    for warning in machine.not_durable(settings):
        say(f"WARNING: {warning}")
    run_id = time.strftime("%m%d%H%M") + uuid.uuid4().hex[:4]
    name = f"bench-keys-{run_id}"
    topic.preload(bootstrap, name, partitions=6, messages=args.messages, size=100)
    workdir = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    logs = workdir / "logs"
    run = ChildRun(bootstrap, name, 6, args.messages, 120.0, logs)
    results: dict[str, list[Variant]] = {}
    try:
        for store in stores:
            results[store] = measure(store, run, keys=args.keys, rounds=args.rounds,
                                     workdir=workdir, run_id=run_id)
    finally:
        topic.delete(bootstrap, name)
        shutil.rmtree(workdir, ignore_errors=True)
    described = (f"{os.cpu_count()} cores, {args.keys:,} keys, "
                 f"{time.strftime('%Y-%m-%d')}")
    text = render(results, messages=args.messages, rounds=args.rounds, described=described)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
