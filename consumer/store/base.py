"""The contract every store backend keeps: one transaction per checkpoint batch (begin, claim
keys, a savepoint per handler, checkpoint rows fenced by epoch, commit), a short transaction
of its own for an assignment or a purge, and replay's SQL, shared by every backend.

Our two tables, ``consumer_checkpoints`` and ``consumer_processed_keys``, live beside the
handlers' tables, so effects, claimed keys and checkpoint rows commit or roll back together.
Every statement is scoped to one group; a row never moves backwards except through ``replay``.
One thread uses a store. Raises ``StoreError`` subclasses (and ``OffsetWentBackwards``).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol

from consumer.errors import ConfigError, OffsetWentBackwards, StoreError, StoreUnavailable
from consumer.message import TP, StoreLike

#: Version 2: dedup keys scoped to their topic, checkpoint rows carry the topic id, purges
#: look up one group's keys by age. Version 3: ``consumer_schema.coordinates_keys`` says how
#: the store's coordinates keys are written: ``ordered`` (a store created at version 3: they
#: sort by partition and offset, see consumer.dedup) or ``digest`` (a store migrated from an
#: older version keeps the form its keys were claimed in, so they stay findable).
SCHEMA_VERSION = 3
#: Versions ``ensure_schema`` migrates from, in one transaction (at start or with
#: ``consumer store migrate``).
MIGRATES_FROM = (1, 2)
#: The SQLite store's version 4: runs of consecutive coordinates keys one batch claimed are
#: kept as one row each (``consumer_processed_runs``, see consumer.store.sqlite_runs).
#: Version 5: processed keys in generations (consumer.store.sqlite_generations).
SQLITE_SCHEMA_VERSION = 5
#: The PostgreSQL store's version 4: a store created at it keeps ordered coordinates keys as
#: runs (``consumer_processed_runs``, see consumer.store.postgres_runs); a store migrated to
#: it keeps a row per key, as its keys already claimed are. Version 5: processed keys in
#: generations (consumer.store.postgres_generations).
POSTGRES_SCHEMA_VERSION = 5
#: The MariaDB store's versions 4 and 5, as PostgreSQL's (consumer.store.mariadb_runs,
#: consumer.store.mariadb_generations).
MARIADB_SCHEMA_VERSION = 5
#: ``consumer_schema.coordinates_keys`` of a new store, and of a migrated one.
ORDERED_COORDINATES = "ordered"
DIGEST_COORDINATES = "digest"
#: ... and of a PostgreSQL or MariaDB store keeping ordered coordinates keys as runs.
RUN_COORDINATES = "runs"


@dataclass(frozen=True, slots=True)
class SchemaUpgrade:
    """What ``ensure_schema`` migrated. ``keys_scoped``: the group's processed keys rewritten to
    their topic's scope; ``keys_kept``: left group-wide (their route has ``dedup_scope:
    group``); ``groups_waiting``: other groups whose keys their own consumer rewrites."""

    from_version: int
    to_version: int
    group: str | None
    keys_scoped: int
    keys_kept: int
    groups_waiting: int
    #: Whether the store keeps a batch's consecutive coordinates keys as one row from now on
    #: (SQLite does; a migrated PostgreSQL or MariaDB store keeps a row per key).
    runs_from_now: bool = field(default=True, compare=False)

    def describe(self, where: str) -> str:
        text = (f"store {where} migrated from schema version {self.from_version} to "
                f"{self.to_version}")
        if self.from_version == 1 or self.group is not None:
            keys = ("" if self.group is None else
                    f"; {self.keys_scoped} processed keys of group {self.group} rewritten to "
                    f"topic-scoped keys, {self.keys_kept} kept group-wide (dedup_scope: group)")
            text += (f"{keys}; {self.groups_waiting} other group(s) keep their keys until "
                     "their own consumer (or `consumer store migrate` with their config) "
                     "rewrites them")
        if self.from_version < 3:
            text += ("; coordinates dedup keys stay digests, as the keys already claimed are (a "
                     "store created by this version writes them in offset order, which keeps "
                     "claims about as fast with a large processed-keys table as with an empty "
                     "one)")
        if self.from_version < 4 <= self.to_version and self.from_version >= 3:
            text += ("; from now on a batch's consecutive coordinates keys of one partition "
                     "are kept as one row (the keys claimed before stay one row each)"
                     if self.runs_from_now else
                     "; coordinates keys stay one row each, as the keys already claimed are (a "
                     "store created by this version keeps a batch's consecutive ones as one "
                     "row, which claims them several times faster)")
        if self.from_version < 5 <= self.to_version:
            text += ("; the processed keys claimed before are now each group's first sealed "
                     "generation, dropped whole once the newest of them is past the retention")
        return text


@dataclass(slots=True)
class Claim:
    """A dedup key to claim for one message (``key`` is a digest). One per message on the
    store's hot path, so not frozen: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, about three times the cost here (about 0.5 against 0.15 µs)."""

    key: bytes
    topic: str
    partition: int
    offset: int


