"""The SQLite store: one file, WAL, ``synchronous=FULL`` by default, ``BEGIN IMMEDIATE`` per
batch, so a second writer waits (``busy_timeout``) instead of failing mid-batch, and writers
sharing the file take turns (:mod:`consumer.store.sqlite_turns`).

A batch's consecutive coordinates keys of one partition are claimed as one row of
``consumer_processed_runs`` (:mod:`consumer.store.sqlite_runs`), the other keys with ``INSERT``
statements of many rows each; a batch holding a key processed before is claimed again one
``INSERT ... ON CONFLICT DO NOTHING`` per key (``executemany`` drops RETURNING rows;
``rowcount`` says new). sqlite3 errors leave
translated: a locked or unreachable file is ``StoreUnavailable``, missing tables
``StoreSchemaError``, the rest ``StoreError``. ``is_transient`` tells a busy
error a handler raised apart from a failure of its message. One connection, one thread at a time.

While a batch's transaction is open the connection refuses transaction statements (SQLite's
authorizer): a handler's ``COMMIT`` or ``ROLLBACK``, as a statement or through
``context.db.commit()`` or ``with context.db:``, would commit the batch's keys ahead of its
effects, and one followed by a ``BEGIN`` would go unseen. The store's own statements have
texts of their own (:data:`BEGIN`, :data:`COMMIT`, :data:`ROLLBACK`), so the statement cache
never hands a handler a statement prepared while it was allowed.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

from consumer.dedup import topic_scoped
from consumer.errors import (
    StoreError,
    StoreSchemaError,
    StoreUnavailable,
    TransactionEndRefused,
)
from consumer.message import TP
from consumer.store import sqlite_generations, sqlite_runs
from consumer.store.base import (
    DIGEST_COORDINATES,
    MIGRATES_FROM,
    ORDERED_COORDINATES,
    SQLITE_SCHEMA_VERSION,
    CheckpointRow,
    Claim,
    ConflictBackoff,
    Position,
    SchemaUpgrade,
    Store,
    require_version,
)
from consumer.store.claim_batch import ClaimBatch, EveryKey
from consumer.store.key_generations import GENERATION_KEYS, GroupKeys
from consumer.store.key_runs import CoordinatesKeys
from consumer.store.sqlite_turns import WriterTurns

log = logging.getLogger("consumer.store")

#: The store's own transaction statements (see the module's docstring).
BEGIN = "BEGIN IMMEDIATE /* checkpoint-consumer */"
COMMIT = "COMMIT /* checkpoint-consumer */"
#: A read transaction: a snapshot that writers of the file do not wait for (WAL).
BEGIN_READ = "BEGIN DEFERRED /* checkpoint-consumer */"
ROLLBACK = "ROLLBACK /* checkpoint-consumer */"
#: One processed key into the current generation, only if it is new there (the row count says
#: which) and in no run; the claim has asked the sealed generations first. Parameters: group,
#: key, topic, partition, offset, time, generation.
CLAIM_UNLESS_PROCESSED = f"""INSERT INTO consumer_processed_keys
               (group_id, key, topic, partition, "offset", processed_at, generation)
           SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE {sqlite_runs.uncovered("?1", "?2")}
           ON CONFLICT DO NOTHING"""
#: One new processed key into the current generation, unless a run covers it (then no row):
#: fails on a key the generation holds. Parameters: group, key, topic, partition, offset,
#: time, generation. One statement per key: keys that are not in runs are mostly digests
#: (header and function keys), which land all over the key index, and for those one prepared
#: statement per key measured 15% faster a batch than statements of 200 rows each
#: (``python -m benchmarks.sqlite_claim --key-kind digest``).
CLAIM_NEW_KEY = f"""INSERT INTO consumer_processed_keys
               (group_id, key, topic, partition, "offset", processed_at, generation)
           SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE {sqlite_runs.uncovered("?1", "?2")}"""
#: Forget one key of group ?1, whichever generation holds it.
UNCLAIM_KEY = f"""DELETE FROM consumer_processed_keys WHERE group_id = ?1
    AND generation IN ({sqlite_generations.OF_GROUP.format(G="?1")}) AND key = ?2"""

SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS consumer_schema (version INTEGER NOT NULL,
        coordinates_keys TEXT NOT NULL DEFAULT '{DIGEST_COORDINATES}')""",
    """CREATE TABLE IF NOT EXISTS consumer_checkpoints (
        group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
        next_offset INTEGER, epoch INTEGER NOT NULL, updated_at REAL NOT NULL, topic_id TEXT,
        PRIMARY KEY (group_id, topic, partition))""",
    """CREATE TABLE IF NOT EXISTS consumer_processed_keys (
        group_id TEXT NOT NULL, generation INTEGER NOT NULL, key BLOB NOT NULL,
        topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
        processed_at REAL NOT NULL,
        PRIMARY KEY (group_id, generation, key))""",
    """CREATE INDEX IF NOT EXISTS consumer_processed_keys_group_age
        ON consumer_processed_keys (group_id, generation, processed_at)""",
    sqlite_generations.TABLE,
    # Groups whose keys were claimed under version 1 (not scoped to their topic yet).
    "CREATE TABLE IF NOT EXISTS consumer_keys_to_scope (group_id TEXT PRIMARY KEY)",
    sqlite_runs.TABLE,
    sqlite_runs.AGE_INDEX,
]
#: Version 1 -> 2, in the same transaction as the check of the version.
MIGRATE_FROM_1 = [
    "ALTER TABLE consumer_checkpoints ADD COLUMN topic_id TEXT",
    "CREATE TABLE consumer_keys_to_scope (group_id TEXT PRIMARY KEY)",
    "INSERT INTO consumer_keys_to_scope SELECT DISTINCT group_id FROM consumer_processed_keys",
    "DROP INDEX IF EXISTS consumer_processed_keys_age",
    """CREATE INDEX consumer_processed_keys_group_age
        ON consumer_processed_keys (group_id, processed_at)""",
    "UPDATE consumer_schema SET version = 2",
]
#: Version 2 -> 3: the keys already claimed keep their form, so coordinates keys stay digests.
MIGRATE_FROM_2 = [
    "ALTER TABLE consumer_schema ADD COLUMN coordinates_keys TEXT NOT NULL "
    f"DEFAULT '{DIGEST_COORDINATES}'",
]
#: Version 3 -> 4: ``consumer_processed_runs`` (created with the rest of SCHEMA); the keys
#: claimed before stay one row each. Version 4 -> 5: sqlite_generations.MIGRATE_TO_5.
MIGRATE_TO_CURRENT = [f"UPDATE consumer_schema SET version = {SQLITE_SCHEMA_VERSION}"]
#: Versions this store migrates from.
SQLITE_MIGRATES_FROM = (*MIGRATES_FROM, 3, 4)


