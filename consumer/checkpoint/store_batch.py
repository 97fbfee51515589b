"""A checkpoint with a store: the handlers' writes, the processed keys and the checkpoint rows
commit in one database transaction, then the same offsets go to Kafka.

Used by store mode on the loop's thread, once per batch. Blocks on the database (bounded by the
store's lock and statement timeouts) and, after COMMIT, on the broker for dead letters. Raises
StoreError when the transaction rolled back (retry the batch after backoff), Fenced when a newer
owner holds a partition (rolled back; stop), HandlerFailed after committing what came before a
failing message. Never produces to Kafka nor seeks while the transaction is open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter

from consumer.checkpoint.commits import KafkaCommits
from consumer.checkpoint.progress import PartitionProgress
from consumer.dedup import KeyFunction, KeyStretch
from consumer.errors import (
    DedupKeyFailed,
    Fenced,
    HandlerEndedTransaction,
    HandlerFailed,
    KafkaError,
    ProcessedKeysAhead,
    StoreError,
    StoreUnavailable,
    SwallowedDatabaseError,
)
from consumer.events import HandlerTimings, Trigger
from consumer.failures.retries import Failures, Verdict
from consumer.handler_call import TrialCalls, handler_calls
from consumer.kafka.protocol import Source
from consumer.message import TP, Context, Message, Scope
from consumer.routing import Router
from consumer.store import (
    BatchClosing,
    CheckpointRow,
    Claim,
    ClaimBatch,
    ClosedBatch,
    Store,
    transient_cause,
)

log = logging.getLogger("consumer.checkpoint")

_topic = attrgetter("topic")


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
       run them again each inside its own savepoint, so a failing message rolls back alone and
       its partition's watermark stops at it: after step 4 (a batch that rolls back leaves the
       client and the dead-letter topic untouched) it is dead-lettered, and its partition is
       rewound so the next batch counts it done without running it, or its partition is paused
       and rewound for a later attempt, or the consumer stops after this batch; a failed
       message's key is not recorded
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
        now: Callable[[], float],
        commits: KafkaCommits,
        failures: Failures | None = None,
        instruments: HandlerTimings | None = None,
        lettered: dict[TP, int] | None = None,
        constraints_now: bool = False,
    ) -> None:
        self.trigger = trigger
        #: The batch's COMMIT failed a deferred constraint before: check every constraint at
        #: its statement and run message by message, so the violating message fails alone.
        self._constraints_now = constraints_now
        #: Kafka's copy: while the previous asynchronous commit is unanswered, this batch's
        #: offsets stay pending for the next checkpoint (the store holds them already).
        self._commits = commits
        self._messages = messages
        self._partitions = partitions
        self._store = store
        self._source = source
        self._keys = keys
        self._group = group
        self._now = now
        self._failures = failures
        #: Each route's: a context asks its key function for a key it was not given.
        self._scopes = {topic: Scope(group, store=store, key_function=keys.get(topic))
                        for topic in router.topics}
        routes = [router.route_for(topic) for topic in router.topics]
        #: Each route's handler as the calls take it; a handler of the message alone is
        #: called without a context (its topic is in ``_message_only``).
        self._handlers = {route.topic: route.message_only or route.handler for route in routes}
        self._message_only = {route.topic for route in routes if route.message_only}
        #: Each route's handler as configured (``module:function``), for errors.
        self._paths = {route.topic: route.handler_path for route in routes}
        #: Metrics on: each handler call is timed (consumer.handler_call).
        self._timer = instruments
        self._transient = _transient_errors(store.dialect)
        #: Failed messages to retry or dead-letter, decided inside the transaction and acted
        #: on after COMMIT: no broker round trip while the store's locks are held.
        self._deferred: list[tuple[Message, BaseException, bytes | None]] = []
        #: Per partition, the offset of a message whose dead letter the broker acknowledged
        #: after an earlier batch: done without running its handler (kept across batches).
        self._lettered = {} if lettered is None else lettered
        #: The last claim returned every key it was given, each once (set by _claim).
        self._all_new = False
        #: Set by run() once the store's closing went out: what finish() completes.
        self._closed: _Closed | None = None

    @property
    def synchronous(self) -> bool:
        return self.trigger in (Trigger.REVOKE, Trigger.SHUTDOWN)

    def run(self) -> BatchOutcome:
        """Raises StoreError (the batch rolled back; retry it), ProcessedKeysAhead (rolled
        back; run it again at once, its partitions no longer held to be known) or Fenced
        (rolled back; stop).

        A batch of the count or interval trigger whose every message ran may have its
        closing answered later (:attr:`answer_pending`; the store sent it, and the server
        commits while the caller polls): :meth:`finish` then waits for the answer and does
        the rest (the watermarks, Kafka's copy), and raises what this would have."""
        outcome = BatchOutcome()
        store = self._store
        claims = self._claims()
        try:
            # 1. begin, and claim keys
            new_keys = self._claim(claims, opening=True)

            # 2. run handlers: the whole batch at once; if a handler raises, roll the
            # transaction back and run it again message by message, each in a savepoint
            one_by_one = self._constraints_now
            if one_by_one:
                store.check_constraints_now()
                watermarks, counts = self._apply_one_by_one(claims, new_keys, outcome)
            else:
                try:
                    watermarks, counts = self._apply_optimistically(claims, new_keys, outcome)
                except _HandlerRaised:
                    store.rollback()
                    store.begin()
                    new_keys = self._claim(claims)
                    watermarks, counts = self._apply_one_by_one(claims, new_keys, outcome)
                    one_by_one = True

            # 3. fence and write checkpoint rows (and move past dead letters not re-polled)
            carried = self._carried_letters()
            for tp, offset in carried.items():
                watermarks[tp] = offset + 1
                counts[tp] = counts.get(tp, 0) + 1
            rows = [CheckpointRow(tp[0], tp[1], offset, self._partitions[tp].epoch)
                    for tp, offset in watermarks.items()]
            if one_by_one:  # the optimistic run moves every partition it holds
                rows += self._unmoved_rows(watermarks)
            # 4. commit the store, with the rows (a server store sends both at once; with
            # nothing to do after COMMIT but this, it may send them and answer later)
            if (self.trigger in (Trigger.COUNT, Trigger.INTERVAL) and not one_by_one
                    and not self._deferred and not self._lettered):  # (nothing carried)
                closing = store.send_close(self._group, rows, self._now())
            else:
                closing = ClosedBatch(store.close_batch(self._group, rows, self._now()))
        except _TransactionEnded as ended:
            raise self._forget_unapplied(claims, new_keys, ended) from ended.__cause__
        except ProcessedKeysAhead:
            self._forget_known_new(claims)
            _rollback_quietly(store)
            raise
        except BaseException:
            _rollback_quietly(store)
            raise
        self._closed = _Closed(closing, claims, watermarks, counts, carried, outcome)
        return outcome if closing.pending else self.finish()

    @property
    def answer_pending(self) -> bool:
        """The store sent this batch's closing and has not answered it yet."""
        closed = self._closed
        return closed is not None and closed.closing.pending

    def finish(self) -> BatchOutcome:
        """Once :meth:`run` returned: wait for the store's answer (if it did not come yet),
        then move the watermarks, act on failures and commit Kafka. Raises StoreError (the
        batch rolled back, or its outcome is unknown: retry it; the keys tell) or Fenced."""
        closed = self._closed
        assert closed is not None, "finish() before run()"
        store = self._store
        try:
            fenced = closed.closing.result()
            if fenced:
                raise Fenced(self._group, fenced)
        except BaseException:
            _rollback_quietly(store)
            raise
        now = self._now()
        counts = closed.counts
        for tp, offset in closed.watermarks.items():
            self._partitions[tp].advance(offset, counts[tp], now)
        self._forget_letters(closed.claims)
        for tp, offset in closed.carried.items():
            del self._lettered[tp]
            self._source.seek(tp, offset + 1)
        self._act_on_failures()

        # 5. commit Kafka
        outcome = closed.outcome
        outcome.committed = self._commit_kafka()
        return outcome

    def _claims(self) -> _Claims:
        """Each message's claim, the error its dedup key function raised, or None for a
        message already dead-lettered (done: no key, no handler). A batch whose every
        message is keyed by its ordered coordinates is a :class:`ClaimBatch` of stretches,
        with no key made per message (:meth:`KeyFunction.stretches`); else a topic's stretch
        of the batch is keyed at once (:meth:`KeyFunction.keys`), unless a dead letter is
        pending or a key fails: then message by message."""
        if self._lettered:
            return self._claims_one_by_one(self._messages)
        if len(self._keys) == 1:
            # One route: every message is of its topic, so the batch is not split by topic
            # first (60 ns a message, a third of making the stretches).
            (only,) = self._keys.values()
            if (found := only.stretches(self._messages)) is not None:
                return ClaimBatch(found)
        else:
            stretches: list[KeyStretch] = []
            for topic, stretch in groupby(self._messages, key=_topic):
                found = self._keys[topic].stretches(list(stretch))
                if found is None:
                    break
                stretches += found
            else:
                return ClaimBatch(stretches)
        claims: list[Claim | DedupKeyFailed | None] = []
        for topic, stretch in groupby(self._messages, key=_topic):
            messages = list(stretch)
            try:
                keys = self._keys[topic].keys(messages)
            except DedupKeyFailed:
                claims += self._claims_one_by_one(messages)
                continue
            claims += [Claim(key, m.topic, m.partition, m.offset)
                       for key, m in zip(keys, messages, strict=True)]
        return claims

    def _claims_one_by_one(self, messages: Sequence[Message]
                           ) -> list[Claim | DedupKeyFailed | None]:
        claims: list[Claim | DedupKeyFailed | None] = []
        append, keys, lettered = claims.append, self._keys, self._lettered
        for m in messages:
            if lettered and lettered.get((m.topic, m.partition)) == m.offset:
                append(None)
                continue
            try:
                append(Claim(keys[m.topic](m), m.topic, m.partition, m.offset))
            except DedupKeyFailed as error:
                append(error)
        return claims

    def _claim(self, claims: _Claims, *, opening: bool = False) -> AbstractSet[bytes]:
        """The new keys; ``_all_new`` says whether that is every claim's key, each once.
        ``opening``: the transaction begins with the claim (:meth:`Store.open_batch`)."""
        batch = claims if isinstance(claims, ClaimBatch) else \
            [c for c in claims if isinstance(c, Claim)]
        if opening and self._known_new(claims):
            new = self._store.open_batch_unanswered(self._group, batch, self._now())
        elif opening:
            new = self._store.open_batch(self._group, batch, self._now())
        else:
            new = self._store.claim(self._group, batch, self._now())
        self._all_new = len(new) == len(batch)
        return new

    def _known_new(self, claims: _Claims) -> bool:
        """Whether the store holds none of the batch's keys, as far as the partitions' state
        knows (:attr:`PartitionProgress.new_keys_from`, read at assignment): then the store
        may answer the claim later (:meth:`Store.open_batch_unanswered`). Only a batch of
        stretches is. Each partition's mark moves past the batch's messages here, whatever
        becomes of the batch: a retry of it, or messages polled again after a seek back,
        are asked about."""
        partitions = self._partitions
        if not isinstance(claims, ClaimBatch):
            if all(p.new_keys_from is None for p in partitions.values()):
                return False  # a store that reads no marks: no message to look at
            for message in self._messages:
                progress = partitions.get((message.topic, message.partition))
                if progress is not None and progress.new_keys_from is not None \
                        and message.offset >= progress.new_keys_from:
                    progress.new_keys_from = message.offset + 1
            return False
        known = True
        for stretch in claims.stretches:
            progress = partitions.get((stretch.topic, stretch.partition))
            if progress is None or progress.new_keys_from is None:
                known = False
                continue
            if stretch.first < progress.new_keys_from:
                known = False
            if stretch.end > progress.new_keys_from:
                progress.new_keys_from = stretch.end
        return known

    def _forget_known_new(self, claims: _Claims) -> None:
        """The store refused a key held to be new: its partitions are asked from now on."""
        if isinstance(claims, ClaimBatch):
            for stretch in claims.stretches:
                progress = self._partitions.get((stretch.topic, stretch.partition))
                if progress is not None:
                    progress.new_keys_from = None

    def _apply_optimistically(self, claims: _Claims, new_keys: AbstractSet[bytes],
                              outcome: BatchOutcome) -> tuple[dict[TP, int], dict[TP, int]]:
        """Run the handlers of new messages; return each partition's new watermark and how
        many of its messages are done. Raises _HandlerRaised at the first failure: the
        caller rolls back and runs :meth:`_apply_one_by_one` instead (the handlers before
        the failing message run twice in this process; only the second run's writes commit).
        """
        failures = self._failures
        checking = failures is not None and failures.checks_needed
        trial = TrialCalls(self._handlers, self._timer)  # timings kept if the batch succeeds
        # Every key new and none twice (the claim returned as many keys as it was given):
        # nothing to look up per message.
        fresh = self._all_new
        if fresh and isinstance(claims, ClaimBatch):
            return self._apply_stretches(claims, trial, checking, outcome)
        scopes, calls, message_only = self._scopes, trial.calls, self._message_only
        still_open = self._store.transaction_open
        progress = _Progress()
        applied_keys: set[bytes] = set()
        applied = duplicates = lettered = 0
        for message, claim in zip(self._messages, _per_message(claims), strict=True):
            if isinstance(claim, DedupKeyFailed):
                raise _HandlerRaised from claim
            if claim is None:
                lettered += 1
            elif not fresh and ((key := claim.key) not in new_keys or key in applied_keys):
                duplicates += 1
            else:
                key = claim.key
                with_context = message.topic not in message_only
                try:
                    if checking:
                        failures.check(message)  # type: ignore[union-attr]
                    if with_context:
                        calls[message.topic](message,
                                             Context.of(scopes[message.topic], message, key))
                    else:
                        calls[message.topic](message)
                except Exception as error:
                    if not still_open():
                        raise _TransactionEnded(message, applied=False) from error
                    if self._transient(error):
                        raise _store_unavailable(message, error) from error
                    raise _HandlerRaised from error
                if with_context and not still_open():  # else it had no way to the store
                    raise _TransactionEnded(message, applied=True)
                if not fresh:
                    applied_keys.add(key)
                applied += 1
            progress.done(message)
        watermarks, counts = progress.finish()
        if checking:
            for message in self._messages:
                failures.succeeded(message)  # type: ignore[union-attr]
        trial.keep()
        outcome.applied, outcome.duplicates = applied, duplicates
        outcome.dead_lettered = lettered
        return watermarks, counts

    def _apply_stretches(self, batch: ClaimBatch, trial: TrialCalls, checking: bool,
                         outcome: BatchOutcome) -> tuple[dict[TP, int], dict[TP, int]]:
        """:meth:`_apply_optimistically` of a batch of stretches whose every key was new:
        every message runs, a stretch at a time (the messages are in the stretches' order),
        and a handler that asks for its key has it made then. Each partition's watermark is
        the end of its last stretch."""
        failures, messages = self._failures, self._messages
        still_open = self._store.transaction_open
        context_of = Context.of
        watermarks: dict[TP, int] = {}
        counts: dict[TP, int] = {}
        start = 0
        for stretch in batch.stretches:
            topic, size = stretch.topic, stretch.end - stretch.first
            call, scope = trial.calls[topic], self._scopes[topic]
            with_context = topic not in self._message_only
            for message in messages[start:start + size]:
                try:
                    if checking:
                        failures.check(message)  # type: ignore[union-attr]
                    if with_context:
                        call(message, context_of(scope, message))
                    else:
                        call(message)
                except Exception as error:
                    if not still_open():
                        raise _TransactionEnded(message, applied=False) from error
                    if self._transient(error):
                        raise _store_unavailable(message, error) from error
                    raise _HandlerRaised from error
                # A handler of the message alone has no context, so no way to the store's
                # transaction: only a context's handler may have ended it.
                if with_context and not still_open():
                    raise _TransactionEnded(message, applied=True)
            start += size
            tp = (topic, stretch.partition)
            watermarks[tp] = stretch.end
            counts[tp] = counts.get(tp, 0) + size
        if checking:
            for message in messages:
                failures.succeeded(message)  # type: ignore[union-attr]
        trial.keep()
        outcome.applied, outcome.duplicates, outcome.dead_lettered = len(messages), 0, 0
        return watermarks, counts

    def _apply_one_by_one(self, claims: _Claims, new_keys: AbstractSet[bytes],
                          outcome: BatchOutcome) -> tuple[dict[TP, int], dict[TP, int]]:
        """Like :meth:`_apply_optimistically`, with a savepoint per message, so a failing
        message rolls back alone and its failure policy decides what happens to it."""
        outcome.applied = outcome.duplicates = outcome.dead_lettered = 0
        store, group, failures = self._store, self._group, self._failures
        scopes, calls = self._scopes, handler_calls(self._handlers, self._timer)
        watermarks: dict[TP, int] = {}
        counts: dict[TP, int] = {}
        stopped: set[TP] = set()
        release: list[bytes] = []
        applied_keys: set[bytes] = set()
        for message, claim in zip(self._messages, _per_message(claims), strict=True):
            tp = (message.topic, message.partition)
            key = claim.key if isinstance(claim, Claim) else None
            if tp in stopped:
                if key is not None and key in new_keys and key not in applied_keys:
                    release.append(key)
                continue
            if claim is None:
                outcome.dead_lettered += 1
                watermarks[tp] = message.offset + 1
                counts[tp] = counts.get(tp, 0) + 1
                continue
            if key is not None and (key not in new_keys or key in applied_keys):
                outcome.duplicates += 1
                watermarks[tp] = message.offset + 1
                counts[tp] = counts.get(tp, 0) + 1
                continue
            store.savepoint()
            try:
                if not isinstance(claim, Claim):
                    raise claim  # the dedup key function raised
                if failures is not None:
                    failures.check(message)
                if message.topic in self._message_only:
                    calls[message.topic](message)
                else:
                    calls[message.topic](message, Context.of(scopes[message.topic], message, key))
            except Exception as error:
                if not store.transaction_open():
                    raise _TransactionEnded(message, applied=False,
                                            applied_keys=applied_keys) from error
                if self._transient(error):
                    raise _store_unavailable(message, error) from error
                store.rollback_to_savepoint()
                if key is not None:  # A failed or dead-lettered key is not processed.
                    release.append(key)
                verdict = Verdict.STOP if failures is None else failures.decide(message, error)
                stopped.add(tp)
                if verdict is not Verdict.STOP:
                    self._deferred.append((message, error, key))  # acted on after COMMIT
                elif outcome.failure is None:
                    outcome.failure = HandlerFailed(message.topic, message.partition,
                                                    message.offset, error)
                    outcome.failure.__cause__ = error
                continue
            if not store.transaction_open():
                raise _TransactionEnded(message, applied=True, applied_keys=applied_keys)
            if store.transaction_failed():  # it caught its statement's error and returned
                raise SwallowedDatabaseError(self._paths[message.topic], message.topic,
                                             message.partition, message.offset)
            if failures is not None:
                failures.succeeded(message)
            store.release_savepoint()
            if key is not None:
                applied_keys.add(key)
            outcome.applied += 1
            watermarks[tp] = message.offset + 1
            counts[tp] = counts.get(tp, 0) + 1
        # A key released by a failure may belong to an event applied from another message.
        release = [key for key in release if key not in applied_keys]
        if release:
            store.unclaim(group, release)
        return watermarks, counts

    def _forget_unapplied(self, claims: _Claims, new_keys: AbstractSet[bytes],
                          ended: _TransactionEnded) -> HandlerEndedTransaction:
        """A handler ended the batch's transaction: the keys claimed for the batch committed
        with it (or, after a rollback, none did). Forget, in a transaction of their own, the
        new keys of every message not applied by then, so none is skipped as a duplicate of
        an effect that never committed; the error to stop with."""
        message = ended.message
        per_message = _per_message(claims)
        at = next(i for i, m in enumerate(self._messages) if m is message)
        if ended.applied_keys is None:  # the whole batch at once: all before it applied
            done = per_message[:at + 1] if ended.applied else per_message[:at]
            applied = {c.key for c in done if isinstance(c, Claim) and c.key in new_keys}
        else:
            applied = set(ended.applied_keys)
            if ended.applied and isinstance(claim := per_message[at], Claim):
                applied.add(claim.key)
        forget = {c.key for c in per_message
                  if isinstance(c, Claim) and c.key in new_keys and c.key not in applied}
        store = self._store
        unforgotten: BaseException | None = None
        try:
            store.end_handler_transaction(keep=ended.applied)  # what it opened after ours
            store.begin()
            store.unclaim(self._group, forget)
            store.commit()
        except Exception as error:
            _rollback_quietly(store)
            unforgotten = error
        path = self._paths[message.topic]
        log.error("handler %s ended the store's transaction at %s[%d]@%d; %d keys forgotten",
                  path, message.topic, message.partition, message.offset, len(forget))
        return HandlerEndedTransaction(path, message.topic, message.partition, message.offset,
                                       forgotten=len(forget), unforgotten=unforgotten)

    def _unmoved_rows(self, watermarks: Mapping[TP, int]) -> list[CheckpointRow]:
        """The rows of partitions this batch holds whose watermark did not move (their first
        message failed): written unchanged, so the fence still checks they are ours before a
        failure is acted on (a zombie must not produce a dead letter, nor seek, for a
        partition a newer owner has). A partition with nothing done since it was assigned
        (no watermark: it started at Kafka's committed offset or the reset policy's) gets its
        row at its first message in the batch, the failing one: everything below it was done
        before."""
        rows = []
        first: dict[TP, int] = {}
        for m in self._messages:
            first.setdefault((m.topic, m.partition), m.offset)
        for tp, offset in first.items():
            if tp in watermarks:
                continue
            progress = self._partitions.get(tp)
            if progress is not None:
                at = offset if progress.watermark is None else progress.watermark
                rows.append(CheckpointRow(tp[0], tp[1], at, progress.epoch))
        return rows

    def _carried_letters(self) -> dict[TP, int]:
        """Dead-lettered messages of assigned partitions that this batch does not hold (not
        polled again yet): their rows move past them now, and their partitions are sought past
        them after COMMIT, so a shutdown or revoke right after a dead letter repeats nothing."""
        if not self._lettered:
            return {}
        held = {(m.topic, m.partition) for m in self._messages}
        return {tp: offset for tp, offset in self._lettered.items()
                if tp in self._partitions and tp not in held}

    def _forget_letters(self, claims: _Claims) -> None:
        """The dead-lettered messages this batch counted done are committed as such."""
        if isinstance(claims, ClaimBatch):  # made with no letter pending
            return
        for message, claim in zip(self._messages, claims, strict=True):
            if claim is None:
                self._lettered.pop((message.topic, message.partition), None)

    def _act_on_failures(self) -> None:
        """After COMMIT, for each failed message (its partition's watermark stopped at it):
        produce its dead letter and, once acknowledged, rewind its partition to it so the
        next batch counts it done; or count the attempt, pause and rewind for a retry. A
        crash between the letter and the next batch's COMMIT produces the letter again."""
        failures = self._failures
        if failures is None:
            return
        for message, error, key in self._deferred:
            verdict = failures.failed(message, error, key=key)  # raises DeadLetterFailed for good
            tp = (message.topic, message.partition)
            if verdict is Verdict.DEAD_LETTERED:
                self._lettered[tp] = message.offset
            elif verdict is Verdict.RETRY:
                self._source.pause([tp])
            self._source.seek(tp, message.offset)

    def _commit_kafka(self) -> dict[TP, int]:
        try:
            return self._commits.commit(self.trigger, self._partitions.values(),
                                        synchronous=self.synchronous, durable=True,
                                        hold_while_in_flight=True)
        except KafkaError:
            # Reported; the store holds the checkpoint, Kafka's copy only informs lag tools.
            return {}


#: A batch's claims: a :class:`ClaimBatch`, or per message its claim, the error its dedup key
#: function raised, or None (dead-lettered before).
_Claims = ClaimBatch | list[Claim | DedupKeyFailed | None]


@dataclass
class _Closed:
    """A batch whose closing went to the store, and what finishing it needs."""

    closing: BatchClosing
    claims: _Claims
    watermarks: dict[TP, int]
    counts: dict[TP, int]
    carried: dict[TP, int]
    outcome: BatchOutcome


def _per_message(claims: _Claims) -> Sequence[Claim | DedupKeyFailed | None]:
    return claims.claims() if isinstance(claims, ClaimBatch) else claims


def _transient_errors(dialect: str) -> Callable[[BaseException], bool]:
    """Which errors raised in a handler are the store's, not the message's: a deadlock, a
    serialization failure, a lock or statement timeout, a busy SQLite file, a lost
    connection. They roll the whole batch back to be retried after backoff, like an outage,
    and never count as a failed attempt (nor dead-letter a valid message)."""
    if dialect == "sqlite":
        from consumer.store.sqlite import is_transient
    elif dialect == "mariadb":
        from consumer.store.mariadb_session import is_transient
    else:
        from consumer.store.postgres import is_transient

    return lambda error: transient_cause(error, is_transient)


def _store_unavailable(message: Message, error: BaseException) -> StoreUnavailable:
    return StoreUnavailable(
        f"the handler of {message.topic}[{message.partition}]@{message.offset} hit a transient "
        f"database error ({type(error).__name__}: {str(error).strip()}); it is the store's, "
        "not the message's"
    )


class _Progress:
    """Each partition's watermark and count of done messages over a batch, in the batch's
    order. A batch holds stretches of one partition's messages (as the client fetched them),
    so the dictionaries change once per stretch, not per message."""

    __slots__ = ("_count", "_offset", "_partition", "_topic", "counts", "watermarks")

    def __init__(self) -> None:
        self.watermarks: dict[TP, int] = {}
        self.counts: dict[TP, int] = {}
        self._topic: str | None = None
        self._partition = -1
        self._offset = 0
        self._count = 0

    def done(self, message: Message) -> None:
        if message.partition != self._partition or message.topic != self._topic:
            self._close()
            self._topic, self._partition = message.topic, message.partition
        self._offset = message.offset
        self._count += 1

    def finish(self) -> tuple[dict[TP, int], dict[TP, int]]:
        self._close()
        return self.watermarks, self.counts

    def _close(self) -> None:
        if self._count and self._topic is not None:
            tp = (self._topic, self._partition)
            self.watermarks[tp] = self._offset + 1
            self.counts[tp] = self.counts.get(tp, 0) + self._count
        self._count = 0


class _HandlerRaised(Exception):
    """A handler raised during the optimistic run: run the batch again message by message."""


class _TransactionEnded(Exception):
    """The batch's transaction was found ended right after ``message``'s handler (which
    returned: ``applied``, or raised). ``applied_keys``: the keys applied before it, when the
    batch ran message by message (else every new key before it was)."""

    def __init__(self, message: Message, *, applied: bool,
                 applied_keys: AbstractSet[bytes] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.applied = applied
        self.applied_keys = applied_keys


def _rollback_quietly(store: Store) -> None:
    try:
        store.rollback()
    except StoreError as error:
        log.warning("rolling back the store transaction failed too: %s", error)
