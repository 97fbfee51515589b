"""``python -m benchmarks.key_table``: does a store's cost per message grow with the processed
keys it already holds?

For each store, two databases of the consumer's own schema: one whose processed-keys table is
empty and one holding ``--keys`` keys (10 million by default) of the very group the runs use,
each a random 16-byte digest like a real key (of another topic, so the runs' own keys never
collide with them), stamped now so the retention keeps them; a PostgreSQL or MariaDB store that
keeps coordinates keys as runs also holds ``--keys`` of them as runs of 1,000
(:data:`FILL_RUNS`). The framework contender (``consumer run``, no-op handler, checkpoint every
1,000 messages or 1 s, the store's durable defaults) reads the first ``--messages`` of a
preloaded topic against each, alternating, ``--rounds`` rounds, once per key kind
(``--key-kinds``): ``coordinates`` (the messages carry no idempotency-key header, so the default
route keys them by coordinates, which a new store writes in offset order) and ``event-id``
(keyed by an id in the value, :func:`event_id`, a digest like a header key: random in the
index). Before every run the runs' own keys and checkpoint rows are deleted and the Kafka group
is deleted, so every run claims the same keys afresh from offset 0. Goal: the full table within
10% of the empty one (ratio >= 0.9).

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
from collections.abc import Iterator
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
from consumer.store.key_generations import GENERATION_KEYS

STORES = ("sqlite", "postgres", "mariadb")
#: The route's dedup_key per key kind (None: the default, coordinates for these messages).
KEY_KINDS: dict[str, str | None] = {
    "coordinates": None,
    "event-id": "function:benchmarks.key_table:event_id",
}
BALLAST_TOPIC = "ballast"
GOAL_RATIO = 0.9
RESULTS = Path(__file__).parent / "results" / "key_table.md"


def event_id(message: Any) -> bytes:
    """The preloaded value's counter (its first 12 bytes): an event id, one per message."""
    return bytes(message.value[:12])


def say(text: str) -> None:
    print(f"bench-keys: {text}", flush=True)


@dataclass
class Variant:
    """One database of a store: its URL, the keys it held before the runs, and the runs."""

    store: str
    keys: int
    url: str
    group: str
    key_kind: str = "coordinates"
    runs: list[RunResult] = field(default_factory=list)
    fill_s: float = 0.0
    #: The processed-keys table with its indexes, once filled.
    size_mb: float = 0.0

    @property
    def rate(self) -> Spread | None:
        return Spread.of(r.rate for r in self.runs if r.ok)


# --- the databases ---------------------------------------------------------------------------

#: Where each server store's URL comes from (its user must be allowed to create databases).
SERVER_URLS = {"postgres": "CONSUMER_TEST_POSTGRES_DSN", "mariadb": "CONSUMER_TEST_MARIADB_URL"}
#: The ballast: ``keys`` random 16-byte keys of a group (``%s``: group, topic, time stamp).
FILL = {
    # One sealed generation (consumer.store.key_generations) per statement, as the store
    # leaves them: GENERATION_KEYS keys each (:func:`fill`).
    "sqlite": """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {keys})
                 INSERT INTO consumer_processed_keys
                     (group_id, generation, key, topic, partition, "offset", processed_at)
                 SELECT %s, {generation}, randomblob(16), %s, 0, i, %s FROM n""",
    "postgres": """INSERT INTO consumer_processed_keys
                       (group_id, generation, key, topic, partition, "offset", processed_at)
                   SELECT %s, {generation}, decode(md5(i::text), 'hex'), %s, 0, i, %s
                   FROM generate_series({first}, {first} + {keys} - 1) AS i""",
    # In key order: InnoDB appends to its clustered index instead of splitting pages all over
    # it (about 5 s a million instead of minutes).
    "mariadb": """INSERT INTO consumer_processed_keys
                      (group_id, generation, "key", topic, "partition", "offset", processed_at)
                  SELECT %s, {generation}, UNHEX(MD5(seq)) AS k, %s, 0, seq, %s
                  FROM seq_{first}_to_{last} ORDER BY k""",
}
#: A PostgreSQL or MariaDB store created at version 4 keeps coordinates keys as runs, where key
#: rows are never looked at: the ballast also holds ``keys`` coordinates keys as runs of 1,000 (what
#: such a store holds after 10 million messages), each of a topic of its own.
FILL_RUNS = {
    "postgres": """INSERT INTO consumer_processed_runs
                       (group_id, key_head, key_offsets, topic, partition, first_offset,
                        last_offset, processed_at)
                   SELECT %s, substring(decode(md5(i::text), 'hex') from 1 for 10),
                          int8range(0, 1000), %s, 0, 0, 999, %s
                   FROM generate_series(1, {runs}) AS i""",
    "mariadb": """INSERT INTO consumer_processed_runs
                      (group_id, key_head, key_first, key_last, topic, "partition", first_offset,
                       last_offset, processed_at)
                  SELECT %s, SUBSTRING(UNHEX(MD5(seq)), 1, 10) AS h, 0, 999, %s, 0, 0, 999, %s
                  FROM seq_1_to_{runs} ORDER BY h""",
}
#: The ballast's generations, each sealed (``%s``: group, generation, keys, time).
SEALED_GENERATION = """INSERT INTO consumer_key_generations
    (group_id, generation, "keys", newest_at) VALUES (%s, %s, %s, %s)"""