def is_transient(error: BaseException) -> bool:
    """Whether an error a handler raised is SQLite busy or locked by another connection: the
    batch is retried like an outage instead of counting against the message."""
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(error).lower()
    return "locked" in text or "busy" in text

#: Pages the WAL may hold before a commit copies them into the database file (SQLite's default
#: is 1,000). Each claimed key dirties a page of the key index at random once the table has
#: some thousands of pages, so a batch of 1,000 keys nearly fills the default WAL and every
#: commit paid for a checkpoint too: its writes and a second fsync. With 10,000 pages (40 MB
#: of WAL at most, 4 KB pages) a checkpoint comes every ten batches or so, and pages dirtied
#: by several batches are copied once: 1,000-key batches into a 10-million-key table went
#: from 22,000-23,500 to 30,600-31,200 keys/s, alternated in one run.
WAL_AUTOCHECKPOINT_PAGES = 10_000


#: First and longest pause between attempts to switch a file to WAL (seconds).
WAL_SWITCH_PAUSE = (0.005, 0.1)


def _use_wal(db: sqlite3.Connection, timeout: float) -> None:
    """Put the file in WAL mode, which persists in it: ask first and switch only a file not in
    WAL yet. The switch needs the file to itself, and SQLite fails it at once ("database is
    locked") instead of waiting on the busy handler when another connection is opening the same
    new file at that moment, so it is tried again, pausing between attempts, for up to the busy
    timeout; after that the last error stands."""
    deadline = time.monotonic() + timeout
    pause, longest = WAL_SWITCH_PAUSE
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError as error:
            if not is_transient(error) or time.monotonic() + pause > deadline:
                raise
        else:
            raise sqlite3.OperationalError(
                "SQLite would not put the file in WAL journal mode (a file system without "
                "shared memory, such as a network share?)")
        time.sleep(pause)
        pause = min(pause * 2, longest)


