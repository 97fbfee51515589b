"""consumer.checkpoint.store_batch: one batch applied exactly once in one store transaction.

Driven with a real SQLite store (a file in tmp_path) and InMemorySource as the Kafka side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from consumer.checkpoint.commits import KafkaCommits
from consumer.checkpoint.progress import PartitionProgress
from consumer.checkpoint.store_batch import BatchOutcome, StoreCheckpoint
from consumer.dedup import KeyFormat, key_function
from consumer.errors import (
    Fenced,
    HandlerEndedTransaction,
    HandlerFailed,
    KafkaError,
    OffsetWentBackwards,
    ProcessedKeysAhead,
    StoreUnavailable,
    TransactionEndRefused,
)
from consumer.events import Trigger
from consumer.failures.retries import Failures, build_policies
from consumer.message import TP, Context, Message
from consumer.routing import Route, Router
from consumer.store import BatchClosing, CheckpointRow, ClaimBatch
from consumer.store.sqlite import SQLiteStore
from consumer.testing import InMemoryDeadLetterSink, InMemorySource, RecordingObserver
from tests.support.store_harness import (
    GROUP,
    HEADER,
    EffectWriter,
    EndableStore,
    FlakyCommitStore,
    assigned,
    effects,
    event,
    open_store,
    open_store_as,
    processed,
    store_path,
)
from tests.support.wiring import loop_settings

P0: TP = ("t", 0)
P1: TP = ("t", 1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = open_store(tmp_path)
    yield store
    store.close()


@pytest.fixture
def source() -> InMemorySource:
    return InMemorySource({"t": [[], []]})


def run_batch(
    store: SQLiteStore,
    source: InMemorySource,
    messages: Sequence[Message],
    handler: EffectWriter | Callable[[Message], None],
    partitions: dict[TP, PartitionProgress],
    *,
    trigger: Trigger = Trigger.COUNT,
    observer: RecordingObserver | None = None,
    key_format: KeyFormat | None = None,
) -> BatchOutcome:
    checkpoint = StoreCheckpoint(
        trigger, messages, partitions, store=store, source=source,
        router=Router([Route.of("t", handler, "tests:handler")]),
        keys={"t": key_function(f"header:{HEADER}", {"t": "id-t"}, key_format=key_format)},
        group=GROUP, now=lambda: 1_000.0,
        commits=KafkaCommits(source, observer=observer or RecordingObserver(),
                             monotonic=lambda: 0.0),
    )
    return checkpoint.run()


def events(partition: int, offsets: Sequence[int]) -> list[Message]:
    """Distinct events ``p<partition>-<offset>`` at these offsets."""
    return [event("t", partition, o, f"p{partition}-{o}".encode()) for o in offsets]


# --- exactly once ----------------------------------------------------------------------------


def test_event_redelivered_at_another_offset_runs_its_handler_once(
    store: SQLiteStore, source: InMemorySource
) -> None:
    """The same idempotency-key header at offsets 0 and 5 (a producer retry) applies once."""
    partitions = assigned(store, [P0])
    handler = EffectWriter()
    first = run_batch(store, source, [event("t", 0, 0, b"evt-1"), event("t", 0, 1, b"evt-2")],
                      handler, partitions)
    again = run_batch(store, source, [event("t", 0, 5, b"evt-1")], handler, partitions)
    assert (first.applied, first.duplicates) == (2, 0)
    assert (again.applied, again.duplicates) == (0, 1)
    assert handler.calls == [("t", 0, 0), ("t", 0, 1)]
    assert effects(store) == [("t", 0, 0), ("t", 0, 1)]
    assert store.checkpoints(GROUP) == {P0: 6}, "a skipped duplicate is done: the row moves on"


def test_event_twice_in_one_batch_runs_its_handler_once(
    store: SQLiteStore, source: InMemorySource
) -> None:
    """Within one batch too, across partitions: the first copy applies, the others are skipped."""
    partitions = assigned(store, [P0, P1])
    handler = EffectWriter()
    batch = [event("t", 0, 0, b"a"), event("t", 0, 1, b"b"), event("t", 0, 2, b"a"),
             event("t", 1, 0, b"a")]
    outcome = run_batch(store, source, batch, handler, partitions)
    assert (outcome.applied, outcome.duplicates) == (2, 2)
    assert effects(store) == [("t", 0, 0), ("t", 0, 1)]
    assert processed(store) == [("t", 0, 0), ("t", 0, 1)]
    assert store.checkpoints(GROUP) == {P0: 3, P1: 1}


class KeyReader(EffectWriter):
    """Writes its effect, and records the idempotency key its context gives."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    def __call__(self, message: Message, context: Context) -> None:
        super().__call__(message, context)
        self.keys.append(context.idempotency_key)