class ConflictBackoff:
    """After a plain claim met a processed key: how many claims take the slower way that
    tolerates them before a plain one is tried again (8, doubling to 1,024 while conflicts
    keep coming, back to 8 after a plain claim went through)."""

    FIRST, MOST = 8, 1024

    def __init__(self) -> None:
        self._skip = 0
        self._next = self.FIRST

    def plain_due(self) -> bool:
        if self._skip:
            self._skip -= 1
            return False
        return True

    def plain_succeeded(self) -> None:
        self._next = self.FIRST

    def plain_conflicted(self) -> None:
        self._skip = self._next
        self._next = min(self._next * 2, self.MOST)


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    topic: str
    partition: int
    next_offset: int
    epoch: int


@dataclass(frozen=True, slots=True)
class Position:
    """A partition's row at assignment: where to resume (None: no row yet), our epoch, the
    topic id the row was written for (None: not known, e.g. a version-1 row), and the offset
    from which the store holds no processed coordinates key of the partition (None: not known;
    see :meth:`Store.open_batch_unanswered`)."""

    next_offset: int | None
    epoch: int
    topic_id: str | None = None
    new_keys_from: int | None = None


@dataclass(frozen=True, slots=True)
class PostgresSession:
    """Bounds on a PostgreSQL session's waits (seconds), so a frozen or vanished peer costs
    the others at most these: a lock wait, an idle open transaction, a silent TCP peer."""

    lock_timeout: float = 10.0
    idle_in_transaction_timeout: float = 60.0
    keepalives_idle: int = 30
    keepalives_interval: int = 10
    keepalives_count: int = 3


class BatchClosing(Protocol):
    """A batch's closing (its checkpoint rows and COMMIT) sent to the store
    (:meth:`Store.send_close`). ``pending``: its answer is not read yet."""

    @property
    def pending(self) -> bool: ...

    def result(self) -> list[TP]:
        """What :meth:`Store.close_batch` returns (or raises), waiting for the answer."""
        ...


class ClosedBatch:
    """A closing answered when it was sent."""

    pending = False

    def __init__(self, fenced: list[TP]) -> None:
        self._fenced = fenced

    def result(self) -> list[TP]:
        return self._fenced


class SentClosing:
    """A closing a store sent without reading its answer (:meth:`Store.send_close`). The
    store reads the answer once, with ``answer`` (before its next statement, or when
    :meth:`result` asks first), and hands it over with :meth:`answered` or :meth:`failed`;
    the batch's group, rows and time tell it the fenced rows."""

    def __init__(self, answer: Callable[[], None], group: str,
                 rows: Sequence[CheckpointRow], now: float) -> None:
        self.pending = True
        self.group, self.rows, self.now = group, rows, now
        self._answer = answer
        self._fenced: list[TP] = []
        self._error: Exception | None = None

    def answered(self, fenced: list[TP]) -> None:
        self.pending, self._fenced = False, fenced

    def failed(self, error: Exception) -> None:
        self.pending, self._error = False, error

    def result(self) -> list[TP]:
        if self.pending:
            self._answer()
        if self._error is not None:
            raise self._error
        return self._fenced


class SendsClosing:
    """A store on a server whose :meth:`Store.send_close` sends the closing and reads its
    answer later: :meth:`_answer_closing` reads it into the closing, before the store's next
    statement or when the closing's ``result()`` asks first. The store says what the answer
    means in ``_closing_answer``."""

    #: The closing sent and not answered yet.
    _closing: SentClosing | None = None

    def _closing_answer(self, closing: SentClosing) -> list[TP]:
        """Read the sent closing's answer: the rows fenced (none when it committed)."""
        raise NotImplementedError

    def _answer_closing(self) -> None:
        """Read the sent closing's answer into it (an error too: its owner acts on it)."""
        closing, self._closing = self._closing, None
        if closing is None:
            return
        try:
            closing.answered(self._closing_answer(closing))
        except Exception as error:  # handed to the closing's result()
            closing.failed(error)


