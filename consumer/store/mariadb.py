"""The MariaDB store (PyMySQL), for ``mysql://user:password@host:port/database`` URLs: a
batch's keys claimed with one ``INSERT IGNORE … VALUES (…), (…)`` into the group's current
generation of processed keys (schema version 5, :mod:`consumer.store.mariadb_generations`),
after the keys the Bloom filters flag were looked up in the sealed ones.

Every session runs READ COMMITTED (InnoDB's default, REPEATABLE READ, would keep next-key
and gap locks on the processed-keys index, so a purge or a neighbour's claim would block
claims of keys that only sort near them), with ``ANSI_QUOTES`` (``"offset"`` names a
column, as on the other stores) and InnoDB's ``innodb_lock_wait_timeout`` and MariaDB's
``idle_transaction_timeout`` from the settings (consumer/store/mariadb_session.py sets the
session up). Statements run in autocommit (PyMySQL's default is off, which would leave the
read of a ``checkpoints()`` call open as a transaction); a batch is an explicit
``START TRANSACTION`` … ``COMMIT``, so no transaction lingers between batches.

What the epoch fence relies on: the checkpoint ``UPDATE … WHERE epoch = %s`` is a locking
read, which in InnoDB sees the latest committed row (not the transaction's snapshot) and
keeps the row's exclusive lock until COMMIT; an assignment bumping the epoch takes the same
lock, so one of the two waits for the other. And the connection asks for *found* rows
(``CLIENT.FOUND_ROWS``): the count of rows the UPDATE matched, not those it changed, so a
row written again at the same offset still counts as moved, not fenced.

DDL commits on its own in MariaDB, so schema creation is a sequence of idempotent
``CREATE TABLE IF NOT EXISTS`` under a named lock, with the version row written last, and
the migrations from versions 2-4 are statements that are safe to run again. No MariaDB store
ever held schema version 1: one that says so is refused.

Connects on first use, and again after the connection broke, but never inside a batch
(its transaction died with the connection: ``StoreUnavailable``). Errors leave as
``StoreUnavailable`` (unreachable, lost, deadlock 1213, lock wait timeout 1205),
``StoreSchemaError`` (credentials or database refused, tables missing) or ``StoreError``.
One connection, one thread.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pymysql

from consumer.errors import (
    StoreError,
    StoreSchemaError,
    StoreUnavailable,
)
from consumer.message import TP
from consumer.store import key_runs, mariadb_generations, mariadb_runs
from consumer.store.base import (
    DIGEST_COORDINATES,
    MARIADB_SCHEMA_VERSION,
    RUN_COORDINATES,
    SCHEMA_VERSION,
    AsyncMessageTransactions,
    BatchClosing,
    CheckpointRow,
    Claim,
    MessageTransactions,
    Position,
    SchemaUpgrade,
    SendsClosing,
    SentClosing,
    Store,
    require_version,
)
from consumer.store.claim_batch import EveryKey
from consumer.store.key_generations import GENERATION_KEYS, Generation, GroupKeys
from consumer.store.mariadb_session import (
    COMMIT,
    ROLLBACK,
    ROLLED_BACK,
    START,
    MariaDBConnection,
    MariaDBCursor,
    connect,
    is_lost,
    parameters,
    signalled,
    translated,
)

if TYPE_CHECKING:
    from consumer.store.mariadb_pool import MariaDBTransactions

#: Names are compared byte for byte (Kafka's topic names are case-sensitive; MariaDB's
#: default collation is not).
_TABLE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS consumer_schema (version integer NOT NULL,
        coordinates_keys varchar(16) NOT NULL DEFAULT '{DIGEST_COORDINATES}') {_TABLE}""",
    f"""CREATE TABLE IF NOT EXISTS consumer_checkpoints (
        group_id varchar(255) NOT NULL, topic varchar(255) NOT NULL,
        "partition" integer NOT NULL, next_offset bigint, epoch bigint NOT NULL,
        updated_at double NOT NULL, topic_id varchar(64),
        PRIMARY KEY (group_id, topic, "partition")) {_TABLE}""",
    # Keys in generations (version 5: consumer.store.mariadb_generations).
    f"""CREATE TABLE IF NOT EXISTS consumer_processed_keys (
        group_id varchar(255) NOT NULL, generation integer NOT NULL DEFAULT 0,
        "key" varbinary(64) NOT NULL,
        topic varchar(255) NOT NULL, "partition" integer NOT NULL, "offset" bigint NOT NULL,
        processed_at double NOT NULL,
        PRIMARY KEY (group_id, generation, "key"),
        KEY consumer_processed_keys_group_age (group_id, generation, processed_at)) {_TABLE}""",
    *mariadb_generations.TABLES,
    # Kept so every store has the same tables (a version-1 MariaDB store never existed).
    f"CREATE TABLE IF NOT EXISTS consumer_keys_to_scope (group_id varchar(255) PRIMARY KEY) "
    f"{_TABLE}",
]
#: Version 2 -> 3: the keys already claimed keep their form, so coordinates keys stay
#: digests. Each statement commits on its own (DDL) and is safe to run again, so a migration
#: cut between them completes at the next start.
MIGRATE_FROM_2 = [
    "ALTER TABLE consumer_schema ADD COLUMN IF NOT EXISTS coordinates_keys varchar(16) "
    f"NOT NULL DEFAULT '{DIGEST_COORDINATES}'",
    f"UPDATE consumer_schema SET version = {SCHEMA_VERSION}",
]
#: Version 3 -> 4: the store keeps a row per key, as its keys already claimed are (a run
#: would not see them); only a new store keeps runs. Version 4 -> 5:
#: mariadb_generations.migrate_to_5, then the version.
MIGRATE_TO_5 = [f"UPDATE consumer_schema SET version = {MARIADB_SCHEMA_VERSION}"]
#: The versions ensure_schema migrates from.
MIGRATES_FROM = (2, 3, 4)
#: Serialises concurrent first-time schema creation by several consumer processes.
SCHEMA_LOCK = "checkpoint_consumer_schema"