def _runs_and_singles(group: str, claims: Sequence[Claim], now: float,
                      coordinates: CoordinatesKeys) -> tuple[list[tuple[Any, ...]], list[Claim]]:
    """The batch's runs (the parameters of :data:`sqlite_runs.INSERT_RUN` each) and the claims
    in none: a stretch of a :class:`ClaimBatch` is a run as it is, and so is a lone ordered
    coordinates key (a run of one): rows hold the other keys only."""
    runs: list[tuple[Any, ...]] = []
    if isinstance(claims, ClaimBatch):
        for stretch in claims.stretches:
            first, last = stretch.first, stretch.end - 1
            runs.append((group, stretch.key(first), stretch.key(last), stretch.topic,
                         stretch.partition, first, last, now))
        return runs, []
    found, singles = sqlite_runs.split(claims)
    for run in found:
        head, tail = claims[run.first], claims[run.last]
        runs.append((group, head.key, tail.key, head.topic, head.partition, head.offset,
                     tail.offset, now))
    in_runs, rows = _coordinates_apart(singles, coordinates)
    runs += [_run_of_one(group, c, now) for c in in_runs]
    return runs, rows


def _coordinates_apart(claims: Sequence[Claim], coordinates: CoordinatesKeys
                       ) -> tuple[list[Claim], list[Claim]]:
    """The claims whose key is an ordered coordinates key (of its own topic, or of another
    topic the consumer knows: a redriven event's honoured key names its original's), kept
    in runs; and the rest, kept as rows. Mostly digests: one set test each, inline."""
    if not coordinates.as_runs or not claims:
        return [], list(claims)
    topics = set(coordinates.topic_ids)
    prefixes = {coordinates.prefix(topic) for topic in topics}
    in_runs, rows = [], []
    for c in claims:
        if c.topic not in topics:
            topics.add(c.topic)
            prefixes.add(coordinates.prefix(c.topic))
        if c.key[:8] in prefixes and len(c.key) == 16:
            in_runs.append(c)
        else:
            rows.append(c)
    return in_runs, rows


def _run_of_one(group: str, claim: Claim, now: float) -> tuple[Any, ...]:
    return (group, claim.key, claim.key, claim.topic, claim.partition, claim.offset,
            claim.offset, now)