class Store(abc.ABC):
    """A database connection used by the polling thread only."""

    #: "sqlite", "postgresql" or "mariadb"
    dialect: str
    #: The version of our tables this code writes (``consumer_schema.version``).
    schema_version: int = SCHEMA_VERSION
    #: Whether this store's coordinates keys are ordered (``consumer_schema.coordinates_keys``),
    #: known once ``ensure_schema`` returned; the key functions follow it (consumer.dedup).
    ordered_coordinates: bool = False

    # --- lifecycle -------------------------------------------------------------------------

    @abc.abstractmethod
    def ensure_schema(self, group: str | None = None, *,
                      group_scoped_topics: Collection[str] = ()) -> SchemaUpgrade | None:
        """Create our tables on first use, or migrate them from an older version, in one
        transaction; raise StoreSchemaError on a version this code does not know.

        With ``group``, that group's processed keys claimed under version 1 are rewritten to
        topic-scoped keys (but those of ``group_scoped_topics``), exactly as the key
        functions compute them now. Only our tables, and only that group's keys, change.
        Sets ``ordered_coordinates`` from the store's recorded form."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""

    def load_group(self, group: str) -> None:
        """Read into memory what the store keeps there for the group's claims (SQLite: the
        Bloom filters of its sealed generations of keys), before the consumer joins: a stall
        between meeting the broker and joining the group was measured to slow the first
        second of consuming. Nothing to do for a store that keeps nothing; a store whose
        tables are not there yet reads it when its schema is ensured."""
        return None

    def use_topic_ids(self, topic_ids: Mapping[str, str]) -> None:
        """The topic ids the dedup key functions read (the very mapping, filled later), for a
        store that tells ordered coordinates keys from others by their topic's prefix.
        Nothing to do for a store that does not."""
        return None

    # --- assignment (its own short transaction) --------------------------------------------

    @abc.abstractmethod
    def assign(self, group: str, partitions: Sequence[TP], now: float,
               topic_ids: Mapping[str, str] | None = None) -> dict[TP, Position]:
        """Bump each partition's epoch (creating its row) and return where to resume. A row
        without a topic id gets the topic's from ``topic_ids``; a row with another id keeps
        it (the caller compares: the topic was recreated)."""

    def adopt_topic_id(self, group: str, tp: TP, topic_id: str, *, epoch: int,
                       forget_offset: bool) -> None:
        """Record the recreated topic's id in the partition's row (while ``epoch`` is still
        ours), forgetting the old log's offset with ``forget_offset``; own transaction."""
        self.begin()
        try:
            self.execute(
                "UPDATE consumer_checkpoints SET topic_id = %s, next_offset = "
                "CASE WHEN %s THEN NULL ELSE next_offset END WHERE group_id = %s AND topic = %s "
                "AND partition = %s AND epoch = %s",
                (topic_id, forget_offset, group, tp[0], tp[1], epoch))
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def follow_back(self, group: str, tp: TP, offset: int, *, epoch: int) -> None:
        """Move the partition's row back to ``offset`` (while ``epoch`` is still ours): Kafka
        was reset below it by another tool and ``store.on_external_reset`` is ``follow``; own
        transaction. The processed keys stay: what was applied is skipped again."""
        self.begin()
        try:
            self.execute(
                "UPDATE consumer_checkpoints SET next_offset = %s WHERE group_id = %s "
                "AND topic = %s AND partition = %s AND epoch = %s AND next_offset > %s",
                (offset, group, tp[0], tp[1], epoch, offset))
            self.commit()
        except BaseException:
            self.rollback()
            raise

    # --- one checkpoint batch ------------------------------------------------------------

    @abc.abstractmethod
    def begin(self) -> None: ...

    @abc.abstractmethod
    def claim(self, group: str, claims: Sequence[Claim], now: float) -> AbstractSet[bytes]:
        """Insert the keys; return those that were new (not processed before). ``claims`` may
        be a :class:`consumer.store.claim_batch.ClaimBatch`: a store that keeps runs reads its
        stretches, and answers an :class:`~consumer.store.claim_batch.EveryKey` when every key
        was new."""

    @abc.abstractmethod
    def unclaim(self, group: str, keys: Iterable[bytes]) -> None:
        """Forget keys claimed in this transaction whose messages were not applied."""

    def check_constraints_now(self) -> None:
        """Inside a batch: check deferred constraints at each statement from here on, so a
        violation fails its message's handler rather than the batch's COMMIT. Nothing to do
        where no constraint waits for COMMIT (SQLite's store, MariaDB)."""
        return None

    def transaction_failed(self) -> bool:
        """Inside a batch: whether its transaction failed, so that nothing more runs in it
        and it cannot commit (PostgreSQL, after a statement's error, until it is rolled back
        to a savepoint or whole). The other stores go on after a statement's error. No round
        trip; asked after each handler of a batch running message by message."""
        return False

    @abc.abstractmethod
    def transaction_open(self) -> bool:
        """Inside a batch: whether the transaction :meth:`begin` opened is still open. False
        once something else ended it (a handler's commit or rollback, or a statement that
        commits implicitly); a connection that broke counts as open (its error surfaces at
        the next statement). Raises StoreUnavailable where the server rolled it back under a
        handler that went on (MariaDB, after a deadlock): the batch is retried. Cheap: no
        round trip, called after every handler."""

    @abc.abstractmethod
    def savepoint(self) -> None: ...

    @abc.abstractmethod
    def release_savepoint(self) -> None: ...

    @abc.abstractmethod
    def rollback_to_savepoint(self) -> None: ...

    @abc.abstractmethod
    def write_checkpoints(self, group: str, rows: Sequence[CheckpointRow],
                          now: float) -> list[TP]:
        """Move each row forward to its next offset where the epoch is still ours; return the
        partitions where it was not (a newer owner fenced us). The UPDATE itself refuses to
        move a row backwards: such a row (our epoch, a higher offset stored) raises
        OffsetWentBackwards, and the caller rolls the batch back."""

    def open_batch(self, group: str, claims: Sequence[Claim],
                   now: float) -> AbstractSet[bytes]:
        """:meth:`begin` and :meth:`claim` in one step. (The checkpoint rows are not written
        here, before the handlers: a row lock held while the handlers run would make a new
        owner's assignment, which moves the row's epoch, wait for a frozen zombie's transaction
        to end.) A store may send both at once where a member frozen right after still has
        its transaction ended at the server's idle bound (PostgreSQL's query string, see
        PostgresStore.open_batch)."""
        self.begin()
        return self.claim(group, claims, now)

    def open_batch_unanswered(self, group: str, claims: Sequence[Claim],
                              now: float) -> AbstractSet[bytes]:
        """:meth:`open_batch` for claims the caller holds to be new: each a stretch of
        coordinates keys at or above its partition's :attr:`Position.new_keys_from`, which
        the caller moves past every stretch it claims. A store on a server may then send the
        opening and answer every key new at once, reading the server's answer before its next
        statement (a handler's ``context.db`` included) or the batch's closing: the server
        claims while the handlers run. Where the answer refuses a key, that read raises
        :class:`~consumer.errors.ProcessedKeysAhead` (the caller rolls back and runs the batch
        again with :meth:`open_batch`). Other stores answer at once."""
        return self.open_batch(group, claims, now)

    def close_batch(self, group: str, rows: Sequence[CheckpointRow], now: float) -> list[TP]:
        """:meth:`write_checkpoints` and, if every row moved, :meth:`commit`, in one step,
        which a store on a server may send in one round trip. Returns the fenced partitions,
        with nothing committed: the caller rolls the batch back (as it does when this raises,
        OffsetWentBackwards included)."""
        fenced = self.write_checkpoints(group, rows, now)
        if not fenced:
            self.commit()
        return fenced

    def send_close(self, group: str, rows: Sequence[CheckpointRow],
                   now: float) -> BatchClosing:
        """:meth:`close_batch`, with its answer read only when the closing's ``result()`` is
        asked for, where the store can (PostgreSQL): the caller polls the next batch while
        the server commits. Until then the store reads the answer first whatever else it is
        asked to do. Here, closed at once."""
        return ClosedBatch(self.close_batch(group, rows, now))

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def rollback(self) -> None: ...

    def end_handler_transaction(self, *, keep: bool) -> None:
        """After a handler ended the batch's transaction (:meth:`transaction_open` False), end
        what it opened since, if anything: committed when ``keep`` (the handler returned: its
        writes are its message's, whose key committed when it ended ours), rolled back when
        it raised. By default rolled back: a store that cannot tell a handler's own
        transaction from the batch's finds the ending only when none is open."""
        self.rollback()

    # --- for handlers ----------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def connection(self) -> Any:
        """The DB-API connection inside the open transaction (``context.db``)."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` with ``%s`` placeholders (on every store) inside the transaction."""

    # --- concurrent handlers --------------------------------------------------------------

    def message_transactions(self, size: int) -> MessageTransactions:
        """Transactions of one message each, on ``size`` connections of their own, for
        handlers running concurrently (a route's ``concurrency`` above 1). A backend that
        cannot take concurrent writers raises ConfigError."""
        raise ConfigError([
            f"store.url: the {self.dialect} store takes one writer at a time, so routes with "
            "concurrency above 1 cannot apply their effects exactly once on it concurrently; "
            "use a PostgreSQL or MariaDB store, or set concurrency: 1 on every route"])

    def async_message_transactions(self, size: int) -> AsyncMessageTransactions:
        """As :meth:`message_transactions`, awaited on the event loop of ``async def``
        handlers, sharing ``size`` connections. A backend that cannot take concurrent writers
        raises ConfigError."""
        raise ConfigError([
            f"store.url: an async def handler with the {self.dialect} store: it takes one "
            "writer at a time, so the handler's transactions cannot run concurrently; make the "
            "handler a plain def (with concurrency: 1), or use a PostgreSQL or MariaDB store"])

    # --- operations ------------------------------------------------------------------------

    @abc.abstractmethod
    def checkpoints(self, group: str) -> dict[TP, int | None]:
        """Every checkpoint row of the group (for `consumer lag` and replay)."""

    @abc.abstractmethod
    def purge_processed_keys(self, group: str, older_than: float, limit: int) -> int:
        """Delete up to ``limit`` of the group's processed keys first seen before
        ``older_than``; own txn. Another group's keys are never touched: each group keeps
        its own retention."""

    def _refused(self, group: str, refused: Sequence[CheckpointRow]) -> list[TP]:
        """Rows the checkpoint UPDATE did not move: fenced (another epoch, or no row), or
        still ours but ahead of the new offset, which raises OffsetWentBackwards."""
        fenced, backwards = [], []
        for row in refused:
            found = self.execute(  # "partition" quoted: MariaDB reserves the word
                'SELECT next_offset, epoch FROM consumer_checkpoints WHERE group_id = %s '
                'AND topic = %s AND "partition" = %s', (group, row.topic, row.partition),
            ).fetchone()
            if found is not None and found[1] == row.epoch and found[0] is not None \
                    and found[0] > row.next_offset:
                backwards.append(OffsetWentBackwards(row.topic, row.partition, int(found[0]),
                                                     row.next_offset))
            else:
                fenced.append((row.topic, row.partition))
        if backwards and not fenced:  # a zombie stops as Fenced whatever else it wrote
            raise backwards[0]
        return fenced

    # --- replay (the same SQL on every store) ----------------------------------------------

    def keys_from(self, group: str, targets: Mapping[TP, int]) -> dict[TP, int]:
        """How many processed keys each partition claimed at or after its target offset."""
        found = {}
        for (topic, partition), offset in targets.items():
            row = self.execute(
                'SELECT count(*) FROM consumer_processed_keys WHERE group_id = %s '
                'AND topic = %s AND partition = %s AND "offset" >= %s',
                (group, topic, partition, offset),
            ).fetchone()
            found[(topic, partition)] = int(row[0])
        return found

    def forget_keys_from(self, group: str, tp: TP, offset: int) -> int:
        """Inside replay's transaction: delete the partition's keys claimed at or after
        ``offset``; returns how many."""
        return int(self.execute(
            'DELETE FROM consumer_processed_keys WHERE group_id = %s '
            'AND topic = %s AND partition = %s AND "offset" >= %s',
            (group, tp[0], tp[1], offset),
        ).rowcount)

    def replay(self, group: str, targets: Mapping[TP, int], *, forget_keys: bool,
               now: float) -> dict[TP, int]:
        """Move each partition's checkpoint row to its target, backwards too, on purpose
        (bumping the epoch, so a process still holding the partition is fenced) and, with
        ``forget_keys``, delete the keys claimed at or after it, all in one transaction.
        Returns the keys deleted."""
        forgotten = dict.fromkeys(targets, 0)
        self.begin()
        try:
            for (topic, partition), offset in targets.items():
                self.execute(
                    """INSERT INTO consumer_checkpoints
                           (group_id, topic, partition, next_offset, epoch, updated_at)
                       VALUES (%s, %s, %s, %s, 1, %s)
                       ON CONFLICT (group_id, topic, partition) DO UPDATE SET
                           next_offset = excluded.next_offset,
                           epoch = consumer_checkpoints.epoch + 1,
                           updated_at = excluded.updated_at""",
                    (group, topic, partition, offset, now),
                )
                if forget_keys:
                    forgotten[(topic, partition)] = self.forget_keys_from(
                        group, (topic, partition), offset)
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return forgotten


