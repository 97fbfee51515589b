"""The PostgreSQL store (psycopg 3). In a store created at schema version 4, a batch's ordered
coordinates keys are claimed as runs (:mod:`consumer.store.postgres_runs`: a handful of rows per
batch); other keys (and every key of a store migrated from an older version) with one ``INSERT
… SELECT FROM unnest(…)`` into the group's current generation (schema version 5,
:mod:`consumer.store.postgres_generations`): a plain ``INSERT`` while batches meet no processed
key, ``ON CONFLICT DO NOTHING RETURNING key`` for a while after one did (see
:meth:`PostgresStore._claim_keys`).
A batch of plain messages is two round trips: ``BEGIN`` with its runs' INSERT in one query
string (:meth:`PostgresStore.open_batch`), its checkpoint rows with ``COMMIT`` in another,
whose answer is read while the loop polls the next batch (:meth:`PostgresStore.send_close`;
:meth:`PostgresStore.close_batch` sends them in one pipeline and waits). Where the batch's
keys lie above every key the store held for their partitions at assignment (read there:
:attr:`~consumer.store.base.Position.new_keys_from`), the first is answered while the
handlers run (:meth:`PostgresStore.open_batch_unanswered`).

Connects on first use, and again after the connection broke, but never inside a batch (its
transaction died with the connection: ``StoreUnavailable``, the batch rolls back). Session
limits (:class:`~consumer.store.base.PostgresSession`) bound every wait on a frozen or vanished
peer. psycopg errors leave as ``StoreUnavailable`` (unreachable, lock timeout),
``StoreSchemaError`` (credentials refused, tables missing) or ``StoreError``. One connection,
one thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import generators, sql
from psycopg.pq import ExecStatus, TransactionStatus

from consumer.errors import (
    ProcessedKeysAhead,
    StoreConstraintViolated,
    StoreError,
    StoreSchemaError,
    StoreTransactionFailed,
    StoreUnavailable,
)
from consumer.message import TP
from consumer.store import key_runs, postgres_generations, postgres_mark, postgres_runs
from consumer.store.base import (
    DIGEST_COORDINATES,
    ORDERED_COORDINATES,
    POSTGRES_SCHEMA_VERSION,
    RUN_COORDINATES,
    SCHEMA_VERSION,
    AsyncMessageTransactions,
    BatchClosing,
    CheckpointRow,
    Claim,
    ClosedBatch,
    ConflictBackoff,
    MessageTransactions,
    Position,
    PostgresSession,
    SchemaUpgrade,
    SendsClosing,
    SentClosing,
    Store,
    require_version,
)
from consumer.store.claim_batch import EveryKey
from consumer.store.key_generations import GENERATION_KEYS, GroupKeys
from consumer.store.postgres_literals import int_array, text_array

SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS consumer_schema (version integer NOT NULL,
        coordinates_keys text NOT NULL DEFAULT '{DIGEST_COORDINATES}')""",
    """CREATE TABLE IF NOT EXISTS consumer_checkpoints (
        group_id text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
        next_offset bigint, epoch bigint NOT NULL, updated_at double precision NOT NULL,
        topic_id text,
        PRIMARY KEY (group_id, topic, partition))""",
    # Keys in generations (version 5: consumer.store.postgres_generations).
    """CREATE TABLE IF NOT EXISTS consumer_processed_keys (
        group_id text NOT NULL, key bytea NOT NULL, topic text NOT NULL,
        partition integer NOT NULL, "offset" bigint NOT NULL,
        processed_at double precision NOT NULL, generation integer NOT NULL DEFAULT 0,
        PRIMARY KEY (group_id, generation, key))""",
    """CREATE INDEX IF NOT EXISTS consumer_processed_keys_group_age
        ON consumer_processed_keys (group_id, generation, processed_at)""",
    postgres_generations.TABLE,
    # Groups whose keys were claimed under version 1 (not scoped to their topic yet).
    "CREATE TABLE IF NOT EXISTS consumer_keys_to_scope (group_id text PRIMARY KEY)",
]
#: Version 1 -> 2, in the same transaction as the check of the version.
MIGRATE_FROM_1 = [
    "ALTER TABLE consumer_checkpoints ADD COLUMN topic_id text",
    "CREATE TABLE consumer_keys_to_scope (group_id text PRIMARY KEY)",
    "INSERT INTO consumer_keys_to_scope SELECT DISTINCT group_id FROM consumer_processed_keys",
    "DROP INDEX IF EXISTS consumer_processed_keys_age",
    """CREATE INDEX consumer_processed_keys_group_age
        ON consumer_processed_keys (group_id, processed_at)""",
    "UPDATE consumer_schema SET version = 2",
]
#: Version 2 -> 3: the keys already claimed keep their form, so coordinates keys stay digests.
MIGRATE_FROM_2 = [
    "ALTER TABLE consumer_schema ADD COLUMN coordinates_keys text NOT NULL "
    f"DEFAULT '{DIGEST_COORDINATES}'",
    f"UPDATE consumer_schema SET version = {SCHEMA_VERSION}",
]
#: Version 3 -> 4: the keys already claimed keep their rows, so coordinates keys stay one row
#: each (no runs: ``consumer_processed_runs`` is made only with a new store).
#: Version 4 -> 5: postgres_generations.MIGRATE_TO_5, after the steps before.
MIGRATE_TO_5 = [*postgres_generations.MIGRATE_TO_5,
                f"UPDATE consumer_schema SET version = {POSTGRES_SCHEMA_VERSION}"]
#: Versions this store migrates from.
MIGRATES_FROM = (1, 2, 3, 4)

#: The fence on a checkpoint row ``c``: it moves only where the epoch is still ours, and only
#: forward (``epoch`` and ``offset``: the row's new values, as SQL).
_OURS_AND_FORWARD = ("c.epoch = {epoch} AND (c.next_offset IS NULL "
                     "OR c.next_offset <= {offset})")
#: A batch's checkpoint rows in one statement, each fenced; returns the partitions that moved.
_MOVE_ROWS = ("""UPDATE consumer_checkpoints AS c SET next_offset = u.o, updated_at = {0}
               FROM unnest({1}::text[], {2}::integer[], {3}::bigint[], {4}::bigint[])
                    AS u(t, p, o, e)
               WHERE c.group_id = {5} AND c.topic = u.t AND c.partition = u.p AND """
              + _OURS_AND_FORWARD.format(epoch="u.e", offset="u.o")
              + " RETURNING c.topic, c.partition")
