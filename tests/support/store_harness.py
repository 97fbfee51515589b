"""Helpers for the store-mode unit tests: a real SQLite store, a handler that writes its effects
into it, a source whose messages carry an idempotency-key header, and a loop factory."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from consumer.app import build_loop
from consumer.checkpoint.progress import PartitionProgress
from consumer.clock import ManualClock
from consumer.engine.loop import ConsumerLoop
from consumer.engine.store_mode import ExternalResetPolicy, StoreMode
from consumer.errors import StoreUnavailable
from consumer.events import Observer
from consumer.message import TP, Context, Message
from consumer.routing import Route, Router
from consumer.store import CheckpointRow
from consumer.store.sqlite import SQLiteStore
from consumer.testing import InMemoryDeadLetterSink, InMemorySource
from tests.support.processed_keys import processed_keys
from tests.support.wiring import STOP_AT_FAILURE, loop_settings

S = TypeVar("S", bound=SQLiteStore)

GROUP = "g"
HEADER = "idempotency-key"
EFFECTS_DDL = ("CREATE TABLE IF NOT EXISTS effects (topic TEXT NOT NULL, "
               "partition INTEGER NOT NULL, position INTEGER NOT NULL, value TEXT)")


def store_path(tmp_path: Path) -> str:
    return str(tmp_path / "store.db")


def open_store(tmp_path: Path) -> SQLiteStore:
    """A SQLite store with our tables and the handlers' ``effects`` table."""
    return open_store_as(SQLiteStore, tmp_path)


def open_store_as(cls: type[S], tmp_path: Path) -> S:
    """Like :func:`open_store`, with a SQLiteStore subclass."""
    store = cls(store_path(tmp_path), busy_timeout_ms=200)
    store.ensure_schema()
    store.execute(EFFECTS_DDL)
    return store


class EndableStore(SQLiteStore):
    """A SQLite store whose connection lets a handler end the batch's transaction (the store
    refuses transaction statements during a batch; PostgreSQL's cannot refuse a ``COMMIT``
    statement, MariaDB's a handler's DDL): for the batch's handling of an ended transaction."""

    def _authorize(self, action: int, first: str | None, second: str | None,
                   database: str | None, trigger: str | None) -> int:
        return sqlite3.SQLITE_OK


class FlakyCommitStore(SQLiteStore):
    """A SQLite store whose next ``fail_commits`` commits raise StoreUnavailable (not committed)."""

    fail_commits = 0

    def commit(self) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise StoreUnavailable("SQLite store test.db: database is locked (simulated)")
        super().commit()


class LateAnswer:
    """A batch's closing whose answer is handed over only when asked, as PostgreSQL's."""

    def __init__(self, fenced: list[TP], error: StoreUnavailable | None) -> None:
        self.pending = True
        self._fenced = fenced
        self._error = error

    def result(self) -> list[TP]:
        self.pending = False
        if self._error is not None:
            raise self._error
        return self._fenced


class LateAnswerStore(SQLiteStore):
    """A SQLite store that closes a batch at once (as a server commits what was sent) and
    hands the answer over when asked, like PostgreSQL's ``send_close``; the next
    ``lose_answers`` answers are lost (StoreUnavailable: the caller cannot tell whether the
    batch committed, which it did, or with ``withhold`` rolled back). ``sent``: every
    closing, in order."""

    lose_answers = 0
    withhold = False

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(path, **options)
        self.sent: list[LateAnswer] = []

    def send_close(self, group: str, rows: Sequence[CheckpointRow],
                   now: float) -> LateAnswer:
        error = None
        if self.lose_answers:
            self.lose_answers -= 1
            error = StoreUnavailable("SQLite store test.db: the connection was lost before "
                                     "the commit's answer (simulated)")
        if error is not None and self.withhold:
            self.rollback()
            fenced: list[TP] = []
        else:
            fenced = self.close_batch(group, rows, now)
        self.sent.append(LateAnswer(fenced, error))
        return self.sent[-1]


