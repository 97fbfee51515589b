"""Exactly-once effects with concurrency: a route's handler as a worker runs it with a store,
each message in a transaction of its own, and the checkpoint rows the poll thread moves to the
watermark.

:class:`StoreWork` wraps the handler (:class:`AsyncStoreWork` an ``async def`` one, on the event
loop, awaiting its statements): on the worker's thread it makes the message's dedup key,
then (``Store.message_transactions``) claims it, runs the handler with ``context.db`` bound to
that transaction's connection, and commits effects and key together. A key processed before
makes the message a duplicate (the handler does not run). Raises what the handler raised (the
failure policy decides: retry, dead letter, stop), DedupKeyFailed, or StoreUnavailable for a
transient database error (retry the message after backoff; never an attempt of its own).

:class:`StoreRows` is the partitions' checkpoint on the poll thread: 1. the watermarks that
moved 2. fence and write the rows (``WHERE epoch = ours``; a newer owner's epoch: Fenced)
3. commit the store 4. commit Kafka's copy. The watermark passes only messages whose
transactions committed, so after a crash the row is at or below every unfinished message, and
the finished ones above it are read again and skipped by their keys.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Generic, TypeVar

from consumer.checkpoint.commits import KafkaCommits
from consumer.checkpoint.progress import PartitionProgress
from consumer.dedup import KeyFunction
from consumer.errors import Fenced, KafkaError, StoreError
from consumer.events import Trigger
from consumer.message import TP, Context, Message, Scope, StoreLike
from consumer.routing import Handler
from consumer.store import (
    AsyncMessageTransactions,
    CheckpointRow,
    Claim,
    MessageTransactions,
    Store,
)

#: An ``async def`` handler.
AsyncHandler = Callable[[Message, Context], Awaitable[object]]
H = TypeVar("H")
X = TypeVar("X")


class Tally:
    """Messages applied and duplicates skipped by the workers since the poll thread last
    took them (for ``consumer_messages_applied``/dedup metrics); each duplicate is also told
    to ``on_duplicate`` (tracing's span for it), on the worker that found it."""

    def __init__(self, on_duplicate: Callable[[Message], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._applied = 0
        self._duplicates = 0
        self._on_duplicate = on_duplicate

    def count(self, applied: bool, message: Message) -> None:
        with self._lock:
            if applied:
                self._applied += 1
            else:
                self._duplicates += 1
        if not applied and self._on_duplicate is not None:
            self._on_duplicate(message)

    def take(self) -> tuple[int, int]:
        """(applied, duplicates) since the last take."""
        with self._lock:
            taken = self._applied, self._duplicates
            self._applied = self._duplicates = 0
        return taken


class _RouteInStore(Generic[H, X]):
    """A route's handler ``H`` and the store's transactions ``X`` it is applied in."""

    __slots__ = ("_group", "_handler", "_key_function", "_tally", "_transactions", "_wall")

    def __init__(self, handler: H, *, transactions: X, group: str, key_function: KeyFunction,
                 wall: Callable[[], float], tally: Tally) -> None:
        self._handler = handler
        self._transactions = transactions
        self._group = group
        self._key_function = key_function
        self._wall = wall
        self._tally = tally


class StoreWork(_RouteInStore[Handler, MessageTransactions]):
    """One route's handler, applied exactly once per message in a transaction of its own."""

    __slots__ = ()

    def __call__(self, message: Message, context: Context) -> None:
        """The worker's call (``context`` is the dispatcher's, without a store: replaced by
        one bound to the message's transaction)."""
        key_function = self._key_function
        key = key_function(message)  # raises DedupKeyFailed: a failing message
        handler, group = self._handler, self._group

        def work(db: StoreLike) -> None:
            handler(message, Context.of(Scope(group, store=db, key_function=key_function),
                                        message, key))

        applied = self._transactions.apply(
            group, Claim(key, message.topic, message.partition, message.offset),
            self._wall(), work)
        self._tally.count(applied, message)

    def apply_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        """A worker's micro-batch: the messages in one transaction (one claim statement, one
        commit); each message's outcome, in order: None (applied or a duplicate) or what it
        raised, as :meth:`__call__` would (``Store.message_transactions``' ``apply_batch``
        runs the neighbours of a failing message again one transaction each)."""
        outcomes: list[BaseException | None] = [None] * len(messages)
        key_function, handler, group = self._key_function, self._handler, self._group
        claims: list[Claim] = []
        works: list[Callable[[StoreLike], None]] = []
        placed: list[int] = []
        for index, message in enumerate(messages):
            try:
                key = key_function(message)
            except BaseException as error:  # DedupKeyFailed: a failing message, not the batch's
                outcomes[index] = error
                continue
            claims.append(Claim(key, message.topic, message.partition, message.offset))
            works.append(_work(handler, message, group, key_function, key))
            placed.append(index)
        if claims:
            results = self._transactions.apply_batch(group, claims, self._wall(), works)
            count = self._tally.count
            for index, result in zip(placed, results, strict=True):
                if isinstance(result, BaseException):
                    outcomes[index] = result
                else:
                    count(result, messages[index])
        return outcomes


class AsyncStoreWork(_RouteInStore[AsyncHandler, AsyncMessageTransactions]):
    """One route's ``async def`` handler, applied exactly once per message in a transaction
    of its own on the event loop (``Store.async_message_transactions``): the handler awaits
    its statements, ``await context.execute(...)``. Raises as :class:`StoreWork` does."""

    __slots__ = ()

    async def __call__(self, message: Message, context: Context) -> None:
        """The event loop's call (``context`` as :meth:`StoreWork.__call__`'s)."""
        key_function = self._key_function
        key = key_function(message)  # raises DedupKeyFailed: a failing message
        handler, group = self._handler, self._group

        async def work(db: StoreLike) -> None:
            await handler(message, Context.of(Scope(group, store=db, key_function=key_function),
                                              message, key))

        applied = await self._transactions.apply(
            group, Claim(key, message.topic, message.partition, message.offset),
            self._wall(), work)
        self._tally.count(applied, message)


def _work(handler: Handler, message: Message, group: str, key_function: KeyFunction,
          key: bytes) -> Callable[[StoreLike], None]:
    """The handler's call for one message of a micro-batch, given the batch's ``context.db``."""

    def work(db: StoreLike) -> None:
        handler(message, Context.of(Scope(group, store=db, key_function=key_function),
                                    message, key))

    return work


class StoreRows:
    """Moves the partitions' checkpoint rows to their watermarks, fenced by epoch; Kafka's
    copy follows. Poll thread only, on the store's own connection."""

    def __init__(self, store: Store, *, group: str, commits: KafkaCommits,
                 now: Callable[[], float]) -> None:
        self._store = store
        self._group = group
        self._commits = commits
        self._now = now
        #: Per partition, the offset its row holds (as far as this process wrote it).
        self._stored: dict[TP, int] = {}

    def run(self, trigger: Trigger, partitions: Iterable[PartitionProgress]) -> dict[TP, int]:
        """Take the checkpoint; returns what Kafka was sent. Raises Fenced (rolled back: a
        newer owner has a partition; stop) or StoreError (rolled back; the rows stay
        pending)."""
        chosen = list(partitions)
        # 1. the watermarks that moved
        rows = [CheckpointRow(p.topic, p.partition, p.watermark, p.epoch) for p in chosen
                if p.watermark is not None
                and self._stored.get((p.topic, p.partition)) != p.watermark]
        if rows:
            store = self._store
            store.begin()
            try:
                # 2. fence and write the rows
                fenced = store.write_checkpoints(self._group, rows, self._now())
                if fenced:
                    raise Fenced(self._group, fenced)
                # 3. commit the store
                store.commit()
            except BaseException:
                with contextlib.suppress(StoreError):  # it died with its connection
                    store.rollback()
                raise
            for row in rows:
                self._stored[(row.topic, row.partition)] = row.next_offset
        # 4. commit Kafka's copy: synchronously on revoke and shutdown
        synchronous = trigger in (Trigger.REVOKE, Trigger.SHUTDOWN)
        try:
            return self._commits.commit(trigger, chosen, synchronous=synchronous, durable=True,
                                        hold_while_in_flight=True)
        except KafkaError:
            return {}  # reported; the store holds the checkpoint, Kafka's copy informs lag tools

    def forget(self, partitions: Iterable[TP]) -> None:
        """Partitions revoked or lost: their rows are another owner's now."""
        for tp in partitions:
            self._stored.pop(tp, None)

    def assigned(self, tp: TP, offset: int | None) -> None:
        """The row's offset as assignment read it."""
        if offset is None:
            self._stored.pop(tp, None)
        else:
            self._stored[tp] = offset