#: Run before the fill (SQLite: a 1 GB page cache for it) and after it (the planners' figures).
BEFORE_FILL = {"sqlite": ["PRAGMA cache_size = -1000000"]}
AFTER_FILL = {"postgres": ["VACUUM ANALYZE consumer_processed_keys",
                           "VACUUM ANALYZE consumer_processed_runs"],
              "mariadb": ["ANALYZE TABLE consumer_processed_keys, consumer_processed_runs"]}
#: The processed-keys table with its indexes, in bytes.
TABLE_BYTES = {
    "sqlite": "SELECT sum(pgsize) FROM dbstat WHERE name IN ('consumer_processed_keys', "
              "'sqlite_autoindex_consumer_processed_keys_1', "
              "'consumer_processed_keys_group_age')",
    "postgres": "SELECT pg_total_relation_size('consumer_processed_keys') + coalesce("
                "pg_total_relation_size(to_regclass('consumer_processed_runs')), 0)",
    "mariadb": "SELECT sum(data_length + index_length) FROM information_schema.tables "
               "WHERE table_schema = DATABASE() AND table_name IN ('consumer_processed_keys', "
               "'consumer_processed_runs')",
}
#: The runs' own keys and the group's checkpoint rows (``%s``: group, then the runs' topic).
FORGET_RUN = ["DELETE FROM consumer_processed_keys WHERE group_id = %s AND topic = %s",
              "DELETE FROM consumer_checkpoints WHERE group_id = %s"]
FORGET_RUNS = "DELETE FROM consumer_processed_runs WHERE group_id = %s AND topic = %s"
#: The generations the runs' keys filled, left empty by FORGET_RUN (the ballast's stay), so
#: every run starts a current generation of its own after the ballast's (no alias for the
#: table deleted from: MariaDB 10.11 takes none).
FORGET_GENERATIONS = """DELETE FROM consumer_key_generations WHERE group_id = %s
    AND NOT EXISTS (SELECT 1 FROM consumer_processed_keys AS k
                    WHERE k.group_id = consumer_key_generations.group_id
                          AND k.generation = consumer_key_generations.generation)"""

FORGET_ROTATION = "DELETE FROM consumer_key_rotation WHERE group_id = %s"


def server_url(store: str) -> str:
    url = os.environ.get(SERVER_URLS[store])
    if not url:
        raise SystemExit(f"bench-keys: {store} needs {SERVER_URLS[store]}")
    return url


class _SQLite:
    """sqlite3 in autocommit, taking ``%s`` placeholders like the other two drivers."""

    def __init__(self, url: str) -> None:
        self._db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql.replace("%s", "?"), params)

    def close(self) -> None:
        self._db.close()