_PARAMETERS = ("%s", "%b", "%b", "%b", "%b", "%s")
MOVE_ROWS = _MOVE_ROWS.format(*_PARAMETERS)
#: The same, failing (division by zero) unless all of the given number of rows moved: a
#: COMMIT sent behind it (in one pipeline, or one query string: :func:`close_query`) then
#: never commits a batch with a fenced partition, since the statement's error aborts the
#: transaction and the server skips the COMMIT.
_MOVE_EVERY_ROW = "WITH moved AS (" + _MOVE_ROWS + ") SELECT 1 / (count(*) = {6})::int FROM moved"
MOVE_EVERY_ROW = _MOVE_EVERY_ROW.format(*_PARAMETERS, "%s")
#: consumer.dedup.topic_scoped in SQL: sha256(b"t" NUL topic NUL key)[:16].
TOPIC_SCOPED = ("substring(sha256(decode('7400', 'hex') || convert_to(topic, 'UTF8') "
                "|| decode('00', 'hex') || key) from 1 for 16)")
log = logging.getLogger("consumer.store")

# Serialises concurrent first-time schema creation by several consumer processes.
SCHEMA_LOCK = 7_212_041_901


#: SQLSTATEs of errors a handler may hit that say nothing about its message: the whole
#: transaction-rollback class 40 (a deadlock 40P01, a serialization failure 40001), a lock
#: timeout (55P03), a statement timeout (57014). Matched by code: psycopg 3 does not derive
#: DeadlockDetected nor SerializationFailure from TransactionRollback. The batch (or the
#: message) is retried like an outage.
TRANSIENT_SQLSTATES = ("40", "55P03", "57014")
#: Connection exceptions (08) and operator intervention (57P: shutdown, cannot connect now).
LOST_CONNECTION_SQLSTATES = ("08", "57P")


def _rows_params(group: str, rows: Sequence[CheckpointRow], now: float) -> tuple[Any, ...]:
    """:data:`MOVE_ROWS`' parameters: the rows as arrays, one per column."""
    return (now, [r.topic for r in rows], [r.partition for r in rows],
            [r.next_offset for r in rows], [r.epoch for r in rows], group)


#: Up to this many rows, of distinct partitions, a closing moves each row by its primary key
#: (:func:`_move_each_row`) instead of joining them all over ``unnest``: the server plans one
#: or two plain UPDATEs in less time than the join (written out, a one-row closing cost the
#: server 740 µs a batch with its BEGIN, claim and COMMIT, against 950 through ``unnest``;
#: two rows 810 against 920; six rows 1,070 against 950). Most batches close one row: the
#: client hands over a partition's messages in runs.
ROWS_MOVED_ONE_BY_ONE = 2


def close_query(group: str, rows: Sequence[CheckpointRow], now: float,
                literal: Callable[[str], str]) -> str:
    """The rows' move, failing unless every row moved, and ``COMMIT`` as one query string,
    its values written out (:mod:`consumer.store.postgres_literals`; the time as its
    ``repr``): :func:`_move_each_row` for a row or two, else :data:`MOVE_EVERY_ROW`."""
    distinct = len({(r.topic, r.partition) for r in rows})
    if distinct == len(rows) <= ROWS_MOVED_ONE_BY_ONE:
        return _move_each_row(group, rows, now, literal) + "; COMMIT"
    return _MOVE_EVERY_ROW.format(
        repr(float(now)), text_array((r.topic for r in rows), literal),
        int_array(r.partition for r in rows), int_array(r.next_offset for r in rows),
        int_array(r.epoch for r in rows), literal(group), distinct) + "; COMMIT"


def _move_each_row(group: str, rows: Sequence[CheckpointRow], now: float,
                   literal: Callable[[str], str]) -> str:
    """:data:`MOVE_EVERY_ROW` for rows of distinct partitions, as one UPDATE of each row by
    its primary key (two UPDATEs of one row in one statement would move it once)."""
    group_id, at = literal(group), repr(float(now))
    moves = ", ".join(
        f"m{i} AS (UPDATE consumer_checkpoints AS c SET next_offset = {int(r.next_offset)}, "
        f"updated_at = {at} WHERE c.group_id = {group_id} AND c.topic = {literal(r.topic)} "
        f"AND c.partition = {int(r.partition)} AND "
        + _OURS_AND_FORWARD.format(epoch=int(r.epoch), offset=int(r.next_offset))
        + " RETURNING 1)"
        for i, r in enumerate(rows))
    moved = " UNION ALL ".join(f"TABLE m{i}" for i in range(len(rows)))
    return f"WITH {moves} SELECT 1 / (count(*) = {len(rows)})::int FROM ({moved}) AS moved"


def is_transient(error: BaseException) -> bool:
    """Whether an error a handler raised is a transient database error (above) or a lost
    connection, rather than a failure of its message."""
    if not isinstance(error, psycopg.Error):
        return False
    state = error.sqlstate
    if state is None:  # raised by the client: the connection is gone
        return isinstance(error, psycopg.OperationalError)
    return state.startswith(TRANSIENT_SQLSTATES) or (
        isinstance(error, psycopg.OperationalError)
        and state.startswith(LOST_CONNECTION_SQLSTATES))


def claim_values(claims: Sequence[Claim]) -> tuple[str, str, str, str]:
    """The claimed rows as :func:`postgres_generations.claim_statement` takes them: four
    comma-joined strings split by the server (psycopg dumps a list element by element in
    Python, which cost more than the insert). Keys travel as hex (dedup keys are digests,
    never empty); Kafka topic names cannot contain a comma."""
    return (",".join([c.key.hex() for c in claims]),
            ",".join([c.topic for c in claims]),
            ",".join([str(c.partition) for c in claims]),
            ",".join([str(c.offset) for c in claims]))


def unclaim(db: psycopg.Connection[Any], group: str, keys: Iterable[bytes], *, runs: bool,
            claimed_at: float | None = None) -> None:
    """Forget each key, in ``db``'s open transaction: its row, or (where the store keeps
    runs) its place in a run, which splits around it. With ``claimed_at``, only rows claimed
    with that time: a caller forgetting its own claims, which may have been rolled back
    since, never forgets a row another session claimed meanwhile."""
    keys, ours = list(keys), claimed_at is not None
    db.execute(UNCLAIM_KEYS.format(" AND processed_at = %(at)s" if ours else ""),
               {"g": group, "keys": keys, "at": claimed_at})
    if runs:
        for key in keys:
            head, offset = key_runs.head_and_offset(key)
            run = db.execute(UNCLAIM_FROM_RUN.format(CLAIMED_AT if ours else ""),
                             (group, head, offset, *([claimed_at] if ours else []))).fetchone()
            if run is None:
                continue
            low, high, topic, partition, first_offset, at_run = run
            pieces = [key_runs.Run(head, lo, hi, topic, partition, first_offset + lo - low)
                      for lo, hi in ((low, offset), (offset + 1, high)) if hi > lo]
            if pieces:  # the rest of the run, in what this transaction held: never refused
                postgres_runs.claim(db.execute, group, at_run, pieces)