class MariaDBStore(key_runs.KeepsRuns, SendsClosing, Store):
    dialect = "mariadb"
    schema_version = MARIADB_SCHEMA_VERSION

    def __init__(self, url: str, *, connect_timeout: float = 10.0,
                 lock_wait_timeout: int = 10, idle_transaction_timeout: int = 60,
                 generation_keys: int = GENERATION_KEYS) -> None:
        self._params, self._where = parameters(url, connect_timeout)
        self._lock_wait = max(1, int(lock_wait_timeout))
        self._idle = max(1, int(idle_transaction_timeout))
        self._conn: MariaDBConnection | None = None
        self._in_batch = False
        #: The open batch holds nothing yet: it may roll back and start again.
        self._batch_empty = False
        #: The group whose rotation lock the open transaction holds shared.
        self._sharing: str | None = None
        self._generation_keys = generation_keys
        #: What this store knows of each group's generations of keys.
        self._groups: dict[str, GroupKeys] = {}
        #: A rotation that found claims open is tried again once the current generation holds
        #: this many keys.
        self._next_rotation: dict[str, int] = {}
        self._init_runs()

    def _has_runs_table(self) -> bool:
        with self._errors():
            return self._db.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() "
                "AND table_name = 'consumer_processed_runs'").fetchone() is not None

    @property
    def _db(self) -> MariaDBConnection:
        """The connection, opened (again) on first use after start or after it broke; never
        inside a batch, whose transaction died with the old connection. Whoever asks for it
        may run a statement: the batch's transaction no longer counts as empty."""
        if self._closing is not None:
            self._answer_closing()  # the connection takes no statement before that
        self._batch_empty = False
        if self._conn is None or not self._conn.open:
            if self._in_batch:
                raise StoreUnavailable(
                    f"lost the connection to MariaDB store {self._where} in the middle of a "
                    "batch; the batch rolled back")
            self._conn = self._connect()
        return self._conn

    def _connect(self) -> MariaDBConnection:
        return connect(self._params, self._where, lock_wait=self._lock_wait, idle=self._idle)

    # --- lifecycle -------------------------------------------------------------------------

    def ensure_schema(self, group: str | None = None, *,
                      group_scoped_topics: Collection[str] = ()) -> SchemaUpgrade | None:
        where = f"the MariaDB store {self._where}"
        with self._errors():
            got = self._db.execute("SELECT GET_LOCK(%s, %s)",
                                   (SCHEMA_LOCK, self._lock_wait + self._idle)).fetchone()
            if not got or got[0] != 1:
                raise StoreUnavailable(f"{where}: another process held the schema lock "
                                       f"{SCHEMA_LOCK!r} too long; try again")
            try:
                found = self._version()
                if found == 1:
                    raise StoreSchemaError(
                        f"{where} holds checkpoint-consumer schema version 1, but no MariaDB "
                        f"store ever had it; this version needs {MARIADB_SCHEMA_VERSION}. "
                        "Point store.url at a new database.")
                require_version(found, where, needs=MARIADB_SCHEMA_VERSION,
                                migrates_from=MIGRATES_FROM)
                if found == 2:
                    for statement in MIGRATE_FROM_2:
                        self._db.execute(statement)
                if found in MIGRATES_FROM:
                    mariadb_generations.migrate_to_5(self._db)
                    for statement in MIGRATE_TO_5:
                        self._db.execute(statement)
                if found is None:
                    # each commits on its own; all idempotent (a creation cut short completes
                    # at the next start: no version row yet)
                    for statement in (*SCHEMA, *mariadb_runs.TABLES):
                        self._db.execute(statement)
                    self._db.execute(
                        "INSERT INTO consumer_schema (version, coordinates_keys) "
                        "VALUES (%s, %s)", (MARIADB_SCHEMA_VERSION, RUN_COORDINATES))
                row = self._db.execute(
                    "SELECT coordinates_keys FROM consumer_schema").fetchone()
            finally:
                if self._conn is not None and self._conn.open:
                    self._db.execute("DO RELEASE_LOCK(%s)", (SCHEMA_LOCK,))
        self._read_form(row[0] if row is not None else None)
        if found in MIGRATES_FROM:
            return SchemaUpgrade(found, MARIADB_SCHEMA_VERSION, None, 0, 0, 0,
                                 runs_from_now=False)
        return None

    def _version(self) -> int | None:
        exists = self._db.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() "
            "AND table_name = 'consumer_schema'").fetchone()
        if not exists:
            return None
        row = self._db.execute("SELECT max(version) FROM consumer_schema").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def close(self) -> None:
        if self._closing is not None:
            self._answer_closing()
        if self._conn is not None and self._conn.open:
            self._conn.close()

    def ping(self) -> None:
        with self._errors():
            self._db.execute("SELECT 1").fetchone()

    # --- assignment -----------------------------------------------------------------------

    def assign(self, group: str, partitions: Sequence[TP], now: float,
               topic_ids: Mapping[str, str] | None = None) -> dict[TP, Position]:
        positions = {}
        ids = topic_ids or {}
        with self._errors():
            # A row locked by a frozen previous owner is freed when the server ends its idle
            # transaction: wait that long here (failing an assignment stops the process).
            self._db.execute(f"SET SESSION innodb_lock_wait_timeout = "
                             f"{self._lock_wait + self._idle}")
            self._db.execute(START)
            try:
                for topic, partition in partitions:
                    row = self._db.execute(
                        """INSERT INTO consumer_checkpoints
                               (group_id, topic, "partition", next_offset, epoch, updated_at,
                                topic_id)
                           VALUES (%s, %s, %s, NULL, 1, %s, %s)
                           ON DUPLICATE KEY UPDATE epoch = epoch + 1,
                               updated_at = VALUES(updated_at),
                               topic_id = coalesce(topic_id, VALUES(topic_id))
                           RETURNING next_offset, epoch, topic_id""",
                        (group, topic, partition, now, ids.get(topic))).fetchone()
                    if row is None:
                        raise StoreError(f"no checkpoint row returned for {topic}[{partition}]")
                    positions[(topic, partition)] = Position(row[0], row[1], row[2])
                self._db.execute(COMMIT)
            except BaseException:
                self._rollback_quietly()
                raise
            finally:
                if self._conn is not None and self._conn.open:
                    self._db.execute(
                        f"SET SESSION innodb_lock_wait_timeout = {self._lock_wait}")
        return positions

    def adopt_topic_id(self, group: str, tp: TP, topic_id: str, *, epoch: int,
                       forget_offset: bool) -> None:
        with self._errors():
            self._db.execute(
                'UPDATE consumer_checkpoints SET topic_id = %s, next_offset = CASE WHEN %s '
                'THEN NULL ELSE next_offset END WHERE group_id = %s AND topic = %s '
                'AND "partition" = %s AND epoch = %s',
                (topic_id, forget_offset, group, tp[0], tp[1], epoch))

    def follow_back(self, group: str, tp: TP, offset: int, *, epoch: int) -> None:
        with self._errors():
            self._db.execute(
                'UPDATE consumer_checkpoints SET next_offset = %s WHERE group_id = %s '
                'AND topic = %s AND "partition" = %s AND epoch = %s AND next_offset > %s',
                (offset, group, tp[0], tp[1], epoch, offset))

    # --- one checkpoint batch ------------------------------------------------------------

    def begin(self) -> None:
        with self._errors():
            db = self._db
            db.send(START)  # answered with the batch's first statement: one round trip fewer
        db.guarded, db.rolled_back = True, False
        self._in_batch = True
        self._batch_empty = True
        self._sharing = None

    def open_batch(self, group: str, claims: Sequence[Claim],
                   now: float) -> AbstractSet[bytes]:
        """:meth:`begin` and :meth:`claim`; a batch of stretches first tries its runs whole in
        one statement (:func:`mariadb_runs.claim_whole`), and where a run covers one of its keys
        starts the transaction again and claims as :meth:`claim` does."""
        self.begin()
        if (runs := key_runs.stretch_runs(claims, self._coordinates_keys)) is not None:
            with self._errors():
                if mariadb_runs.claim_whole(self._db, group, now, runs):
                    self._batch_empty = False
                    return EveryKey(claims)
                self._db.execute(ROLLBACK)
                self._db.execute(START)
        return self.claim(group, claims, now)

    def claim(self, group: str, claims: Sequence[Claim], now: float) -> AbstractSet[bytes]:
        """Claim the keys: the ordered coordinates keys as runs where the store keeps them
        (consumer.store.mariadb_runs), the others with :meth:`_claim_keys`. A batch of
        stretches goes in as runs, and makes no key unless one was processed before."""
        if (runs := key_runs.stretch_runs(claims, self._coordinates_keys)) is not None:
            with self._errors():
                found = mariadb_runs.claim(self._db, group, now, runs)
            return EveryKey(claims) if found is None else found
        runs, others = key_runs.split(claims, self._coordinates_keys)
        new = self._claim_keys(group, others, now)
        if runs:
            with self._errors():
                new |= key_runs.new_keys(runs, mariadb_runs.claim(self._db, group, now, runs))
        return new

    def _claim_keys(self, group: str, claims: Sequence[Claim], now: float) -> set[bytes]:
        """Claim the keys as rows of the group's current generation
        (:mod:`consumer.store.mariadb_generations`): the transaction holds the group's
        rotation lock shared and has read its generations, the keys the filters flag are
        looked up in the sealed ones (those found are processed already), and the others are
        inserted with one statement."""
        if not claims:
            return set()
        restartable, self._batch_empty = self._batch_empty, False
        keys = self._group_keys(group)
        with self._errors():
            if self._sharing != group:
                self._share(group, keys, now, restartable=restartable)
            flagged = keys.flagged(c.key for c in claims)
            found = mariadb_generations.held(self._db, group, keys.sealed, flagged)
            new = self._insert_keys(group, keys.current,
                                    [c for c in claims if c.key not in found]
                                    if found else claims, now)
        keys.claimed(list(new))
        return new

    def _share(self, group: str, keys: GroupKeys, now: float, *, restartable: bool) -> None:
        """Hold the group's rotation lock shared for the batch, and read its generations into
        ``keys`` if the current one is not the one they know; first, while the batch holds
        nothing (``restartable``), between it and a new one: make the group's lock row and
        current generation if it has none, and seal the current generation once it holds its
        share (:meth:`_rotate`)."""
        db = self._db
        rotated = not restartable
        for _ in range(3):
            current = mariadb_generations.share(db, group)
            if current is None:  # a new group, or one just migrated
                if restartable:
                    db.execute(ROLLBACK)
                    try:
                        mariadb_generations.prepare(db, group)
                    finally:
                        db.execute(START)
                else:
                    mariadb_generations.prepare(db, group)
                continue
            if current != keys.current:
                generations = mariadb_generations.current_listed(db, group, current)
                keys.refresh(generations, lambda number: mariadb_generations.keys_of(
                    db, group, number))
                # a sealed generation is written no more: what was read of it holds whatever
                # this transaction does (nothing claimed yet)
                keys.committed()
            if not rotated and keys.rotation_due and \
                    self._next_rotation.get(group, 0) <= keys.current_keys:
                self._rotate(group, keys, now)
                rotated = True
                continue
            self._sharing = group
            return
        raise StoreUnavailable(
            f"MariaDB store {self._where}: group {group}'s generations of processed keys "
            "changed three times while a batch opened; the batch is retried")

    def _rotate(self, group: str, keys: GroupKeys, now: float) -> None:
        """Seal the current generation in a transaction of its own, between the batch's empty
        one and a new one, if no claim is open anywhere
        (:func:`mariadb_generations.rotate`); else try again once the generation holds an
        eighth more keys. Once it holds a quarter more than its share, the seal waits up to a
        second for the claims open then."""
        db = self._db
        db.execute(ROLLBACK)
        try:
            if mariadb_generations.rotate(db, group, keys.current, now,
                                          wait=keys.seal_overdue > 0):
                log.info("MariaDB store %s: sealed generation %d of group %s's processed keys",
                         self._where, keys.current, group)
            else:
                self._next_rotation[group] = keys.current_keys + keys.generation_keys // 8
        finally:
            db.execute(START)

    def _group_keys(self, group: str) -> GroupKeys:
        if (keys := self._groups.get(group)) is None:
            keys = self._groups[group] = GroupKeys(self._generation_keys)
        return keys

    def load_group(self, group: str) -> None:
        """Read the group's sealed generations into its filters now, at start, rather than in
        its first batch (outside any transaction: a sealed generation is written no more)."""
        keys = self._group_keys(group)
        try:
            with self._errors():
                db = self._db
                if db.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = "
                              "DATABASE() AND table_name = 'consumer_key_generations'"
                              ).fetchone() is None:
                    return  # not created yet: read at the first claim
                generations = mariadb_generations.listed(db, group)
                # a migrated group's current generation is made at its first claim
                unmade = bool(generations) and generations[-1].sealed
                if unmade:
                    generations.append(Generation(generations[-1].number + 1, 0, False))
                if generations:
                    keys.refresh(generations, lambda number: mariadb_generations.keys_of(
                        db, group, number))
                if unmade:
                    keys.current = -1  # so the first claim reads the generations again
        except StoreError as error:
            log.warning("MariaDB store %s: could not read group %s's processed keys at start "
                        "(%s); they are read at its first claim", self._where, group, error)
            return
        keys.committed()
        if keys.read:
            log.info("read %d processed keys of group %s (%d sealed generations) into memory "
                     "(%.1f MB)", keys.read, group, len(keys.sealed), keys.filter_bytes / 1e6)

    def _transaction_ended(self, *, committed: bool) -> None:
        """The claims of the batch that ended are known to be in the database, or not."""
        self._sharing = None
        for keys in self._groups.values():
            keys.ended(committed=committed)

    def _insert_keys(self, group: str, generation: int, claims: Sequence[Claim],
                     now: float) -> set[bytes]:
        """Insert the keys into ``generation``; those new (not held already)."""
        if not claims:
            return set()
        # One statement; in key order, so two batches claiming the same keys lock them in the
        # same order (no deadlock between them). Literals built here, not by the driver's
        # per-value escaping: keys travel as hex, numbers as numbers, each topic escaped once.
        db = self._db
        topics = {topic: db.escape(topic) for topic in {c.topic for c in claims}}
        g, n = f"{db.escape(group)},{int(generation):d}", db.escape(float(now))
        values = ",".join([f"({g},X'{c.key.hex()}',{topics[c.topic]},{c.partition:d},"
                           f"{c.offset:d},{n})" for c in sorted(claims, key=_by_key)])
        insert = ('INSERT IGNORE INTO consumer_processed_keys (group_id, generation, "key", '
                  f'topic, "partition", "offset", processed_at) VALUES {values}')
        # Nearly every key is new: its row count says so, and no row comes back (PyMySQL
        # parses each returned row in Python, about a third of the store's time). When a key
        # was claimed before, claim again naming the new ones.
        db.execute(f"SAVEPOINT {CLAIM_SAVEPOINT}")
        if db.execute(insert).rowcount == len(claims):
            return {c.key for c in claims}
        db.execute(f"ROLLBACK TO SAVEPOINT {CLAIM_SAVEPOINT}")
        rows = db.execute(f'{insert} RETURNING "key"').fetchall()
        return {bytes(row[0]) for row in rows}

    def unclaim(self, group: str, keys: Iterable[bytes]) -> None:
        """Forget each key: its row, or its place in a run (which splits around it)."""
        keys = list(keys)
        if not keys:
            return
        listed = [f"X'{key.hex()}'" for key in keys]
        with self._errors():
            db = self._db
            gone = db.execute(
                "DELETE FROM consumer_processed_keys WHERE group_id = %s AND generation IN "
                f"({mariadb_generations.numbers(db, group)}) AND \"key\" IN "
                f"({','.join(listed)}) RETURNING generation", (group,)).fetchall()
            mariadb_generations.count_forgotten(db, group, (n for (n,) in gone))
            if self._runs:
                mariadb_runs.unclaim(self._db, group, keys)

    def savepoint(self) -> None:
        with self._errors():
            self._db.execute("SAVEPOINT handler")

    def release_savepoint(self) -> None:
        self._require_open_batch()
        with self._errors():
            self._db.execute("RELEASE SAVEPOINT handler")

    def rollback_to_savepoint(self) -> None:
        self._require_open_batch()
        with self._errors():
            self._db.execute("ROLLBACK TO SAVEPOINT handler")
            self._db.execute("RELEASE SAVEPOINT handler")

    def transaction_open(self) -> bool:
        """Raises StoreUnavailable when InnoDB rolled the batch back under a handler that
        went on (:attr:`MariaDBConnection.rolled_back`): nothing of it commits, it is retried."""
        conn = self._conn
        if conn is not None and conn.rolled_back:
            raise StoreUnavailable(f"MariaDB store {self._where}: {ROLLED_BACK}")
        if conn is None or not conn.open:
            return True
        with self._errors():
            return conn.in_transaction()

    def _require_open_batch(self) -> None:
        """The batch's transaction is still open: a handler's DDL (even ``CREATE TABLE IF
        NOT EXISTS``) or COMMIT ends it in MariaDB, committing every key claimed for the batch
        ahead of the effects not yet written. Read from the server's last status flags, no
        round trip; the batch stops here, before anything else commits."""
        if self._in_batch and not self.transaction_open():
            raise StoreError(
                f"MariaDB store {self._where}: a handler's statement ended the batch's "
                "transaction (MariaDB commits implicitly on DDL such as CREATE TABLE, and on "
                "COMMIT): the keys claimed for the batch committed ahead of the effects of "
                "messages not handled yet, which will be skipped as duplicates. Create tables "
                "before the consumer starts, never commit in a handler, and apply those messages "
                "again with `consumer replay --forget-keys` from the batch's first offset.")

    def write_checkpoints(self, group: str, rows: Sequence[CheckpointRow],
                          now: float) -> list[TP]:
        self._require_open_batch()
        refused = []
        with self._errors():
            for row in rows:
                # rowcount counts matched rows (CLIENT.FOUND_ROWS): the same offset again is
                # a move, not a fence
                moved = self._db.execute(
                    """UPDATE consumer_checkpoints SET next_offset = %s, updated_at = %s
                       WHERE group_id = %s AND topic = %s AND "partition" = %s
                             AND epoch = %s AND (next_offset IS NULL OR next_offset <= %s)""",
                    (row.next_offset, now, group, row.topic, row.partition, row.epoch,
                     row.next_offset)).rowcount
                if moved != 1:
                    refused.append(row)
            return self._refused(group, refused) if refused else []

    def commit(self) -> None:
        committed = False
        try:
            with self._errors():
                self._ending_batch().execute(COMMIT)
                committed = True
        finally:
            self._in_batch = False
            self._transaction_ended(committed=committed)

    def _ending_batch(self) -> MariaDBConnection:
        """The connection, about to end the batch's transaction with the store's COMMIT."""
        db = self._db
        if db.rolled_back:  # a COMMIT now would end nothing: the batch is gone
            raise StoreUnavailable(f"MariaDB store {self._where}: {ROLLED_BACK}")
        db.guarded = False
        return db

    def send_close(self, group: str, rows: Sequence[CheckpointRow],
                   now: float) -> BatchClosing:
        """The rows' UPDATEs and the COMMIT as one block (:func:`_closing_block`), sent
        without waiting for its answer: the loop polls its next batch while the server
        writes the rows and commits (InnoDB flushes its log), instead of after. The answer is
        read by the closing's ``result()``, or before this store's next statement, whichever
        comes first. The block commits only if every row moved; a fenced row stops it before
        its COMMIT, and reading the answer rolls the batch back and tells which rows were
        fenced, as :meth:`close_batch` does."""
        self._require_open_batch()
        try:
            with self._errors():
                db = self._ending_batch()
                db.send(_closing_block(db, group, rows, now) if rows else COMMIT)
        except BaseException:
            self._in_batch = False
            self._transaction_ended(committed=False)
            raise
        closing = self._closing = SentClosing(self._answer_closing, group, rows, now)
        return closing

    def _closing_answer(self, closing: SentClosing) -> list[TP]:
        """The sent closing's answer: no row fenced when it committed; when a row did not
        move, the batch is rolled back here and the rows written again tell which were
        fenced. A connection lost meanwhile leaves the COMMIT's outcome unknown, as a lost
        answer to :meth:`commit` does: the batch counts as not committed, and its keys tell
        the next run what did."""
        committed = False
        try:
            with self._errors():
                conn = self._conn
                if conn is None or not conn.open:
                    raise pymysql.err.InterfaceError(0, "the connection was closed")
                try:
                    conn.read_answer()
                    committed = True
                except pymysql.err.MySQLError as error:
                    if conn.open:
                        conn.execute(ROLLBACK)  # the block stopped short of its COMMIT
                    if not signalled(error, _NOT_MOVED):
                        raise
        finally:
            self._in_batch = False
            self._transaction_ended(committed=committed)
        return [] if committed else self._fenced_rows(closing.group, closing.rows, closing.now)

    def _fenced_rows(self, group: str, rows: Sequence[CheckpointRow], now: float) -> list[TP]:
        """After a batch rolled back on a row that did not move: the rows written again in a
        transaction rolled back at once tell which partitions are fenced (or raise for one
        going backwards)."""
        with self._errors():
            db = self._db
            db.execute(START)
            try:
                return self.write_checkpoints(group, rows, now)
            finally:
                db.execute(ROLLBACK)

    def rollback(self) -> None:
        if self._closing is not None:
            self._answer_closing()  # its COMMIT came first: nothing of that batch to roll back
        self._in_batch = False
        self._transaction_ended(committed=False)
        if self._conn is None or not self._conn.open:
            return
        self._conn.guarded = self._conn.rolled_back = False
        with self._errors():
            self._conn.execute(ROLLBACK)

    def _rollback_quietly(self) -> None:
        if self._closing is not None:
            self._answer_closing()
        self._transaction_ended(committed=False)
        if self._conn is not None and self._conn.open:
            self._conn.guarded = self._conn.rolled_back = False
            try:
                self._conn.execute(ROLLBACK)
            except pymysql.err.MySQLError:
                self._conn.close()

    # --- for handlers ----------------------------------------------------------------------

    @property
    def connection(self) -> MariaDBConnection:
        return self._db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> MariaDBCursor:
        return self._db.execute(sql, params)

    def message_transactions(self, size: int) -> MessageTransactions:
        return self._pool(size)

    def async_message_transactions(self, size: int) -> AsyncMessageTransactions:
        from consumer.store.mariadb_async import AsyncMariaDBTransactions

        return AsyncMariaDBTransactions(self._pool(size), size=size)

    def _pool(self, size: int) -> MariaDBTransactions:
        """Up to ``size`` connections of their own, with this store's session settings."""
        from consumer.store.mariadb_pool import MariaDBTransactions

        return MariaDBTransactions(self._params, size=size, where=self._where,
                                   lock_wait=self._lock_wait, idle=self._idle,
                                   coordinates_keys=self._coordinates_keys)

    # --- operations ------------------------------------------------------------------------

    def checkpoints(self, group: str) -> dict[TP, int | None]:
        with self._errors():
            rows = self._db.execute(
                'SELECT topic, "partition", next_offset FROM consumer_checkpoints '
                "WHERE group_id = %s", (group,)).fetchall()
        return {(t, p): o for t, p, o in rows}

    def purge_processed_keys(self, group: str, older_than: float, limit: int) -> int:
        """Up to ``limit`` rows of keys, then of runs; returns the keys they held, which is
        ``limit`` or more whenever old rows may remain (a run holds one key or more).

        Keys go with their generation, as on PostgreSQL: a sealed one whole once its newest
        key is older than ``older_than`` (its keys deleted, then its row), the current one
        key by key, counted as forgotten there in the same transaction."""
        with self._errors():
            db = self._db
            deleted = 0
            for (generation,) in db.execute(mariadb_generations.PAST,
                                            (group, older_than)).fetchall():
                deleted += int(db.execute(
                    "DELETE FROM consumer_processed_keys WHERE group_id = %s "
                    "AND generation = %s LIMIT %s", (group, generation, limit - deleted)
                ).rowcount)
                if deleted >= limit:
                    break
                db.execute(mariadb_generations.FORGET, (group, generation))
            row = db.execute(mariadb_generations.CURRENT, (group,)).fetchone()
            if deleted < limit and row is not None and row[0] is not None:
                db.execute(START)
                try:
                    gone = db.execute(
                        "DELETE FROM consumer_processed_keys WHERE group_id = %s "
                        "AND generation = %s AND processed_at < %s ORDER BY processed_at "
                        "LIMIT %s RETURNING generation",
                        (group, row[0], older_than, limit - deleted)).fetchall()
                    deleted += mariadb_generations.count_forgotten(
                        db, group, (n for (n,) in gone))
                    db.execute(COMMIT)
                except BaseException:
                    self._rollback_quietly()
                    raise
            if self._runs and deleted < limit:
                deleted += sum(int(length) for (length,) in self._db.execute(
                    "DELETE FROM consumer_processed_runs WHERE group_id = %s "
                    "AND processed_at < %s ORDER BY processed_at LIMIT %s "
                    f"RETURNING {mariadb_runs.LENGTH}",
                    (group, older_than, limit - deleted)).fetchall())
        return deleted

    def keys_from(self, group: str, targets: Mapping[TP, int]) -> dict[TP, int]:
        found = {}
        with self._errors():
            for (topic, partition), offset in targets.items():
                row = self._db.execute(
                    'SELECT count(*) FROM consumer_processed_keys WHERE group_id = %s '
                    'AND topic = %s AND "partition" = %s AND "offset" >= %s',
                    (group, topic, partition, offset)).fetchone()
                found[(topic, partition)] = int(row[0])
                if self._runs:
                    row = self._db.execute(
                        "SELECT coalesce(sum(last_offset - greatest(first_offset, %s) + 1), 0) "
                        "FROM consumer_processed_runs WHERE group_id = %s AND topic = %s "
                        'AND "partition" = %s AND last_offset >= %s',
                        (offset, group, topic, partition, offset)).fetchone()
                    found[(topic, partition)] += int(row[0])
        return found

    def replay(self, group: str, targets: Mapping[TP, int], *, forget_keys: bool,
               now: float) -> dict[TP, int]:
        """As the base class (one transaction, the epoch bumped), in this dialect's SQL."""
        forgotten = dict.fromkeys(targets, 0)
        with self._errors():
            self._db.execute(START)
            try:
                for (topic, partition), offset in targets.items():
                    self._db.execute(
                        """INSERT INTO consumer_checkpoints
                               (group_id, topic, "partition", next_offset, epoch, updated_at)
                           VALUES (%s, %s, %s, %s, 1, %s)
                           ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset),
                               epoch = epoch + 1, updated_at = VALUES(updated_at)""",
                        (group, topic, partition, offset, now))
                    if forget_keys:
                        forgotten[(topic, partition)] = self._forget_keys_from(
                            group, topic, partition, offset)
                self._db.execute(COMMIT)
            except BaseException:
                self._rollback_quietly()
                raise
        return forgotten

    def _forget_keys_from(self, group: str, topic: str, partition: int, offset: int) -> int:
        """Inside replay's transaction: the partition's keys claimed at or after ``offset``
        (rows, runs, and the tail of a run that starts before it); returns how many."""
        gone = self._db.execute(
            'DELETE FROM consumer_processed_keys WHERE group_id = %s '
            'AND topic = %s AND "partition" = %s AND "offset" >= %s RETURNING generation',
            (group, topic, partition, offset)).fetchall()
        forgotten = mariadb_generations.count_forgotten(self._db, group, (n for (n,) in gone))
        if not self._runs:
            return forgotten
        where = 'WHERE group_id = %s AND topic = %s AND "partition" = %s'
        forgotten += sum(int(length) for (length,) in self._db.execute(
            f"DELETE FROM consumer_processed_runs {where} AND first_offset >= %s "
            f"RETURNING {mariadb_runs.LENGTH}", (group, topic, partition, offset)).fetchall())
        row = self._db.execute(
            f"SELECT coalesce(sum(last_offset - %s + 1), 0) FROM consumer_processed_runs "
            f"{where} AND last_offset >= %s", (offset, group, topic, partition, offset)
        ).fetchone()
        forgotten += int(row[0])
        self._db.execute(
            "UPDATE consumer_processed_runs SET key_last = key_last - (last_offset - %s + 1), "
            f"last_offset = %s - 1 {where} AND last_offset >= %s",
            (offset, offset, group, topic, partition, offset))
        return forgotten

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except pymysql.err.MySQLError as error:
            if is_lost(error) and self._conn is not None and self._conn.open:
                self._conn.close()  # the next batch connects again
            raise translated(error, self._where, self._lock_wait) from error