@contextmanager
def connected(store: str, url: str) -> Iterator[Any]:
    """A connection in autocommit with ``execute(sql, params)`` and ``%s`` placeholders."""
    if store == "sqlite":
        db: Any = _SQLite(url)
    elif store == "postgres":
        import psycopg

        db = psycopg.connect(url, autocommit=True)
    else:
        from consumer.store.mariadb_session import connect, parameters

        db = connect(*parameters(url, connect_timeout=10), lock_wait=600, idle=3600)
    try:
        yield db
    finally:
        db.close()


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
        base = server_url(self.store)
        with connected(self.store, base) as db:
            db.execute(f"DROP DATABASE IF EXISTS {name}")
            db.execute(f"CREATE DATABASE {name}")
        self._created.append(name)
        return urlunsplit(urlsplit(base)._replace(path=f"/{name}"))

    def drop_all(self) -> None:
        if self._created:
            with connected(self.store, server_url(self.store)) as db:
                for name in self._created:
                    db.execute(f"DROP DATABASE IF EXISTS {name}")


def prepare_schema(url: str, group: str) -> None:
    """The consumer's own schema, made by the consumer's own store."""
    from consumer.store import open_store

    store = open_store(url)
    try:
        store.ensure_schema(group)
    finally:
        store.close()


def fill(store: str, url: str, group: str, keys: int,
         generation_keys: int = GENERATION_KEYS) -> None:
    """``keys`` random 16-byte keys of ``group`` (topic :data:`BALLAST_TOPIC`), stamped now
    in sealed generations of ``generation_keys`` (consumer.store.key_generations)."""
    with connected(store, url) as db:
        for sql in BEFORE_FILL.get(store, []):
            db.execute(sql)
        _fill_generations(store, db, group, keys, generation_keys)
        if store in FILL_RUNS and _has_runs(store, db):
            db.execute(FILL_RUNS[store].format(runs=max(1, int(keys) // 1000)),
                       (group, BALLAST_TOPIC, time.time()))
        for sql in AFTER_FILL.get(store, []):
            db.execute(sql)


def _fill_generations(store: str, db: Any, group: str, keys: int,
                      generation_keys: int) -> None:
    """The ballast as the store holds that many keys: sealed generations of
    ``generation_keys`` keys each (the last may hold fewer), numbered from 1; the runs' keys
    go into the current generation the store starts after them."""
    left, generation = int(keys), 1
    while left > 0:
        count = min(left, generation_keys)
        now = time.time()
        first = int(keys) - left + 1
        db.execute(FILL[store].format(keys=count, generation=generation, first=first,
                                      last=first + count - 1),
                   (group, BALLAST_TOPIC, now))
        db.execute(SEALED_GENERATION, (group, generation, count, now))
        left -= count
        generation += 1


def table_size_mb(store: str, url: str) -> float:
    """The processed-keys table and its indexes on disk."""
    with connected(store, url) as db:
        try:
            return float(db.execute(TABLE_BYTES[store]).fetchone()[0]) / 1e6
        except sqlite3.OperationalError:  # a SQLite built without the dbstat table
            return Path(url.removeprefix("sqlite:///")).stat().st_size / 1e6


def forget_run(store: str, url: str, group: str, run_topic: str) -> None:
    """Delete the runs' own keys and the group's checkpoint rows (the ballast stays); on
    stores that keep them, the runs of keys too (consumer.store.sqlite_runs, postgres_runs,
    mariadb_runs)."""
    with connected(store, url) as db:
        db.execute(FORGET_RUN[0], (group, run_topic))
        db.execute(FORGET_RUN[1], (group,))
        if _has_runs(store, db):
            db.execute(FORGET_RUNS, (group, run_topic))
        db.execute(FORGET_GENERATIONS, (group,))
        if store == "mariadb":  # its lock row names the current generation, gone with them
            db.execute(FORGET_ROTATION, (group,))


def _has_runs(store: str, db: Any) -> bool:
    if store == "sqlite":
        return True
    if store == "mariadb":
        return db.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() "
            "AND table_name = 'consumer_processed_runs'").fetchone()[0] > 0
    return db.execute("SELECT to_regclass('consumer_processed_runs')").fetchone()[0] is not None


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
            run_id: str, key_kinds: list[str],
            generation_keys: int = GENERATION_KEYS) -> list[Variant]:
    """For each key kind, an empty and a full variant; the kinds share each database and its
    group (every run starts by deleting the runs' own keys, so only the ballast stays)."""
    databases = Databases(store, workdir, run_id)
    try:
        group = f"keys-{run_id}-{store}"
        variants = []
        for name, held in (("empty", 0), ("full", keys)):
            url = databases.create(name)
            prepare_schema(url, f"{group}-{name}")
            fill_s = size_mb = 0.0
            if held:
                began = time.monotonic()
                fill(store, url, f"{group}-{name}", held, generation_keys)
                fill_s = time.monotonic() - began
                size_mb = table_size_mb(store, url)
                say(f"{store}: {held:,} keys written in {fill_s:.0f} s "
                    f"({size_mb:,.0f} MB with its indexes)")
            variants += [Variant(store, held, url, f"{group}-{name}", kind, fill_s=fill_s,
                                 size_mb=size_mb) for kind in key_kinds]
        for round_no in range(rounds):
            for variant in rotated(variants, round_no):
                forget_run(store, variant.url, variant.group, run.topic)
                delete_group(run.bootstrap, variant.group)
                settings: dict[str, Any] = {"url": variant.url}
                settings[f"{store}_generation_keys"] = generation_keys
                options: dict[str, Any] = {"settings": {"store": settings}}
                if KEY_KINDS[variant.key_kind]:
                    options["dedup_key"] = KEY_KINDS[variant.key_kind]
                result = run_child(Path(sys.executable), FRAMEWORK, options, run,
                                   contender=f"keys-{store}-{variant.key_kind}-{variant.keys}",
                                   round_no=round_no + 1, group=variant.group)
                variant.runs.append(result)
                rate = f"{result.rate:,.0f} msg/s" if result.rate else f"failed: {result.error}"
                say(f"{store:<8} {variant.key_kind:<11} {variant.keys:>11,} keys, "
                    f"round {round_no + 1}/{rounds}: {rate}")
        return variants
    finally:
        databases.drop_all()