def event(topic: str, partition: int, offset: int, key: bytes | None) -> Message:
    """A message that carries ``key`` as its idempotency-key header (none when None)."""
    headers: list[tuple[str, bytes | None]] = [] if key is None else [(HEADER, key)]
    return Message(topic, partition, offset, key or b"", headers=headers, timestamp=0.0)


class HeaderedSource(InMemorySource):
    """InMemorySource whose messages carry their value as the idempotency-key header, so the
    same value at two offsets is the same event delivered twice."""

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        return [Message(m.topic, m.partition, m.offset, m.value, headers=[(HEADER, m.value)],
                        timestamp=m.timestamp)
                for m in super().poll(max_messages, timeout)]


class EffectWriter:
    """A transactional handler: writes one ``effects`` row per message, then raises for the
    coordinates in ``fail_at`` (so the failing message's own write must be rolled back)."""

    def __init__(self, fail_at: Iterable[tuple[str, int, int]] = ()) -> None:
        self.fail_at = set(fail_at)
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, message: Message, context: Context) -> None:
        coordinates = (message.topic, message.partition, message.offset)
        self.calls.append(coordinates)
        context.execute("INSERT INTO effects VALUES (%s, %s, %s, %s)",
                        (*coordinates, (message.value or b"").decode()))
        if coordinates in self.fail_at:
            raise ValueError(f"cannot apply {message!r}")


def effects(store: SQLiteStore) -> list[tuple[str, int, int]]:
    """The committed effects, in coordinate order."""
    rows = store.execute(
        "SELECT topic, partition, position FROM effects ORDER BY topic, partition, position"
    ).fetchall()
    return [tuple(row) for row in rows]


def processed(store: SQLiteStore, group: str = GROUP) -> list[tuple[str, int, int]]:
    """Coordinates of the messages whose keys are recorded as processed."""
    keys = processed_keys(lambda sql, params: store.execute(sql, params).fetchall(),
                          backend="sqlite", group=group)
    return [(k.topic, k.partition, k.offset) for k in keys]


def seed_checkpoint(tmp_path: Path, tp: TP, next_offset: int, now: float = 1.0) -> None:
    """Write a committed checkpoint row through a separate connection (a previous owner)."""
    other = SQLiteStore(store_path(tmp_path))
    try:
        other.ensure_schema()
        epoch = other.assign(GROUP, [tp], now)[tp].epoch
        other.begin()
        other.write_checkpoints(GROUP, [CheckpointRow(tp[0], tp[1], next_offset, epoch)], now)
        other.commit()
    finally:
        other.close()


def assigned(store: SQLiteStore, partitions: Iterable[TP]) -> dict[TP, PartitionProgress]:
    """Assign through the store, as the loop does, and return each partition's progress."""
    positions = store.assign(GROUP, list(partitions), 1.0)
    return {tp: PartitionProgress(tp[0], tp[1], committed=p.next_offset, epoch=p.epoch)
            for tp, p in positions.items()}


def make_store_loop(
    source: InMemorySource,
    store: SQLiteStore,
    handler: EffectWriter,
    *,
    clock: ManualClock,
    observer: Observer | None = None,
    every_messages: int | None = None,
    every_seconds: float | None = None,
    on_external_reset: ExternalResetPolicy = "fail",
    topics: Iterable[str] = ("t",),
) -> tuple[ConsumerLoop, StoreMode]:
    """A loop in store mode, wired by the app, whose routes dedup by the idempotency-key
    header and stop at a handler's first failure."""
    topics = list(topics)
    settings = loop_settings(
        topics, group=GROUP, every_messages=every_messages, every_seconds=every_seconds,
        route={**STOP_AT_FAILURE, "dedup_key": f"header:{HEADER}"},
        store={"url": "sqlite:///injected.db", "on_external_reset": on_external_reset},
    )
    router = Router(Route(t, handler, "tests:handler") for t in topics)
    loop = build_loop(settings, router, *([] if observer is None else [observer]),
                      source=source, store=store, clock=clock,
                      dead_letters=InMemoryDeadLetterSink())
    if not isinstance(loop.mode, StoreMode):
        raise TypeError(f"a store was given, yet the loop runs in {type(loop.mode).__name__}")
    return loop, loop.mode
