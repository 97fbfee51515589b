"""Store mode with concurrency: handlers run on workers, each message applied exactly once in
a transaction of its own, and the partitions' checkpoint rows follow the watermarks.

Chosen by the wiring when a store is configured and a route has ``concurrency`` above 1 or an
``async def`` handler (PostgreSQL only: SQLite and MariaDB refuse). The concurrent dispatcher
(:class:`~consumer.engine.concurrency.dispatcher.ConcurrentDispatcher`) runs each route's
handler wrapped in :class:`~consumer.checkpoint.store_message.StoreWork` (claim the key, run
the handler with ``context.db`` bound to the message's pooled connection, commit; a worker's
micro-batch of ``store.micro_batch_messages`` in one such transaction; an ``async def``
handler in :class:`~consumer.checkpoint.store_message.AsyncStoreWork`, on the event loop, a
transaction per message on an asynchronous pool); the poll
thread moves a partition's watermark over the contiguous run of messages whose transactions
committed, and a checkpoint (count, interval, revoke, shutdown) writes the rows that moved in a
fenced update on the store's own connection (:class:`~consumer.checkpoint.store_message.
StoreRows`), then Kafka's copy. Assignment bumps epochs and resumes from the rows, as
:class:`~consumer.engine.store_mode.StoreMode` does.

A transient store error in a worker (a lost connection, a lock timeout, a deadlock) holds that
message back and retries it after backoff; it is never an attempt of its own, nor a dead
letter. A failed row write loses nothing (the keys hold what was applied): it is retried at the
next checkpoint. Raises Fenced (a newer owner has a partition: stop) and HandlerFailed. Loop
thread only, but for the workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from consumer.checkpoint.commits import KafkaCommits
from consumer.checkpoint.progress import PartitionProgress
from consumer.checkpoint.store_message import StoreRows, Tally
from consumer.clock import Clock
from consumer.engine.concurrency.dispatcher import ConcurrentDispatcher
from consumer.engine.mode import HandlerWait, Partitions
from consumer.engine.snapshot import WorkSnapshot
from consumer.engine.stopping import StopRequest
from consumer.engine.store_mode import StoreMode
from consumer.errors import Fenced, KafkaError, StoreError, StoreUnavailable
from consumer.events import Observer, Trigger
from consumer.message import TP, Message
from consumer.store import AsyncMessageTransactions, MessageTransactions

log = logging.getLogger("consumer.transactional")


class StoreOutage:
    """Backoff for messages held back by a transient store error, shared by all of them:
    doubles while errors keep coming, starts again once a transaction commits."""

    def __init__(self, observer: Observer, clock: Clock, *, max_backoff: float) -> None:
        self._observer = observer
        self._clock = clock
        self._max_backoff = max_backoff
        self._backoff = 0.0

    def retry_at(self, error: BaseException) -> float | None:
        """When to try a message again whose worker raised ``error``; None: the error is the
        message's (its failure policy decides). Raises a StoreError that is not transient
        (tables missing, our own SQL refused): the consumer stops."""
        if not isinstance(error, StoreError):
            return None
        if not isinstance(error, StoreUnavailable):
            raise error
        if self._backoff == 0.0:
            self._observer.store_unavailable(error)
            self._backoff = 0.5
        else:
            self._backoff = min(self._backoff * 2, self._max_backoff)
        log.warning("%s; the message is retried in %.1f s", error, self._backoff)
        return self._clock.monotonic() + self._backoff

    def committed(self) -> None:
        if self._backoff:
            self._backoff = 0.0
            self._observer.store_available()


class ConcurrentStoreMode:
    """Handlers on workers, a transaction per message, checkpoint rows at the watermarks."""

    def __init__(
        self,
        positions: StoreMode,
        dispatcher: ConcurrentDispatcher,
        *,
        transactions: Sequence[MessageTransactions | AsyncMessageTransactions],
        rows: StoreRows,
        tally: Tally,
        outage: StoreOutage,
        commits: KafkaCommits,
        observer: Observer,
        clock: Clock,
        poll_wait: float = 0.5,
        settle_seconds: float = 30.0,
    ) -> None:
        #: Schema, topic ids, epochs and where to resume: as without concurrency.
        self._positions = positions
        self._dispatcher = dispatcher
        self._transactions = transactions
        self._rows = rows
        self._tally = tally
        self._outage = outage
        self._commits = commits
        self._observer = observer
        self._clock = clock
        #: Seconds confirm waits for handlers while the buffer is full (the poll timeout).
        self._poll_wait = poll_wait
        self._settle_seconds = settle_seconds
        self._batch_size = 1
        self._handler_wait = HandlerWait()

    def prepare(self, topics: Sequence[str], *, keep_trying: Callable[[], bool]) -> bool:
        if not self._positions.prepare(topics, keep_trying=keep_trying):
            return False
        for transactions in self._transactions:
            transactions.open()
        return True

    def assign(self, partitions: Sequence[TP]) -> tuple[dict[TP, PartitionProgress],
                                                        dict[TP, int]]:
        return self._positions.assign(partitions)

    def poll_timeout(self, timeout: float) -> float:
        """Workers running: the poll only takes what has arrived; :meth:`take` waits."""
        return self._handler_wait.hand_over(timeout) if self._dispatcher.busy else timeout

    def take(self, messages: list[Message], partitions: Partitions, stop: StopRequest) -> int:
        """Queue and start the polled messages; with none new while handlers run, first wait
        (as long as the poll would have) for one to finish, so its key's next message
        starts."""
        dispatcher = self._dispatcher
        wait = self._handler_wait.take()
        if wait and not messages and dispatcher.busy:
            dispatcher.wait_any(partitions, wait)
        done = dispatcher.run(messages, partitions, self._clock.monotonic(), stop)
        applied, duplicates = self._tally.take()
        if applied or duplicates:
            self._outage.committed()
            self._observer.batch_applied(applied, duplicates)
        if done:
            # Bins the handler durations the workers reported (the messages themselves are
            # the dispatcher's: no age sample here).
            self._observer.messages_done([])
        return done

    def checkpoint(self, trigger: Trigger, partitions: Partitions, *,
                   only: Sequence[TP] | None = None) -> bool:
        """Write the rows that moved, then Kafka's copy. On revoke and shutdown, first wait
        for the running work of those partitions (``settle_seconds`` at most) and drop what
        has not started. A store error leaves the rows for the next checkpoint."""
        dispatcher = self._dispatcher
        final = trigger in (Trigger.REVOKE, Trigger.SHUTDOWN)
        if final:
            dispatcher.settle(partitions, only, self._settle_seconds)
        chosen = (list(partitions.values()) if only is None
                  else [partitions[tp] for tp in only if tp in partitions])
        try:
            self._rows.run(trigger, chosen)
        except StoreUnavailable as error:
            log.warning("%s; the checkpoint rows stay where they were (the processed keys "
                        "hold what was applied) and are written at the next checkpoint", error)
            return False
        except Fenced:
            self._close()  # a newer owner: this process stops, and its workers with it
            raise
        finally:
            if trigger is Trigger.SHUTDOWN:
                self._close()
        if trigger is Trigger.SHUTDOWN:
            dispatcher.raise_failure()  # a handler failed while the shutdown waited for it
        return only is None

    def _close(self) -> None:
        """Close the pools, then stop the workers: an async pool closes on the event loop,
        which stopping the workers ends. Closing twice does nothing more."""
        for transactions in self._transactions:
            transactions.close()
        self._dispatcher.close()

    def room(self, batch_size: int, until_checkpoint: int | None, partitions: Partitions) -> int:
        """The buffer bounds a poll (polled messages are not done yet; a crash repeats no
        effect: the store holds them, and the keys skip them)."""
        self._batch_size = batch_size
        return min(batch_size, self._dispatcher.room())

    def confirm(self, partitions: Partitions) -> bool:
        """The buffer is full: wait (the poll timeout at most) for handlers to make room."""
        dispatcher = self._dispatcher
        if dispatcher.room() == 0:
            dispatcher.wait(partitions, self._poll_wait,
                            room=min(self._batch_size, max(1, dispatcher.room_total // 2)))
        return False

    def forget(self, partitions: Sequence[TP]) -> None:
        self._dispatcher.forget(partitions)
        self._rows.forget(partitions)
        self._positions.forget(partitions)

    def drop_pending(self) -> None:
        self._dispatcher.drop_pending()

    def commit_answered(self, offsets: Mapping[TP, int], error: KafkaError | None,
                        partitions: Partitions) -> None:
        self._commits.answered(offsets, error, partitions)

    @property
    def unavailable(self) -> bool:
        return False  # each message waits out an outage on its own (StoreOutage)

    def retry_due(self) -> bool:
        return False

    @property
    def pending(self) -> Sequence[Message]:
        return ()

    def work(self) -> WorkSnapshot:
        dispatcher = self._dispatcher
        return WorkSnapshot(in_flight=dispatcher.in_flight(), queued=dispatcher.queued(),
                            gaps=dispatcher.gaps(), paused=dispatcher.paused,
                            held=dispatcher.held())
