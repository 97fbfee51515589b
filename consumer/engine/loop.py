"""The consumer loop: poll -> take (the mode runs or buffers) -> checkpoint when due.

Owns polling, the checkpoint triggers (count and interval), pausing (retries, an unavailable
store, the unconfirmed bound), rebalances and shutdown. How messages become done and where
checkpoints are saved is its :class:`~consumer.engine.mode.CheckpointMode`'s, chosen by the
wiring (``consumer.app.build_loop``); the loop never asks which one it has.

One thread owns the loop, the source and every partition's state; rebalance and commit
callbacks run inside ``poll`` on that same thread. ``run_once`` is public so tests can step it.
``run`` raises HandlerFailed, Fenced or an unrecoverable KafkaError after leaving the group.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection, Mapping
from typing import Protocol

from consumer.checkpoint.policy import CheckpointPolicy, CheckpointState
from consumer.checkpoint.progress import PartitionProgress
from consumer.clock import Clock
from consumer.engine.mode import CheckpointMode
from consumer.engine.snapshot import LoopSnapshot, PartitionSnapshot
from consumer.engine.stopping import StopRequest
from consumer.errors import ConsumerError, Fenced, KafkaError
from consumer.events import Observer, Trigger
from consumer.failures.retries import Failures
from consumer.kafka.protocol import Source
from consumer.message import TP, Message
from consumer.routing import Router

log = logging.getLogger("consumer.engine")


class OffsetRefresher(Protocol):
    """Keeps paused partitions' end offsets current for the lag metrics
    (:class:`consumer.observability.offset_refresh.OffsetRefresher`)."""

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
        mode: CheckpointMode,
        router: Router,
        policy: CheckpointPolicy,
        clock: Clock,
        observer: Observer,
        batch_size: int = 500,
        poll_timeout: float = 0.5,
        failures: Failures | None = None,
        offset_refresher: OffsetRefresher | None = None,
    ) -> None:
        self._source = source
        #: Direct (Kafka-only checkpoints) or store (transactional batches), chosen by the wiring.
        self._mode = mode
        self._router = router
        self._clock = clock
        self._observer = observer
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._failures = failures
        self._offset_refresher = offset_refresher
        self._partitions: dict[TP, PartitionProgress] = {}
        self._checkpoints = CheckpointState(policy, clock.monotonic())
        #: Every partition was paused while checkpoints were unavailable; resumed once they
        #: are available again.
        self._paused_while_unavailable = False
        self._stop = StopRequest()
        self.state = LoopState.CREATED

    @property
    def mode(self) -> CheckpointMode:
        """The checkpoint mode the wiring chose (direct or store)."""
        return self._mode

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> bool:
        """Wait for the brokers, then subscribe. False when a stop was requested first."""
        if not self._source.wait_for_broker(keep_trying=lambda: not self._stop.requested):
            return False
        if not self._mode.prepare(self._router.topics,
                                  keep_trying=lambda: not self._stop.requested):
            return False
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
        refresher = self._offset_refresher
        if refresher is not None and refresher.due(self._clock.monotonic()):
            refresher.refresh(self._partitions, self._paused(), self._held())
        if self._mode.unavailable:
            self._wait_while_unavailable()
            return 0
        if self._paused_while_unavailable:
            # The store answered again, maybe in a revoke checkpoint rather than in
            # _wait_while_unavailable's retry: resume what the outage paused.
            self._paused_while_unavailable = False
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
        done = self._handle(self._source.poll(room, self._poll_wait()))
        trigger = self._checkpoints.due(self._clock.monotonic())
        if trigger is not None:
            self._checkpoint(trigger)
        return done

    def _poll_wait(self) -> float:
        """Seconds the loop may wait for work: the poll timeout, cut short by the interval
        trigger coming sooner (a store's batch is applied only then) or by a retry's backoff
        ending sooner (the paused partition resumes only between polls). The mode answers
        how much of it the poll itself waits: with handlers running, none (its next take
        waits for one of them instead, as long as the poll would have)."""
        timeout = self._poll_timeout
        # Neither cuts the wait to nothing: a checkpoint that is due but could not run (it
        # waits for an earlier commit) must not turn the loop into a busy one.
        until_interval = self._checkpoints.seconds_until_interval(self._clock.monotonic())
        if until_interval:
            timeout = min(timeout, until_interval)
        failures = self._failures
        if failures is not None and failures.waiting:
            until_due = failures.seconds_until_due()
            if until_due:
                timeout = min(timeout, until_due)
        return self._mode.poll_timeout(timeout)

    def _room(self) -> int:
        """How many messages the next poll may take without breaking the checkpoint bound."""
        return self._mode.room(self._batch_size, self._checkpoints.room(), self._partitions)

    def _wait_while_unavailable(self) -> None:
        """The store is down: keep the group alive with every partition paused, and retry the
        pending batch when the backoff allows; nothing is committed meanwhile."""
        if self._mode.retry_due():
            self._checkpoint(Trigger.INTERVAL)
            if not self._mode.unavailable:
                self._paused_while_unavailable = False
                self._source.resume(self._not_waiting(list(self._partitions)))
                return
        self._source.pause(list(self._partitions))
        self._paused_while_unavailable = True
        self._handle(self._source.poll(self._batch_size, min(self._poll_timeout, 0.2)))

    def _handle(self, messages: list[Message]) -> int:
        self._observer.polled(messages)
        done = self._mode.take(messages, self._partitions, self._stop)
        if done:
            self._checkpoints.record_done(done)
        return done

    def _paused(self) -> list[TP]:
        """Assigned partitions not fetched now: waiting for a retry, or all of them while the
        store is unavailable (``_confirm`` pauses and resumes within one call)."""
        if self._mode.unavailable:
            return list(self._partitions)
        if self._failures is None or not self._failures.waiting:
            return []
        return [tp for tp in self._failures.paused() if tp in self._partitions]

    def _held(self) -> set[TP]:
        """Partitions with messages polled and not done: a store's pending batch, or what
        handlers on workers hold (queued, running, finished above the watermark)."""
        held = {(m.topic, m.partition) for m in self._mode.pending}
        held.update(self._mode.work().held)
        return held

    def _not_waiting(self, partitions: list[TP]) -> list[TP]:
        """Leave paused the partitions whose failed message waits for its next attempt, and
        those of routes whose buffer share is full (the mode resumes them when it drains)."""
        held = self._mode.work().paused
        if self._failures is not None and self._failures.waiting:
            held = held | frozenset(self._failures.paused())
        if not held:
            return partitions
        return [tp for tp in partitions if tp not in held]

    def _confirm(self) -> None:
        """Too much work waits for the broker to confirm earlier commits: let the mode confirm
        it. If there is still no room (say the group is rebalancing and the commit was
        refused), let the rebalance finish by polling with every partition paused, taking no
        new work."""
        if self._mode.confirm(self._partitions):
            self._checkpoints.reset(self._clock.monotonic())
        if self._room() > 0:
            return
        paused = list(self._partitions)
        self._source.pause(paused)
        try:
            # Only partitions assigned during this poll can deliver messages: handle what
            # the bound has room for, and give the rest back.
            self._handle(self._within_room(self._source.poll(
                self._batch_size, self._mode.poll_timeout(self._poll_timeout))))
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
        self._mode.drop_pending()
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

    def _checkpoint(self, trigger: Trigger, only: list[TP] | None = None) -> None:
        """Take a checkpoint; the count and interval start again when it covered all work."""
        if self._mode.checkpoint(trigger, self._partitions, only=only):
            self._checkpoints.reset(self._clock.monotonic())

    # --- what the source reports (SourceListener) ---------------------------------------------

    def on_assigned(self, partitions: list[TP]) -> Mapping[TP, int]:
        progress, starts = self._mode.assign(partitions)
        self._partitions.update(progress)
        self._observer.assigned(partitions)
        return starts

    def on_revoked(self, partitions: list[TP]) -> None:
        if self._failures is not None:
            self._failures.forget(partitions)
        try:
            if self.state is not LoopState.FAILED:  # a failing process runs no handler again
                self._checkpoint(Trigger.REVOKE, only=partitions)
        finally:
            self._mode.forget(partitions)  # what a failed revoke left is not ours now
            for tp in partitions:
                self._partitions.pop(tp, None)
            self._observer.revoked(partitions)

    def on_lost(self, partitions: list[TP]) -> None:
        if self._failures is not None:
            self._failures.forget(partitions)
        self._mode.forget(partitions)
        for tp in partitions:
            self._partitions.pop(tp, None)
        self._observer.lost(partitions)

    def on_commit_result(self, offsets: Mapping[TP, int], error: KafkaError | None) -> None:
        self._mode.commit_answered(offsets, error, self._partitions)

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
        work = self._mode.work()
        gaps = work.gaps
        return LoopSnapshot(
            state=self.state.value,
            stop_requested=self._stop.requested,
            partitions={
                tp: PartitionSnapshot(
                    watermark=p.watermark, acked=p.acked, done=p.done,
                    unconfirmed=p.unconfirmed, oldest_uncommitted_at=p.oldest_uncommitted_at,
                    gap=gaps.get(tp, 0),
                )
                for tp, p in partitions.items()
            },
            paused=frozenset(self._paused()) | (work.paused & partitions.keys()),
            pending=self._mode.pending,
            in_flight=work.in_flight,
            queued={tp: n for tp, n in work.queued.items() if tp in partitions},
        )