def durability(store: str) -> str:
    """What the store's server does at a commit and how much it caches (as machine.json)."""
    if store == "sqlite":
        from consumer.settings import StoreSettings

        cache_mb = StoreSettings.model_fields["sqlite_cache_mb"].default
        return f"synchronous=FULL, WAL, a {cache_mb} MB page cache (the store's defaults)"
    return machine.postgres_settings() if store == "postgres" else machine.mariadb_settings()


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
        "| store | dedup key | keys before the run | table and indexes | msg/s "
        "| full / empty | goal |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for store, variants in results.items():
        for kind in dict.fromkeys(v.key_kind for v in variants):
            empty, full = sorted((v for v in variants if v.key_kind == kind),
                                 key=lambda v: v.keys)
            for variant in (empty, full):
                spread = variant.rate
                text = "failed" if spread is None else (
                    f"{spread.median:,.0f} ({spread.low:,.0f}-{spread.high:,.0f})")
                ratio, verdict = "", ""
                if variant is full and spread is not None and empty.rate is not None:
                    value = spread.median / empty.rate.median
                    ratio = f"{value:.2f}x"
                    verdict = "met" if value >= GOAL_RATIO else "not met"
                size = f"{variant.size_mb:,.0f} MB" if variant.size_mb else ""
                lines.append(f"| {store} | {kind} | {variant.keys:,} | {size} | {text} | "
                             f"{ratio} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.key_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--key-kinds", default=",".join(KEY_KINDS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--generation-keys", type=int, default=GENERATION_KEYS,
                        help="SQLite and PostgreSQL: keys a generation holds before it is "
                             "sealed, in the ballast and in the runs "
                             "(store.sqlite_generation_keys, store.postgres_generation_keys)")
    args = parser.parse_args(argv)
    stores = [s for s in args.stores.split(",") if s]
    unknown = set(stores) - set(STORES)
    if unknown:
        parser.error(f"unknown stores {sorted(unknown)}; choose from {', '.join(STORES)}")
    key_kinds = [k for k in args.key_kinds.split(",") if k]
    if not key_kinds or set(key_kinds) - set(KEY_KINDS):
        parser.error(f"--key-kinds: choose from {', '.join(KEY_KINDS)}")
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
                                     workdir=workdir, run_id=run_id, key_kinds=key_kinds,
                                     generation_keys=args.generation_keys)
    finally:
        topic.delete(bootstrap, name)
        shutil.rmtree(workdir, ignore_errors=True)
    described = (f"{os.cpu_count()} cores, {args.keys:,} keys, generations of "
                 f"{args.generation_keys:,} keys, "
                 f"{time.strftime('%Y-%m-%d')}")
    text = render(results, messages=args.messages, rounds=args.rounds, described=described)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