log = logging.getLogger("consumer.store")

#: Set before each claim (a savepoint of the same name replaces the last one).
CLAIM_SAVEPOINT = "consumer_claim"


def _by_key(claim: Claim) -> bytes:
    return claim.key


#: The closing block's error when a row did not move (a fenced batch commits nothing).
_NOT_MOVED = "checkpoint-consumer: a checkpoint row did not move"


def _closing_block(db: MariaDBConnection, group: str, rows: Sequence[CheckpointRow],
                   now: float) -> str:
    """The rows' UPDATEs and the store's COMMIT as one compound statement, which commits only
    if each UPDATE matched its row (``ROW_COUNT()`` counts matched rows, as ``rowcount``
    does: ``CLIENT.FOUND_ROWS``), and otherwise stops at a ``SIGNAL``, the transaction open."""
    g, n = db.escape(group), db.escape(float(now))
    updates = "".join(
        f"UPDATE consumer_checkpoints SET next_offset = {row.next_offset:d}, updated_at = {n} "
        f"WHERE group_id = {g} AND topic = {db.escape(row.topic)} "
        f'AND "partition" = {row.partition:d} AND epoch = {row.epoch:d} '
        f"AND (next_offset IS NULL OR next_offset <= {row.next_offset:d}); "
        "SET moved = moved + ROW_COUNT(); " for row in rows)
    return (f"BEGIN NOT ATOMIC DECLARE moved INT DEFAULT 0; {updates}"
            f"IF moved < {len(rows):d} THEN "
            f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{_NOT_MOVED}'; END IF; {COMMIT}; END")
