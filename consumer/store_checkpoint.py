"""A checkpoint with a store: the handlers' writes, the processed keys and the checkpoint rows
commit in one database transaction, then the same offsets go to Kafka."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from consumer.checkpoint_policy import Trigger
from consumer.dedup import KeyFunction
from consumer.errors import DedupKeyFailed, Fenced, HandlerFailed, KafkaError, StoreError
from consumer.failures import Failures, Verdict
from consumer.instruments import Instruments
from consumer.message import Context, Message, Scope
from consumer.observer import Observer
from consumer.routing import Router
from consumer.store import CheckpointRow, Claim, Store
from consumer.transport import TP, Source
from consumer.watermark import PartitionProgress

log = logging.getLogger("consumer.checkpoint")


@dataclass
class BatchOutcome:
    """What one store checkpoint did."""

    committed: dict[TP, int] = field(default_factory=dict)
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    failure: HandlerFailed | None = None


class StoreCheckpoint:
    """Applies a batch of messages exactly once and saves where each partition got to.

    1. claim keys: insert every message's dedup key; only messages whose key was new go on
       (a message whose dedup key function raises is a failing message: step 2's policy)
    2. run handlers, all at once; if one raises, roll the transaction back, claim again and
       run them again each inside its own savepoint, so a failing message rolls back alone:
       it is dead-lettered (and done), or its partition is paused and rewound for a later attempt
       (after step 4: a batch that rolls back leaves the client untouched), or the consumer
       stops after this batch; a failed message's key is not recorded
    3. fence and write checkpoint rows: each row moves only where the epoch is still ours,
       else the whole batch rolls back (a newer owner has the partition: we are a zombie)
    4. commit the store
    5. commit the same offsets to Kafka, with the marker: asynchronously for the count and
       interval triggers (once the previous one is answered; else the next checkpoint sends
       them), synchronously on revoke and shutdown
    """

    def __init__(
        self,
        trigger: Trigger,
        messages: Sequence[Message],
        partitions: Mapping[TP, PartitionProgress],
        *,
        store: Store,
        source: Source,
        router: Router,
        keys: Mapping[str, KeyFunction],
        group: str,
        observer: Observer,
        now: Callable[[], float],
        failures: Failures | None = None,
        kafka_answered: bool = True,
        instruments: Instruments | None = None,
    ) -> None:
        self.trigger = trigger
        #: False while the previous asynchronous Kafka commit is unanswered: this batch's
        #: offsets then stay pending for the next checkpoint (the store holds them already).
        self._kafka_answered = kafka_answered
        self._messages = messages
        self._partitions = partitions
        self._store = store
        self._source = source
        self._keys = keys
        self._group = group
        self._observer = observer
        self._now = now
        self._failures = failures
        self._scope = Scope(group, store=store)
        self._handlers = {topic: router.route_for(topic).handler for topic in router.topics}
        #: Metrics on: each handler call is timed inline.
        self._timer = instruments
        #: Messages to retry later, decided inside the transaction, scheduled after COMMIT.
        self._retries: list[tuple[Message, BaseException]] = []

    @property
    def synchronous(self) -> bool:
        return self.trigger in (Trigger.REVOKE, Trigger.SHUTDOWN)

    def run(self) -> BatchOutcome:
        """Raises StoreError (the batch rolled back; retry it) or Fenced (rolled back; stop)."""
        outcome = BatchOutcome()
        store = self._store
        claims = self._claims()
        store.begin()
        try:
            # 1. claim keys
            new_keys = self._claim(claims)

            # 2. run handlers: the whole batch at once; if a handler raises, roll the
            # transaction back and run it again message by message, each in a savepoint
            try:
                watermarks, counts = self._apply_optimistically(claims, new_keys, outcome)
            except _HandlerRaised:
                store.rollback()
                store.begin()
                new_keys = self._claim(claims)
                watermarks, counts = self._apply_one_by_one(claims, new_keys, outcome)

            # 3. fence and write checkpoint rows
            rows = [CheckpointRow(tp[0], tp[1], offset, self._partitions[tp].epoch)
                    for tp, offset in watermarks.items()]
            fenced = store.write_checkpoints(self._group, rows, self._now())
            if fenced:
                raise Fenced(self._group, fenced)

            # 4. commit the store
            store.commit()
        except BaseException:
            _rollback_quietly(store)
            raise
        now = self._now()
        for tp, offset in watermarks.items():
            self._partitions[tp].advance(offset, counts[tp], now)
        self._schedule_retries()

        # 5. commit Kafka
        outcome.committed = self._commit_kafka()
        return outcome

    def _claims(self) -> list[Claim | DedupKeyFailed]:
        """Each message's claim, or the error its dedup key function raised."""
        claims: list[Claim | DedupKeyFailed] = []
        for m in self._messages:
            try:
                claims.append(Claim(self._keys[m.topic](m), m.topic, m.partition, m.offset))
            except DedupKeyFailed as error:
                claims.append(error)
        return claims

    def _claim(self, claims: list[Claim | DedupKeyFailed]) -> set[bytes]:
        return self._store.claim(self._group, [c for c in claims if isinstance(c, Claim)],
                                 self._now())

    def _apply_optimistically(self, claims: list[Claim | DedupKeyFailed], new_keys: set[bytes],
                              outcome: BatchOutcome) -> tuple[dict[TP, int], dict[TP, int]]:
        """Run the handlers of new messages; return each partition's new watermark and how
        many of its messages are done. Raises _HandlerRaised at the first failure: the
        caller rolls back and runs :meth:`_apply_one_by_one` instead (the handlers before
        the failing message run twice in this process; only the second run's writes commit).
        """
        failures = self._failures
        checking = failures is not None and failures.checks_needed
        scope, handlers = self._scope, self._handlers
        watermarks: dict[TP, int] = {}
        counts: dict[TP, int] = {}
        applied_keys: set[bytes] = set()
        applied = duplicates = 0
        timer = self._timer
        timed: list[tuple[str, float]] = []  # kept only if the whole batch succeeds
        for message, claim in zip(self._messages, claims, strict=True):
            if not isinstance(claim, Claim):
                raise _HandlerRaised from claim
            key = claim.key
            if key not in new_keys or key in applied_keys:
                duplicates += 1
            else:
                try:
                    if checking:
                        failures.check(message)  # type: ignore[union-attr]
                    if timer is None:
                        handlers[message.topic](message, Context(scope, message, key))
                    else:
                        timer.started = start = timer.now()
                        handlers[message.topic](message, Context(scope, message, key))
                        timed.append((message.topic, timer.now() - start))
                except Exception as error:
                    raise _HandlerRaised from error
                applied_keys.add(key)
                applied += 1
            tp = (message.topic, message.partition)
            watermarks[tp] = message.offset + 1
            counts[tp] = counts.get(tp, 0) + 1
        if checking:
            for message in self._messages:
                failures.succeeded(message)  # type: ignore[union-attr]
        if timer is not None:
            timer.started = 0.0
            for topic, seconds in timed:
                timer.durations(topic).append(seconds)
        outcome.applied, outcome.duplicates = applied, duplicates
        return watermarks, counts

    def _apply_one_by_one(self, claims: list[Claim | DedupKeyFailed], new_keys: set[bytes],
                          outcome: BatchOutcome) -> tuple[dict[TP, int], dict[TP, int]]:
        """Like :meth:`_apply_optimistically`, with a savepoint per message, so a failing
        message rolls back alone and its failure policy decides what happens to it."""
        outcome.applied = outcome.duplicates = 0
        store, group, failures = self._store, self._group, self._failures
        scope, handlers, timer = self._scope, self._handlers, self._timer
        watermarks: dict[TP, int] = {}
        counts: dict[TP, int] = {}
        stopped: set[TP] = set()
        release: list[bytes] = []
        applied_keys: set[bytes] = set()
        for message, claim in zip(self._messages, claims, strict=True):
            tp = (message.topic, message.partition)
            key = claim.key if isinstance(claim, Claim) else None
            if tp in stopped:
                if key is not None and key in new_keys and key not in applied_keys:
                    release.append(key)
                continue
            if key is not None and (key not in new_keys or key in applied_keys):
                outcome.duplicates += 1
                watermarks[tp] = message.offset + 1
                counts[tp] = counts.get(tp, 0) + 1
                continue
            store.savepoint()
            start = 0.0
            try:
                if not isinstance(claim, Claim):
                    raise claim  # the dedup key function raised
                if failures is not None:
                    failures.check(message)
                if timer is None:
                    handlers[message.topic](message, Context(scope, message, key))
                else:
                    timer.started = start = timer.now()
                    handlers[message.topic](message, Context(scope, message, key))
                    timer.durations(message.topic).append(timer.now() - start)
            except Exception as error:
                if timer is not None and start:  # the handler raised (not a check before it)
                    timer.failed(message.topic, timer.now() - start)
                store.rollback_to_savepoint()
                if key is not None:  # A failed or dead-lettered key is not processed.
                    release.append(key)
                if failures is None:
                    verdict = Verdict.STOP
                elif failures.decide(message, error) is Verdict.RETRY:
                    # Scheduled (paused and rewound) only once this transaction commits: a
                    # batch that rolls back must leave the client where it was.
                    verdict = Verdict.RETRY
                    self._retries.append((message, error))
                else:
                    verdict = failures.failed(message, error)
                if verdict is Verdict.DEAD_LETTERED:
                    outcome.dead_lettered += 1
                    watermarks[tp] = message.offset + 1
                    counts[tp] = counts.get(tp, 0) + 1
                    continue
                stopped.add(tp)
                if verdict is not Verdict.RETRY and outcome.failure is None:
                    outcome.failure = HandlerFailed(message.topic, message.partition,
                                                    message.offset, error)
                    outcome.failure.__cause__ = error
                continue
            if failures is not None:
                failures.succeeded(message)
            store.release_savepoint()
            if key is not None:
                applied_keys.add(key)
            outcome.applied += 1
            watermarks[tp] = message.offset + 1
            counts[tp] = counts.get(tp, 0) + 1
        if timer is not None:
            timer.started = 0.0
        # A key released by a failure may belong to an event applied from another message.
        release = [key for key in release if key not in applied_keys]
        if release:
            store.unclaim(group, release)
        return watermarks, counts

    def _schedule_retries(self) -> None:
        """After COMMIT: count each retried message's attempt, pause its partition and rewind
        it to the message (its watermark stopped there)."""
        for message, error in self._retries:
            if self._failures is not None and \
                    self._failures.failed(message, error) is Verdict.RETRY:
                tp = (message.topic, message.partition)
                self._source.pause([tp])
                self._source.seek(tp, message.offset)

    def _commit_kafka(self) -> dict[TP, int]:
        moved = {}
        for tp, progress in self._partitions.items():
            offset = progress.pending_commit()
            if offset is not None:
                moved[tp] = offset
        if not moved:
            self._observer.checkpoint_noop(self.trigger)
            return {}
        if not self.synchronous and not self._kafka_answered:
            return {}
        try:
            self._source.commit(moved, asynchronous=not self.synchronous)
        except KafkaError as error:
            # The store holds the checkpoint; Kafka's copy only informs lag tools.
            self._observer.commit_failed(self.trigger, error)
            return {}
        for tp, offset in moved.items():
            progress = self._partitions[tp]
            progress.mark_committed(offset)
            progress.mark_acked(offset)
        self._observer.checkpoint_committed(self.trigger, moved)
        return moved


class _HandlerRaised(Exception):
    """A handler raised during the optimistic run: run the batch again message by message."""


def _rollback_quietly(store: Store) -> None:
    try:
        store.rollback()
    except StoreError as error:
        log.warning("rolling back the store transaction failed too: %s", error)