def test_a_batch_of_plain_messages_is_claimed_by_stretches_each_effect_once(
    store: SQLiteStore, source: InMemorySource, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Messages without headers on a store that orders coordinates keys: the batch is claimed
    as stretches, no key made per message, yet a handler asking for its key gets its own, and
    a batch delivered again, whole or in part, applies nothing twice."""
    ordered = KeyFormat(ordered_coordinates=True)
    keys = key_function(f"header:{HEADER}", {"t": "id-t"}, key_format=ordered)
    claimed: list[object] = []
    open_batch = store.open_batch
    monkeypatch.setattr(store, "open_batch", lambda group, claims, now: (
        claimed.append(claims), open_batch(group, claims, now))[1])
    partitions = assigned(store, [P0, P1])
    handler = KeyReader()
    batch = [event("t", 0, o, None) for o in range(5)] + [event("t", 1, o, None) for o in range(3)]
    first = run_batch(store, source, batch, handler, partitions, key_format=ordered)
    assert (first.applied, first.duplicates) == (8, 0)
    assert isinstance(claimed[0], ClaimBatch) and len(claimed[0].stretches) == 2
    assert handler.keys == [keys(m).hex() for m in batch]
    again = run_batch(store, source, batch, handler, partitions, key_format=ordered)
    assert (again.applied, again.duplicates) == (0, 8)
    overlapping = [event("t", 0, o, None) for o in range(3, 8)]
    partly = run_batch(store, source, overlapping, handler, partitions, key_format=ordered)
    assert (partly.applied, partly.duplicates) == (3, 2)
    assert handler.calls == [(m.topic, m.partition, m.offset) for m in batch + overlapping[2:]]
    assert effects(store) == sorted(handler.calls)
    assert handler.keys[8:] == [keys(m).hex() for m in overlapping[2:]]
    assert all(isinstance(claims, ClaimBatch) for claims in claimed)
    assert store.checkpoints(GROUP) == {P0: 8, P1: 3}


@pytest.mark.parametrize("headered", [False, True], ids=["stretches", "claims-per-message"])
def test_a_batch_over_two_routes_applies_each_message_once(
    store: SQLiteStore, source: InMemorySource, monkeypatch: pytest.MonkeyPatch, headered: bool,
) -> None:
    """Two routes, each with its own key function: a batch of plain messages of both topics
    is claimed as the stretches of each (with one route the batch is not split by topic);
    one message with a header makes it a claim per message. Either way each message applies
    once, and the batch delivered again applies nothing."""
    ordered = KeyFormat(ordered_coordinates=True)
    ids = {"t": "id-t", "u": "id-u"}
    claimed: list[object] = []
    open_batch = store.open_batch
    monkeypatch.setattr(store, "open_batch", lambda group, claims, now: (
        claimed.append(claims), open_batch(group, claims, now))[1])
    partitions = assigned(store, [P0, ("u", 0)])
    handler = EffectWriter()
    batch = [event("t", 0, o, None) for o in range(4)] + \
        [event("u", 0, o, b"u-3" if headered and o == 3 else None) for o in range(5)]

    def run() -> BatchOutcome:
        return StoreCheckpoint(
            Trigger.COUNT, batch, partitions, store=store, source=source,
            router=Router([Route.of(topic, handler, "tests:handler") for topic in ids]),
            keys={topic: key_function(f"header:{HEADER}", ids, key_format=ordered)
                  for topic in ids},
            group=GROUP, now=lambda: 1_000.0,
            commits=KafkaCommits(source, observer=RecordingObserver(), monotonic=lambda: 0.0),
        ).run()

    first = run()
    assert (first.applied, first.duplicates) == (9, 0)
    if headered:
        assert not isinstance(claimed[0], ClaimBatch)
    else:
        assert isinstance(claimed[0], ClaimBatch)
        assert [(s.topic, s.partition, s.first, s.end) for s in claimed[0].stretches] \
            == [("t", 0, 0, 4), ("u", 0, 0, 5)]
    again = run()
    assert (again.applied, again.duplicates) == (0, 9)
    assert handler.calls == [(m.topic, m.partition, m.offset) for m in batch]
    assert store.checkpoints(GROUP) == {P0: 4, ("u", 0): 5}


def test_a_failing_message_in_a_batch_of_stretches_rolls_back_alone(
    store: SQLiteStore, source: InMemorySource,
) -> None:
    """The batch runs again message by message, its claims made one per message then: what
    came before the failing message commits, with its keys, and nothing after it does."""
    ordered = KeyFormat(ordered_coordinates=True)
    partitions = assigned(store, [P0])
    batch = [event("t", 0, o, None) for o in range(5)]
    outcome = run_batch(store, source, batch, EffectWriter(fail_at={("t", 0, 2)}), partitions,
                        key_format=ordered)
    assert outcome.failure is not None and outcome.failure.offset == 2
    assert outcome.applied == 2
    assert effects(store) == [("t", 0, 0), ("t", 0, 1)]
    assert store.checkpoints(GROUP) == {P0: 2}
    handler = EffectWriter()
    again = run_batch(store, source, batch, handler, partitions, key_format=ordered)
    assert (again.applied, again.duplicates) == (3, 2)
    assert handler.calls == [("t", 0, 2), ("t", 0, 3), ("t", 0, 4)]


@pytest.mark.parametrize("ordered", [True, False], ids=["stretches", "claims-per-message"])
def test_a_handler_of_the_message_alone_runs_once_per_message_and_no_context_is_built(
    store: SQLiteStore, source: InMemorySource, monkeypatch: pytest.MonkeyPatch, ordered: bool,
) -> None:
    """``def handle(message)`` on every path of a batch: optimistic (by stretches, or a claim
    per message), then one by one after a failure; no context is built for it."""
    def no_context(*_args: object) -> None:
        raise AssertionError("a context was built for a handler of the message alone")

    monkeypatch.setattr(Context, "of", staticmethod(no_context))
    key_format = KeyFormat(ordered_coordinates=ordered)
    partitions = assigned(store, [P0])
    batch = [event("t", 0, o, None) for o in range(5)]
    calls: list[int] = []

    def failing_at_2(message: Message) -> None:
        calls.append(message.offset)
        if message.offset == 2:
            raise ValueError("cannot apply")

    first = run_batch(store, source, batch, failing_at_2, partitions, key_format=key_format)
    assert first.failure is not None and first.failure.offset == 2
    assert calls == [0, 1, 2, 0, 1, 2], "the optimistic run, then one by one"
    calls.clear()
    again = run_batch(store, source, batch, lambda m: calls.append(m.offset), partitions,
                      key_format=key_format)
    assert (again.applied, again.duplicates, calls) == (3, 2, [2, 3, 4])
    assert store.checkpoints(GROUP) == {P0: 5}


def test_message_without_the_header_is_deduplicated_by_its_coordinates(
    store: SQLiteStore, source: InMemorySource
) -> None:
    partitions = assigned(store, [P0])
    handler = EffectWriter()
    run_batch(store, source, [event("t", 0, 4, None)], handler, partitions)
    again = run_batch(store, source, [event("t", 0, 4, None)], handler, partitions)
    assert again.duplicates == 1
    assert handler.calls == [("t", 0, 4)]


def test_a_batch_of_two_topics_keys_each_message_by_its_own_route(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """The batch is keyed a topic's stretch at a time: the claims stay each message's own. An
    event id repeats on ``t`` (a duplicate), and on ``u``, whose route keys by coordinates
    (two events)."""
    u0: TP = ("u", 0)
    partitions = assigned(store, [P0, u0])
    source = InMemorySource({"t": [[]], "u": [[]]})
    handler = EffectWriter()
    batch = [event("t", 0, 0, b"a"), event("u", 0, 0, b"a"), event("u", 0, 1, b"a"),
             event("t", 0, 1, b"a"), event("t", 0, 2, None)]
    checkpoint = StoreCheckpoint(
        Trigger.COUNT, batch, partitions, store=store, source=source,
        router=Router([Route("t", handler, "tests:handler"),
                       Route("u", handler, "tests:handler")]),
        keys={"t": key_function(f"header:{HEADER}", {"t": "id-t"}),
              "u": key_function("coordinates", {"u": "id-u"})},
        group=GROUP, now=lambda: 1_000.0,
        commits=KafkaCommits(source, observer=RecordingObserver(), monotonic=lambda: 0.0),
    )
    outcome = checkpoint.run()
    assert (outcome.applied, outcome.duplicates) == (4, 1)
    assert effects(store) == [("t", 0, 0), ("t", 0, 2), ("u", 0, 0), ("u", 0, 1)]
    assert store.checkpoints(GROUP) == {P0: 3, u0: 2}


@pytest.mark.parametrize(("trigger", "asynchronous"), [
    (Trigger.COUNT, True), (Trigger.INTERVAL, True),
    (Trigger.REVOKE, False), (Trigger.SHUTDOWN, False),
])
def test_row_and_kafka_commit_take_the_offset_after_the_last_done_message(
    store: SQLiteStore, source: InMemorySource, trigger: Trigger, asynchronous: bool
) -> None:
    """Offsets are not contiguous (0, 3, 7): the checkpoint is 8, never a count. Kafka gets the
    same offset after the store commit: asynchronously, or synchronously on revoke/shutdown."""
    partitions = assigned(store, [P0])
    outcome = run_batch(store, source, events(0, [0, 3, 7]), EffectWriter(), partitions,
                        trigger=trigger)
    assert store.checkpoints(GROUP) == {P0: 8}
    assert outcome.committed == {P0: 8}
    assert source.commits == [({P0: 8}, asynchronous)]
    assert partitions[P0].watermark == 8
    assert partitions[P0].committed == 8


def test_kafka_commit_failure_keeps_the_store_checkpoint_and_retries_next_time(
    store: SQLiteStore, source: InMemorySource
) -> None:
    """The store is authoritative: a refused Kafka commit is reported, not raised, and the
    next checkpoint sends the offset again."""
    partitions = assigned(store, [P0])
    observer = RecordingObserver()
    source.fail_next_commit = KafkaError("REBALANCE_IN_PROGRESS", "rebalancing")
    outcome = run_batch(store, source, events(0, [0, 1]), EffectWriter(), partitions,
                        trigger=Trigger.SHUTDOWN, observer=observer)
    assert outcome.committed == {}
    assert store.checkpoints(GROUP) == {P0: 2}
    assert effects(store) == [("t", 0, 0), ("t", 0, 1)]
    assert observer.commit_failures == [(Trigger.SHUTDOWN, "REBALANCE_IN_PROGRESS")]
    assert run_batch(store, source, [], EffectWriter(), partitions).committed == {P0: 2}
    assert source.committed_offsets == {P0: 2}


# --- a failing handler -----------------------------------------------------------------------


def fail_p0_at_2(store: SQLiteStore, source: InMemorySource) -> tuple[
        BatchOutcome, EffectWriter, dict[TP, PartitionProgress]]:
    """p0 offsets 0..4 then p1 offsets 0..2 in one batch; the handler fails on p0@2."""
    partitions = assigned(store, [P0, P1])
    handler = EffectWriter(fail_at=[("t", 0, 2)])
    outcome = run_batch(store, source, events(0, range(5)) + events(1, range(3)), handler,
                        partitions)
    return outcome, handler, partitions


def test_failing_handler_rolls_back_its_own_writes_only(
    store: SQLiteStore, source: InMemorySource
) -> None:
    """p0@2 wrote its row then raised: that row is gone; earlier messages of p0 and every
    message of the other partition (even those after it in the batch) commit."""
    outcome, _, _ = fail_p0_at_2(store, source)
    assert effects(store) == [("t", 0, 0), ("t", 0, 1), ("t", 1, 0), ("t", 1, 1), ("t", 1, 2)]
    assert outcome.applied == 5


def test_failing_partition_stops_and_its_later_messages_keep_their_keys_free(
    store: SQLiteStore, source: InMemorySource
) -> None:
    """p0@3 and p0@4 are not applied (order within a partition), and neither they nor the
    failing message are recorded as processed, so a retry applies them."""
    _, handler, partitions = fail_p0_at_2(store, source)
    assert ("t", 0, 3) not in handler.calls
    assert ("t", 0, 4) not in handler.calls
    assert processed(store) == [("t", 0, 0), ("t", 0, 1), ("t", 1, 0), ("t", 1, 1), ("t", 1, 2)]

    retry = run_batch(store, source, events(0, [2, 3, 4]), EffectWriter(), partitions)
    assert (retry.applied, retry.duplicates) == (3, 0)
    assert store.checkpoints(GROUP) == {P0: 5, P1: 3}


def test_failing_partition_checkpoints_at_the_failing_offset(
    store: SQLiteStore, source: InMemorySource
) -> None:
    _, _, partitions = fail_p0_at_2(store, source)
    assert store.checkpoints(GROUP) == {P0: 2, P1: 3}
    assert source.committed_offsets == {P0: 2, P1: 3}
    assert partitions[P0].watermark == 2


def test_failure_on_a_partitions_first_message_leaves_its_row_at_that_offset(
    store: SQLiteStore, source: InMemorySource
) -> None:
    partitions = assigned(store, [P0])
    run_batch(store, source, events(0, [0, 1, 2]), EffectWriter(), partitions)
    outcome = run_batch(store, source, events(0, [3, 4]), EffectWriter(fail_at=[("t", 0, 3)]),
                        partitions)
    assert outcome.failure is not None
    assert outcome.failure.offset == 3
    assert store.checkpoints(GROUP) == {P0: 3}
    assert effects(store) == [("t", 0, 0), ("t", 0, 1), ("t", 0, 2)]


def test_handler_failed_carries_the_failing_coordinates_and_cause(
    store: SQLiteStore, source: InMemorySource
) -> None:
    outcome, _, _ = fail_p0_at_2(store, source)
    failure = outcome.failure
    assert isinstance(failure, HandlerFailed)
    assert (failure.topic, failure.partition, failure.offset) == ("t", 0, 2)
    assert isinstance(failure.cause, ValueError)
    assert failure.__cause__ is failure.cause
    assert "t[0]@2" in str(failure)


def test_failures_in_two_partitions_stop_both_and_the_first_is_reported(
    store: SQLiteStore, source: InMemorySource
) -> None:
    partitions = assigned(store, [P0, P1])
    handler = EffectWriter(fail_at=[("t", 0, 1), ("t", 1, 0)])
    outcome = run_batch(store, source, events(0, range(3)) + events(1, range(2)), handler,
                        partitions)
    assert outcome.failure is not None
    assert (outcome.failure.partition, outcome.failure.offset) == (0, 1)
    assert effects(store) == [("t", 0, 0)]
    assert processed(store) == [("t", 0, 0)]
    # p1 failed at its first message with nothing done since assignment: its row is
    # written at that message all the same (the fence checks it is ours)
    assert store.checkpoints(GROUP) == {P0: 1, P1: 0}
    assert ("t", 1, 1) not in handler.calls


def test_key_released_by_a_failure_stays_claimed_when_its_event_applies_later_in_the_batch(
    store: SQLiteStore, source: InMemorySource
) -> None:
    """Event "a" arrives on p0 (its handler fails) and again on p1 (it applies). Its key must
    stay processed, or p0's redelivery applies the same event a second time."""
    partitions = assigned(store, [P0, P1])
    first = run_batch(store, source, [event("t", 0, 0, b"a"), event("t", 1, 0, b"a")],
                      EffectWriter(fail_at=[("t", 0, 0)]), partitions)
    assert first.applied == 1
    assert effects(store) == [("t", 1, 0)]

    redelivery = run_batch(store, source, [event("t", 0, 0, b"a")], EffectWriter(), partitions)
    assert len(effects(store)) == 1, "event 'a' was applied twice"
    assert redelivery.duplicates == 1


# --- a handler that ends the batch's transaction ---------------------------------------------


class Committer(EffectWriter):
    """Writes its effect, then commits the batch's transaction itself at ``commit_at``."""

    def __init__(self, commit_at: tuple[str, int, int],
                 fail_at: Sequence[tuple[str, int, int]] = ()) -> None:
        super().__init__(fail_at=fail_at)
        self.commit_at = commit_at

    def __call__(self, message: Message, context: Context) -> None:
        super().__call__(message, context)
        if (message.topic, message.partition, message.offset) == self.commit_at:
            context.db.commit()


@pytest.fixture
def endable(tmp_path: Path) -> Iterator[EndableStore]:
    """A store whose handlers can end its batch (as a COMMIT statement does on PostgreSQL)."""
    store = open_store_as(EndableStore, tmp_path)
    yield store
    store.close()


@pytest.mark.parametrize("ordered", [False, True], ids=["claims-per-message", "stretches"])
def test_the_sqlite_store_refuses_a_handler_ending_the_batch_and_commits_nothing(
    store: SQLiteStore, source: InMemorySource, ordered: bool,
) -> None:
    """The SQLite store refuses transaction statements while a batch is open: p0@1's
    handler cannot commit, the consumer stops (a BaseException its handler cannot swallow),
    and nothing of the batch committed. Run again, the batch applies everything."""
    key_format = KeyFormat(ordered_coordinates=True) if ordered else None
    partitions = assigned(store, [P0])
    batch = ([event("t", 0, o, None) for o in range(5)] if ordered else events(0, range(5)))
    with pytest.raises(TransactionEndRefused, match="COMMIT"):
        run_batch(store, source, batch, Committer(("t", 0, 1)), partitions,
                  key_format=key_format)
    assert effects(store) == [] and processed(store) == []
    assert store.checkpoints(GROUP) == {P0: None}
    outcome = run_batch(store, source, batch, EffectWriter(), partitions, key_format=key_format)
    assert (outcome.applied, outcome.duplicates) == (5, 0)


@pytest.mark.parametrize("ordered", [False, True], ids=["claims-per-message", "stretches"])
def test_a_handler_that_commits_stops_the_batch_and_leaves_no_key_without_its_effect(
    endable: EndableStore, source: InMemorySource, ordered: bool,
) -> None:
    """p0@1's handler commits: the keys of the whole batch committed with it, ahead of the
    effects of p0@2..4. The batch stops there with an error naming the handler, and the keys
    of the messages not applied are forgotten again; had a later failure rolled back and run
    the batch again, it would have found every key claimed and skipped p0@3 and p0@4 for good.
    Run again, the batch applies exactly the rest."""
    store = endable
    key_format = KeyFormat(ordered_coordinates=True) if ordered else None
    partitions = assigned(store, [P0])
    batch = ([event("t", 0, o, None) for o in range(5)] if ordered else events(0, range(5)))
    handler = Committer(("t", 0, 1), fail_at=[("t", 0, 3)])
    with pytest.raises(HandlerEndedTransaction) as raised:
        run_batch(store, source, batch, handler, partitions, key_format=key_format)
    assert "tests:handler" in str(raised.value)
    assert "t[0] at offset 1" in str(raised.value)
    assert handler.calls == [("t", 0, 0), ("t", 0, 1)]
    assert effects(store) == [("t", 0, 0), ("t", 0, 1)]
    assert processed(store) == [("t", 0, 0), ("t", 0, 1)]
    assert store.checkpoints(GROUP) == {P0: None}

    again = EffectWriter()
    outcome = run_batch(store, source, batch, again, partitions, key_format=key_format)
    assert (outcome.applied, outcome.duplicates) == (3, 2)
    assert effects(store) == [("t", 0, o) for o in range(5)]


def test_a_handler_that_commits_after_a_failure_forgets_the_failed_messages_keys_too(
    endable: EndableStore, source: InMemorySource,
) -> None:
    """Message by message (p0@0 failed first, so p0 stopped): p1@1's handler commits. The
    failed message's key, released only at the batch's end, and every key after p1@1 are
    forgotten; p1@0 and p1@1 keep theirs, with their effects."""
    store = endable
    partitions = assigned(store, [P0, P1])
    handler = Committer(("t", 1, 1), fail_at=[("t", 0, 0)])
    with pytest.raises(HandlerEndedTransaction):
        run_batch(store, source, events(0, range(3)) + events(1, range(4)), handler,
                  partitions)
    assert effects(store) == [("t", 1, 0), ("t", 1, 1)]
    assert processed(store) == [("t", 1, 0), ("t", 1, 1)]


# --- fencing -----------------------------------------------------------------------------------


def test_fenced_partition_rolls_back_the_whole_batch(
    tmp_path: Path, store: SQLiteStore, source: InMemorySource
) -> None:
    """A newer owner bumped p0's epoch: nothing of the batch commits, not even p1's messages
    (no effects, no keys, no rows), Kafka gets nothing, and Fenced names p0."""
    partitions = assigned(store, [P0, P1])
    newer_owner = SQLiteStore(store_path(tmp_path))
    newer_owner.assign(GROUP, [P0], 2.0)
    newer_owner.close()

    handler = EffectWriter()
    with pytest.raises(Fenced) as raised:
        run_batch(store, source, events(0, [0, 1]) + events(1, [0, 1]), handler, partitions)
    assert raised.value.partitions == [P0]
    assert raised.value.group == GROUP
    assert len(handler.calls) == 4, "the handlers ran; their writes were rolled back"
    assert effects(store) == []
    assert processed(store) == []
    assert store.checkpoints(GROUP) == {P0: None, P1: None}
    assert source.commits == []
    assert partitions[P0].watermark is None
    assert partitions[P1].watermark is None
    assert not store.connection.in_transaction


def take_over(tmp_path: Path, tp: TP) -> None:
    """A newer owner is assigned ``tp``: its epoch moves on."""
    newer_owner = SQLiteStore(store_path(tmp_path))
    newer_owner.assign(GROUP, [tp], 2.0)
    newer_owner.close()


def dead_lettering(store: SQLiteStore, source: InMemorySource,
                   partitions: dict[TP, PartitionProgress], messages: Sequence[Message],
                   sink: InMemoryDeadLetterSink) -> StoreCheckpoint:
    """The checkpoint of ``messages`` whose first fails and goes to ``sink`` at once."""
    settings = loop_settings(["t"], group=GROUP, route={
        "on_failure": "dead_letter", "retry": {"attempts": 1}})
    failures = Failures(build_policies(settings), sink=sink, group=GROUP,
                        observer=RecordingObserver(), monotonic=lambda: 0.0)
    failing = messages[0]
    return StoreCheckpoint(
        Trigger.COUNT, messages, partitions, store=store, source=source,
        router=Router([Route("t", EffectWriter(fail_at=[
            (failing.topic, failing.partition, failing.offset)]), "tests:handler")]),
        keys={"t": key_function(f"header:{HEADER}", {"t": "id-t"})},
        group=GROUP, now=lambda: 1_000.0, failures=failures,
        commits=KafkaCommits(source, observer=RecordingObserver(), monotonic=lambda: 0.0),
    )


def test_a_zombie_whose_batch_fails_at_its_first_message_is_fenced_before_dead_lettering(
    tmp_path: Path, store: SQLiteStore, source: InMemorySource
) -> None:
    """The batch's first message of p0 fails and goes to the dead-letter topic, so p0's row
    would not move: the batch must still check that p0 is ours (a newer owner bumped its
    epoch) before the letter is produced. Without that check the zombie committed its empty
    batch and produced a letter for a message it no longer owned."""
    partitions = assigned(store, [P0])
    first = run_batch(store, source, events(0, [0, 1]), EffectWriter(), partitions)
    assert first.committed == {P0: 2}
    take_over(tmp_path, P0)
    sink = InMemoryDeadLetterSink()
    checkpoint = dead_lettering(store, source, partitions, events(0, [2, 3]), sink)
    with pytest.raises(Fenced):
        checkpoint.run()
    assert sink.sent == []
    assert partitions[P0].watermark == 2


@pytest.mark.parametrize("owner", ["zombie", "owner"])
def test_a_batch_failing_at_a_partitions_very_first_message_checks_the_partition_is_ours(
    tmp_path: Path, store: SQLiteStore, source: InMemorySource, owner: str,
) -> None:
    """Nothing done yet since assignment (no offset in the row): the row is still written,
    at the failing message's offset, so a zombie is fenced before producing its letter and
    the owner's row says where it stands."""
    partitions = assigned(store, [P0])
    if owner == "zombie":
        take_over(tmp_path, P0)
    sink = InMemoryDeadLetterSink()
    checkpoint = dead_lettering(store, source, partitions, events(0, [5, 6]), sink)
    if owner == "zombie":
        with pytest.raises(Fenced):
            checkpoint.run()
        assert sink.sent == []
        assert store.checkpoints(GROUP) == {P0: None}
        return
    checkpoint.run()
    assert len(sink.sent) == 1
    assert store.checkpoints(GROUP) == {P0: 5}  # at the letter; the next batch moves past it


def test_a_checkpoint_row_ahead_of_the_batch_raises_offset_went_backwards_and_rolls_back(
    store: SQLiteStore, source: InMemorySource
) -> None:
    """The row already holds offset 10 at our epoch (a batch committed while the positions in
    memory fell behind, e.g. a seek never undone): a batch ending at 2 would move it back.
    The store refuses in the UPDATE; the batch rolls back whole, and the error is
    OffsetWentBackwards naming both offsets, not Fenced."""
    partitions = assigned(store, [P0])
    store.execute("UPDATE consumer_checkpoints SET next_offset = 10")
    handler = EffectWriter()
    with pytest.raises(OffsetWentBackwards) as raised:
        run_batch(store, source, events(0, [0, 1]), handler, partitions)
    assert (raised.value.old, raised.value.new) == (10, 2)
    assert effects(store) == []
    assert processed(store) == []
    assert store.checkpoints(GROUP) == {P0: 10}
    assert source.commits == []
    assert not store.connection.in_transaction


# --- store outage --------------------------------------------------------------------------


def test_store_unavailable_at_commit_rolls_back_and_the_batch_can_be_retried(
    tmp_path: Path, source: InMemorySource
) -> None:
    store = open_store_as(FlakyCommitStore, tmp_path)
    store.fail_commits = 1
    partitions = assigned(store, [P0])
    batch = events(0, [0, 1])
    with pytest.raises(StoreUnavailable):
        run_batch(store, source, batch, EffectWriter(), partitions)
    assert not store.connection.in_transaction
    assert effects(store) == []
    assert processed(store) == []
    assert store.checkpoints(GROUP) == {P0: None}
    assert partitions[P0].watermark is None
    assert source.commits == []

    retry = run_batch(store, source, batch, EffectWriter(), partitions)
    assert retry.applied == 2
    assert effects(store) == [("t", 0, 0), ("t", 0, 1)]
    assert store.checkpoints(GROUP) == {P0: 2}
    store.close()


def test_batch_runs_without_savepoints_until_a_handler_raises(
    store: SQLiteStore, source: InMemorySource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clean batch takes no savepoint; after a failure the transaction rolls back and the
    batch runs again with a savepoint per message, so the handlers before the failing message
    run twice in this process, and their effects still commit once."""
    savepoints: list[str] = []
    original = store.savepoint
    monkeypatch.setattr(store, "savepoint", lambda: (savepoints.append("s"), original())[1])
    partitions = assigned(store, [P0])
    run_batch(store, source, events(0, range(4)), EffectWriter(), partitions)
    assert savepoints == []

    handler = EffectWriter(fail_at=[("t", 0, 6)])
    run_batch(store, source, events(0, range(4, 8)), handler, partitions)
    assert len(savepoints) == 3  # one per message up to the failure
    assert handler.calls == [("t", 0, 4), ("t", 0, 5), ("t", 0, 6),
                             ("t", 0, 4), ("t", 0, 5), ("t", 0, 6)]
    assert effects(store) == [("t", 0, o) for o in range(6)]
    assert processed(store) == [("t", 0, o) for o in range(6)]


# --- batches held to be new -----------------------------------------------------------------


class Openings:
    """Which opening each batch used: ``unanswered`` for keys held to be new, ``answered``
    otherwise (the SQLite store answers both at once)."""

    def __init__(self, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.used: list[str] = []
        answered = store.open_batch  # what SQLite's unanswered opening does too
        monkeypatch.setattr(store, "open_batch", lambda group, claims, now: (
            self.used.append("answered"), answered(group, claims, now))[1])
        monkeypatch.setattr(store, "open_batch_unanswered", lambda group, claims, now: (
            self.used.append("unanswered"), answered(group, claims, now))[1])


def plain(partition: int, offsets: Sequence[int]) -> list[Message]:
    return [event("t", partition, o, None) for o in offsets]


ORDERED = KeyFormat(ordered_coordinates=True)


def test_a_batch_of_stretches_above_every_known_key_opens_unanswered_and_moves_the_marks(
    store: SQLiteStore, source: InMemorySource, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each partition's mark (from which offset the store holds no key) moves past every
    batch's messages; a batch wholly above the marks may be answered later, one reaching
    below a mark (polled again after a seek back) is asked at once, and applies nothing
    twice."""
    openings = Openings(store, monkeypatch)
    partitions = assigned(store, [P0, P1])
    partitions[P0].new_keys_from = partitions[P1].new_keys_from = 0
    handler = EffectWriter()
    first = run_batch(store, source, plain(0, range(5)) + plain(1, range(3)), handler,
                      partitions, key_format=ORDERED)
    assert (first.applied, openings.used) == (8, ["unanswered"])
    assert (partitions[P0].new_keys_from, partitions[P1].new_keys_from) == (5, 3)
    again = run_batch(store, source, plain(0, range(3, 8)), handler, partitions,
                      key_format=ORDERED)
    assert (again.applied, again.duplicates, openings.used[1:]) == (3, 2, ["answered"])
    assert partitions[P0].new_keys_from == 8
    above = run_batch(store, source, plain(0, range(8, 10)) + plain(1, range(3, 4)), handler,
                      partitions, key_format=ORDERED)
    assert (above.applied, openings.used[2:]) == (3, ["unanswered"])
    assert effects(store) == sorted(handler.calls) == \
        [("t", 0, o) for o in range(10)] + [("t", 1, o) for o in range(4)]


def test_a_partition_without_a_known_mark_is_asked_and_gets_none(
    store: SQLiteStore, source: InMemorySource, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A partition whose mark is not known (a store that does not read it) is asked about
    every batch, and a batch holding it and a known partition too."""
    openings = Openings(store, monkeypatch)
    partitions = assigned(store, [P0, P1])
    partitions[P0].new_keys_from = 0
    run_batch(store, source, plain(0, range(5)) + plain(1, range(3)), EffectWriter(),
              partitions, key_format=ORDERED)
    assert openings.used == ["answered"]
    assert (partitions[P0].new_keys_from, partitions[P1].new_keys_from) == (5, None)


def test_a_batch_claimed_per_message_moves_the_marks_past_its_messages(
    store: SQLiteStore, source: InMemorySource, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch with a headered message is claimed message by message and asked at once; the
    marks still move past its messages, so polled again they are asked about too."""
    openings = Openings(store, monkeypatch)
    partitions = assigned(store, [P0, P1])
    partitions[P0].new_keys_from = partitions[P1].new_keys_from = 2
    batch = [*plain(0, range(4)), event("t", 1, 6, b"headered")]
    assert run_batch(store, source, batch, EffectWriter(), partitions,
                     key_format=ORDERED).applied == 5
    assert openings.used == ["answered"]
    assert (partitions[P0].new_keys_from, partitions[P1].new_keys_from) == (4, 7)


def test_processed_keys_found_ahead_roll_the_batch_back_and_forget_the_marks(
    store: SQLiteStore, source: InMemorySource, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store finds a key held to be new processed (ProcessedKeysAhead, at its closing):
    nothing of the batch commits, its partitions' marks are forgotten (asked from now on),
    and the batch run again applies each message once."""
    openings = Openings(store, monkeypatch)
    partitions = assigned(store, [P0, P1])
    partitions[P0].new_keys_from = partitions[P1].new_keys_from = 0
    send_close = store.send_close

    def refusing(group: str, rows: Sequence[CheckpointRow], now: float) -> BatchClosing:
        monkeypatch.setattr(store, "send_close", send_close)
        raise ProcessedKeysAhead("the store", [P0])

    monkeypatch.setattr(store, "send_close", refusing)
    handler = EffectWriter()
    batch = plain(0, range(5)) + plain(1, range(3))
    with pytest.raises(ProcessedKeysAhead):
        run_batch(store, source, batch, handler, partitions, key_format=ORDERED)
    assert effects(store) == [] and store.checkpoints(GROUP) == {P0: None, P1: None}
    assert (partitions[P0].new_keys_from, partitions[P1].new_keys_from) == (None, None)
    assert run_batch(store, source, batch, handler, partitions, key_format=ORDERED).applied == 8
    assert openings.used == ["unanswered", "answered"]
    assert effects(store) == sorted({(m.topic, m.partition, m.offset) for m in batch})
