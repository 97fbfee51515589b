"""Direct mode: handlers run as messages are polled, and checkpoints live in Kafka only.

Owns the dispatcher, Kafka-only checkpoints (``consumer.checkpoint.kafka_only``), the
unconfirmed bound (how much done work the broker has not confirmed: what a crash repeats) and
the deferred asynchronous commit. Used by :class:`consumer.engine.loop.ConsumerLoop` through
:class:`consumer.engine.mode.CheckpointMode`, on the loop's thread. A synchronous commit blocks
for the broker; on revoke and shutdown its failure raises KafkaError; handlers' failures raise
HandlerFailed from :meth:`DirectMode.take`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from consumer.checkpoint.commits import KafkaCommits
from consumer.checkpoint.kafka_only import KafkaCheckpoint
from consumer.checkpoint.progress import PartitionProgress
from consumer.clock import Clock
from consumer.engine.dispatch import Dispatcher
from consumer.engine.mode import Partitions
from consumer.engine.stopping import StopRequest
from consumer.errors import KafkaError
from consumer.events import Observer, Trigger
from consumer.kafka.protocol import Source
from consumer.kafka.topic_ids import learn_topic_ids
from consumer.message import TP, Message

#: With asynchronous commits and no ``max_unconfirmed``: how many intervals a crash may repeat.
UNCONFIRMED_INTERVALS = 10


def unconfirmed_limit(every_messages: int | None, *, synchronous_commits: bool,
                      max_unconfirmed: int | None) -> int | None:
    """Done messages the broker may leave unconfirmed, at most (None: no bound).

    A crash repeats at most the work the broker has not confirmed: one interval with
    synchronous commits; with asynchronous ones, ``max_unconfirmed`` (the broker answers an
    asynchronous commit behind the messages already fetched, often tens of thousands of
    messages later, so a bound of a few intervals would stall a consumer working through a
    backlog)."""
    if every_messages is None:
        return None
    if synchronous_commits:
        return every_messages
    return max_unconfirmed or every_messages * UNCONFIRMED_INTERVALS


class DirectMode:
    """Runs handlers on each polled batch and commits their watermarks to Kafka."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        commits: KafkaCommits,
        source: Source,
        clock: Clock,
        observer: Observer,
        synchronous_commits: bool = False,
        unconfirmed_limit: int | None = None,
        topic_ids: dict[str, str] | None = None,
    ) -> None:
        self._dispatcher = dispatcher
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
        return {tp: PartitionProgress(tp[0], tp[1]) for tp in partitions}, {}

    def take(self, messages: list[Message], partitions: Partitions, stop: StopRequest) -> int:
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
        chosen = (list(partitions.values()) if only is None
                  else [partitions[tp] for tp in only if tp in partitions])
        try:
            KafkaCheckpoint(trigger, chosen, commits=self._commits, synchronous=synchronous).run()
        except KafkaError:
            if trigger in (Trigger.REVOKE, Trigger.SHUTDOWN):
                raise
            return False  # reported; the watermarks stay pending for the next checkpoint
        if only is not None:
            return False
        self._deferred = False
        return True

    def room(self, batch_size: int, until_checkpoint: int | None, partitions: Partitions) -> int:
        room = batch_size
        if until_checkpoint is not None and not self._deferred:
            room = min(room, until_checkpoint)
        if self._unconfirmed_limit is not None:
            unconfirmed = sum(p.unconfirmed for p in partitions.values())
            room = min(room, max(0, self._unconfirmed_limit - unconfirmed))
        return room

    def confirm(self, partitions: Partitions) -> bool:
        """Commit every watermark synchronously: its answer confirms the earlier commits. A
        refused commit (a rebalance) was reported, and confirms nothing."""
        try:
            moved = self._commits.confirm(Trigger.COUNT, partitions)
        except KafkaError:
            return False
        if moved:  # work done since the last checkpoint: this commit is a checkpoint
            self._deferred = False
        return bool(moved)

    def forget(self, partitions: Sequence[TP]) -> None:
        pass  # nothing is held between polls

    def drop_pending(self) -> None:
        pass

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
