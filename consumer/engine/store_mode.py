"""Store mode: buffer a checkpoint's worth of messages, apply them in one store transaction,
and position newly assigned partitions from the store's checkpoint rows.

Owns the store, the pending batch, the last batch while the store's answer to its COMMIT is
unread (PostgreSQL commits it while the loop polls), the outage backoff and the dead letters
not yet counted done. Used by :class:`consumer.engine.loop.ConsumerLoop` through
:class:`consumer.engine.mode.CheckpointMode`, on the loop's thread. :meth:`StoreMode.prepare`
blocks while the store is unreachable; a checkpoint raises HandlerFailed (after committing what
was applied) or Fenced (after rolling back), and StoreUnavailable on revoke and shutdown;
otherwise an unavailable store makes the mode ``unavailable`` until a retry succeeds. Reading
an answer late (an idle poll, an assignment, gone partitions) raises Fenced the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Literal

from consumer.checkpoint.commits import KafkaCommits
from consumer.checkpoint.progress import PartitionProgress
from consumer.checkpoint.store_batch import BatchOutcome, StoreCheckpoint
from consumer.clock import Clock
from consumer.dedup import KeyFormat, KeyFunction
from consumer.engine.mode import Partitions
from consumer.engine.snapshot import NO_WORK, WorkSnapshot
from consumer.engine.stopping import StopRequest
from consumer.errors import (
    ExternalReset,
    KafkaError,
    OffsetOutOfRange,
    ProcessedKeysAhead,
    StoreConstraintViolated,
    StoreError,
    StoreTransactionFailed,
    StoreUnavailable,
    TopicRecreated,
)
from consumer.events import HandlerTimings, Observer, Trigger
from consumer.failures.retries import Failures
from consumer.kafka.commit_metadata import is_ours
from consumer.kafka.protocol import Source
from consumer.kafka.topic_ids import learn_topic_ids
from consumer.message import TP, Message
from consumer.routing import Router
from consumer.store import Position, Store

log = logging.getLogger("consumer.transactional")

ExternalResetPolicy = Literal["fail", "follow", "ignore"]


class StoreMode:
    """Owns the store, the pending batch and the outage backoff; used by the loop's thread."""

    def __init__(
        self,
        store: Store,
        *,
        source: Source,
        router: Router,
        keys: Mapping[str, KeyFunction],
        group: str,
        observer: Observer,
        clock: Clock,
        commits: KafkaCommits,
        on_external_reset: ExternalResetPolicy = "fail",
        max_backoff: float = 30.0,
        topic_ids: dict[str, str] | None = None,
        key_format: KeyFormat | None = None,
        failures: Failures | None = None,
        instruments: HandlerTimings | None = None,
        group_scoped_topics: Collection[str] = (),
    ) -> None:
        self.store = store
        #: Routes with ``dedup_scope: group``: the migration leaves their old keys unscoped.
        self._group_scoped_topics = frozenset(group_scoped_topics)
        self._instruments = instruments
        self._source = source
        self._router = router
        self._keys = keys
        self._group = group
        self._observer = observer
        self._clock = clock
        self._commits = commits
        self._on_external_reset = on_external_reset
        self._max_backoff = max_backoff
        self._failures = failures
        self._pending: list[Message] = []
        #: Filled by prepare(); the dedup key functions read topic ids from this very dict.
        self.topic_ids = topic_ids if topic_ids is not None else {}
        #: Set by prepare() to the store's form of coordinates keys; the key functions read it.
        self.key_format = key_format if key_format is not None else KeyFormat()
        self._retry_at: float | None = None
        self._backoff = 0.5
        #: The last batch's COMMIT failed a deferred constraint: the next runs message by
        #: message with every constraint checked at its statement.
        self._constraints_now = False
        #: Dead letters acknowledged, their messages not yet committed as done (see
        #: StoreCheckpoint): partition -> offset.
        self._lettered: dict[TP, int] = {}
        #: The last batch, while the store has not answered its closing (StoreCheckpoint's
        #: answer_pending): its messages, done once it answers, and the partitions it moves.
        self._closing: tuple[StoreCheckpoint, list[Message], Partitions] | None = None

    def prepare(self, topics: Sequence[str], *, keep_trying: Callable[[], bool]) -> bool:
        """Create, check or migrate our tables and learn the topics' ids, retrying while the
        store is unreachable. False when ``keep_trying`` turned false first."""
        backoff = 1.0
        self.store.use_topic_ids(self.topic_ids)
        while keep_trying():
            try:
                upgrade = self.store.ensure_schema(
                    self._group, group_scoped_topics=self._group_scoped_topics)
                if upgrade is not None:
                    log.warning("%s", upgrade.describe("(store.url)"))
                self.key_format.ordered_coordinates = self.store.ordered_coordinates
                break
            except StoreUnavailable as error:
                log.warning("%s; retrying in %.0f s", error, backoff)
                deadline = self._clock.monotonic() + backoff
                while keep_trying() and self._clock.monotonic() < deadline:
                    time.sleep(0.1)
                backoff = min(backoff * 2, self._max_backoff)
        else:
            return False
        self.topic_ids.update(self._source.topic_ids(topics))
        return True

    @property
    def pending(self) -> list[Message]:
        """The messages polled and not done: the last batch's while its closing is not
        answered, and those buffered for the next transaction."""
        closing = self._closing
        return self._pending if closing is None else closing[1] + self._pending

    def work(self) -> WorkSnapshot:
        """No concurrency with a store (yet): nothing runs beside the loop."""
        return NO_WORK

    # --- buffering ----------------------------------------------------------------------

    def take(self, messages: list[Message], partitions: Partitions, stop: StopRequest) -> int:
        """Buffer the messages of assigned partitions for the next transaction (nothing once
        a stop was requested); returns how many were buffered. A poll that brought nothing
        first finishes the last batch, if the store's answer to it is still unread."""
        if not messages and self._closing is not None:
            self._answer_now()  # idle: nothing to poll while the server commits
        if stop.requested:
            return 0
        taken = _of_assigned(messages, partitions)
        self._pending.extend(taken)
        return len(taken)

    def drop_pending(self) -> None:
        """Forget the whole buffered batch: the process failed and runs no handler again
        (the last batch's closing, sent before, is answered first where it can be)."""
        if self._closing is not None:
            try:
                self._answer()
            except Exception as error:  # the failure that stops us comes first
                log.warning("the last batch's commit was not confirmed (%s): the next owner "
                            "resumes from the store's rows, and its keys skip what committed",
                            error)
        self._pending = []

    def forget(self, partitions: Sequence[TP]) -> None:
        """Forget buffered messages of partitions that are gone (revoked or lost), after
        finishing the last batch, if the store's answer to it is still unread."""
        self._answer_now()  # the last batch may move their rows
        gone = set(partitions)
        self._pending = [m for m in self._pending if (m.topic, m.partition) not in gone]
        for tp in gone:
            self._lettered.pop(tp, None)

    # --- checkpoints ----------------------------------------------------------------------

    def checkpoint(self, trigger: Trigger, partitions: Partitions, *,
                   only: Sequence[TP] | None = None) -> bool:
        """Apply the pending batch, whichever partitions triggered it (one transaction applies
        everything); False when the store is unavailable (retry later).

        Raises HandlerFailed after committing what was applied, Fenced after rolling back.

        The count and interval triggers may leave the store's answer to a batch's closing
        for later (the server commits it while the loop polls the next batch): the batch is
        done when the answer is read, at the next checkpoint, an idle poll, an assignment or
        a revoke. Until then its messages are pending and Kafka's copy is not sent.
        """
        try:
            self._answer()
        except StoreUnavailable as error:
            if trigger in (Trigger.REVOKE, Trigger.SHUTDOWN):
                raise
            self._became_unavailable(error)
            return False
        while True:
            batch = StoreCheckpoint(
                trigger, self._pending, partitions, store=self.store, source=self._source,
                router=self._router, keys=self._keys, group=self._group,
                now=self._clock.wall, commits=self._commits, failures=self._failures,
                instruments=self._instruments, lettered=self._lettered,
                constraints_now=self._constraints_now,
            )
            try:
                outcome = batch.run()
            except StoreUnavailable as error:
                if trigger in (Trigger.REVOKE, Trigger.SHUTDOWN):
                    raise
                self._became_unavailable(error)
                return False
            except (StoreConstraintViolated, StoreTransactionFailed) as error:
                if self._constraints_now:
                    raise  # message by message, no handler is at fault: nothing to isolate
                self._check_constraints_now(error)
                continue
            except ProcessedKeysAhead as error:
                # rolled back; its partitions are no longer held to be known: asked at once
                log.warning("%s", error)
                continue
            break
        self._constraints_now = False
        messages, self._pending = self._pending, []
        if batch.answer_pending:
            self._closing = (batch, messages, partitions)
            return True
        self._batch_done(messages, outcome, partitions)
        return True

    def _answer(self) -> None:
        """Finish the batch whose closing the store has not answered yet, if any. Raises
        StoreUnavailable (its messages are pending again, ahead of the rest: retried with
        them) and Fenced."""
        if self._closing is None:
            return
        (batch, messages, partitions), self._closing = self._closing, None
        try:
            outcome = batch.finish()
        except StoreUnavailable:
            self._pending = messages + self._pending
            raise
        except (StoreConstraintViolated, StoreTransactionFailed) as error:
            # Its messages are pending again, ahead of the rest; the next checkpoint runs
            # them message by message, every constraint checked at its statement.
            self._pending = messages + self._pending
            self._check_constraints_now(error)
            return
        self._batch_done(messages, outcome, partitions)

    def _check_constraints_now(self, error: StoreError) -> None:
        """A batch's COMMIT failed a deferred constraint, or its transaction failed under a
        handler that caught the error: the next batch runs message by message with every
        constraint checked at its statement, so the message at fault fails alone."""
        self._constraints_now = True
        log.warning("%s: running it again message by message, every constraint checked at "
                    "its statement, so the message at fault fails alone", error)

    def _answer_now(self) -> None:
        """:meth:`_answer` outside a checkpoint: an unavailable store pauses consumption and
        retries the batch, as a failed checkpoint does."""
        try:
            self._answer()
        except StoreUnavailable as error:
            self._became_unavailable(error)

    def _batch_done(self, messages: list[Message], outcome: BatchOutcome,
                    partitions: Partitions) -> None:
        self._observer.messages_done(_done(messages, outcome, partitions))
        if self._retry_at is not None:
            self._retry_at = None
            self._backoff = 0.5
            self._observer.store_available()
        self._observer.batch_applied(outcome.applied, outcome.duplicates)
        if outcome.failure is not None:
            raise outcome.failure

    def room(self, batch_size: int, until_checkpoint: int | None, partitions: Partitions) -> int:
        """A crash resumes from the store's rows: only the count trigger bounds a poll."""
        return batch_size if until_checkpoint is None else min(batch_size, until_checkpoint)

    def poll_timeout(self, timeout: float) -> float:
        return timeout

    def confirm(self, partitions: Partitions) -> bool:
        """Nothing waits for the broker (the store holds every checkpoint): no room means a
        checkpoint failed with the store unavailable, and its retry takes over."""
        return False

    def commit_answered(self, offsets: Mapping[TP, int], error: KafkaError | None,
                        partitions: Partitions) -> None:
        self._commits.answered(offsets, error, partitions)

    def _became_unavailable(self, error: StoreUnavailable) -> None:
        now = self._clock.monotonic()
        if self._retry_at is None:
            self._observer.store_unavailable(error)
        else:
            self._backoff = min(self._backoff * 2, self._max_backoff)
        self._retry_at = now + self._backoff
        log.warning("%s; the batch rolled back, consumption is paused, retrying in %.1f s",
                    error, self._backoff)

    @property
    def unavailable(self) -> bool:
        return self._retry_at is not None

    def retry_due(self) -> bool:
        return self._retry_at is not None and self._clock.monotonic() >= self._retry_at

    # --- assignment -----------------------------------------------------------------------

    def assign(self, partitions: Sequence[TP]) -> tuple[dict[TP, PartitionProgress],
                                                        dict[TP, int]]:
        """Bump epochs and read checkpoints; the store's offset wins over Kafka's, unless the
        row was written for another topic id (the topic was recreated)."""
        self._answer_now()
        learn_topic_ids(self._source, self.topic_ids, {topic for topic, _ in partitions})
        positions = self.store.assign(self._group, partitions, self._clock.wall(),
                                      self.topic_ids)
        for tp in partitions:  # a new owner may have dead-lettered it again meanwhile
            self._lettered.pop(tp, None)
        kafka = self._source.committed_with_metadata(partitions)
        progress: dict[TP, PartitionProgress] = {}
        starts: dict[TP, int] = {}
        for tp in partitions:
            position = positions[tp]
            stored = self._same_topic(tp, position)
            start = self._resolve(tp, stored, kafka.get(tp, (None, None)))
            if start is not None and stored is not None and start < stored:
                # Following Kafka back: the row moves back with it, or the first checkpoint
                # below the row would be refused as a row going backwards.
                self.store.follow_back(self._group, tp, start, epoch=position.epoch)
            if start is not None:
                low, high = self._source.offset_range(tp)
                if not low <= start <= high:
                    raise OffsetOutOfRange(tp[0], tp[1], start, low, high)
                starts[tp] = start
            # Kafka's copy starts as Kafka has it; when it differs from where we resume (a
            # crash between the store's commit and Kafka's, or a reset by another tool), the
            # next checkpoint brings it in line, even if no message arrives.
            kafka_offset = kafka.get(tp, (None, None))[0]
            if start is not None and kafka_offset is not None and kafka_offset > start:
                kafka_offset = None  # Moving Kafka back to the store's offset is deliberate.
            tracked = PartitionProgress(tp[0], tp[1], committed=kafka_offset,
                                        epoch=position.epoch)
            tracked.watermark = start
            tracked.new_keys_from = position.new_keys_from
            progress[tp] = tracked
        return progress, starts

    def _same_topic(self, tp: TP, position: Position) -> int | None:
        """The row's offset, when it was written for the topic as it is now. For a recreated
        topic (another id), store.on_external_reset decides: fail, follow (forget the old
        log's offset: Kafka's committed offset, else auto.offset.reset) or ignore."""
        current = self.topic_ids.get(tp[0])
        if position.topic_id is None or current is None or position.topic_id == current:
            return position.next_offset
        recreated = TopicRecreated(tp[0], tp[1], position.topic_id, current,
                                   position.next_offset)
        if self._on_external_reset == "fail":
            raise recreated
        follow = self._on_external_reset == "follow"
        log.warning("%s; store.on_external_reset is %s: %s", recreated,
                    self._on_external_reset,
                    "starting the new topic afresh" if follow else "keeping the old offset")
        self.store.adopt_topic_id(self._group, tp, current, epoch=position.epoch,
                                  forget_offset=follow)
        return None if follow else position.next_offset

    def _resolve(self, tp: TP, stored: int | None,
                 kafka: tuple[int | None, str | None]) -> int | None:
        """Where to start: the store's row, unless Kafka was reset by another tool."""
        kafka_offset, metadata = kafka
        if stored is None:
            return None  # No row yet: Kafka's committed offset, then auto.offset.reset.
        if kafka_offset is None or kafka_offset == stored or is_ours(metadata):
            return stored
        reset = ExternalReset(tp[0], tp[1], kafka_offset, stored)
        if self._on_external_reset == "fail":
            raise reset
        self._observer.external_reset(tp, kafka_offset, stored, self._on_external_reset)
        return kafka_offset if self._on_external_reset == "follow" else stored


def _done(pending: list[Message], outcome: BatchOutcome,
          partitions: Mapping[TP, PartitionProgress]) -> list[Message]:
    """The pending messages a committed batch made done: all of them, unless a partition
    stopped at a failure (its messages from there on wait for a retry, past the watermark)."""
    if outcome.applied + outcome.duplicates + outcome.dead_lettered >= len(pending):
        return pending
    done = []
    for message in pending:
        progress = partitions.get((message.topic, message.partition))
        if (progress is not None and progress.watermark is not None
                and message.offset < progress.watermark):
            done.append(message)
    return done


def _of_assigned(messages: list[Message], partitions: Partitions) -> list[Message]:
    """The polled messages of assigned partitions, in order. A poll holds runs of one
    partition, so each run's partition is looked up once; when every one is assigned (almost
    always) the poll's own list is returned. Looking each message's partition up cost 200 ns
    a message against 95 this way (polls of 1,000 made just before, in memory)."""
    topic: str | None = None
    partition = -1
    for message in messages:
        if message.partition != partition or message.topic != topic:
            topic, partition = message.topic, message.partition
            if (topic, partition) not in partitions:
                return [m for m in messages if (m.topic, m.partition) in partitions]
    return messages
