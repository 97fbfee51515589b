"""StoreMode (consumer.transactional) through a loop wired by the app: store mode end to end, with a
real SQLite store (a file in tmp_path) and InMemorySource as the Kafka side."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from consumer.clock import ManualClock
from consumer.engine.loop import LoopState
from consumer.engine.store_mode import ExternalResetPolicy, _of_assigned
from consumer.errors import (
    ExternalReset,
    Fenced,
    HandlerFailed,
    OffsetOutOfRange,
    StoreUnavailable,
)
from consumer.message import TP, Context, Message
from consumer.store import CheckpointRow
from consumer.store.sqlite import SQLiteStore
from consumer.testing import RecordingObserver
from tests.support.store_harness import (
    GROUP,
    EffectWriter,
    FlakyCommitStore,
    HeaderedSource,
    LateAnswerStore,
    effects,
    make_store_loop,
    open_store,
    open_store_as,
    processed,
    seed_checkpoint,
    store_path,
)

P0: TP = ("t", 0)
P1: TP = ("t", 1)


def values(partition: int, count: int) -> list[bytes]:
    """Distinct events (each value is its own idempotency key)."""
    return [f"p{partition}-{i}".encode() for i in range(count)]


# --- exactly once ----------------------------------------------------------------------------


def test_event_delivered_twice_at_different_offsets_is_applied_once(tmp_path: Path) -> None:
    """evt-1 at offsets 0 and 2 (same idempotency-key header): the handler runs once, and the
    duplicate still counts as done, so the checkpoint passes it."""
    store = open_store(tmp_path)
    source = HeaderedSource({"t": [[b"evt-1", b"evt-2", b"evt-1", b"evt-3"]]})
    handler = EffectWriter()
    observer = RecordingObserver()
    loop, _ = make_store_loop(source, store, handler, clock=ManualClock(), observer=observer,
                              every_messages=4)
    assert loop.start()
    assert loop.run_once() == 4
    assert handler.calls == [("t", 0, 0), ("t", 0, 1), ("t", 0, 3)]
    assert effects(store) == [("t", 0, 0), ("t", 0, 1), ("t", 0, 3)]
    assert observer.named("batch_applied") == [(3, 1)]  # (applied, duplicates)
    assert store.checkpoints(GROUP) == {P0: 4}
    assert source.committed_offsets == {P0: 4}


def test_event_redelivered_in_a_later_batch_is_applied_once(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    source = HeaderedSource({"t": [[b"evt-1", b"evt-2"]]})
    handler = EffectWriter()
    loop, _ = make_store_loop(source, store, handler, clock=ManualClock(), every_messages=2)
    loop.start()
    loop.run_once()
    source.append("t", 0, b"evt-1")
    source.append("t", 0, b"evt-4")
    loop.run_once()
    assert handler.calls == [("t", 0, 0), ("t", 0, 1), ("t", 0, 3)]
    assert store.checkpoints(GROUP) == {P0: 4}


# --- a failing handler -----------------------------------------------------------------------


def failing_run(tmp_path: Path) -> tuple[SQLiteStore, HeaderedSource, HandlerFailed]:
    """p0 holds 5 events, p1 3; the handler fails on p0@2; one batch holds all 8."""
    store = open_store(tmp_path)
    source = HeaderedSource({"t": [values(0, 5), values(1, 3)]})
    loop, _ = make_store_loop(source, store, EffectWriter(fail_at=[("t", 0, 2)]),
                              clock=ManualClock(), every_messages=8)
    loop.start()
    with pytest.raises(HandlerFailed) as raised:
        loop.run_once()
    return store, source, raised.value


def test_handler_failure_commits_the_rest_of_the_batch_and_raises_handler_failed(
    tmp_path: Path,
) -> None:
    """Earlier messages of p0 and all of p1 commit (effects, keys, rows, Kafka); the failing
    message's own write and p0's later messages do not; the error names p0@2."""
    store, source, failure = failing_run(tmp_path)
    applied = [("t", 0, 0), ("t", 0, 1), ("t", 1, 0), ("t", 1, 1), ("t", 1, 2)]
    assert effects(store) == applied
    assert processed(store) == applied
    assert store.checkpoints(GROUP) == {P0: 2, P1: 3}
    assert source.committed_offsets == {P0: 2, P1: 3}
    assert (failure.topic, failure.partition, failure.offset) == ("t", 0, 2)
    assert isinstance(failure.cause, ValueError)


def test_restart_after_a_handler_failure_resumes_at_the_failing_message(tmp_path: Path) -> None:
    """The released keys let a fixed handler apply p0@2..4; nothing is applied twice."""
    store, source, _ = failing_run(tmp_path)
    store.close()
    store = SQLiteStore(store_path(tmp_path))
    restarted = HeaderedSource({"t": [values(0, 5), values(1, 3)]})
    restarted.committed_offsets.update(source.committed_offsets)
    handler = EffectWriter()
    loop, _ = make_store_loop(restarted, store, handler, clock=ManualClock(), every_messages=3)
    loop.start()
    loop.run_once()
    assert handler.calls == [("t", 0, 2), ("t", 0, 3), ("t", 0, 4)]
    assert len(effects(store)) == 8
    assert store.checkpoints(GROUP) == {P0: 5, P1: 3}


def test_loop_run_fails_on_handler_failure_and_leaves_the_group(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    source = HeaderedSource({"t": [values(0, 3)]})
    observer = RecordingObserver()
    loop, _ = make_store_loop(source, store, EffectWriter(fail_at=[("t", 0, 1)]),
                              clock=ManualClock(), observer=observer, every_messages=3)
    with pytest.raises(HandlerFailed):
        loop.run()
    assert loop.state is LoopState.FAILED
    assert observer.failures == ["HandlerFailed"]
    assert source.closed
    assert store.checkpoints(GROUP) == {P0: 1}


# --- fencing -----------------------------------------------------------------------------------


def test_fenced_partition_rolls_back_the_whole_batch_and_raises_fenced(tmp_path: Path) -> None:
    """Between the loop's assign and its checkpoint another member assigns p0 (epoch 2): the
    batch of both partitions rolls back (no effects, keys or rows) and Fenced is raised."""
    store = open_store(tmp_path)
    source = HeaderedSource({"t": [values(0, 2), values(1, 2)]})
    handler = EffectWriter()
    clock = ManualClock()
    loop, batches = make_store_loop(source, store, handler, clock=clock, every_seconds=5.0)
    loop.start()
    assert loop.run_once() == 4  # assigned at epoch 1 and buffered; not due yet

    newer_owner = SQLiteStore(store_path(tmp_path))
    assert newer_owner.assign(GROUP, [P0], clock.wall())[P0].epoch == 2
    newer_owner.close()

    clock.advance(5.0)
    with pytest.raises(Fenced) as raised:
        loop.run_once()
    assert raised.value.partitions == [P0]
    assert len(handler.calls) == 4
    assert effects(store) == []
    assert processed(store) == []
    assert store.checkpoints(GROUP) == {P0: None, P1: None}
    assert source.commits == []
    assert loop.watermarks() == {P0: None, P1: None}
    assert len(batches.pending) == 4, "nothing of the rolled-back batch counts as done"


# --- store outage --------------------------------------------------------------------------


def test_store_unavailable_pauses_and_a_later_retry_applies_the_batch_once(
    tmp_path: Path,
) -> None:
    """The commit fails once with StoreUnavailable: the batch stays pending, every partition is
    paused (new messages are not consumed), and after the backoff the retry applies each
    message exactly once and resumes the partitions."""
    store = open_store_as(FlakyCommitStore, tmp_path)
    store.fail_commits = 1
    source = HeaderedSource({"t": [values(0, 2), values(1, 2)]})
    handler = EffectWriter()
    observer = RecordingObserver()
    clock = ManualClock()
    loop, batches = make_store_loop(source, store, handler, clock=clock, observer=observer,
                                    every_messages=4)
    loop.start()
    assert loop.run_once() == 4  # the checkpoint's commit fails
    assert batches.unavailable
    assert len(batches.pending) == 4
    assert effects(store) == []
    assert processed(store) == []
    assert store.checkpoints(GROUP) == {P0: None, P1: None}
    assert source.commits == []
    assert observer.names.count("store_unavailable") == 1

    source.append("t", 0, b"late")
    assert loop.run_once() == 0  # backoff not over: paused, nothing consumed
    assert source.paused == {P0, P1}
    assert len(batches.pending) == 4

    clock.advance(1.0)
    loop.run_once()  # the retry
    assert not batches.unavailable
    assert source.paused == set()
    assert batches.pending == []
    assert effects(store) == [("t", 0, 0), ("t", 0, 1), ("t", 1, 0), ("t", 1, 1)]
    assert store.checkpoints(GROUP) == {P0: 2, P1: 2}
    assert source.committed_offsets == {P0: 2, P1: 2}
    assert observer.names.count("store_available") == 1

    assert loop.run_once() == 1  # resumed: the late message arrives
    loop.close()
    assert len(effects(store)) == 5
    assert store.checkpoints(GROUP) == {P0: 3, P1: 2}


def test_store_back_during_a_revoke_checkpoint_resumes_the_partitions_still_assigned(
    tmp_path: Path,
) -> None:
    """The store fails, every partition is paused; a rebalance revokes one partition while
    the store is back, so the revoke checkpoint (not the outage's retry) applies the pending
    batch. The partition still assigned is resumed: its next message is consumed (before,
    it stayed paused for good and the consumer stalled)."""
    store = open_store_as(FlakyCommitStore, tmp_path)
    store.fail_commits = 1
    source = HeaderedSource({"t": [values(0, 2), values(1, 2)]})
    clock = ManualClock()
    loop, batches = make_store_loop(source, store, EffectWriter(), clock=clock,
                                    every_messages=4)
    loop.start()
    assert loop.run_once() == 4  # the checkpoint's commit fails
    assert loop.run_once() == 0  # waiting for the store: every partition paused
    assert source.paused == {P0, P1}

    source.revoke([P1])  # the revoke checkpoint applies the batch: the store answers again
    assert not batches.unavailable
    assert store.checkpoints(GROUP) == {P0: 2, P1: 2}

    source.append("t", 0, b"late")
    clock.advance(10.0)
    assert loop.run_once() == 1
    assert P0 not in source.paused
    loop.close()
    assert store.checkpoints(GROUP)[P0] == 3


# --- assignment --------------------------------------------------------------------------------


def run_from(tmp_path: Path, source: HeaderedSource, *, policy: ExternalResetPolicy = "fail",
             observer: RecordingObserver | None = None,
             every_messages: int = 100) -> list[tuple[str, int, int]]:
    """Consume everything from where assignment positions p0, then shut down; what ran."""
    store = open_store(tmp_path)
    handler = EffectWriter()
    loop, _ = make_store_loop(source, store, handler, clock=ManualClock(), observer=observer,
                              every_messages=every_messages, on_external_reset=policy)
    loop.start()
    for _ in range(-(-5 // every_messages)):
        loop.run_once()
    loop.close()
    store.close()
    return handler.calls


# --- a batch's closing answered later (PostgreSQL's send_close) --------------------------------


def test_a_batch_answered_later_is_done_and_sent_to_kafka_once_its_answer_is_read(
    tmp_path: Path,
) -> None:
    """The store committed the batch but has not answered: its messages stay pending and
    Kafka's copy waits. The next checkpoint reads the answer first (that batch is done, its
    offsets go to Kafka), then sends its own; the shutdown reads the last one."""
    store = open_store_as(LateAnswerStore, tmp_path)
    source = HeaderedSource({"t": [values(0, 4)]})
    handler = EffectWriter()
    observer = RecordingObserver()
    loop, batches = make_store_loop(source, store, handler, clock=ManualClock(),
                                    observer=observer, every_messages=2)
    loop.start()
    assert loop.run_once() == 2
    assert [answer.pending for answer in store.sent] == [True]
    assert store.checkpoints(GROUP) == {P0: 2}  # committed at the store
    assert source.commits == []
    assert [m.offset for m in batches.pending] == [0, 1]
    assert observer.named("batch_applied") == []

    assert loop.run_once() == 2
    assert [answer.pending for answer in store.sent] == [False, True]
    assert source.committed_offsets == {P0: 2}
    assert [m.offset for m in batches.pending] == [2, 3]
    assert observer.named("batch_applied") == [(2, 0)]

    loop.close()
    assert [answer.pending for answer in store.sent] == [False, False]
    assert source.committed_offsets == {P0: 4}
    assert store.checkpoints(GROUP) == {P0: 4}
    assert effects(store) == [("t", 0, 0), ("t", 0, 1), ("t", 0, 2), ("t", 0, 3)]


def test_an_idle_poll_reads_a_batchs_answer_at_once(tmp_path: Path) -> None:
    """Nothing more to poll: the answer is read in the same turn, not at the next batch."""
    store = open_store_as(LateAnswerStore, tmp_path)
    source = HeaderedSource({"t": [values(0, 2)]})
    loop, batches = make_store_loop(source, store, EffectWriter(), clock=ManualClock(),
                                    every_messages=2)
    loop.start()
    assert loop.run_once() == 2
    assert source.commits == []
    assert loop.run_once() == 0
    assert [answer.pending for answer in store.sent] == [False]
    assert batches.pending == []
    assert source.committed_offsets == {P0: 2}
    loop.close()


@pytest.mark.parametrize("commit", ["landed", "withheld"])
def test_a_lost_answer_retries_the_batch_and_applies_each_message_once(
    tmp_path: Path, commit: str
) -> None:
    """The connection went before the answer: the batch committed (landed) or rolled back
    (withheld), unknown to us. The next checkpoint finds the store unavailable and holds
    both batches; the retry after the backoff runs what did not commit (its keys skip what
    did): each effect once, every offset committed."""
    store = open_store_as(LateAnswerStore, tmp_path)
    store.lose_answers, store.withhold = 1, commit == "withheld"
    source = HeaderedSource({"t": [values(0, 4)]})
    handler = EffectWriter()
    observer = RecordingObserver()
    clock = ManualClock()
    loop, batches = make_store_loop(source, store, handler, clock=clock, observer=observer,
                                    every_messages=2)
    loop.start()
    assert loop.run_once() == 2
    assert loop.run_once() == 2  # its checkpoint reads the lost answer
    assert batches.unavailable
    assert [m.offset for m in batches.pending] == [0, 1, 2, 3]
    assert source.commits == []
    assert observer.names.count("store_unavailable") == 1

    clock.advance(1.0)
    loop.run_once()  # the retry
    assert not batches.unavailable
    loop.close()
    first = [("t", 0, 0), ("t", 0, 1)]
    every = [*first, ("t", 0, 2), ("t", 0, 3)]
    assert handler.calls == (every if commit == "landed" else first + every)
    assert effects(store) == every
    assert [n for n in observer.named("batch_applied") if n != (0, 0)] == \
        ([(2, 2)] if commit == "landed" else [(4, 0)])
    assert store.checkpoints(GROUP) == {P0: 4}
    assert source.committed_offsets == {P0: 4}


def test_store_row_wins_over_kafkas_committed_offset(tmp_path: Path) -> None:
    """The store says 3, Kafka (with our marker) says 1: the store committed after Kafka's
    last commit (a crash between the two), so consumption resumes at 3."""
    seed_checkpoint(tmp_path, P0, 3)
    source = HeaderedSource({"t": [values(0, 5)]})
    source.committed_offsets[P0] = 1
    assert run_from(tmp_path, source) == [("t", 0, 3), ("t", 0, 4)]


def test_without_a_store_row_assignment_falls_back_to_kafkas_committed_offset(
    tmp_path: Path,
) -> None:
    source = HeaderedSource({"t": [values(0, 5)]})
    source.committed_offsets[P0] = 2
    assert run_from(tmp_path, source) == [("t", 0, 2), ("t", 0, 3), ("t", 0, 4)]


def test_assignment_bumps_the_epoch_each_time(tmp_path: Path) -> None:
    seed_checkpoint(tmp_path, P0, 3)  # epoch 1
    source = HeaderedSource({"t": [values(0, 5)]})
    store = open_store(tmp_path)
    _, batches = make_store_loop(source, store, EffectWriter(), clock=ManualClock(),
                                 every_messages=100)
    progress, starts = batches.assign([P0])
    assert progress[P0].epoch == 2
    assert starts == {P0: 3}


def reset_by_another_tool(tmp_path: Path) -> HeaderedSource:
    """The store says 3; Kafka says 1 and its commit carries no checkpoint-consumer marker."""
    seed_checkpoint(tmp_path, P0, 3)
    source = HeaderedSource({"t": [values(0, 5)]})
    source.committed_offsets[P0] = 1
    source.commit_metadata[P0] = ""
    return source


def test_external_reset_with_policy_fail_stops_the_loop_with_external_reset(
    tmp_path: Path,
) -> None:
    source = reset_by_another_tool(tmp_path)
    store = open_store(tmp_path)
    handler = EffectWriter()
    observer = RecordingObserver()
    loop, _ = make_store_loop(source, store, handler, clock=ManualClock(), observer=observer,
                              every_messages=100, on_external_reset="fail")
    with pytest.raises(ExternalReset) as raised:
        loop.run()
    error = raised.value
    assert (error.topic, error.partition, error.kafka_offset, error.store_offset) == ("t", 0, 1, 3)
    assert loop.state is LoopState.FAILED
    assert observer.failures == ["ExternalReset"]
    assert handler.calls == []
    assert store.checkpoints(GROUP) == {P0: 3}


def test_external_reset_with_policy_follow_starts_at_kafkas_offset(tmp_path: Path) -> None:
    source = reset_by_another_tool(tmp_path)
    observer = RecordingObserver()
    calls = run_from(tmp_path, source, policy="follow", observer=observer)
    assert calls == [("t", 0, 1), ("t", 0, 2), ("t", 0, 3), ("t", 0, 4)]
    assert observer.named("external_reset") == [(P0, 1, 3, "follow")]


def test_following_a_reset_back_moves_the_row_back_so_batches_below_it_checkpoint(
    tmp_path: Path,
) -> None:
    """Kafka was reset to 1 below the row's 3: following it moves the row back at assignment
    (as replay does), so the first batch, ending at 2 below the old row, is not refused as a
    row going backwards."""
    source = reset_by_another_tool(tmp_path)
    calls = run_from(tmp_path, source, policy="follow", every_messages=1)
    assert calls == [("t", 0, 1), ("t", 0, 2), ("t", 0, 3), ("t", 0, 4)]
    store = open_store(tmp_path)
    assert store.checkpoints(GROUP) == {P0: 5}
    store.close()


def test_external_reset_with_policy_ignore_keeps_the_stores_offset(tmp_path: Path) -> None:
    source = reset_by_another_tool(tmp_path)
    observer = RecordingObserver()
    calls = run_from(tmp_path, source, policy="ignore", observer=observer)
    assert calls == [("t", 0, 3), ("t", 0, 4)]
    assert observer.named("external_reset") == [(P0, 1, 3, "ignore")]


def test_kafka_offset_equal_to_the_stores_is_no_reset_even_without_marker(tmp_path: Path) -> None:
    seed_checkpoint(tmp_path, P0, 3)
    source = HeaderedSource({"t": [values(0, 5)]})
    source.committed_offsets[P0] = 3
    source.commit_metadata[P0] = ""
    assert run_from(tmp_path, source, policy="fail") == [("t", 0, 3), ("t", 0, 4)]


def test_store_offset_beyond_the_retained_range_raises_offset_out_of_range(
    tmp_path: Path,
) -> None:
    seed_checkpoint(tmp_path, P0, 50)
    source = HeaderedSource({"t": [values(0, 5)]})
    store = open_store(tmp_path)
    handler = EffectWriter()
    loop, _ = make_store_loop(source, store, handler, clock=ManualClock(), every_messages=100)
    loop.start()
    with pytest.raises(OffsetOutOfRange) as raised:
        loop.run_once()
    error = raised.value
    assert (error.topic, error.partition, error.offset, error.low, error.high) == ("t", 0, 50, 0, 5)
    assert handler.calls == []


class RetainedFrom3(HeaderedSource):
    """Retention deleted offsets 0..2 of every partition."""

    def offset_range(self, partition: TP, timeout: float = 10.0) -> tuple[int, int]:
        return 3, super().offset_range(partition, timeout)[1]


def test_store_offset_below_the_retained_range_raises_offset_out_of_range(
    tmp_path: Path,
) -> None:
    """Retention deleted offsets 0..2 before they were processed: never skip them silently."""
    seed_checkpoint(tmp_path, P0, 1)
    source = RetainedFrom3({"t": [values(0, 5)]})
    store = open_store(tmp_path)
    loop, _ = make_store_loop(source, store, EffectWriter(), clock=ManualClock(),
                              every_messages=100)
    loop.start()
    with pytest.raises(OffsetOutOfRange) as raised:
        loop.run_once()
    assert (raised.value.offset, raised.value.low, raised.value.high) == (1, 3, 5)


def test_store_offset_at_the_end_of_the_partition_is_in_range(tmp_path: Path) -> None:
    """Everything was processed: resume at the high watermark, nothing to do."""
    seed_checkpoint(tmp_path, P0, 5)
    source = HeaderedSource({"t": [values(0, 5)]})
    assert run_from(tmp_path, source) == []


def test_kafkas_copy_waits_for_the_answer_to_the_previous_commit(tmp_path: Path) -> None:
    """Every batch commits in the store; Kafka's copy goes out asynchronously only once the
    broker answered the previous one, then with the newest offsets."""
    store = open_store(tmp_path)
    source = HeaderedSource({"t": [values(0, 12)]})
    loop, _ = make_store_loop(source, store, EffectWriter(), clock=ManualClock(),
                              every_messages=4)
    assert loop.start()
    source.hold_commit_results = True
    for _ in range(3):
        loop.run_once()
    assert store.checkpoints(GROUP) == {P0: 12}
    assert source.commits == [({P0: 4}, True)]
    source.hold_commit_results = False
    loop.run_once()  # the answer arrives; the interval-free loop has nothing new to apply
    loop.close()
    assert source.commits[-1] == ({P0: 12}, False)


# --- a failing process runs no handler again -------------------------------------------------


class FencedStore(SQLiteStore):
    """A SQLite store on which a newer owner has taken every partition: each checkpoint row
    write is refused, as after a freeze past max.poll.interval.ms."""

    def write_checkpoints(self, group: str, rows: Sequence[CheckpointRow],
                          now: float) -> list[TP]:
        return [(row.topic, row.partition) for row in rows]


class RevokingSource(HeaderedSource):
    """Revokes ``partitions`` inside its ``at``-th poll, as a rebalance does."""

    def __init__(self, topics: dict[str, list[list[bytes]]], *, at: int,
                 partitions: list[TP]) -> None:
        super().__init__(topics)
        self._polls, self._at, self._revoking = 0, at, partitions

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        self._polls += 1
        if self._polls == self._at:
            self.revoke(self._revoking)
        return super().poll(max_messages, timeout)


def test_fenced_loop_runs_no_handler_again_on_its_way_out(tmp_path: Path) -> None:
    """Fenced at its checkpoint, the loop closes without running the kept batch again (neither
    in the final checkpoint nor in the revoke that closing triggers) and leaves the group."""
    store = open_store_as(FencedStore, tmp_path)
    source = HeaderedSource({"t": [values(0, 2), values(1, 2)]})
    handler = EffectWriter()
    loop, batches = make_store_loop(source, store, handler, clock=ManualClock(),
                                    every_messages=4)
    with pytest.raises(Fenced):
        loop.run()
    assert len(handler.calls) == 4, handler.calls
    assert source.closed
    assert source.commits == []
    assert batches.pending == []


def test_failing_revoke_checkpoint_raises_its_error_and_closes_the_client(tmp_path: Path) -> None:
    """The revoke checkpoint of p0 fails (the store's commit): the loop raises that error, not a
    KeyError about p0's buffered messages, runs no handler again and closes the client."""
    store = open_store_as(FlakyCommitStore, tmp_path)
    store.fail_commits = 1
    source = RevokingSource({"t": [values(0, 2), values(1, 2)]}, at=2, partitions=[P0])
    handler = EffectWriter()
    loop, _ = make_store_loop(source, store, handler, clock=ManualClock(), every_seconds=5.0)
    with pytest.raises(StoreUnavailable):
        loop.run()
    assert len(handler.calls) == 4, handler.calls
    assert source.closed
    assert loop.state is LoopState.FAILED


# --- transient database errors in a handler --------------------------------------------------


def test_sqlite_locked_in_a_handler_retries_the_batch_instead_of_failing_the_message(
    tmp_path: Path,
) -> None:
    """A handler's write meets another connection's lock ("database is locked"): the whole
    batch rolls back and is retried after the backoff, like a store outage; it is not the
    message's failure (no HandlerFailed), and once the lock is gone it is applied once."""
    other = tmp_path / "other.db"
    holder = sqlite3.connect(other, isolation_level=None)
    holder.execute("CREATE TABLE audit (value TEXT)")
    holder.execute("BEGIN EXCLUSIVE")
    writer = EffectWriter()

    def handler(message: Message, context: Context) -> None:
        audit = sqlite3.connect(other, timeout=0)
        try:
            audit.execute("INSERT INTO audit VALUES (?)", (message.text(),))
            audit.commit()
        finally:
            audit.close()
        writer(message, context)

    store = open_store(tmp_path)
    source = HeaderedSource({"t": [values(0, 2)]})
    clock = ManualClock()
    loop, batches = make_store_loop(source, store, handler, clock=clock,  # type: ignore[arg-type]
                                    every_messages=2)
    loop.start()
    loop.run_once()
    assert batches.unavailable
    assert len(batches.pending) == 2
    assert effects(store) == []

    holder.execute("ROLLBACK")
    holder.close()
    clock.advance(1.0)
    loop.run_once()
    assert not batches.unavailable
    assert effects(store) == [("t", 0, 0), ("t", 0, 1)]
    assert store.checkpoints(GROUP) == {P0: 2}


# --- taking a poll ---------------------------------------------------------------------------


def test_a_poll_is_taken_whole_when_every_partition_is_assigned_else_without_the_others() -> None:
    """A poll holds runs of one partition; each run's partition is looked up once."""
    poll = [Message("t", 0, 5, b""), Message("t", 0, 6, b""), Message("t", 1, 3, b""),
            Message("u", 0, 1, b""), Message("t", 0, 7, b"")]
    assigned = {P0: None, P1: None, ("u", 0): None}
    assert _of_assigned(poll, assigned) is poll
    kept = _of_assigned(poll, {P0: None, ("u", 0): None})
    assert [(m.topic, m.partition, m.offset) for m in kept] == [
        ("t", 0, 5), ("t", 0, 6), ("u", 0, 1), ("t", 0, 7)]
    assert _of_assigned(poll, {P1: None}) == [poll[2]]
    assert _of_assigned([], {}) == []