class MessageTransactions(Protocol):
    """One transaction per message, each on a pooled connection of its own; safe to call
    from several threads at once (one call per thread at a time).

    :meth:`apply` claims the message's dedup key, runs ``work`` with a :class:`StoreLike`
    bound to that connection (``context.db``), and commits both together. The claim is
    ``INSERT … ON CONFLICT DO NOTHING``: a key another session claimed and has not committed
    yet makes it wait (at most the session's lock timeout) for that session's outcome, so
    two owners of the same message never both apply it."""

    def open(self) -> None:
        """Start connecting (in the background: an unreachable server is retried)."""

    def close(self) -> None: ...

    def apply(self, group: str, claim: Claim, now: float,
              work: Callable[[StoreLike], None]) -> bool:
        """True: the key was new and ``work``'s writes committed with it. False: the key was
        processed before (a duplicate); ``work`` did not run. Raises StoreUnavailable for a
        transient database error (in our statements or ``work``'s: a lost connection, a lock
        timeout, a deadlock, a serialization failure; retry the message after backoff, it is
        not its failure), StoreError for any other of ours, and whatever else ``work`` raised
        unchanged (the message failed); in every raising case nothing was committed, except
        that a connection lost during COMMIT leaves it unknown: the retry then finds the key
        and counts the message a duplicate."""
        ...

    def apply_batch(self, group: str, claims: Sequence[Claim], now: float,
                    works: Sequence[Callable[[StoreLike], None]]) -> list[bool | BaseException]:
        """A worker's micro-batch: ``claims[i]`` with ``works[i]``, all in one transaction
        (one claim statement, one commit), each message's outcome as :meth:`apply` would give
        it: True (applied), False (duplicate), or the exception :meth:`apply` would raise.
        When anything goes wrong inside the batch, it rolls back and its messages run again
        one transaction each, so a failing message neither loses nor repeats its neighbours'
        effects; only the message whose ``work`` raised its own error is not run again (that
        error is its outcome)."""
        ...