class SQLiteStore(Store):
    dialect = "sqlite"
    schema_version = SQLITE_SCHEMA_VERSION

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000,
                 cache_mb: int = 64, generation_keys: int = GENERATION_KEYS):
        self._path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if path != ":memory:":
                _use_wal(self._db, busy_timeout_ms / 1000)
            self._db.execute(f"PRAGMA synchronous = {synchronous}")
            self._db.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            self._db.execute(f"PRAGMA cache_size = {-1024 * int(cache_mb)}")  # negative: KiB
            self._db.set_authorizer(self._authorize)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"cannot open the SQLite store at {path}: {error}") from None
        self._turns = WriterTurns(path) if path != ":memory:" else None
        self._claims_with_conflicts = ConflictBackoff()
        #: A batch's transaction is open: transaction statements are refused.
        self._guarded = False
        #: The transaction statement refused since the batch began (a handler's).
        self._refused_statement: str | None = None
        self._generation_keys = generation_keys
        #: What this store knows of each group's generations of keys.
        self._groups: dict[str, GroupKeys] = {}
        #: Tells ordered coordinates keys (kept in runs, a lone one as a run of one) from
        #: the keys kept as rows; its ``as_runs`` is set once the schema is read.
        self._coordinates = CoordinatesKeys()

    def use_topic_ids(self, topic_ids: Mapping[str, str]) -> None:
        self._coordinates.topic_ids = topic_ids

    def _authorize(self, action: int, first: str | None, second: str | None,
                   database: str | None, trigger: str | None) -> int:
        """SQLite's authorizer, asked as each statement is prepared: inside a batch, no
        ``BEGIN``, ``COMMIT`` or ``ROLLBACK`` (a savepoint's are another action)."""
        if action == sqlite3.SQLITE_TRANSACTION and self._guarded:
            self._refused_statement = first or "a transaction statement"
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def _turn(self) -> AbstractContextManager[None]:
        """Around every statement that waits for the file's write lock."""
        return self._turns.turn() if self._turns is not None else nullcontext()

    def _begin_immediate(self) -> None:
        with self._turn():
            self._db.execute(BEGIN)

    # --- lifecycle -------------------------------------------------------------------------

    def ensure_schema(self, group: str | None = None, *,
                      group_scoped_topics: Collection[str] = ()) -> SchemaUpgrade | None:
        where = f"the SQLite store at {self._path}"
        with _translated(self._path):
            self._begin_immediate()
            try:
                exists = self._db.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'consumer_schema'"
                ).fetchone()
                found = None
                if exists:
                    row = self._db.execute("SELECT max(version) FROM consumer_schema").fetchone()
                    found = row[0] if row else None
                require_version(found, where, needs=SQLITE_SCHEMA_VERSION,
                                migrates_from=SQLITE_MIGRATES_FROM)
                if found == 1:
                    for statement in MIGRATE_FROM_1:
                        self._db.execute(statement)
                if found in (1, 2):
                    for statement in MIGRATE_FROM_2:
                        self._db.execute(statement)
                if found in SQLITE_MIGRATES_FROM:
                    for statement in sqlite_generations.MIGRATE_TO_5:
                        self._db.execute(statement)
                for statement in SCHEMA:
                    self._db.execute(statement)
                if found in SQLITE_MIGRATES_FROM:
                    for statement in (*sqlite_generations.MIGRATE_TO_5_AFTER_SCHEMA,
                                      *MIGRATE_TO_CURRENT):
                        self._db.execute(statement)
                if found is None:
                    self._db.execute(
                        "INSERT INTO consumer_schema (version, coordinates_keys) VALUES (?, ?)",
                        (SQLITE_SCHEMA_VERSION, ORDERED_COORDINATES))
                upgrade = self._scope_keys(
                    group, group_scoped_topics,
                    migrated_from=found if found != SQLITE_SCHEMA_VERSION else None)
                row = self._db.execute("SELECT coordinates_keys FROM consumer_schema").fetchone()
                self._db.execute(COMMIT)
            except BaseException:
                self._db.execute(ROLLBACK)
                raise
        self.ordered_coordinates = row is not None and row[0] == ORDERED_COORDINATES
        self._coordinates.as_runs = self.ordered_coordinates
        return upgrade

    def load_group(self, group: str) -> None:
        with _translated(self._path):
            exists = self._db.execute("SELECT 1 FROM sqlite_master "
                                      "WHERE name = 'consumer_key_generations'").fetchone()
        if exists:
            self._prime(group)

    def _prime(self, group: str) -> None:
        """Read the group's sealed generations into its filters now, at start, rather than in
        the first batch (about 1.5 s a million keys), in a read transaction."""
        keys = self._groups.setdefault(group, GroupKeys(self._generation_keys))
        began, read_before = time.monotonic(), keys.read
        with _translated(self._path):
            self._db.execute(BEGIN_READ)
            try:
                sqlite_generations.prime(self._db, group, keys)
                self._db.execute(COMMIT)
            except BaseException:
                keys.rolled_back()
                self._db.execute(ROLLBACK)
                raise
        keys.committed()
        if keys.read > read_before:
            log.info("read %d processed keys of group %s (%d sealed generations) into memory "
                     "in %.1f s (%.0f MB of filters)", keys.read - read_before, group,
                     len(keys.sealed), time.monotonic() - began, keys.filter_bytes / 1e6)

    def _scope_keys(self, group: str | None, group_scoped_topics: Collection[str], *,
                    migrated_from: int | None) -> SchemaUpgrade | None:
        """Rewrite the group's version-1 keys to topic-scoped ones, inside ensure_schema's
        transaction, with the very function the key functions use."""
        pending = group is not None and self._db.execute(
            "SELECT 1 FROM consumer_keys_to_scope WHERE group_id = ?", (group,)
        ).fetchone() is not None
        if not pending and migrated_from is None:
            return None
        scoped = kept = 0
        if pending:
            self._db.create_function("consumer_topic_scoped", 2, topic_scoped,
                                     deterministic=True)
            topics = [t for (t,) in self._db.execute(
                "SELECT DISTINCT topic FROM consumer_processed_keys WHERE group_id = ?",
                (group,))]
            for topic in topics:
                if topic in group_scoped_topics:
                    kept += self._db.execute(
                        "SELECT count(*) FROM consumer_processed_keys "
                        "WHERE group_id = ? AND topic = ?", (group, topic)).fetchone()[0]
                    continue
                scoped += self._db.execute(
                    "UPDATE consumer_processed_keys SET key = consumer_topic_scoped(topic, key) "
                    "WHERE group_id = ? AND topic = ?", (group, topic)).rowcount
            self._db.execute("DELETE FROM consumer_keys_to_scope WHERE group_id = ?", (group,))
        waiting = self._db.execute("SELECT count(*) FROM consumer_keys_to_scope").fetchone()[0]
        return SchemaUpgrade(migrated_from or 1, SQLITE_SCHEMA_VERSION,
                             group if pending else None,
                             scoped, kept, waiting)

    def close(self) -> None:
        self._db.close()
        if self._turns is not None:
            self._turns.close()

    def ping(self) -> None:
        with _translated(self._path):
            self._db.execute("SELECT 1").fetchone()

    # --- assignment -----------------------------------------------------------------------

    def assign(self, group: str, partitions: Sequence[TP], now: float,
               topic_ids: Mapping[str, str] | None = None) -> dict[TP, Position]:
        positions = {}
        ids = topic_ids or {}
        with _translated(self._path):
            self._begin_immediate()
            try:
                for topic, partition in partitions:
                    row = self._db.execute(
                        """INSERT INTO consumer_checkpoints
                               (group_id, topic, partition, next_offset, epoch, updated_at,
                                topic_id)
                           VALUES (?, ?, ?, NULL, 1, ?, ?)
                           ON CONFLICT (group_id, topic, partition)
                           DO UPDATE SET epoch = epoch + 1, updated_at = excluded.updated_at,
                                         topic_id = coalesce(topic_id, excluded.topic_id)
                           RETURNING next_offset, epoch, topic_id""",
                        (group, topic, partition, now, ids.get(topic)),
                    ).fetchone()
                    positions[(topic, partition)] = Position(row[0], row[1], row[2])
                self._db.execute(COMMIT)
            except BaseException:
                self._db.execute(ROLLBACK)
                raise
        return positions

    # --- one checkpoint batch ------------------------------------------------------------

    def begin(self) -> None:
        with _translated(self._path):
            self._begin_immediate()
        self._guarded, self._refused_statement = True, None

    def claim(self, group: str, claims: Sequence[Claim], now: float) -> AbstractSet[bytes]:
        """A batch almost never holds a processed key: its runs go in one row each and its
        other keys with a plain ``INSERT`` each (:data:`CLAIM_NEW_KEY`). If one was processed
        before, the rows this claim wrote are deleted again and each key goes in alone with
        ``ON CONFLICT DO NOTHING``, its row count saying whether it is new; so do the next
        batches' claims for a while (:class:`ConflictBackoff`). A batch of stretches
        (:class:`ClaimBatch`) makes no key unless one was processed before."""
        if not claims:
            return set()
        with _translated(self._path):
            keys = self._group_keys(group, now)
            if self._claims_with_conflicts.plain_due():
                if self._insert_new_keys(group, claims, now, keys):
                    self._claims_with_conflicts.plain_succeeded()
                    if isinstance(claims, ClaimBatch):
                        return EveryKey(claims)
                    return {c.key for c in claims}
                self._claims_with_conflicts.plain_conflicted()
            in_runs, rows = _coordinates_apart(claims, self._coordinates)
            new = set()
            execute, generation = self._db.execute, keys.current
            for c in in_runs:
                if execute(sqlite_runs.INSERT_RUN, _run_of_one(group, c, now)).rowcount:
                    new.add(c.key)
            held = self._held(group, keys, [c.key for c in rows])
            in_rows = []
            for c in rows:
                if c.key in held:
                    continue
                row = (group, c.key, c.topic, c.partition, c.offset, now, generation)
                if execute(CLAIM_UNLESS_PROCESSED, row).rowcount == 1:
                    new.add(c.key)
                    in_rows.append(c.key)
            self._claimed(group, keys, in_rows)
        return new

    def _group_keys(self, group: str, now: float) -> GroupKeys:
        """The group's generations, as this transaction sees them."""
        keys = self._groups.get(group)
        if keys is None:
            keys = self._groups[group] = GroupKeys(self._generation_keys)
        sqlite_generations.refresh(self._db, group, keys, now)
        return keys

    def _held(self, group: str, keys: GroupKeys, candidates: Sequence[bytes]) -> set[bytes]:
        """The candidates a generation holds, asked only about those the filters flag."""
        execute = self._db.execute
        return {key for key in keys.flagged(candidates)
                if execute(sqlite_generations.HOLDS, (group, key)).fetchone() is not None}

    def _claimed(self, group: str, keys: GroupKeys, new: Sequence[bytes]) -> None:
        """The keys this claim inserted as rows, counted into their generation."""
        if new:
            keys.claimed(new)
            self._db.execute(sqlite_generations.COUNT, (len(new), group, keys.current))

    def _insert_new_keys(self, group: str, claims: Sequence[Claim], now: float,
                         keys: GroupKeys) -> bool:
        """Every key as a new row (the runs first, so the other keys are checked against them
        too): True. False when a key was processed before (or comes twice); the rows this
        claim wrote are deleted again. That is exact, as a savepoint would be, but a savepoint
        copies every page the claim touches first: a fifth of a batch of digest keys, which
        land on pages all over the key index. SQLite has one writer at a time, so the rows
        deleted are the claim's own: a key the table held before fails its statement, and a
        failed statement wrote nothing."""
        execute = self._db.execute
        runs, singles = _runs_and_singles(group, claims, now, self._coordinates)
        if self._held(group, keys, [c.key for c in singles]):
            return False
        generation = keys.current
        runs_in = keys_in = 0
        try:
            for run in runs:
                if execute(sqlite_runs.INSERT_RUN, run).rowcount != 1:
                    raise _ProcessedBefore
                runs_in += 1
            for c in singles:
                if execute(CLAIM_NEW_KEY, (group, c.key, c.topic, c.partition, c.offset,
                                           now, generation)).rowcount != 1:
                    raise _ProcessedBefore
                keys_in += 1
        except (sqlite3.IntegrityError, _ProcessedBefore):
            executemany = self._db.executemany
            executemany("DELETE FROM consumer_processed_runs WHERE group_id = ? "
                        "AND first_key = ?", [(group, run[1]) for run in runs[:runs_in]])
            executemany("DELETE FROM consumer_processed_keys WHERE group_id = ? "
                        "AND generation = ? AND key = ?",
                        [(group, generation, c.key) for c in singles[:keys_in]])
            return False
        self._claimed(group, keys, [c.key for c in singles])
        return True

    def unclaim(self, group: str, keys: Iterable[bytes]) -> None:
        """Forget each key: its row, or its place in a run (which splits around it)."""
        with _translated(self._path):
            execute = self._db.execute
            for key in keys:
                if execute(UNCLAIM_KEY, (group, key)).rowcount:
                    continue
                run = execute(sqlite_runs.RUN_BELOW, (group, key)).fetchone()
                if run is not None and run[1] >= key:
                    self._split_run(group, run, key)

    def _split_run(self, group: str, run: tuple[Any, ...], key: bytes) -> None:
        """Replace the run by what it covers but ``key``: up to two runs."""
        first_key, _, topic, partition, first_offset, last_offset, at = run
        steps = int.from_bytes(key, "big") - int.from_bytes(first_key, "big")
        execute = self._db.execute
        execute("DELETE FROM consumer_processed_runs WHERE group_id = ? AND first_key = ?",
                (group, first_key))
        pieces = [(first_key, steps - 1, first_offset),
                  (sqlite_runs.key_at(first_key, steps + 1),
                   last_offset - first_offset - steps - 1, first_offset + steps + 1)]
        for start, more, offset in pieces:
            if more >= 0:
                execute("INSERT INTO consumer_processed_runs (group_id, first_key, last_key, "
                        "topic, partition, first_offset, last_offset, processed_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (group, start, sqlite_runs.key_at(start, more), topic, partition,
                         offset, offset + more, at))

    def savepoint(self) -> None:
        with _translated(self._path):
            self._db.execute("SAVEPOINT handler")

    def release_savepoint(self) -> None:
        with _translated(self._path):
            self._db.execute("RELEASE SAVEPOINT handler")

    def rollback_to_savepoint(self) -> None:
        with _translated(self._path):
            self._db.execute("ROLLBACK TO SAVEPOINT handler")
            self._db.execute("RELEASE SAVEPOINT handler")

    def write_checkpoints(self, group: str, rows: Sequence[CheckpointRow],
                          now: float) -> list[TP]:
        refused = []
        with _translated(self._path):
            for row in rows:
                cursor = self._db.execute(
                    """UPDATE consumer_checkpoints SET next_offset = ?, updated_at = ?
                       WHERE group_id = ? AND topic = ? AND partition = ? AND epoch = ?
                             AND (next_offset IS NULL OR next_offset <= ?)""",
                    (row.next_offset, now, group, row.topic, row.partition, row.epoch,
                     row.next_offset),
                )
                if cursor.rowcount != 1:
                    refused.append(row)
            return self._refused(group, refused) if refused else []

    def transaction_open(self) -> bool:
        """Raises :class:`TransactionEndRefused` once a handler's transaction statement was
        refused (it may have swallowed the error)."""
        if (refused := self._refused_statement) is not None:
            self._refused_statement = None
            raise TransactionEndRefused(f"{refused} (a statement, commit() or rollback())")
        return self._db.in_transaction

    def commit(self) -> None:
        self._guarded = False
        try:
            with _translated(self._path):
                self._db.execute(COMMIT)
        except BaseException:
            self._transaction_ended(committed=False)
            raise
        self._transaction_ended(committed=True)

    def rollback(self) -> None:
        self._guarded = False
        self._transaction_ended(committed=False)
        if self._db.in_transaction:
            with _translated(self._path):
                self._db.execute(ROLLBACK)

    def _transaction_ended(self, *, committed: bool) -> None:
        for keys in self._groups.values():
            keys.ended(committed=committed)

    # --- for handlers ----------------------------------------------------------------------

    @property
    def connection(self) -> sqlite3.Connection:
        return self._db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql.replace("%s", "?"), tuple(params))

    # --- operations ------------------------------------------------------------------------

    def checkpoints(self, group: str) -> dict[TP, int | None]:
        with _translated(self._path):
            rows = self._db.execute(
                "SELECT topic, partition, next_offset FROM consumer_checkpoints "
                "WHERE group_id = ?", (group,),
            ).fetchall()
        return {(t, p): o for t, p, o in rows}

    def purge_processed_keys(self, group: str, older_than: float, limit: int) -> int:
        """Up to ``limit`` rows of keys, then of runs; returns the keys they held, which is
        ``limit`` or more whenever old rows may remain (a run holds two keys or more).

        Keys go with their generation: a sealed one whole, once its newest key is older than
        ``older_than``, and the current one key by key. A key of a sealed generation is kept
        until the whole generation is past: up to the time the generation took to fill
        beyond the retention."""
        execute = self._db.execute
        with _translated(self._path), self._turn():
            deleted = 0
            for (generation,) in execute(sqlite_generations.PAST,
                                         (group, older_than)).fetchall():
                deleted += execute(sqlite_generations.DROP_KEYS,
                                   (group, generation, limit - deleted)).rowcount
                if deleted >= limit:
                    return deleted
                execute(sqlite_generations.FORGET, (group, generation))
            current = execute(sqlite_generations.CURRENT, (group,)).fetchone()[0]
            deleted += execute(
                """DELETE FROM consumer_processed_keys WHERE rowid IN (
                       SELECT rowid FROM consumer_processed_keys
                       WHERE group_id = ? AND generation = ? AND processed_at < ? LIMIT ?)""",
                (group, current, older_than, limit - deleted),
            ).rowcount
            if deleted < limit:
                deleted += sum(length for (length,) in self._db.execute(
                    """DELETE FROM consumer_processed_runs
                       WHERE (group_id, first_key) IN (
                           SELECT group_id, first_key FROM consumer_processed_runs
                           WHERE group_id = ? AND processed_at < ? LIMIT ?)
                       RETURNING last_offset - first_offset + 1""",
                    (group, older_than, limit - deleted)).fetchall())
        return deleted

    # --- replay: keys in runs count one each -------------------------------------------

    def keys_from(self, group: str, targets: Mapping[TP, int]) -> dict[TP, int]:
        found = super().keys_from(group, targets)
        for (topic, partition), offset in targets.items():
            row = self._db.execute(
                "SELECT coalesce(sum(last_offset - max(first_offset, ?) + 1), 0) "
                "FROM consumer_processed_runs WHERE group_id = ? AND topic = ? "
                "AND partition = ? AND last_offset >= ?",
                (offset, group, topic, partition, offset)).fetchone()
            found[(topic, partition)] += int(row[0])
        return found

    def forget_keys_from(self, group: str, tp: TP, offset: int) -> int:
        """The keys claimed at or after ``offset``: rows, runs, and the tail of a run that
        starts before it."""
        forgotten = super().forget_keys_from(group, tp, offset)
        topic, partition = tp
        execute = self._db.execute
        forgotten += sum(int(length) for (length,) in execute(
            "DELETE FROM consumer_processed_runs WHERE group_id = ? AND topic = ? "
            "AND partition = ? AND first_offset >= ? RETURNING last_offset - first_offset + 1",
            (group, topic, partition, offset)).fetchall())
        straddling: list[tuple[bytes, int, int]] = execute(
            "SELECT first_key, first_offset, last_offset FROM consumer_processed_runs "
            "WHERE group_id = ? AND topic = ? AND partition = ? AND last_offset >= ?",
            (group, topic, partition, offset)).fetchall()
        for first_key, first_offset, last_offset in straddling:
            execute("UPDATE consumer_processed_runs SET last_key = ?, last_offset = ? "
                    "WHERE group_id = ? AND first_key = ?",
                    (sqlite_runs.key_at(first_key, offset - 1 - first_offset), offset - 1,
                     group, first_key))
            forgotten += last_offset - offset + 1
        return forgotten


class _ProcessedBefore(Exception):
    """A plain claim met a key processed before: in the table, or covered by a run."""


@contextmanager
def _translated(where: str) -> Iterator[None]:
    """Turns sqlite3 errors into ours: a locked or unreachable file is StoreUnavailable."""
    try:
        yield
    except sqlite3.Error as error:
        _raise_ours(where, error)


def _raise_ours(where: str, error: sqlite3.Error) -> NoReturn:
    text = str(error)
    if isinstance(error, sqlite3.OperationalError) and (
        "locked" in text or "unable to open" in text or "disk I/O" in text
    ):
        raise StoreUnavailable(f"SQLite store {where}: {text}") from error
    if isinstance(error, sqlite3.DatabaseError) and "no such table" in text:
        raise StoreSchemaError(
            f"SQLite store {where}: {text}; run `consumer store init`"
        ) from error
    raise StoreError(f"SQLite store {where}: {type(error).__name__}: {text}") from error
