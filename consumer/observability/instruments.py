"""Timing on the hot path: handler calls timed inline where they are called, thin wrappers
around the store and the source, all only when metrics are on (with metrics off nothing is
timed or wrapped, so nothing is paid).

- handler calls are timed the one way every mode calls them (consumer/handler_call.py: from
  just before the call to just after it, two clock reads and an append per call, into
  :meth:`Instruments.durations`; a call that raises goes to :meth:`Instruments.failed`), and
  the call in progress leaves its start time in :attr:`Instruments.started` where the scrape
  can see a stuck handler. Durations are binned per batch (:meth:`Instruments.flush`, poll
  thread).
- :meth:`Instruments.store`: each store operation of a checkpoint batch is timed, its errors
  counted, and dedup lookups counted from what ``claim`` answered.
- :meth:`Instruments.source`: each offset commit is timed.

Written by the poll thread only, read by the scrape. The wrappers add no behaviour: whatever
the store or source raises passes through unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, TypeVar

from consumer.errors import StoreError
from consumer.kafka.protocol import Source, SourceListener
from consumer.message import TP, Message
from consumer.observability.histogram import Histogram
from consumer.store import (
    AsyncMessageTransactions,
    BatchClosing,
    CheckpointRow,
    Claim,
    ClaimBatch,
    MessageTransactions,
    Position,
    SchemaUpgrade,
    Store,
)

#: The store operations timed, in the order a checkpoint batch runs them. A batch opens
#: (BEGIN and its claim) and closes (its checkpoint rows and COMMIT) in one step each, each
#: one round trip on PostgreSQL for a batch of plain messages; ``begin``, ``claim``,
#: ``write_checkpoints`` and ``commit`` are the steps of the other paths (a batch run again
#: message by message, a transaction per message, assignments).
STORE_OPERATIONS = ("assign", "open_batch", "begin", "claim", "unclaim", "write_checkpoints",
                    "close_batch", "commit", "rollback")

T = TypeVar("T")


class Instruments:
    """The histograms and counts the wrappers fill; the collector exports them."""

    def __init__(self, *, now: Callable[[], float] = time.perf_counter) -> None:
        #: The clock the wrappers read (perf_counter; a test passes its manual clock).
        self.now = now
        #: ``now()`` when the handler call in progress started; 0.0 when none is running.
        self.started = 0.0
        #: (topic, outcome) -> handler durations
        self.handler: dict[tuple[str, str], Histogram] = {}
        self._unbinned: dict[str, list[float]] = {}
        self.commit = Histogram()
        self.store_duration = {operation: Histogram() for operation in STORE_OPERATIONS}
        self.store_errors = dict.fromkeys(STORE_OPERATIONS, 0)
        #: (topic, "hit" | "miss") -> lookups
        self.dedup: dict[tuple[str, str], int] = {}

    # --- handlers ------------------------------------------------------------------------

    def durations(self, topic: str) -> list[float]:
        """The list each successful handler call's duration of ``topic`` is appended to
        (consumer/handler_call.py); binned per batch by :meth:`flush`."""
        unbinned = self._unbinned.get(topic)
        if unbinned is None:
            unbinned = self._unbinned[topic] = []
            self.handler[(topic, "success")] = Histogram()
            self.handler[(topic, "error")] = Histogram()
            for outcome in ("hit", "miss"):
                self.dedup.setdefault((topic, outcome), 0)
        return unbinned

    def failed(self, topic: str, seconds: float) -> None:
        """A handler call of ``topic`` raised after ``seconds``."""
        self.durations(topic)
        self.handler[(topic, "error")].observe(seconds)

    def flush(self) -> None:
        """Bin the handler durations recorded since the last flush (poll thread)."""
        for topic, durations in self._unbinned.items():
            if durations:
                durations.sort()
                self.handler[(topic, "success")].observe_sorted(durations)
                durations.clear()

    # --- store and source ----------------------------------------------------------------

    def store(self, store: Store) -> Store:
        return TimedStore(store, self)

    def source(self, source: Source) -> Source:
        return TimedSource(source, self)

    def timed_store_call(self, operation: str, call: Callable[[], T]) -> T:
        start = self.now()
        try:
            return call()
        except StoreError:
            self.store_errors[operation] += 1
            raise
        finally:
            self.store_duration[operation].observe(self.now() - start)

    def claimed(self, claims: Sequence[Claim], new_keys: AbstractSet[bytes]) -> None:
        """Count dedup lookups: a key already processed is a hit, a new one a miss (a key
        repeated within the batch is a hit the second time)."""
        if isinstance(claims, ClaimBatch) and len(new_keys) == len(claims):
            for topic, count in claims.topic_counts().items():  # no key made to count them
                self._count_lookups(topic, 0, count)
            return
        topics = {claim.topic for claim in claims}
        if len(topics) == 1:
            topic = next(iter(topics))
            self._count_lookups(topic, len(claims) - len(new_keys), len(new_keys))
            return
        seen: set[bytes] = set()
        misses: dict[str, int] = {}
        for claim in claims:
            if claim.key in new_keys and claim.key not in seen:
                seen.add(claim.key)
                misses[claim.topic] = misses.get(claim.topic, 0) + 1
        for topic in topics:
            total = sum(1 for claim in claims if claim.topic == topic)
            self._count_lookups(topic, total - misses.get(topic, 0), misses.get(topic, 0))

    def _count_lookups(self, topic: str, hits: int, misses: int) -> None:
        dedup = self.dedup
        dedup[(topic, "hit")] = dedup.get((topic, "hit"), 0) + hits
        dedup[(topic, "miss")] = dedup.get((topic, "miss"), 0) + misses


class TimedStore(Store):
    """A store whose checkpoint operations are timed; everything else passes through."""

    def __init__(self, store: Store, instruments: Instruments) -> None:
        self._store = store
        self._instruments = instruments
        self.dialect = store.dialect

    def _timed(self, operation: str, call: Callable[[], T]) -> T:
        return self._instruments.timed_store_call(operation, call)

    def ensure_schema(self, group: str | None = None, *,
                      group_scoped_topics: Collection[str] = ()) -> SchemaUpgrade | None:
        upgrade = self._store.ensure_schema(group, group_scoped_topics=group_scoped_topics)
        self.ordered_coordinates = self._store.ordered_coordinates
        return upgrade

    def use_topic_ids(self, topic_ids: Mapping[str, str]) -> None:
        self._store.use_topic_ids(topic_ids)

    def close(self) -> None:
        self._store.close()

    def ping(self) -> None:
        self._store.ping()

    def assign(self, group: str, partitions: Sequence[TP], now: float,
               topic_ids: Mapping[str, str] | None = None) -> dict[TP, Position]:
        return self._timed("assign",
                           lambda: self._store.assign(group, partitions, now, topic_ids))

    def adopt_topic_id(self, group: str, tp: TP, topic_id: str, *, epoch: int,
                       forget_offset: bool) -> None:
        self._store.adopt_topic_id(group, tp, topic_id, epoch=epoch,
                                   forget_offset=forget_offset)

    def check_constraints_now(self) -> None:
        self._store.check_constraints_now()

    def transaction_open(self) -> bool:
        return self._store.transaction_open()

    def transaction_failed(self) -> bool:
        return self._store.transaction_failed()

    def follow_back(self, group: str, tp: TP, offset: int, *, epoch: int) -> None:
        self._store.follow_back(group, tp, offset, epoch=epoch)

    def begin(self) -> None:
        self._timed("begin", self._store.begin)

    def claim(self, group: str, claims: Sequence[Claim], now: float) -> AbstractSet[bytes]:
        new_keys = self._timed("claim", lambda: self._store.claim(group, claims, now))
        self._instruments.claimed(claims, new_keys)
        return new_keys

    def open_batch(self, group: str, claims: Sequence[Claim],
                   now: float) -> AbstractSet[bytes]:
        """The store's own one step (timed as one operation), not :meth:`begin` and
        :meth:`claim` here: a store may do it its own way."""
        new_keys = self._timed("open_batch",
                               lambda: self._store.open_batch(group, claims, now))
        self._instruments.claimed(claims, new_keys)
        return new_keys

    def open_batch_unanswered(self, group: str, claims: Sequence[Claim],
                              now: float) -> AbstractSet[bytes]:
        """The store's own, timed as ``open_batch`` (up to sending, where it answers later)."""
        new_keys = self._timed("open_batch",
                               lambda: self._store.open_batch_unanswered(group, claims, now))
        self._instruments.claimed(claims, new_keys)
        return new_keys

    def unclaim(self, group: str, keys: Iterable[bytes]) -> None:
        self._timed("unclaim", lambda: self._store.unclaim(group, keys))

    def savepoint(self) -> None:
        self._store.savepoint()

    def release_savepoint(self) -> None:
        self._store.release_savepoint()

    def rollback_to_savepoint(self) -> None:
        self._store.rollback_to_savepoint()

    def write_checkpoints(self, group: str, rows: Sequence[CheckpointRow],
                          now: float) -> list[TP]:
        return self._timed("write_checkpoints",
                           lambda: self._store.write_checkpoints(group, rows, now))

    def close_batch(self, group: str, rows: Sequence[CheckpointRow], now: float) -> list[TP]:
        """The store's own one step, as :meth:`open_batch`."""
        return self._timed("close_batch", lambda: self._store.close_batch(group, rows, now))

    def send_close(self, group: str, rows: Sequence[CheckpointRow],
                   now: float) -> BatchClosing:
        """The store's own; timed as ``close_batch`` up to sending (its answer is read while
        the next batch is polled)."""
        return self._timed("close_batch", lambda: self._store.send_close(group, rows, now))

    def commit(self) -> None:
        self._timed("commit", self._store.commit)

    def rollback(self) -> None:
        self._timed("rollback", self._store.rollback)

    def end_handler_transaction(self, *, keep: bool) -> None:
        self._store.end_handler_transaction(keep=keep)

    @property
    def connection(self) -> Any:
        return self._store.connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._store.execute(sql, params)

    def message_transactions(self, size: int) -> MessageTransactions:
        """Untimed: workers' transactions are not the poll thread's, which these metrics own."""
        return self._store.message_transactions(size)

    def async_message_transactions(self, size: int) -> AsyncMessageTransactions:
        """Untimed, as :meth:`message_transactions`."""
        return self._store.async_message_transactions(size)

    def checkpoints(self, group: str) -> dict[TP, int | None]:
        return self._store.checkpoints(group)

    def purge_processed_keys(self, group: str, older_than: float, limit: int) -> int:
        return self._store.purge_processed_keys(group, older_than, limit)