class AsyncMessageTransactions(Protocol):
    """:class:`MessageTransactions` for ``async def`` handlers: :meth:`apply` runs on the
    event loop and awaits ``work``, which gets a :class:`StoreLike` whose ``execute`` is a
    coroutine (``await context.execute(...)``). :meth:`close` may be called from another
    thread while the loop runs."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    async def apply(self, group: str, claim: Claim, now: float,
                    work: Callable[[Any], Awaitable[None]]) -> bool:
        """As :meth:`MessageTransactions.apply`."""
        ...


def transient_cause(error: BaseException, is_transient: Callable[[BaseException], bool]) -> bool:
    """Whether ``error``, or what a handler wrapped it in (its causes, five deep), is the
    store's transient error (``is_transient``: the backend's lost connection, lock timeout,
    deadlock...) or already ours (StoreUnavailable): the message is retried, not failed."""
    cause: BaseException | None = error
    for _ in range(5):
        if cause is None:
            return False
        if isinstance(cause, StoreUnavailable) or is_transient(cause):
            return True
        cause = cause.__cause__
    return False


def require_version(found: int | None, where: str, *, needs: int = SCHEMA_VERSION,
                    migrates_from: Sequence[int] = MIGRATES_FROM) -> None:
    from consumer.errors import StoreSchemaError

    if found is not None and found != needs and found not in migrates_from:
        raise StoreSchemaError(
            f"{where} holds checkpoint-consumer schema version {found}, this version needs "
            f"{needs} (and migrates from {', '.join(map(str, migrates_from))}). Run "
            "the checkpoint-consumer release that wrote it, or point store.url at a new "
            "database."
        )


__all__ = [
    "DIGEST_COORDINATES",
    "MARIADB_SCHEMA_VERSION",
    "MIGRATES_FROM",
    "ORDERED_COORDINATES",
    "POSTGRES_SCHEMA_VERSION",
    "RUN_COORDINATES",
    "SCHEMA_VERSION",
    "SQLITE_SCHEMA_VERSION",
    "AsyncMessageTransactions",
    "CheckpointRow",
    "Claim",
    "MessageTransactions",
    "Position",
    "PostgresSession",
    "SchemaUpgrade",
    "Store",
    "StoreError",
    "require_version",
]