#: Forget keys kept as rows, whichever generation holds them, counted as forgotten there;
#: ``{0}``: a further condition (or nothing). Parameters: ``g``, ``keys`` (and ``at``).
UNCLAIM_KEYS = postgres_generations.forgetting(
    f"""DELETE FROM consumer_processed_keys WHERE group_id = %(g)s
        AND generation = ANY({postgres_generations.OF_GROUP}) AND key = ANY(%(keys)s){{0}}
        RETURNING group_id, generation""")
#: Forget the run holding a key, returning it; ``{0}``: a further condition (or nothing).
#: Parameters: group, the key's head and offset (:func:`key_runs.head_and_offset`).
UNCLAIM_FROM_RUN = """DELETE FROM consumer_processed_runs
    WHERE group_id = %s AND key_head = %s AND key_offsets @> %s::bigint{0}
    RETURNING lower(key_offsets), upper(key_offsets), topic, partition, first_offset,
              processed_at"""
#: The condition that makes the statements above forget only a claim of a given time.
CLAIMED_AT = " AND processed_at = %s"
#: Past the last processed key of a head at or above an offset (NULL: none there): the
#: exclusion constraint's index finds the runs overlapping from there on. Parameters: group,
#: head, offset.
NEW_KEYS_FROM = """SELECT max(upper(key_offsets)) FROM consumer_processed_runs
    WHERE group_id = %s AND key_head = %s AND key_offsets && int8range(%s, NULL)"""


@dataclass(frozen=True, slots=True)
class _SentOpening:
    """A batch's opening sent without waiting for its answer: the query string (sent again
    if its prepared statement was gone) and its runs, each of which must go in whole."""

    query: str
    runs: Sequence[key_runs.Run]


