"""The consumer loop: poll -> route -> handler -> watermark -> checkpoint when due.

One thread owns the loop, the source and every partition's state; rebalance and commit
callbacks run inside ``poll`` on that same thread. ``run_once`` is public so tests can step it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection, Mapping
from typing import Protocol

from consumer.checkpoint.kafka_only import Checkpoint
from consumer.checkpoint.policy import CheckpointPolicy, CheckpointState
from consumer.checkpoint.progress import PartitionProgress
from consumer.clock import Clock
from consumer.dedup import KeyFunction
from consumer.engine.dispatch import Dispatcher
from consumer.engine.snapshot import LoopSnapshot, PartitionSnapshot
from consumer.engine.stopping import StopRequest
from consumer.engine.store_mode import TransactionalBatches
from consumer.errors import ConsumerError, Fenced, KafkaError
from consumer.events import HandlerTimings, Observer, Trigger
from consumer.failures.retries import Failures
from consumer.kafka.protocol import Source
from consumer.kafka.topic_ids import learn_topic_ids
from consumer.message import TP, Message
from consumer.routing import Router

log = logging.getLogger("consumer.engine")


#: With asynchronous commits and no ``max_unconfirmed``: how many intervals a crash may repeat.
UNCONFIRMED_INTERVALS = 10


class LogWatcher(Protocol):
    """Keeps paused partitions' log offsets current for the lag metrics
    (:class:`consumer.observability.log_watch.LogWatch`)."""

    def due(self, now: float) -> bool: ...

    def refresh(self, partitions: Mapping[TP, PartitionProgress], paused: Collection[TP],
                held: Collection[TP]) -> None: ...


class LoopState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSED = "closed"
    FAILED = "failed"


class ConsumerLoop:
    """Consumes the routed topics and checkpoints every N messages or T seconds."""

    def __init__(
        self,
        source: Source,
        *,
        router: Router,
        policy: CheckpointPolicy,
        group: str,
        clock: Clock,
        observer: Observer,
        batch_size: int = 500,
        poll_timeout: float = 0.5,
        synchronous_commits: bool = False,
        max_unconfirmed: int | None = None,
        keys: Mapping[str, KeyFunction] | None = None,
        transactional: TransactionalBatches | None = None,
        failures: Failures | None = None,
        dispatcher: Dispatcher | None = None,
        instruments: HandlerTimings | None = None,
        log_watch: LogWatcher | None = None,
        topic_ids: dict[str, str] | None = None,
    ) -> None:
        self._source = source
        #: Without a store, the dict the key functions read topic ids from (the store's
        #: batches learn them themselves).
        self._topic_ids = topic_ids
        self._router = router
        self._policy = policy
        self._group = group
        self._clock = clock
        self._observer = observer
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._synchronous_commits = synchronous_commits
        # A crash repeats at most the work the broker has not confirmed: one interval with
        # synchronous commits; with asynchronous ones, ``max_unconfirmed`` (the broker answers
        # an asynchronous commit behind the messages already fetched, often tens of thousands
        # of messages later, so a bound of a few intervals would stall a consumer working
        # through a backlog). With a store, a crash resumes from the store's rows instead.
        self._unconfirmed_limit = (
            None if policy.every_messages is None or transactional is not None
            else policy.every_messages if synchronous_commits
            else max_unconfirmed or policy.every_messages * UNCONFIRMED_INTERVALS
        )
        self._keys = keys or {}
        self._failures = failures
        self._dispatcher = dispatcher or Dispatcher(router, group=group, keys=self._keys,
                                                    failures=failures, source=source,
                                                    instruments=instruments)
        self._transactional = transactional
        self._log_watch = log_watch
        self._partitions: dict[TP, PartitionProgress] = {}
        self._checkpoints = CheckpointState(policy, clock.monotonic())
        #: A due asynchronous checkpoint waits for the broker's answer to the previous one.
        self._deferred = False
        #: Every partition was paused while the store was unavailable; resumed once it answers.
        self._paused_for_store = False
        self._stop = StopRequest()
        self.state = LoopState.CREATED

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> bool:
        """Wait for the brokers, then subscribe. False when a stop was requested first."""
        if not self._source.wait_for_broker(keep_trying=lambda: not self._stop.requested):
            return False
        if self._transactional is not None and not self._transactional.prepare(
            self._router.topics, keep_trying=lambda: not self._stop.requested
        ):
            return False
        if self._transactional is None and self._topic_ids is not None:
            learn_topic_ids(self._source, self._topic_ids, self._router.topics)
        self._source.subscribe(self._router.topics, self)
        self.state = LoopState.RUNNING
        self._observer.started(self._router.topics)
        return True

    def request_stop(self) -> None:
        """Ask the loop to stop after the message in hand; safe from a signal handler."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.requested

    def run(self) -> None:
        """Consume until a stop is requested, then checkpoint and leave the group.

        Raises :class:`HandlerFailed` (after committing what was done before the failing
        message) or a Kafka error the client cannot recover from.
        """
        try:
            if self.start():
                while not self._stop.requested:
                    self.run_once()
        except ConsumerError as error:
            self.state = LoopState.FAILED
            self._observer.failed(error)
            self._close_after_failure(error)
            raise
        self.close()

    def run_once(self) -> int:
        """One turn: poll a batch, handle it, checkpoint if due. Returns messages done."""
        watch = self._log_watch
        if watch is not None and watch.due(self._clock.monotonic()):
            watch.refresh(self._partitions, self._paused(), self._held())
        if self._transactional is not None and self._transactional.unavailable:
            self._wait_for_store()
            return 0
        if self._paused_for_store:
            # The store answered again, maybe in a revoke checkpoint rather than in
            # _wait_for_store's retry: resume what the outage paused.
            self._paused_for_store = False
            self._source.resume(self._not_waiting(list(self._partitions)))
        if self._failures is not None and self._failures.waiting:
            self._source.resume([tp for tp in self._failures.due() if tp in self._partitions])
        room = self._room()
        if room == 0 and self._checkpoints.due(self._clock.monotonic()) is not None:
            self._checkpoint(Trigger.COUNT)
            room = self._room()
        if room == 0:
            # Too much work not yet confirmed by the broker (a commit held back or refused
            # during a rebalance): confirm it before handling anything more.
            self._confirm()
            return 0
        done = self._handle(self._source.poll(room, self._poll_timeout))
        trigger = self._checkpoints.due(self._clock.monotonic())
        if trigger is not None:
            self._checkpoint(trigger)
        return done

    def _room(self) -> int:
        """How many messages the next poll may take without breaking the checkpoint bound."""
        room = self._batch_size
        until_checkpoint = self._checkpoints.room()
        if until_checkpoint is not None and not self._deferred:
            room = min(room, until_checkpoint)
        if self._unconfirmed_limit is not None:
            unconfirmed = sum(p.unconfirmed for p in self._partitions.values())
            room = min(room, max(0, self._unconfirmed_limit - unconfirmed))
        return room

    def _wait_for_store(self) -> None:
        """The store is down: keep the group alive with every partition paused, and retry the
        pending batch when the backoff allows; nothing is committed meanwhile."""
        assert self._transactional is not None
        if self._transactional.retry_due():
            self._checkpoint(Trigger.INTERVAL)
            if not self._transactional.unavailable:
                self._paused_for_store = False
                self._source.resume(self._not_waiting(list(self._partitions)))
                return
        self._source.pause(list(self._partitions))
        self._paused_for_store = True
        self._handle(self._source.poll(self._batch_size, min(self._poll_timeout, 0.2)))

    def _handle(self, messages: list[Message]) -> int:
        self._observer.polled(messages)
        if self._transactional is not None:
            taken = self._transactional.add(messages, self._partitions, self._stop.requested)
            if taken:
                self._checkpoints.record_done(taken)
            return taken
        done = 0
        try:
            done = self._dispatcher.run(messages, self._partitions, self._clock.monotonic(),
                                        self._stop)
        finally:
            if done:
                self._checkpoints.record_done(done)
                self._observer.batch_done(done)
        return done

    def _paused(self) -> list[TP]:
        """Assigned partitions not fetched now: waiting for a retry, or all of them while the
        store is unavailable (``_confirm`` pauses and resumes within one call)."""
        if self._transactional is not None and self._transactional.unavailable:
            return list(self._partitions)
        if self._failures is None or not self._failures.waiting:
            return []
        return [tp for tp in self._failures.paused() if tp in self._partitions]

    def _held(self) -> set[TP]:
        """Partitions with messages polled and not done: a store's pending batch."""
        if self._transactional is None:
            return set()
        return {(m.topic, m.partition) for m in self._transactional.pending}

    def _not_waiting(self, partitions: list[TP]) -> list[TP]:
        """Leave paused the partitions whose failed message waits for its next attempt."""
        if self._failures is None or not self._failures.waiting:
            return partitions
        waiting = set(self._failures.paused())
        return [tp for tp in partitions if tp not in waiting]

    def _confirm(self) -> None:
        """Too much work waits for the broker to confirm earlier commits: commit every
        watermark synchronously (the coordinator answers commits in order, so its answer
        confirms the earlier ones too). If the group is rebalancing and the commit is refused,
        let the rebalance finish by polling with every partition paused, taking no new work."""
        offsets = {tp: p.watermark for tp, p in self._partitions.items()
                   if p.watermark is not None}
        try:
            if offsets:
                self._source.commit(offsets, asynchronous=False)
        except KafkaError as error:
            self._observer.commit_failed(Trigger.COUNT, error)
        else:
            moved = {}
            for tp, offset in offsets.items():
                progress = self._partitions[tp]
                if offset != progress.committed:
                    progress.mark_committed(offset)
                    moved[tp] = offset
                progress.mark_acked(offset)
            if moved:  # Work done since the last checkpoint: this commit is a checkpoint.
                self._checkpoints.reset(self._clock.monotonic())
                self._deferred = False
                self._observer.checkpoint_committed(Trigger.COUNT, moved)
            self._observer.commit_acknowledged(offsets)
            if self._room() > 0:
                return
        paused = list(self._partitions)
        self._source.pause(paused)
        try:
            # Only partitions assigned during this poll can deliver messages: handle what
            # the bound has room for, and give the rest back.
            self._handle(self._within_room(self._source.poll(self._batch_size,
                                                             self._poll_timeout)))
        finally:
            self._source.resume(self._not_waiting([tp for tp in paused
                                                   if tp in self._partitions]))

    def _within_room(self, messages: list[Message]) -> list[Message]:
        """The first messages the unconfirmed bound has room for; each partition with
        messages beyond it is sought back to its first one, so it is fetched again later."""
        room = self._room()
        if len(messages) <= room:
            return messages
        rewind: dict[TP, int] = {}
        for message in messages[room:]:
            rewind.setdefault((message.topic, message.partition), message.offset)
        for tp, offset in rewind.items():
            if tp in self._partitions:
                self._source.seek(tp, offset)
        return messages[:room]

    def close(self) -> None:
        """Checkpoint synchronously and leave the group."""
        if self.state in (LoopState.CLOSED, LoopState.FAILED):
            return
        self.state = LoopState.DRAINING
        try:
            self._checkpoint(Trigger.SHUTDOWN)
        finally:
            self._source.close()
            self.state = LoopState.CLOSED
            self._observer.stopped()

    def _close_after_failure(self, error: ConsumerError) -> None:
        """Leave the group without running a handler again, and never mask the failure.

        The batch in hand when it failed is dropped: none of it was committed, and whoever
        owns its partitions next gets it again. What the store committed already may still go
        to Kafka, unless this process was fenced (a newer owner's offsets are the ones that
        count). The revoke that closing the client triggers checkpoints nothing."""
        if self._transactional is not None:
            self._transactional.drop_pending()
        if not isinstance(error, Fenced):
            try:
                self._checkpoint(Trigger.SHUTDOWN)
            except Exception as final:  # logged; the failure is raised
                log.error("final checkpoint after the failure also failed: %s: %s",
                          type(final).__name__, final)
        try:
            self._source.close()
        except Exception as closing:  # logged; the failure is raised
            log.error("closing the Kafka client after the failure failed: %s: %s",
                      type(closing).__name__, closing)

    # --- checkpoints ---------------------------------------------------------------------------

    def _checkpoint(
        self, trigger: Trigger, only: list[TP] | None = None, *, synchronous: bool = False
    ) -> dict[TP, int] | None:
        """Take a checkpoint; None when its commit failed or waits for the previous one
        (the watermarks stay pending)."""
        if self._transactional is not None:
            # One transaction applies everything pending, whichever partitions triggered it.
            applied = self._transactional.checkpoint(trigger, self._partitions)
            if applied is not None:
                self._checkpoints.reset(self._clock.monotonic())
            return applied
        synchronous = synchronous or self._synchronous_commits
        if (only is None and not synchronous and trigger in (Trigger.COUNT, Trigger.INTERVAL)
                and self._awaiting_answer()):
            # The group coordinator answers one commit per connection at a time (about 5 ms
            # on Kafka 4): sending more would queue them and delay every answer. This
            # checkpoint goes out, with the newest watermarks, once the previous one is
            # answered; meanwhile the unconfirmed bound limits what a crash repeats.
            self._deferred = True
            return None
        partitions = (
            list(self._partitions.values())
            if only is None
            else [self._partitions[tp] for tp in only if tp in self._partitions]
        )
        checkpoint = Checkpoint(trigger, partitions, source=self._source, observer=self._observer,
                                synchronous=synchronous)
        try:
            committed = checkpoint.run()
        except KafkaError as error:
            self._observer.commit_failed(trigger, error)
            if trigger in (Trigger.REVOKE, Trigger.SHUTDOWN):
                raise
            # The watermarks stay pending: the next checkpoint commits them again.
            return None
        if only is None:
            self._checkpoints.reset(self._clock.monotonic())
            self._deferred = False
        return committed

    def _awaiting_answer(self) -> bool:
        """Whether an asynchronous commit has not been answered by the broker yet."""
        return any(p.committed != p.acked for p in self._partitions.values())

    # --- what the source reports (SourceListener) ---------------------------------------------

    def on_assigned(self, partitions: list[TP]) -> Mapping[TP, int]:
        if self._transactional is not None:
            progress, starts = self._transactional.assign(partitions)
            self._partitions.update(progress)
            self._observer.assigned(partitions)
            return starts
        if self._topic_ids is not None:  # a recreated topic has a new id: new coordinates keys
            learn_topic_ids(self._source, self._topic_ids, {topic for topic, _ in partitions})
        for topic, partition in partitions:
            self._partitions[(topic, partition)] = PartitionProgress(topic, partition)
        self._observer.assigned(partitions)
        return {}

    def on_revoked(self, partitions: list[TP]) -> None:
        if self._failures is not None:
            self._failures.forget(partitions)
        try:
            if self.state is not LoopState.FAILED:  # a failing process runs no handler again
                self._checkpoint(Trigger.REVOKE, only=partitions)
        finally:
            if self._transactional is not None:  # what a failed revoke left is not ours now
                self._transactional.drop(partitions)
            for tp in partitions:
                self._partitions.pop(tp, None)
            self._observer.revoked(partitions)

    def on_lost(self, partitions: list[TP]) -> None:
        if self._failures is not None:
            self._failures.forget(partitions)
        if self._transactional is not None:
            self._transactional.drop(partitions)
        for tp in partitions:
            self._partitions.pop(tp, None)
        self._observer.lost(partitions)

    def on_commit_result(self, offsets: Mapping[TP, int], error: KafkaError | None) -> None:
        if self._transactional is not None:
            self._transactional.kafka_commit_answered()
        for tp, offset in offsets.items():
            progress = self._partitions.get(tp)
            if progress is not None:
                progress.mark_acked(offset)
        if error is not None:
            for progress in self._partitions.values():
                progress.commit_failed()
            self._observer.commit_failed(None, error)
        elif offsets:
            self._observer.commit_acknowledged(offsets)

    def on_client_error(self, error: KafkaError) -> None:
        self._observer.kafka_error(error)

    # --- snapshots for observers and tests -----------------------------------------------------

    def watermarks(self) -> dict[TP, int | None]:
        return {tp: p.watermark for tp, p in self._partitions.items()}

    def committed_offsets(self) -> dict[TP, int | None]:
        return {tp: p.committed for tp, p in self._partitions.items()}

    def snapshot(self) -> LoopSnapshot:
        """A read-only view for metrics and health; safe to call from another thread."""
        partitions = dict(self._partitions)  # one C-level copy: atomic under the GIL
        return LoopSnapshot(
            state=self.state.value,
            stop_requested=self._stop.requested,
            partitions={
                tp: PartitionSnapshot(
                    watermark=p.watermark, acked=p.acked, done=p.done,
                    unconfirmed=p.unconfirmed, oldest_uncommitted_at=p.oldest_uncommitted_at,
                )
                for tp, p in partitions.items()
            },
            paused=frozenset(self._paused()),
            pending=() if self._transactional is None else self._transactional.pending,
        )
