"""What every store offers the engine: one transaction per checkpoint batch.

A store holds two tables of ours, ``consumer_checkpoints`` and ``consumer_processed_keys``,
beside the handlers' own tables in the same database, so the handlers' writes, the claimed keys
and the checkpoint rows commit (or roll back) together.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consumer.errors import StoreError
from consumer.transport import TP

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Claim:
    """A dedup key to claim for one message (``key`` is a digest)."""

    key: bytes
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    topic: str
    partition: int
    next_offset: int
    epoch: int


@dataclass(frozen=True, slots=True)
class Position:
    """A partition's row at assignment: where to resume (None: no row yet) and our epoch."""

    next_offset: int | None
    epoch: int


@dataclass(frozen=True, slots=True)
class PostgresSession:
    """Bounds on a PostgreSQL session's waits (seconds), so a frozen or vanished peer costs
    the others at most these: a lock wait, an idle open transaction, a silent TCP peer."""

    lock_timeout: float = 10.0
    idle_in_transaction_timeout: float = 60.0
    keepalives_idle: int = 30
    keepalives_interval: int = 10
    keepalives_count: int = 3


class Store(abc.ABC):
    """A database connection used by the polling thread only."""

    #: "sqlite" or "postgresql"
    dialect: str

    # --- lifecycle -------------------------------------------------------------------------

    @abc.abstractmethod
    def ensure_schema(self) -> None:
        """Create our tables on first use; raise StoreSchemaError on another version."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""

    # --- assignment (its own short transaction) --------------------------------------------

    @abc.abstractmethod
    def assign(self, group: str, partitions: Sequence[TP], now: float) -> dict[TP, Position]:
        """Bump each partition's epoch (creating its row) and return where to resume."""

    # --- one checkpoint batch ------------------------------------------------------------

    @abc.abstractmethod
    def begin(self) -> None: ...

    @abc.abstractmethod
    def claim(self, group: str, claims: Sequence[Claim], now: float) -> set[bytes]:
        """Insert the keys; return those that were new (not processed before)."""

    @abc.abstractmethod
    def unclaim(self, group: str, keys: Iterable[bytes]) -> None:
        """Forget keys claimed in this transaction whose messages were not applied."""

    @abc.abstractmethod
    def savepoint(self) -> None: ...

    @abc.abstractmethod
    def release_savepoint(self) -> None: ...

    @abc.abstractmethod
    def rollback_to_savepoint(self) -> None: ...

    @abc.abstractmethod
    def write_checkpoints(self, group: str, rows: Sequence[CheckpointRow],
                          now: float) -> list[TP]:
        """Move each row to its next offset where the epoch is still ours; return the
        partitions where it was not (a newer owner fenced us)."""

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def rollback(self) -> None: ...

    # --- for handlers ----------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def connection(self) -> Any:
        """The DB-API connection inside the open transaction (``context.db``)."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` with ``%s`` placeholders (on every store) inside the transaction."""

    # --- operations ------------------------------------------------------------------------

    @abc.abstractmethod
    def checkpoints(self, group: str) -> dict[TP, int | None]:
        """Every checkpoint row of the group (for `consumer lag` and replay)."""

    @abc.abstractmethod
    def purge_processed_keys(self, older_than: float, limit: int) -> int:
        """Delete up to ``limit`` processed keys first seen before ``older_than``; own txn."""

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

    def replay(self, group: str, targets: Mapping[TP, int], *, forget_keys: bool,
               now: float) -> dict[TP, int]:
        """Move each partition's checkpoint row to its target (bumping the epoch, so a
        process still holding the partition is fenced) and, with ``forget_keys``, delete the
        keys claimed at or after it, all in one transaction. Returns the keys deleted."""
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
                    cursor = self.execute(
                        'DELETE FROM consumer_processed_keys WHERE group_id = %s '
                        'AND topic = %s AND partition = %s AND "offset" >= %s',
                        (group, topic, partition, offset),
                    )
                    forgotten[(topic, partition)] = cursor.rowcount
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return forgotten


def require_version(found: int | None, where: str) -> None:
    from consumer.errors import StoreSchemaError

    if found is not None and found != SCHEMA_VERSION:
        raise StoreSchemaError(
            f"{where} holds checkpoint-consumer schema version {found}, this version needs "
            f"{SCHEMA_VERSION}. Migrate the store (or point store.url at a new database)."
        )


__all__ = [
    "SCHEMA_VERSION",
    "CheckpointRow",
    "Claim",
    "Position",
    "PostgresSession",
    "Store",
    "StoreError",
    "require_version",
]