class TimedSource:
    """A source whose offset commits are timed (a synchronous commit until the broker
    answers, an asynchronous one while it is sent); everything else passes through."""

    def __init__(self, source: Source, instruments: Instruments) -> None:
        self._source = source
        self._instruments = instruments

    def commit(self, offsets: Mapping[TP, int], *, asynchronous: bool,
               metadata: Mapping[TP, str] | None = None) -> None:
        now = self._instruments.now
        start = now()
        try:
            self._source.commit(offsets, asynchronous=asynchronous, metadata=metadata)
        finally:
            self._instruments.commit.observe(now() - start)

    def wait_for_broker(self, *, keep_trying: Callable[[], bool]) -> bool:
        return self._source.wait_for_broker(keep_trying=keep_trying)

    def subscribe(self, topics: Iterable[str], listener: SourceListener) -> None:
        self._source.subscribe(topics, listener)

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        return self._source.poll(max_messages, timeout)

    def pause(self, partitions: list[TP]) -> None:
        self._source.pause(partitions)

    def resume(self, partitions: list[TP]) -> None:
        self._source.resume(partitions)

    def seek(self, partition: TP, offset: int) -> None:
        self._source.seek(partition, offset)

    def committed(self, partitions: Iterable[TP], timeout: float = 10.0) -> dict[TP, int | None]:
        return self._source.committed(partitions, timeout)

    def committed_with_metadata(
        self, partitions: Iterable[TP], timeout: float = 10.0
    ) -> dict[TP, tuple[int | None, str | None]]:
        return self._source.committed_with_metadata(partitions, timeout)

    def offset_range(self, partition: TP, timeout: float = 10.0) -> tuple[int, int]:
        return self._source.offset_range(partition, timeout)

    def positions(self, partitions: Iterable[TP]) -> dict[TP, int]:
        return self._source.positions(partitions)

    def topic_ids(self, topics: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
        return self._source.topic_ids(topics, timeout)

    def close(self) -> None:
        self._source.close()