class PostgresStore(key_runs.KeepsRuns, SendsClosing, Store):
    dialect = "postgresql"
    schema_version = POSTGRES_SCHEMA_VERSION

    def __init__(self, dsn: str, *, connect_timeout: float = 10.0,
                 session: PostgresSession | None = None,
                 generation_keys: int = GENERATION_KEYS) -> None:
        self._dsn = dsn
        self._where = _redacted(dsn)
        self._connect_timeout = connect_timeout
        self._session = session or PostgresSession()
        self._conn: psycopg.Connection[Any] | None = None
        self._in_batch = False
        #: Nothing ran yet in this batch's transaction: a failed claim may restart it.
        self._batch_empty = False
        self._claims_with_conflicts = ConflictBackoff()
        #: The connection :data:`postgres_runs.PREPARE_OPEN` was prepared on.
        self._open_prepared_on: psycopg.Connection[Any] | None = None
        self._literals: dict[str, str] = {}
        #: The batch's transaction shows its mark (:mod:`consumer.store.postgres_mark`).
        self._marked = False
        #: The group whose rotation lock the open transaction holds shared.
        self._shares_rotation: str | None = None
        #: A batch's opening sent and not answered yet (:meth:`open_batch_unanswered`).
        self._opening: _SentOpening | None = None
        self._generation_keys = generation_keys
        #: What this store knows of each group's generations of keys.
        self._groups: dict[str, GroupKeys] = {}
        #: Groups whose generations are read again before their next claim.
        self._stale: set[str] = set()
        #: A rotation that found claims open is tried again once the current generation holds
        #: this many keys.
        self._next_rotation: dict[str, int] = {}
        self._init_runs()

    def _has_runs_table(self) -> bool:
        with self._errors():
            row = self._db.execute("SELECT to_regclass('consumer_processed_runs')").fetchone()
        return row is not None and row[0] is not None

    @property
    def _db(self) -> psycopg.Connection[Any]:
        """The connection, opened (again) on first use after start or after it broke; never
        inside a batch, whose transaction died with the old connection. Whoever asks for it
        may run a statement: the batch's transaction no longer counts as empty."""
        if self._opening is not None:
            self._answer_opening()  # the connection takes no statement before that
        if self._closing is not None:
            self._answer_closing()  # nor before this
        self._batch_empty = False
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._in_batch:
                raise StoreUnavailable(
                    f"lost the connection to PostgreSQL store {self._where} in the middle of "
                    "a batch; the batch rolled back"
                )
            self._conn = self._connect(self._connect_timeout)
        return self._conn

    def _connect(self, connect_timeout: float) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._dsn, autocommit=True,
                                   connect_timeout=max(1, int(connect_timeout)),
                                   **_session_parameters(self._dsn, self._session))
        except psycopg.OperationalError as error:
            text = str(error).strip()
            refused = "password authentication failed" in text or (
                "does not exist" in text and ("role" in text or "database" in text)
            )
            if refused:  # Waiting will not help: the settings are wrong.
                raise StoreSchemaError(
                    f"PostgreSQL store {self._where} refused the connection: {text}. Check "
                    "store.url (user, password, database name)."
                ) from None
            raise StoreUnavailable(f"cannot reach PostgreSQL store {self._where}: {text}") from None

    # --- lifecycle -------------------------------------------------------------------------

    def ensure_schema(self, group: str | None = None, *,
                      group_scoped_topics: Collection[str] = ()) -> SchemaUpgrade | None:
        with self._errors(), self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            exists = self._db.execute("SELECT to_regclass('consumer_schema')").fetchone()
            found = None
            if exists and exists[0] is not None:
                row = self._db.execute("SELECT max(version) FROM consumer_schema").fetchone()
                found = row[0] if row else None
            require_version(found, f"the PostgreSQL store {self._where}",
                            needs=POSTGRES_SCHEMA_VERSION, migrates_from=MIGRATES_FROM)
            if found == 1:
                for statement in MIGRATE_FROM_1:
                    self._db.execute(statement)
            if found in (1, 2):
                for statement in MIGRATE_FROM_2:
                    self._db.execute(statement)
            if found in MIGRATES_FROM:
                for statement in MIGRATE_TO_5:
                    self._db.execute(statement)
            if found != POSTGRES_SCHEMA_VERSION:
                # DDL only when something is missing: even CREATE INDEX IF NOT EXISTS waits
                # for every open batch's locks, so a member starting beside a busy (or
                # frozen) one would wait for it.
                for statement in SCHEMA:
                    self._db.execute(statement)
            if found is None:
                new_form = RUN_COORDINATES if self._create_runs() else ORDERED_COORDINATES
                self._db.execute(
                    "INSERT INTO consumer_schema (version, coordinates_keys) VALUES (%s, %s)",
                    (POSTGRES_SCHEMA_VERSION, new_form))
            upgrade = self._scope_keys(
                group, group_scoped_topics,
                migrated_from=found if found != POSTGRES_SCHEMA_VERSION else None)
            row = self._db.execute("SELECT coordinates_keys FROM consumer_schema").fetchone()
        self._read_form(row[0] if row is not None else None)
        return upgrade

    def _create_runs(self) -> bool:
        """The runs table, inside ensure_schema's transaction; False (with a warning) where
        btree_gist cannot be had: the store then keeps a row per key, as before version 4."""
        try:
            with self._db.transaction():  # a savepoint: a refusal leaves the rest standing
                self._db.execute(postgres_runs.EXTENSION)
                self._db.execute(postgres_runs.TABLE)
                self._db.execute(postgres_runs.AGE_INDEX)
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFile,
                psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedObject) as error:
            log.warning(
                "PostgreSQL store %s: cannot use the btree_gist extension (%s); this new store "
                "keeps a row per processed key, which makes claims several times slower. To "
                "keep runs of keys instead, have the database owner run CREATE EXTENSION "
                "btree_gist, then point store.url at a new database.",
                self._where, str(error).strip())
            return False
        return True

    def _scope_keys(self, group: str | None, group_scoped_topics: Collection[str], *,
                    migrated_from: int | None) -> SchemaUpgrade | None:
        """Rewrite the group's version-1 keys to topic-scoped ones, inside ensure_schema's
        transaction, computed by the server exactly as consumer.dedup.topic_scoped does."""
        pending = group is not None and self._db.execute(
            "DELETE FROM consumer_keys_to_scope WHERE group_id = %s RETURNING 1", (group,)
        ).fetchone() is not None
        if not pending and migrated_from is None:
            return None
        scoped = kept = 0
        if pending:
            kept_topics = list(group_scoped_topics)
            scoped = self._db.execute(
                f"UPDATE consumer_processed_keys SET key = {TOPIC_SCOPED} "
                "WHERE group_id = %s AND NOT (topic = ANY(%s))", (group, kept_topics),
            ).rowcount
            row = self._db.execute(
                "SELECT count(*) FROM consumer_processed_keys "
                "WHERE group_id = %s AND topic = ANY(%s)", (group, kept_topics)).fetchone()
            kept = int(row[0]) if row else 0
        row = self._db.execute("SELECT count(*) FROM consumer_keys_to_scope").fetchone()
        return SchemaUpgrade(migrated_from or 1, POSTGRES_SCHEMA_VERSION,
                             group if pending else None, scoped, kept,
                             int(row[0]) if row else 0, runs_from_now=False)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def ping(self) -> None:
        with self._errors():
            self._db.execute("SELECT 1").fetchone()

    # --- assignment -----------------------------------------------------------------------

    def assign(self, group: str, partitions: Sequence[TP], now: float,
               topic_ids: Mapping[str, str] | None = None) -> dict[TP, Position]:
        positions = {}
        ids = topic_ids or {}
        with self._errors(), self._db.transaction():
            # A row locked by a frozen previous owner is freed when the server ends its idle
            # transaction: wait that long here (failing an assignment stops the process).
            limits = self._session
            wait = _ms(limits.lock_timeout + limits.idle_in_transaction_timeout)
            self._db.execute(f"SET LOCAL lock_timeout = {wait}")
            for topic, partition in partitions:
                row = self._db.execute(
                    """INSERT INTO consumer_checkpoints
                           (group_id, topic, partition, next_offset, epoch, updated_at, topic_id)
                       VALUES (%s, %s, %s, NULL, 1, %s, %s)
                       ON CONFLICT (group_id, topic, partition)
                       DO UPDATE SET epoch = consumer_checkpoints.epoch + 1,
                                     updated_at = excluded.updated_at,
                                     topic_id = coalesce(consumer_checkpoints.topic_id,
                                                         excluded.topic_id)
                       RETURNING next_offset, epoch, topic_id""",
                    (group, topic, partition, now, ids.get(topic)),
                ).fetchone()
                if row is None:
                    raise StoreError(f"no checkpoint row returned for {topic}[{partition}]")
                positions[(topic, partition)] = Position(
                    row[0], row[1], row[2], self._new_keys_from(group, topic, partition, row[0]))
        return positions

    def _new_keys_from(self, group: str, topic: str, partition: int,
                       next_offset: int | None) -> int | None:
        """The offset from which the store holds no processed key of the partition: its row's,
        or past the last run of its keys above that (left by a replay that kept them, or by
        a row moved back). None where its keys are not kept as runs. Read after the row's
        epoch moved, in that transaction: a previous owner's batch committed before it is
        seen, and none after it commits."""
        if not (self._coordinates_keys.as_runs and 0 <= partition < 1 << 16):
            return None
        head = self._coordinates_keys.prefix(topic) + partition.to_bytes(2, "big")
        lowest = next_offset or 0
        row = self._db.execute(NEW_KEYS_FROM, (group, head, lowest)).fetchone()
        return max(lowest, row[0]) if row is not None and row[0] is not None else lowest

    # --- one checkpoint batch ------------------------------------------------------------

    def begin(self) -> None:
        with self._errors():
            self._begin_marked()
        self._in_batch = True
        self._batch_empty = True

    def _begin_marked(self, group: str | None = None) -> None:
        """Open the batch's transaction, marked so that a handler ending it shows
        (:mod:`consumer.store.postgres_mark`); holding ``group``'s rotation lock shared, if
        given (:func:`postgres_generations.opening`)."""
        self._marked = postgres_mark.begin(self._db, postgres_generations.opening(group))
        self._shares_rotation = group

    def open_batch(self, group: str, claims: Sequence[Claim],
                   now: float) -> AbstractSet[bytes]:
        """:meth:`begin` and :meth:`claim`; a batch of stretches sends ``BEGIN`` and its runs'
        INSERT, prepared on the connection, as one query string
        (:func:`postgres_runs.open_query`): one round trip instead of two, and the INSERT's
        plan kept. In the benchmark's child, 0.30-0.48 ms a batch against 0.46-0.71 ms for
        the two statements. Not prepared, the server plans the INSERT each time: with the
        values written out the same way it saved less than half as much in a
        microbenchmark, and with psycopg's ClientCursor nothing in the benchmark's child.

        Not psycopg's pipeline mode, which did it before (753fec4, withdrawn in c8ba1c5):
        leaving a pipeline sends a flush request behind its Sync; the server reads it after
        reporting ready, which disarms ``idle_in_transaction_session_timeout`` and does not arm
        it again, so a member frozen after opening a batch kept its transaction, and its keys,
        without end. A query string ends with the server reporting ready, the timer armed.

        psycopg deallocates every prepared statement (``DEALLOCATE ALL``) after a ROLLBACK
        once it holds statements of its own; the opening then finds its statement gone and
        prepares it again: a few round trips after a batch that rolled back."""
        if (runs := key_runs.stretch_runs(claims, self._coordinates_keys)) is None:
            with self._errors():
                self._begin_marked(group)
            self._in_batch = True
            self._batch_empty = True
            return self.claim(group, claims, now)
        ordered = postgres_runs.in_key_order(runs)
        with self._errors():
            db, query = self._opening_on(group, now, ordered)
            rows = postgres_runs.send_open(db, query)
            self._marked = postgres_mark.marked(db.pgconn)
            self._shares_rotation = None
            new = postgres_runs.claimed(db.execute, group, now, ordered, rows)
        return EveryKey(claims) if new is None else new

    def open_batch_unanswered(self, group: str, claims: Sequence[Claim],
                              now: float) -> AbstractSet[bytes]:
        """:meth:`open_batch`'s query string for a batch of stretches, sent without waiting:
        every key is answered new, and the server's answer is read before the store's next
        statement (:attr:`_db`: a handler's ``context.db``, the closing). The server inserts
        the runs while the handlers run, instead of before. ``framework-postgres`` alternated
        with the answer awaited, ten pairs of runs: medians 316,782 against 277,186 msg/s
        (``benchmarks/HISTORY.md``)."""
        if (runs := key_runs.stretch_runs(claims, self._coordinates_keys)) is None:
            return self.open_batch(group, claims, now)
        ordered = postgres_runs.in_key_order(runs)
        with self._errors():
            db, query = self._opening_on(group, now, ordered)
            db.pgconn.send_query(query.encode(db.info.encoding))
            db.wait(generators.send(db.pgconn))
        self._opening = _SentOpening(query, ordered)
        self._shares_rotation = None
        return EveryKey(claims)

    def _opening_on(self, group: str, now: float,
                    ordered: Sequence[key_runs.Run]) -> tuple[psycopg.Connection[Any], str]:
        """The connection, its opening statement prepared there, and the query string opening
        a batch of these runs (:func:`postgres_runs.open_query`). The batch is in hand from
        here: a failure leaves a transaction to roll back."""
        db = self._db
        if self._open_prepared_on is not db:  # a new connection
            postgres_runs.prepare_open(db)
            self._open_prepared_on = db
        self._in_batch = True
        return db, postgres_runs.open_query(group, now, ordered, self._literal)

    def _answer_opening(self) -> None:
        """Read the answer to :meth:`open_batch_unanswered`'s opening; raise
        :class:`ProcessedKeysAhead` unless every run went in whole. A statement deallocated
        since it was prepared (see :meth:`open_batch`) is prepared again and the opening sent
        again, answered at once: nothing else ran in the transaction yet."""
        opening, self._opening = self._opening, None
        assert opening is not None
        with self._errors():
            db = self._conn
            if db is None or db.closed:
                raise psycopg.OperationalError("the connection was closed")
            try:
                inserted = postgres_runs.unanswered_rows(db)
            except psycopg.errors.InvalidSqlStatementName:
                db.execute("ROLLBACK")
                postgres_runs.prepare_open(db)
                inserted = len(postgres_runs.send_open(db, opening.query))
            self._marked = postgres_mark.marked(db.pgconn)
        if inserted != len(opening.runs):
            raise ProcessedKeysAhead(
                f"PostgreSQL store {self._where}",
                sorted({(run.topic, run.partition) for run in opening.runs}))

    def _drop_opening(self) -> None:
        """Read an unanswered opening's answer and ignore it: the batch is rolled back."""
        self._opening = None
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            with suppress(psycopg.Error):
                conn.wait(generators.fetch_many(conn.pgconn))

    def _literal(self, text: str) -> str:
        """``text`` as a string literal of this connection's SQL (group and topic names)."""
        if (quoted := self._literals.get(text)) is None:
            quoted = self._literals[text] = sql.Literal(text).as_string(self._db)
        return quoted

    def claim(self, group: str, claims: Sequence[Claim], now: float) -> AbstractSet[bytes]:
        """Claim the keys: the ordered coordinates keys as runs where the store keeps them
        (after the other keys, whose claim may start the transaction again), the others
        with :meth:`_claim_keys`. A batch of stretches goes in as runs, and makes no key
        unless one was processed before."""
        if (runs := key_runs.stretch_runs(claims, self._coordinates_keys)) is not None:
            with self._errors():
                new = postgres_runs.claim(self._db.execute, group, now, runs)
            return EveryKey(claims) if new is None else new
        runs, others = key_runs.split(claims, self._coordinates_keys)
        found = self._claim_keys(group, others, now)
        if runs:
            with self._errors():
                found |= key_runs.new_keys(
                    runs, postgres_runs.claim(self._db.execute, group, now, runs))
        return found

    def _claim_keys(self, group: str, claims: Sequence[Claim], now: float) -> set[bytes]:
        """Claim the keys as rows of the group's current generation, with one statement.
        ``ON CONFLICT DO NOTHING`` costs the server a speculative insertion per row (about a
        third of a 1,000-key claim measured here), and a batch almost never holds a processed
        key, so the batch's first statement is a plain ``INSERT``: if a key was processed
        before, it fails, the still empty transaction starts again, and the claim is made
        with ``ON CONFLICT``, as are the claims of the next batches (8, doubling while
        conflicts keep coming, to 1,024) before a plain one is tried again. A plain
        ``INSERT`` waits for a key another session holds uncommitted exactly as ``ON
        CONFLICT`` does.

        The sealed generations are asked, inside the statement, only about the keys the
        filters flag (:mod:`consumer.store.postgres_generations`). A statement finding its
        generation sealed by another member fails; the generations are read again and the
        claim made again (in a new transaction while this one holds nothing else, else the
        batch is retried)."""
        if not claims:
            return set()
        restartable, self._batch_empty = self._batch_empty, False
        values = claim_values(claims)
        keys = self._group_keys(group)
        with self._errors():
            if self._shares_rotation != group:  # opened without this group's lock
                self._db.execute(postgres_generations.share_rotation(group))
                self._shares_rotation = group
            if restartable and keys.rotation_due and self._next_rotation.get(group, 0) <= \
                    keys.current_keys:
                self._rotate(group, keys, now)
            for _ in range(4):
                if group in self._stale:
                    self._refresh(group, keys, outside=restartable)
                flagged = [key.hex() for key in keys.flagged(c.key for c in claims)]
                parameters = postgres_generations.claim_parameters(
                    group, keys.current, now, values, keys.sealed, flagged)
                sealed = "flagged" if flagged else "none"
                try:
                    if restartable and self._claims_with_conflicts.plain_due():
                        new = {c.key for c in claims}
                        if len(new) == len(claims):  # else the plain INSERT meets its own keys
                            try:
                                self._db.execute(postgres_generations.claim_statement(
                                    plain=True, sealed=sealed), parameters)
                                self._claims_with_conflicts.plain_succeeded()
                                keys.claimed(list(new))
                                return new
                            except (psycopg.errors.UniqueViolation,
                                    psycopg.errors.DivisionByZero) as error:
                                # processed before, in this generation or a sealed one, or
                                # the generation was sealed: claim again with ON CONFLICT
                                # (the generations read again for a division by zero)
                                self._claims_with_conflicts.plain_conflicted()
                                self._db.execute("ROLLBACK")
                                if isinstance(error, psycopg.errors.DivisionByZero):
                                    self._stale.add(group)  # the refresh opens it again
                                else:
                                    self._begin_marked(group)
                                continue
                    rows = self._db.execute(postgres_generations.claim_statement(
                        plain=False, sealed=sealed), parameters).fetchall()
                    new = {bytes(row[0]) for row in rows}
                    keys.claimed(list(new))
                    return new
                except psycopg.errors.DivisionByZero:
                    self._stale.add(group)
                    if not restartable:
                        raise StoreUnavailable(
                            f"PostgreSQL store {self._where}: generation {keys.current} of "
                            f"group {group}'s processed keys was sealed by another member "
                            "during this batch; the batch rolled back and is retried") from None
                    self._db.execute("ROLLBACK")  # the refresh opens it again
        raise StoreUnavailable(
            f"PostgreSQL store {self._where}: group {group}'s current generation of processed "
            "keys was sealed three times during one claim; the batch is retried")

    def _refresh(self, group: str, keys: GroupKeys, *, outside: bool) -> None:
        """Read the group's generations again (:func:`postgres_generations.refresh`). With
        ``outside``, the batch's transaction holds nothing yet: the reading happens between
        it and a new one, so a generation it starts is committed at once and never waits
        behind this batch (a member frozen mid-batch would hold every other member's first
        claim)."""
        if not outside:
            postgres_generations.refresh(self._db, group, keys)
        else:
            if self._db.info.transaction_status != TransactionStatus.IDLE:
                self._db.execute("ROLLBACK")
            try:
                postgres_generations.refresh(self._db, group, keys)
                keys.committed()  # nothing claimed yet: what was read holds
            finally:
                self._begin_marked(group)
        self._stale.discard(group)

    def _group_keys(self, group: str) -> GroupKeys:
        """What this store knows of the group's generations; read at the next claim when new."""
        if (keys := self._groups.get(group)) is None:
            keys = self._groups[group] = GroupKeys(self._generation_keys)
            self._stale.add(group)
        return keys

    def _rotate(self, group: str, keys: GroupKeys, now: float) -> None:
        """Seal the current generation, in a transaction of its own between the batch's empty
        one and a new one, if no claim is open anywhere (:func:`postgres_generations.rotate`);
        else try again once the generation holds an eighth more keys. Members claiming one
        batch after another seldom leave a moment with none open, so once the generation
        holds a quarter more than its share, the seal waits a moment for the claims open then,
        longer at each miss (:func:`postgres_generations.seal_wait_ms`)."""
        self._db.execute("ROLLBACK")
        wait = postgres_generations.seal_wait_ms(keys.seal_overdue)
        try:
            if postgres_generations.rotate(self._db, group, keys.current, now, wait_ms=wait):
                log.info("PostgreSQL store %s: sealed generation %d of group %s's processed "
                         "keys", self._where, keys.current, group)
            else:
                self._next_rotation[group] = keys.current_keys + keys.generation_keys // 8
        finally:
            self._stale.add(group)  # the refresh that follows opens the batch again

    def load_group(self, group: str) -> None:
        """Read the group's sealed generations into its filters now, at start, rather than in
        its first batch (outside any transaction: a sealed generation is written no more)."""
        keys = self._group_keys(group)
        try:
            with self._errors():
                if self._db.execute("SELECT to_regclass('consumer_key_generations')"
                                    ).fetchone() in (None, (None,)):
                    return  # not created yet: read at the first claim
                postgres_generations.refresh(self._db, group, keys)
        except StoreError as error:
            log.warning("PostgreSQL store %s: could not read group %s's processed keys at "
                        "start (%s); they are read at its first claim", self._where, group,
                        error)
            return
        keys.committed()  # what was read holds, whatever the next transaction does
        self._stale.discard(group)
        if keys.read:
            log.info("read %d processed keys of group %s (%d sealed generations) into memory "
                     "(%.1f MB)", keys.read, group, len(keys.sealed), keys.filter_bytes / 1e6)

    def _transaction_ended(self, *, committed: bool) -> None:
        """The claims of the transaction that ended (and what it read) are known, or not."""
        for keys in self._groups.values():
            keys.ended(committed=committed)

    def unclaim(self, group: str, keys: Iterable[bytes]) -> None:
        with self._errors():
            unclaim(self._db, group, keys, runs=self._runs)

    def savepoint(self) -> None:
        with self._errors():
            self._db.execute("SAVEPOINT handler")

    def release_savepoint(self) -> None:
        with self._errors():
            self._db.execute("RELEASE SAVEPOINT handler")

    def rollback_to_savepoint(self) -> None:
        with self._errors():
            self._db.execute("ROLLBACK TO SAVEPOINT handler")
            self._db.execute("RELEASE SAVEPOINT handler")

    def write_checkpoints(self, group: str, rows: Sequence[CheckpointRow],
                          now: float) -> list[TP]:
        if not rows:
            return []
        with self._errors():
            moved = self._db.execute(MOVE_ROWS, _rows_params(group, rows, now)).fetchall()
            done = {(topic, partition) for topic, partition in moved}
            refused = [r for r in rows if (r.topic, r.partition) not in done]
            return self._refused(group, refused) if refused else []

    def close_batch(self, group: str, rows: Sequence[CheckpointRow], now: float) -> list[TP]:
        """The rows' UPDATE and COMMIT in one pipeline: one round trip instead of two. The
        UPDATE fails unless every row moved (:data:`MOVE_EVERY_ROW`), so the COMMIT behind
        it is skipped; the batch is rolled back here, and :meth:`write_checkpoints`, in a
        transaction rolled back at once, tells which rows were fenced (or raises for one
        going backwards)."""
        if not rows:
            self.commit()
            return []
        distinct = len({(r.topic, r.partition) for r in rows})
        try:
            with self._errors():
                db = self._db
                try:
                    with db.pipeline():
                        db.execute(MOVE_EVERY_ROW, (*_rows_params(group, rows, now), distinct))
                        db.execute("COMMIT")
                    self._transaction_ended(committed=True)
                    return []
                except psycopg.errors.DivisionByZero:
                    db.execute("ROLLBACK")
                self._transaction_ended(committed=False)
                return self._fenced_rows(group, rows, now)
        except BaseException:
            self._transaction_ended(committed=False)
            raise
        finally:
            self._in_batch = False

    def send_close(self, group: str, rows: Sequence[CheckpointRow],
                   now: float) -> BatchClosing:
        """:meth:`close_batch`'s rows and COMMIT as one query string (:func:`close_query`),
        sent without waiting for the answer: the loop polls its next batch while the server
        commits, instead of after. The answer is read by the closing's ``result()``, or before
        this store's next statement, whichever comes first; a statement failing there (a
        fenced row) leaves the COMMIT skipped as in the pipeline. ``framework-postgres``
        alone, 3 rounds a run, alternated with the pipeline answered in line: 455,918 /
        578,423 / 605,829 msg/s against 441,308 / 444,310 / 382,998."""
        if not rows:
            return ClosedBatch(self.close_batch(group, rows, now))
        try:
            with self._errors():
                db = self._db
                query = close_query(group, rows, now, self._literal)
                db.pgconn.send_query(query.encode(db.info.encoding))
                db.wait(generators.send(db.pgconn))
        except BaseException:
            self._in_batch = False
            raise
        closing = self._closing = SentClosing(self._answer_closing, group, rows, now)
        return closing

    def _closing_answer(self, closing: SentClosing) -> list[TP]:
        """As :meth:`close_batch` after its pipeline: a fenced row rolls back, then tells
        which partitions were fenced."""
        try:
            with self._errors():
                db = self._conn
                if db is None:
                    raise psycopg.OperationalError("the connection was closed")
                try:
                    for result in db.wait(generators.fetch_many(db.pgconn)):
                        if result.status == ExecStatus.FATAL_ERROR:
                            raise psycopg.errors.error_from_result(
                                result, encoding=db.info.encoding)
                    self._transaction_ended(committed=True)
                    return []
                except psycopg.errors.DivisionByZero:
                    db.execute("ROLLBACK")
                self._transaction_ended(committed=False)
                return self._fenced_rows(closing.group, closing.rows, closing.now)
        except BaseException:
            self._transaction_ended(committed=False)
            raise
        finally:
            self._in_batch = False

    def _fenced_rows(self, group: str, rows: Sequence[CheckpointRow], now: float) -> list[TP]:
        """After a batch rolled back on a row that did not move: the rows written again in a
        transaction rolled back at once tell which partitions are fenced (or raise for one
        going backwards)."""
        db = self._db
        db.execute("BEGIN")
        try:
            return self.write_checkpoints(group, rows, now)
        finally:
            db.execute("ROLLBACK")

    def check_constraints_now(self) -> None:
        with self._errors():
            self._db.execute("SET CONSTRAINTS ALL IMMEDIATE")

    def transaction_open(self) -> bool:
        # libpq's own status and reported setting (psycopg's closed and broken cost ten times
        # more, per message): a closed or broken connection reads UNKNOWN, so counts as open.
        conn = self._conn
        return conn is None or not postgres_mark.ended(conn.pgconn, self._marked)

    def transaction_failed(self) -> bool:
        conn = self._conn
        return conn is not None and conn.pgconn.transaction_status == postgres_mark.IN_ERROR

    def end_handler_transaction(self, *, keep: bool) -> None:
        """A transaction the handler opened after ending the batch's (``COMMIT; BEGIN``):
        committed when ``keep`` (the handler returned), else rolled back."""
        conn = self._conn
        if (keep and conn is not None
                and conn.pgconn.transaction_status == postgres_mark.IN_TRANSACTION):
            self._in_batch = False
            self._transaction_ended(committed=False)  # what the handler committed is unknown
            with self._errors():
                conn.execute("COMMIT")
        else:
            self.rollback()

    def commit(self) -> None:
        committed = False
        try:
            with self._errors():
                self._db.execute("COMMIT")
            committed = True
        finally:
            self._in_batch = False
            self._transaction_ended(committed=committed)

    def rollback(self) -> None:
        if self._opening is not None:
            self._drop_opening()
        if self._closing is not None:
            self._answer_closing()
        self._in_batch = False
        self._transaction_ended(committed=False)
        if self._conn is None or self._conn.closed or self._conn.broken:
            return
        with self._errors():
            self._conn.execute("ROLLBACK")

    # --- for handlers ----------------------------------------------------------------------

    @property
    def connection(self) -> psycopg.Connection[Any]:
        return self._db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self._db.execute(sql, tuple(params))

    # --- concurrent handlers --------------------------------------------------------------

    def message_transactions(self, size: int) -> MessageTransactions:
        from consumer.store.postgres_pool import PostgresTransactions

        return PostgresTransactions(
            self._dsn, size=size, where=self._where, session=self._session,
            session_parameters=_session_parameters(self._dsn, self._session),
            connect_timeout=self._connect_timeout, coordinates_keys=self._coordinates_keys)

    def async_message_transactions(self, size: int) -> AsyncMessageTransactions:
        from consumer.store.postgres_async import AsyncPostgresTransactions

        return AsyncPostgresTransactions(
            self._dsn, size=size, where=self._where, session=self._session,
            session_parameters=_session_parameters(self._dsn, self._session),
            connect_timeout=self._connect_timeout, coordinates_keys=self._coordinates_keys)

    # --- operations ------------------------------------------------------------------------

    def checkpoints(self, group: str) -> dict[TP, int | None]:
        with self._errors():
            rows = self._db.execute(
                "SELECT topic, partition, next_offset FROM consumer_checkpoints "
                "WHERE group_id = %s", (group,),
            ).fetchall()
        return {(t, p): o for t, p, o in rows}

    def purge_processed_keys(self, group: str, older_than: float, limit: int) -> int:
        """Up to ``limit`` rows of keys, then of runs; returns the keys they held, which is
        ``limit`` or more whenever old rows may remain (a run holds one key or more).

        Keys go with their generation: a sealed one whole, once its newest key is older than
        ``older_than`` (its keys deleted, then its row), and the current one key by key,
        counted as forgotten there. A key of a sealed generation is kept until the whole
        generation is past: up to the time the generation took to fill longer than the
        retention."""
        with self._errors(), self._db.transaction():
            self._db.execute(postgres_generations.share_rotation(group))
            deleted = 0
            for (generation,) in self._db.execute(
                    postgres_generations.PAST, (group, older_than)).fetchall():
                deleted += self._db.execute(
                    """DELETE FROM consumer_processed_keys WHERE ctid IN (
                           SELECT ctid FROM consumer_processed_keys
                           WHERE group_id = %s AND generation = %s LIMIT %s)""",
                    (group, generation, limit - deleted)).rowcount
                if deleted >= limit:
                    break
                self._db.execute(postgres_generations.FORGET, (group, generation))
            row = self._db.execute(postgres_generations.CURRENT, (group,)).fetchone()
            if deleted < limit and row is not None and row[0] is not None:
                found = self._db.execute(postgres_generations.forgetting(
                    """DELETE FROM consumer_processed_keys WHERE ctid IN (
                           SELECT ctid FROM consumer_processed_keys
                           WHERE group_id = %s AND generation = %s AND processed_at < %s
                           LIMIT %s)
                       RETURNING group_id, generation"""),
                    (group, row[0], older_than, limit - deleted)).fetchone()
                deleted += int(found[0]) if found else 0
            if self._runs and deleted < limit:
                deleted += sum(int(length) for (length,) in self._db.execute(
                    """DELETE FROM consumer_processed_runs WHERE ctid IN (
                           SELECT ctid FROM consumer_processed_runs
                           WHERE group_id = %s AND processed_at < %s LIMIT %s)
                       RETURNING upper(key_offsets) - lower(key_offsets)""",
                    (group, older_than, limit - deleted)).fetchall())
        return deleted

    # --- replay: keys in runs count one each -------------------------------------------

    def keys_from(self, group: str, targets: Mapping[TP, int]) -> dict[TP, int]:
        found = super().keys_from(group, targets)
        if not self._runs:
            return found
        for (topic, partition), offset in targets.items():
            row = self._db.execute(
                "SELECT coalesce(sum(last_offset - greatest(first_offset, %s) + 1), 0) "
                "FROM consumer_processed_runs WHERE group_id = %s AND topic = %s "
                "AND partition = %s AND last_offset >= %s",
                (offset, group, topic, partition, offset)).fetchone()
            found[(topic, partition)] += int(row[0]) if row else 0
        return found

    def forget_keys_from(self, group: str, tp: TP, offset: int) -> int:
        """The keys claimed at or after ``offset``: rows (counted as forgotten in their
        generations), runs, and the tail of a run that starts before it."""
        topic, partition = tp
        row = self._db.execute(postgres_generations.forgetting(
            """DELETE FROM consumer_processed_keys WHERE group_id = %s AND topic = %s
                   AND partition = %s AND "offset" >= %s
               RETURNING group_id, generation"""),
            (group, topic, partition, offset)).fetchone()
        forgotten = int(row[0]) if row else 0
        if not self._runs:
            return forgotten
        forgotten += sum(int(length) for (length,) in self._db.execute(
            "DELETE FROM consumer_processed_runs WHERE group_id = %s AND topic = %s "
            "AND partition = %s AND first_offset >= %s "
            "RETURNING last_offset - first_offset + 1",
            (group, topic, partition, offset)).fetchall())
        forgotten += sum(int(length) for (length,) in self._db.execute(
            """WITH straddling AS (
                   SELECT ctid, last_offset FROM consumer_processed_runs
                   WHERE group_id = %s AND topic = %s AND partition = %s
                         AND last_offset >= %s FOR UPDATE)
               UPDATE consumer_processed_runs AS r SET last_offset = %s - 1, key_offsets =
                   int8range(lower(key_offsets), lower(key_offsets) + (%s - first_offset))
               FROM straddling WHERE r.ctid = straddling.ctid
               RETURNING straddling.last_offset - %s + 1""",
            (group, topic, partition, offset, offset, offset, offset)).fetchall())
        return forgotten

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.errors.LockNotAvailable as error:
            raise StoreUnavailable(
                f"PostgreSQL store {self._where}: waited store.postgres_lock_timeout_seconds "
                f"({self._session.lock_timeout:g} s) for a row another session holds (a "
                "previous owner frozen inside a transaction is ended after "
                "store.postgres_idle_in_transaction_timeout_seconds); the batch rolled back "
                f"and is retried: {error}"
            ) from error
        except (psycopg.OperationalError,
                psycopg.errors.IdleInTransactionSessionTimeout) as error:
            raise StoreUnavailable(f"PostgreSQL store {self._where}: {error}") from error
        except psycopg.errors.UndefinedTable as error:
            raise StoreSchemaError(
                f"PostgreSQL store {self._where}: {error}; run `consumer store init`"
            ) from error
        except psycopg.errors.InFailedSqlTransaction as error:
            # Our statements raise at their own errors: a statement of ours refused as the
            # transaction had failed means a handler caught its error and returned.
            raise StoreTransactionFailed(
                f"PostgreSQL store {self._where}: a handler caught a database error and "
                "returned, leaving the batch's transaction failed; the batch rolled back"
            ) from error
        except psycopg.errors.IntegrityError as error:
            # Our statements claim with ON CONFLICT and move rows with UPDATE: an integrity
            # error here is a handler's deferred constraint, checked at COMMIT.
            raise StoreConstraintViolated(
                f"PostgreSQL store {self._where}: a deferred constraint failed at COMMIT "
                f"({type(error).__name__}: {error}); the batch rolled back"
            ) from error
        except psycopg.Error as error:
            raise StoreError(
                f"PostgreSQL store {self._where}: {type(error).__name__}: {error}"
            ) from error


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _session_parameters(dsn: str, session: PostgresSession) -> dict[str, Any]:
    """libpq parameters bounding the session's waits; the DSN's own ``options`` are kept."""
    try:
        options = psycopg.conninfo.conninfo_to_dict(dsn).get("options") or ""
    except psycopg.ProgrammingError:
        options = ""
    limits = (f"-c lock_timeout={_ms(session.lock_timeout)} "
              f"-c idle_in_transaction_session_timeout="
              f"{_ms(session.idle_in_transaction_timeout)}")
    return {
        "options": f"{options} {limits}".strip(),
        "keepalives": 1,
        "keepalives_idle": session.keepalives_idle,
        "keepalives_interval": session.keepalives_interval,
        "keepalives_count": session.keepalives_count,
    }


def _redacted(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DSN)"
    host = info.get("host", "localhost")
    return f"postgresql://{info.get('user', '')}@{host}:{info.get('port', 5432)}/" \
           f"{info.get('dbname', '')}"
