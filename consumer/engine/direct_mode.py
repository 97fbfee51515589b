"""Direct mode: handlers run as messages are polled, and checkpoints live in Kafka only.

Owns the dispatcher, Kafka-only checkpoints (``consumer.checkpoint.kafka_only``), the
unconfirmed bound (how much done work the broker has not confirmed: what a crash repeats) and
the deferred asynchronous commit. Used by :class:`consumer.engine.loop.ConsumerLoop` through
:class:`consumer.engine.mode.CheckpointMode`, on the loop's thread. A synchronous commit blocks
for the broker; at shutdown its failure raises KafkaError (on revoke it is reported and the
partitions go); handlers' failures raise HandlerFailed from :meth:`DirectMode.take`.

With a :class:`~consumer.engine.concurrency.dispatcher.ConcurrentDispatcher` (a route with
``concurrency`` above 1, or an ``async def`` handler) handlers run on workers: the poll's room
is bounded by the buffer too, the poll does not wait while handlers run (the turn waits for one
of them instead, so a finished handler's key moves on at once), :meth:`DirectMode.confirm`
waits for handlers to finish when the buffer is full, and the revoke and shutdown checkpoints
first wait for the running work of their partitions (``settle_seconds`` at most) and drop what
has not started.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from consumer.checkpoint.commits import KafkaCommits
from consumer.checkpoint.kafka_only import KafkaCheckpoint
from consumer.checkpoint.progress import PartitionProgress
from consumer.clock import Clock
from consumer.engine.concurrency.dispatcher import ConcurrentDispatcher
from consumer.engine.dispatch import Dispatcher
from consumer.engine.mode import HandlerWait, Partitions
from consumer.engine.snapshot import NO_WORK, WorkSnapshot
from consumer.engine.stopping import StopRequest
from consumer.errors import KafkaError
from consumer.events import Observer, Trigger
from consumer.kafka.commit_metadata import finished_in
from consumer.kafka.protocol import Source
from consumer.kafka.topic_ids import learn_topic_ids
from consumer.message import TP, Message

log = logging.getLogger("consumer.engine")

#: With asynchronous commits and no ``max_unconfirmed``: how many intervals a crash may repeat.
#: With one commit in flight, unconfirmed work peaks at about two answers' worth of messages:
#: Kafka 4's group coordinator answers a commit 5-10 ms after it arrives (it holds commits up to
#: ``group.coordinator.append.linger.ms``, 5 ms, to write them together), which is 10,000-20,000
#: messages at a million a second. Ten intervals stopped such a loop for a synchronous commit
#: (about 8 ms) every 10,000 messages, a third of its time.
UNCONFIRMED_INTERVALS = 50


def unconfirmed_limit(every_messages: int | None, *, synchronous_commits: bool,
                      max_unconfirmed: int | None) -> int | None:
    """Done messages the broker may leave unconfirmed, at most (None: no bound).

    A crash repeats at most the work the broker has not confirmed: one interval with
    synchronous commits; with asynchronous ones, ``max_unconfirmed``, or
    :data:`UNCONFIRMED_INTERVALS` intervals (a bound near the broker's answer time would stall a
    fast consumer working through a backlog)."""
    if every_messages is None:
        return None
    if synchronous_commits:
        return every_messages
    return max_unconfirmed or every_messages * UNCONFIRMED_INTERVALS


class DirectMode:
    """Runs handlers on each polled batch and commits their watermarks to Kafka."""

    def __init__(
        self,
        dispatcher: Dispatcher | ConcurrentDispatcher,
        *,
        commits: KafkaCommits,
        source: Source,
        clock: Clock,
        observer: Observer,
        synchronous_commits: bool = False,
        unconfirmed_limit: int | None = None,
        topic_ids: dict[str, str] | None = None,
        poll_wait: float = 0.5,
        settle_seconds: float = 30.0,
    ) -> None:
        self._dispatcher = dispatcher
        #: Handlers on workers (routes with concurrency); None: the sequential dispatcher.
        self._workers = dispatcher if isinstance(dispatcher, ConcurrentDispatcher) else None
        #: Seconds confirm waits for handlers while the buffer is full (the poll timeout).
        self._poll_wait = poll_wait
        #: Seconds a revoke or the shutdown waits for running handlers before its checkpoint.
        self._settle_seconds = settle_seconds
        self._batch_size = 1
        self._handler_wait = HandlerWait()
        self._commits = commits
        self._source = source
        self._clock = clock
        self._observer = observer
        self._synchronous = synchronous_commits
        self._unconfirmed_limit = unconfirmed_limit
        #: The dict the key functions read topic ids from (coordinates keys), when they do.
        self._topic_ids = topic_ids
        #: A due asynchronous checkpoint waits for the broker's answer to the previous one.
        self._deferred = False

    def prepare(self, topics: Sequence[str], *, keep_trying: Callable[[], bool]) -> bool:
        if self._topic_ids is not None:
            learn_topic_ids(self._source, self._topic_ids, topics)
        return True

    def assign(self, partitions: Sequence[TP]) -> tuple[dict[TP, PartitionProgress],
                                                        dict[TP, int]]:
        if self._topic_ids is not None:  # a recreated topic has a new id: new coordinates keys
            learn_topic_ids(self._source, self._topic_ids, {topic for topic, _ in partitions})
        if self._workers is not None:
            self._skip_finished(self._workers, partitions)
        return {tp: PartitionProgress(tp[0], tp[1]) for tp in partitions}, {}

    def _skip_finished(self, workers: ConcurrentDispatcher, partitions: Sequence[TP]) -> None:
        """The messages the partitions' last commits say finished above the committed offset
        (``consumer.kafka.commit_metadata``) are done without running when polled again."""
        try:
            committed = self._source.committed_with_metadata(partitions)
        except KafkaError as error:
            log.warning("reading the committed offsets failed (%s): messages finished above "
                        "them before this assignment are handled again", error)
            return
        for (topic, partition), (offset, metadata) in committed.items():
            finished = set() if offset is None else finished_in(metadata, offset)
            if finished and offset is not None:
                workers.skip_finished((topic, partition), offset, finished)
                log.info("%s[%d]: %d messages above the committed offset %d finished before "
                         "(its commit says so): they are skipped, not handled again",
                         topic, partition, len(finished), offset)

    def take(self, messages: list[Message], partitions: Partitions, stop: StopRequest) -> int:
        wait = self._handler_wait.take()
        if wait and not messages and self._workers is not None:
            self._workers.await_completion(partitions, wait)
        done = self._dispatcher.run(messages, partitions, self._clock.monotonic(), stop)
        if done:
            self._observer.batch_done(done)
        return done

    def checkpoint(self, trigger: Trigger, partitions: Partitions, *,
                   only: Sequence[TP] | None = None) -> bool:
        synchronous = self._synchronous
        if (only is None and not synchronous and trigger in (Trigger.COUNT, Trigger.INTERVAL)
                and self._commits.in_flight):
            # The coordinator answers one commit at a time: this checkpoint goes out, with
            # the newest watermarks, once the previous one is answered; meanwhile the
            # unconfirmed bound limits what a crash repeats.
            self._deferred = True
            return False
        workers = self._workers
        if workers is not None and trigger in (Trigger.REVOKE, Trigger.SHUTDOWN):
            workers.settle(partitions, only, self._settle_seconds)
        chosen = (list(partitions.values()) if only is None
                  else [partitions[tp] for tp in only if tp in partitions])
        try:
            KafkaCheckpoint(trigger, chosen, commits=self._commits, synchronous=synchronous).run()
        except KafkaError:
            if trigger is Trigger.SHUTDOWN:
                raise
            # Reported. A revoke's partitions go all the same (the group has moved on, or the
            # coordinator did not answer): their next owner repeats what this commit would
            # have covered, as after a crash. Otherwise the watermarks stay pending.
            return False
        finally:
            if workers is not None and trigger is Trigger.SHUTDOWN:
                workers.close()
        if workers is not None and trigger is Trigger.SHUTDOWN:
            workers.raise_failure()  # a handler failed while the shutdown waited for it
        if only is not None:
            return False
        self._deferred = False
        return True

    def poll_timeout(self, timeout: float) -> float:
        """With handlers running, the poll does not wait: a finished handler would wait for
        the poll to return before its key's next message starts. The next :meth:`take` waits
        for a handler instead, when the poll brought nothing."""
        workers = self._workers
        if workers is None or not workers.running:
            return timeout
        return self._handler_wait.hand_over(timeout)

    def room(self, batch_size: int, until_checkpoint: int | None, partitions: Partitions) -> int:
        room = batch_size
        workers = self._workers
        if workers is not None:
            # Polled messages are not done yet: the count trigger bounds nothing here, the
            # buffer does (the count is checked every turn as work finishes).
            self._batch_size = batch_size
            room = min(room, workers.room())
        elif until_checkpoint is not None and not self._deferred:
            room = min(room, until_checkpoint)
        if self._unconfirmed_limit is not None:
            unconfirmed = sum(p.unconfirmed for p in partitions.values())
            room = min(room, max(0, self._unconfirmed_limit - unconfirmed))
        return room

    def confirm(self, partitions: Partitions) -> bool:
        """Commit every watermark synchronously: its answer confirms the earlier commits. A
        refused commit (a rebalance) was reported, and confirms nothing. With workers and a
        full buffer, first wait (the poll timeout at most) until handlers made room for a
        batch; what they finished counts at the next take."""
        workers = self._workers
        if workers is not None:
            if workers.room() == 0:
                workers.wait(partitions, self._poll_wait,
                             room=min(self._batch_size, max(1, workers.room_total // 2)))
            limit = self._unconfirmed_limit
            if limit is None or sum(p.unconfirmed for p in partitions.values()) < limit:
                return False
        try:
            moved = self._commits.confirm(Trigger.COUNT, partitions)
        except KafkaError:
            return False
        if moved:  # work done since the last checkpoint: this commit is a checkpoint
            self._deferred = False
        return bool(moved)

    def forget(self, partitions: Sequence[TP]) -> None:
        if self._workers is not None:  # else nothing is held between polls
            self._workers.forget(partitions)

    def drop_pending(self) -> None:
        if self._workers is not None:
            self._workers.drop_pending()

    def commit_answered(self, offsets: Mapping[TP, int], error: KafkaError | None,
                        partitions: Partitions) -> None:
        self._commits.answered(offsets, error, partitions)

    @property
    def unavailable(self) -> bool:
        return False

    def retry_due(self) -> bool:
        return False

    @property
    def pending(self) -> Sequence[Message]:
        return ()

    def work(self) -> WorkSnapshot:
        workers = self._workers
        if workers is None:
            return NO_WORK
        return WorkSnapshot(in_flight=workers.in_flight(), queued=workers.queued(),
                            gaps=workers.gaps(), paused=workers.paused, held=workers.held())
