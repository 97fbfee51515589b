"""consumer.engine: ConsumerLoop driven over InMemorySource with a ManualClock."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

import pytest

from consumer.app import build_loop
from consumer.clock import ManualClock
from consumer.dedup import key_function
from consumer.engine.concurrency.dispatcher import ConcurrentDispatcher
from consumer.engine.direct_mode import UNCONFIRMED_INTERVALS
from consumer.engine.loop import ConsumerLoop, LoopState
from consumer.errors import HandlerFailed, KafkaError
from consumer.events import Trigger
from consumer.kafka.protocol import SourceListener
from consumer.message import TP, Context, Message
from consumer.routing import Route, Router
from consumer.testing import InMemoryDeadLetterSink, InMemorySource, RecordingObserver
from tests.support.wiring import loop_settings
from tests.unit.engine_support import (
    Recorder,
    commits_never_go_backwards,
    make_loop,
    values,
)

# --- count trigger -------------------------------------------------------------------------


def test_count_trigger_commits_asynchronously_at_exactly_every_messages() -> None:
    source = InMemorySource({"t": [values(10)]})
    handler = Recorder()
    loop = make_loop(source, handler, every_messages=3)
    assert loop.start()
    assert [loop.run_once() for _ in range(4)] == [3, 3, 3, 1]
    assert source.commits == [
        ({("t", 0): 3}, True),
        ({("t", 0): 6}, True),
        ({("t", 0): 9}, True),
    ]
    assert len(handler.seen) == 10
    assert loop.watermarks() == {("t", 0): 10}
    assert loop.committed_offsets() == {("t", 0): 9}


def test_batch_is_capped_by_the_room_left_before_the_count_trigger() -> None:
    """With batches of 2 and a commit every 3, the second turn takes 1 message, not 2."""
    source = InMemorySource({"t": [values(10)]})
    loop = make_loop(source, Recorder(), every_messages=3, batch_size=2)
    loop.start()
    assert [loop.run_once() for _ in range(4)] == [2, 1, 2, 1]
    assert source.commits == [({("t", 0): 3}, True), ({("t", 0): 6}, True)]


def test_no_commit_ever_covers_more_than_every_messages_new_messages() -> None:
    source = InMemorySource({"t": [values(7), values(5), values(4)]})
    loop = make_loop(source, Recorder(), every_messages=4)
    loop.start()
    while loop.run_once():
        pass
    assert source.commits, "the count trigger never fired"
    previous: dict[TP, int] = {}
    for offsets, asynchronous in source.commits:
        assert asynchronous
        new = sum(offset - previous.get(tp, 0) for tp, offset in offsets.items())
        assert new == 4
        previous.update(offsets)
    assert sum(previous.values()) == 16


def test_count_trigger_alone_does_not_commit_when_time_passes() -> None:
    clock = ManualClock()
    source = InMemorySource({"t": [values(2)]})
    loop = make_loop(source, Recorder(), every_messages=3, clock=clock)
    loop.start()
    loop.run_once()
    clock.advance(3_600)
    loop.run_once()
    assert source.commits == []


# --- interval trigger ----------------------------------------------------------------------


def test_interval_trigger_commits_an_idle_consumers_uncommitted_work_when_time_passes() -> None:
    clock = ManualClock()
    source = InMemorySource({"t": [values(4)]})
    observer = RecordingObserver()
    loop = make_loop(source, Recorder(), every_seconds=5.0, clock=clock, observer=observer)
    loop.start()
    assert loop.run_once() == 4
    assert source.commits == []
    clock.advance(4.9)
    assert loop.run_once() == 0
    assert source.commits == []
    clock.advance(0.1)
    assert loop.run_once() == 0
    assert source.commits == [({("t", 0): 4}, True)]
    assert observer.checkpoints == [(Trigger.INTERVAL, {("t", 0): 4})]


def test_interval_checkpoint_with_nothing_moved_is_a_noop() -> None:
    clock = ManualClock()
    source = InMemorySource({"t": [values(2)]})
    observer = RecordingObserver()
    loop = make_loop(source, Recorder(), every_seconds=5.0, clock=clock, observer=observer)
    loop.start()
    loop.run_once()
    clock.advance(5)
    loop.run_once()
    assert len(source.commits) == 1
    clock.advance(5)
    loop.run_once()
    assert len(source.commits) == 1
    assert observer.named("checkpoint_noop") == [(Trigger.INTERVAL,)]


def test_interval_trigger_commits_only_partitions_that_moved() -> None:
    clock = ManualClock()
    source = InMemorySource({"t": [values(2), values(1)]})
    loop = make_loop(source, Recorder(), every_seconds=5.0, clock=clock)
    loop.start()
    loop.run_once()
    clock.advance(5)
    loop.run_once()
    source.append("t", 1, b"late")
    loop.run_once()
    clock.advance(5)
    loop.run_once()
    assert source.commits == [
        ({("t", 0): 2, ("t", 1): 1}, True),
        ({("t", 1): 2}, True),
    ]


# --- close ---------------------------------------------------------------------------------


def test_close_commits_the_final_watermarks_synchronously_and_closes_the_source() -> None:
    source = InMemorySource({"t": [values(3), values(2)]})
    observer = RecordingObserver()
    loop = make_loop(source, Recorder(), every_messages=100, observer=observer)
    loop.start()
    loop.run_once()
    assert source.commits == []
    loop.close()
    assert source.commits == [({("t", 0): 3, ("t", 1): 2}, False)]
    assert source.committed_offsets == {("t", 0): 3, ("t", 1): 2}
    assert source.closed
    assert loop.state is LoopState.CLOSED
    assert observer.checkpoints == [(Trigger.SHUTDOWN, {("t", 0): 3, ("t", 1): 2})]
    assert observer.names[-1] == "stopped"


def test_close_twice_commits_once() -> None:
    source = InMemorySource({"t": [values(3)]})
    loop = make_loop(source, Recorder(), every_messages=100)
    loop.start()
    loop.run_once()
    loop.close()
    loop.close()
    assert source.commits == [({("t", 0): 3}, False)]


def test_close_after_everything_was_committed_commits_nothing_more() -> None:
    source = InMemorySource({"t": [values(3)]})
    loop = make_loop(source, Recorder(), every_messages=3)
    loop.start()
    loop.run_once()
    loop.close()
    assert source.commits == [({("t", 0): 3}, True)]
    assert source.closed


# --- handler failures ----------------------------------------------------------------------


def test_failing_handler_raises_handler_failed_and_commits_up_to_not_past_the_message() -> None:
    source = InMemorySource({"t": [values(3), values(5)]})
    seen: list[tuple[int, int]] = []
    cause = ValueError("bad message")

    def handler(message: Message, context: Context) -> None:
        if (message.partition, message.offset) == (1, 2):
            raise cause
        seen.append((message.partition, message.offset))

    observer = RecordingObserver()
    loop = make_loop(source, handler, every_messages=1_000, observer=observer)
    with pytest.raises(HandlerFailed) as caught:
        loop.run()
    error = caught.value
    assert (error.topic, error.partition, error.offset) == ("t", 1, 2)
    assert error.cause is cause
    assert error.__cause__ is cause
    assert seen == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert source.committed_offsets == {("t", 0): 3, ("t", 1): 2}
    assert source.commits[-1] == ({("t", 0): 3, ("t", 1): 2}, False)
    assert source.closed
    assert loop.state is LoopState.FAILED
    assert "HandlerFailed" in observer.failures


def test_failure_on_a_partitions_first_message_commits_nothing_for_that_partition() -> None:
    source = InMemorySource({"t": [values(2), values(2)]})

    def handler(message: Message, context: Context) -> None:
        if message.partition == 1:
            raise RuntimeError("no")

    loop = make_loop(source, handler, every_messages=1_000)
    with pytest.raises(HandlerFailed) as caught:
        loop.run()
    assert (caught.value.partition, caught.value.offset) == (1, 0)
    assert source.committed_offsets == {("t", 0): 2}


def test_handler_failed_message_names_the_coordinates_and_the_cause() -> None:
    source = InMemorySource({"orders": [values(1)]})

    def handler(message: Message, context: Context) -> None:
        raise KeyError("sku")

    loop = make_loop(source, handler, topics=("orders",), every_messages=10)
    with pytest.raises(HandlerFailed, match=r"orders\[0\]@0: KeyError"):
        loop.run()


# --- revoke --------------------------------------------------------------------------------


def test_revoke_commits_the_revoked_partitions_synchronously_and_drops_their_state() -> None:
    source = InMemorySource({"t": [values(3), values(2)]})
    observer = RecordingObserver()
    loop = make_loop(source, Recorder(), every_messages=1_000, observer=observer)
    loop.start()
    loop.run_once()
    source.revoke([("t", 0)])
    assert source.commits == [({("t", 0): 3}, False)]
    assert loop.watermarks() == {("t", 1): 2}
    assert loop.committed_offsets() == {("t", 1): None}
    assert observer.checkpoints == [(Trigger.REVOKE, {("t", 0): 3})]
    assert observer.named("revoked") == [([("t", 0)],)]


def test_a_revoke_commit_the_broker_refuses_lets_the_partition_go_and_the_loop_goes_on() -> None:
    """The group moved on before the revoke's commit reached it (ILLEGAL_GENERATION): the
    failure is reported, the partition goes as it would have (its next owner repeats what
    the commit would have covered, as after a crash), and the member keeps consuming."""
    source = InMemorySource({"t": [values(3), values(2)]})
    observer = RecordingObserver()
    recorder = Recorder()
    loop = make_loop(source, recorder, every_messages=1_000, observer=observer)
    loop.start()
    loop.run_once()
    source.fail_next_commit = KafkaError("ILLEGAL_GENERATION", "the group moved on")
    source.revoke([("t", 0)])
    assert (Trigger.REVOKE, "ILLEGAL_GENERATION") in observer.commit_failures
    assert observer.named("revoked") == [([("t", 0)],)]
    assert loop.watermarks() == {("t", 1): 2}
    source.append("t", 1, b"late")
    loop.run_once()
    assert ("t", 1, 2) in recorder.seen
    loop.close()
    assert source.committed_offsets == {("t", 1): 3}


def test_revoking_a_partition_with_nothing_new_commits_nothing() -> None:
    source = InMemorySource({"t": [values(3)]})
    loop = make_loop(source, Recorder(), every_messages=3)
    loop.start()
    loop.run_once()
    source.revoke([("t", 0)])
    assert source.commits == [({("t", 0): 3}, True)]
    assert loop.watermarks() == {}


def test_messages_of_a_partition_revoked_during_the_batch_are_not_handled() -> None:
    source = InMemorySource({"t": [values(2), values(3)]})
    seen: list[tuple[int, int]] = []

    def handler(message: Message, context: Context) -> None:
        seen.append((message.partition, message.offset))
        if (message.partition, message.offset) == (0, 0):
            source.revoke([("t", 1)])

    loop = make_loop(source, handler, every_messages=1_000)
    loop.start()
    assert loop.run_once() == 2
    assert seen == [(0, 0), (0, 1)]
    assert loop.watermarks() == {("t", 0): 2}


# --- stopping ------------------------------------------------------------------------------


def test_request_stop_during_a_batch_stops_after_the_message_in_hand() -> None:
    source = InMemorySource({"t": [values(10)]})
    seen: list[int] = []
    loop: ConsumerLoop

    def handler(message: Message, context: Context) -> None:
        seen.append(message.offset)
        if len(seen) == 3:
            loop.request_stop()

    loop = make_loop(source, handler, every_messages=1_000)
    loop.run()
    assert seen == [0, 1, 2]
    assert source.committed_offsets == {("t", 0): 3}
    assert source.commits == [({("t", 0): 3}, False)]
    assert loop.state is LoopState.CLOSED
    assert source.closed


def test_stop_requested_before_run_never_subscribes_and_still_closes() -> None:
    source = InMemorySource({"t": [values(3)]})
    handler = Recorder()
    loop = make_loop(source, handler, every_messages=10)
    loop.request_stop()
    assert loop.stop_requested
    loop.run()
    assert handler.seen == []
    assert source.commits == []
    assert source.closed
    assert loop.state is LoopState.CLOSED


def test_start_subscribes_and_moves_to_running() -> None:
    source = InMemorySource({"t": [values(1)]})
    loop = make_loop(source, Recorder(), every_messages=10)
    before = loop.state
    assert loop.start() is True
    assert (before, loop.state) == (LoopState.CREATED, LoopState.RUNNING)


# --- offsets never go backwards, failed commits are retried --------------------------------


def test_committed_offsets_never_go_backwards_through_count_interval_revoke_and_close() -> None:
    clock = ManualClock()
    source = InMemorySource({"t": [values(9), values(4), values(6)]})
    loop = make_loop(source, Recorder(), every_messages=5, every_seconds=2.0, clock=clock,
                     batch_size=3)
    loop.start()
    done_when_revoked: int | None = None
    for turn in range(12):
        loop.run_once()
        clock.advance(0.7)
        if turn == 2:
            source.append("t", 1, b"late")
        if turn == 6:
            done_when_revoked = loop.watermarks()[("t", 2)]
            source.revoke([("t", 2)])
    loop.close()
    assert len(source.commits) >= 4
    assert commits_never_go_backwards(source.commits)
    assert done_when_revoked is not None
    assert source.committed_offsets == {("t", 0): 9, ("t", 1): 5, ("t", 2): done_when_revoked}


def test_handler_context_carries_the_group_and_the_message() -> None:
    source = InMemorySource({"t": [values(1)]})
    contexts: list[Context] = []

    def handler(message: Message, context: Context) -> None:
        contexts.append(context)

    loop = make_loop(source, handler, every_messages=10)
    loop.start()
    loop.run_once()
    assert contexts[0].group == "g"
    assert contexts[0].message.offset == 0
    assert contexts[0].logger.extra == {"group": "g", "topic": "t", "partition": 0, "offset": 0}


def test_failed_async_commit_is_committed_again_by_the_next_checkpoint() -> None:
    """An async commit the broker rejected is re-sent by the next checkpoint, even when no
    new message was done in between."""
    clock = ManualClock()
    source = InMemorySource({"t": [values(2)]})
    observer = RecordingObserver()
    loop = make_loop(source, Recorder(), every_seconds=5.0, clock=clock, observer=observer)
    loop.start()
    loop.run_once()
    source.fail_next_commit = KafkaError("REQUEST_TIMED_OUT", "broker did not answer")
    clock.advance(5)
    loop.run_once()
    assert source.commits == [({("t", 0): 2}, True)]
    assert source.committed_offsets == {}
    clock.advance(5)
    loop.run_once()
    assert (None, "REQUEST_TIMED_OUT") in observer.commit_failures
    assert source.commits == [({("t", 0): 2}, True), ({("t", 0): 2}, True)]
    assert source.committed_offsets == {("t", 0): 2}


def test_failed_async_commit_is_covered_by_the_next_count_checkpoint() -> None:
    source = InMemorySource({"t": [values(4)]})
    loop = make_loop(source, Recorder(), every_messages=2)
    loop.start()
    source.fail_next_commit = KafkaError("COORDINATOR_NOT_AVAILABLE", "moving")
    loop.run_once()
    assert source.committed_offsets == {}
    loop.run_once()
    assert source.commits == [({("t", 0): 2}, True), ({("t", 0): 4}, True)]
    assert source.committed_offsets == {("t", 0): 4}


class RaisingOnAsyncCommit(InMemorySource):
    """A source whose next asynchronous commit raises at once (as the client may)."""

    raise_next: KafkaError | None = None

    def commit(self, offsets: dict[TP, int], *, asynchronous: bool,  # type: ignore[override]
               metadata: dict[TP, str] | None = None) -> None:
        if asynchronous and self.raise_next is not None:
            error, self.raise_next = self.raise_next, None
            self.commits.append((dict(offsets), asynchronous))
            raise error
        super().commit(offsets, asynchronous=asynchronous, metadata=metadata)


def test_async_commit_that_raises_is_retried_before_polling_more() -> None:
    source = RaisingOnAsyncCommit({"t": [values(4)]})
    source.raise_next = KafkaError("_TRANSPORT", "down")
    observer = RecordingObserver()
    loop = make_loop(source, Recorder(), every_messages=2, observer=observer)
    loop.start()
    assert loop.run_once() == 2
    assert (Trigger.COUNT, "_TRANSPORT") in observer.commit_failures
    assert loop.run_once() == 2
    assert source.commits == [
        ({("t", 0): 2}, True),
        ({("t", 0): 2}, True),
        ({("t", 0): 4}, True),
    ]
    assert source.committed_offsets == {("t", 0): 4}


def test_failed_final_commit_on_close_raises_and_still_closes_the_source() -> None:
    source = InMemorySource({"t": [values(2)]})
    loop = make_loop(source, Recorder(), every_messages=10)
    loop.start()
    loop.run_once()
    source.fail_next_commit = KafkaError("REQUEST_TIMED_OUT", "no answer")
    with pytest.raises(KafkaError):
        loop.close()
    assert source.closed
    assert loop.state is LoopState.CLOSED


def test_a_due_checkpoint_waits_for_the_answer_to_the_previous_one() -> None:
    """Asynchronous commits: while the broker has not answered one, the next due checkpoint
    is not sent (the coordinator would only queue it); work goes on, and once the answer
    arrives the checkpoint goes out with the newest watermark."""
    source = InMemorySource({"t": [values(50)]})
    recorder = Recorder()
    loop = make_loop(source, recorder, every_messages=10, batch_size=10)
    loop.start()
    source.hold_commit_results = True
    for _ in range(4):
        loop.run_once()
    assert len(recorder.seen) == 40
    assert source.commits == [({("t", 0): 10}, True)]
    source.hold_commit_results = False
    loop.run_once()
    assert source.commits[1:] == [({("t", 0): 50}, True)]


def test_unconfirmed_work_is_bounded_by_fifty_intervals_by_default() -> None:
    """Answers held back: the loop takes work up to the bound and no further."""
    source = InMemorySource({"t": [values(1_000)]})
    recorder = Recorder()
    loop = make_loop(source, recorder, every_messages=10, batch_size=7)
    loop.start()
    source.hold_commit_results = True
    peak = 0
    for _ in range(150):
        loop.run_once()
        peak = max(peak, loop.snapshot().partitions[("t", 0)].unconfirmed)
        assert peak <= 10 * UNCONFIRMED_INTERVALS == 500
    assert peak == 500


class SlowAnswerSource(InMemorySource):
    """Answers each asynchronous commit once ``answer_after`` more messages were polled: a
    group coordinator that answers in about 8 ms, with the loop at a million messages a second
    (Kafka 4 holds commits up to ``group.coordinator.append.linger.ms``, 5 ms, to write them
    together)."""

    def __init__(self, topics: dict[str, list[list[bytes]]], *, answer_after: int) -> None:
        super().__init__(topics)
        self.hold_commit_results = True
        self._answer_after = answer_after
        self._polled = 0
        self._unanswered: list[tuple[int, tuple[dict[TP, int], KafkaError | None]]] = []

    def commit(self, offsets: Mapping[TP, int], *, asynchronous: bool,
               metadata: Mapping[TP, str] | None = None) -> None:
        super().commit(offsets, asynchronous=asynchronous, metadata=metadata)
        if asynchronous:
            self._unanswered.append((self._polled, self._commit_results.pop()))

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        while self._unanswered and self._polled - self._unanswered[0][0] >= self._answer_after:
            offsets, error = self._unanswered.pop(0)[1]
            self._listener.on_commit_result(offsets, error)  # type: ignore[union-attr]
        batch = super().poll(max_messages, timeout)
        self._polled += len(batch)
        return batch


def test_commit_answers_8_intervals_late_never_stall_the_loop_at_the_default_bound() -> None:
    """One asynchronous commit in flight, each answered 8,000 messages after it went out:
    unconfirmed work peaks at about two answers' worth (16 intervals), so the default bound
    must leave room for it, or the loop stops for a synchronous commit every few thousand
    messages (about 8 ms each on a real broker, a third of the no-store run's time)."""
    source = SlowAnswerSource({"t": [values(60_000)]}, answer_after=8_000)
    recorder = Recorder()
    loop = make_loop(source, recorder, every_messages=1_000, batch_size=500)
    loop.start()
    for _ in range(200):
        loop.run_once()
    assert len(recorder.seen) == 60_000
    assert len(source.commits) > 5
    assert [offsets for offsets, asynchronous in source.commits if not asynchronous] == []


def test_unconfirmed_work_is_confirmed_with_one_synchronous_commit_not_a_stall() -> None:
    """Async acknowledgements still in flight at the bound: the loop commits every
    watermark synchronously once (confirming the earlier commits too) and goes on at once."""
    source = InMemorySource({"t": [values(100)]})
    recorder = Recorder()
    loop = make_loop(source, recorder, every_messages=10, batch_size=500, max_unconfirmed=20)
    loop.start()
    source.hold_commit_results = True
    for _ in range(20):  # 10 turns handle messages, the others confirm
        loop.run_once()
    assert len(recorder.seen) == 100
    synchronous = [offsets for offsets, asynchronous in source.commits if not asynchronous]
    assert synchronous and synchronous[0] == {("t", 0): 20}
    assert source.paused == set()


def test_unconfirmed_work_waits_while_the_broker_refuses_commits() -> None:
    """While commits are held back and the synchronous one is refused (a rebalance), the loop
    takes nothing beyond its bound, and leaves no partition paused behind."""
    source = InMemorySource({"t": [values(100)]})
    recorder = Recorder()
    loop = make_loop(source, recorder, every_messages=10, batch_size=500, max_unconfirmed=20)
    loop.start()
    source.hold_commit_results = True
    loop.run_once()
    loop.run_once()
    for _ in range(4):
        source.fail_next_commit = KafkaError("REBALANCE_IN_PROGRESS", "rebalancing")
        loop.run_once()
    assert len(recorder.seen) == 20
    assert source.paused == set(), "partitions must be resumed after waiting"
    source.hold_commit_results = False
    for _ in range(6):
        loop.run_once()
    assert len(recorder.seen) > 20


def test_unconfirmed_work_is_capped_at_one_interval_with_synchronous_commits() -> None:
    """Synchronous commits confirm every checkpoint before the next message is handled."""
    source = InMemorySource({"t": [values(35)]})
    recorder = Recorder()
    loop = make_loop(source, recorder, every_messages=10, synchronous_commits=True)
    loop.start()
    source.hold_commit_results = True
    for _ in range(8):
        loop.run_once()
    assert len(recorder.seen) == 35
    assert [asynchronous for _, asynchronous in source.commits] == [False, False, False]
    assert [offsets[("t", 0)] for offsets, _ in source.commits] == [10, 20, 30]


class AssigningSource(InMemorySource):
    """Assigns ``later`` partitions inside a poll made while every partition is paused: a
    rebalance that hands the member more partitions while it waits at its bound."""

    def __init__(self, topics: dict[str, list[list[bytes]]], *, later: list[tuple[str, int]]):
        super().__init__(topics)
        self._later = later

    def subscribe(self, topics: Iterable[str], listener: SourceListener) -> None:
        super().subscribe(topics, listener)
        self._pending_assignment = [tp for tp in self._pending_assignment
                                    if tp not in self._later]

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        if self._later and self._positions and set(self._positions) <= self.paused:
            self._pending_assignment, self._later = self._later, []
        return super().poll(max_messages, timeout)


def test_unconfirmed_bound_holds_for_partitions_assigned_while_confirming() -> None:
    """At its bound, with the synchronous commit refused (a rebalance), the loop polls with its
    partitions paused; partitions assigned during that poll deliver messages, and only what
    the bound has room for is handled: the rest is sought back and handled later, once."""
    source = AssigningSource({"t": [values(50), values(50)]}, later=[("t", 1)])
    recorder = Recorder()
    loop = make_loop(source, recorder, every_messages=2, batch_size=500, max_unconfirmed=4)
    loop.start()
    source.hold_commit_results = True
    for _ in range(3):
        source.fail_next_commit = KafkaError("REBALANCE_IN_PROGRESS", "rebalancing")
        loop.run_once()
        unconfirmed = sum(p.unconfirmed for p in loop.snapshot().partitions.values())
        assert unconfirmed <= 4, (unconfirmed, len(recorder.seen))
    assert ("t", 1) in loop.snapshot().partitions
    source.hold_commit_results = False
    for _ in range(200):
        loop.run_once()
    assert sorted(recorder.seen) == sorted({("t", p, o) for p in (0, 1) for o in range(50)})


def test_without_a_store_topic_ids_are_learnt_at_start_and_again_at_assignment() -> None:
    """A coordinates key must change when a topic is recreated, store or not: the loop fills
    the key functions' id dict at start, and refreshes it when partitions are assigned."""
    source = InMemorySource({"t": [[b"m0"]]})
    keys: list[str] = []
    loop = build_loop(loop_settings(["t"], every_messages=10, route={"dedup_key": "coordinates"}),
                      Router([Route("t", lambda m, c: keys.append(c.idempotency_key), "x:y")]),
                      source=source, clock=ManualClock(), dead_letters=InMemoryDeadLetterSink())
    ids = {"t": "id-of-t"}
    asked: list[str] = []

    def topic_ids(topics: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
        asked.extend(topics)
        return {t: ids[t] for t in topics}

    source.topic_ids = topic_ids  # type: ignore[method-assign]
    assert loop.start()
    assert asked == ["t"], "learnt at start"
    ids["t"] = "id-of-the-recreated-t"
    loop.run_once()
    assert asked == ["t", "t"], "learnt again at assignment"
    message = Message("t", 0, 0, b"m0", timestamp=0.0)
    assert keys == [key_function("coordinates", {"t": "id-of-the-recreated-t"})(message).hex()]


def test_an_unanswered_commit_holds_the_next_back_for_thirty_seconds_at_most() -> None:
    """Direct mode shares the store's rule: the next asynchronous checkpoint waits for the
    previous one's answer, and goes out anyway once the answer is 30 s overdue."""
    source = InMemorySource({"t": [values(40)]})
    clock = ManualClock()
    loop = make_loop(source, Recorder(), every_messages=10, batch_size=10, clock=clock)
    loop.start()
    source.hold_commit_results = True
    loop.run_once()
    loop.run_once()
    assert [offsets for offsets, _ in source.commits] == [{("t", 0): 10}], "held back"
    clock.advance(30.001)
    loop.run_once()
    assert [offsets for offsets, _ in source.commits] == [{("t", 0): 10}, {("t", 0): 30}]
    assert all(asynchronous for _, asynchronous in source.commits)


# --- retries -------------------------------------------------------------------------------


class TimedSource(InMemorySource):
    """Records how long each poll was allowed to block."""

    def __init__(self, topics: dict[str, list[list[bytes]]]) -> None:
        super().__init__(topics)
        self.timeouts: list[float] = []

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        self.timeouts.append(timeout)
        return super().poll(max_messages, timeout)


def test_a_poll_blocks_no_longer_than_the_backoff_of_a_paused_retry() -> None:
    """The paused partition resumes only between polls: a poll blocking for its whole timeout
    (0.5 s) would stretch a 0.1 s backoff to 0.5 s, for every failed attempt."""
    source = TimedSource({"t": [values(2)]})
    failed: list[int] = []

    def handler(message: Message, context: Context) -> None:
        if not failed:
            failed.append(message.offset)
            raise RuntimeError("flaky")

    clock = ManualClock()
    route = {"retry": {"attempts": 3, "initial_backoff_seconds": 0.1, "jitter": 0.0}}
    settings = loop_settings(("t",), every_messages=1_000, route=route)
    loop = build_loop(settings, Router([Route("t", handler, "x:y")]), source=source,
                      clock=clock, dead_letters=InMemoryDeadLetterSink())
    assert loop.start()
    loop.run_once()  # the first message fails: its partition pauses for 0.1 s
    assert failed == [0] and source.paused == {("t", 0)}
    loop.run_once()
    assert source.timeouts[-1] == pytest.approx(0.1)
    clock.advance(0.06)
    loop.run_once()
    assert source.timeouts[-1] == pytest.approx(0.04)
    clock.advance(0.05)
    assert loop.run_once() == 2  # resumed: the retry and the next message
    assert source.timeouts[-1] == 0.5


def test_a_poll_blocks_no_longer_than_until_the_interval_checkpoint() -> None:
    """A store applies its batch at the checkpoint: a poll outlasting the interval would
    delay every batch of a quiet topic to the poll timeout."""
    source = TimedSource({"t": [values(1)]})
    clock = ManualClock()
    loop = make_loop(source, Recorder(), every_seconds=0.2, clock=clock)
    assert loop.start()
    loop.run_once()
    assert source.timeouts[-1] == pytest.approx(0.2)
    clock.advance(0.15)
    loop.run_once()
    assert source.timeouts[-1] == pytest.approx(0.05)
    clock.advance(0.06)
    loop.run_once()  # due: the checkpoint runs after this poll, which waits as configured
    assert source.timeouts[-1] == 0.5
    loop.run_once()
    assert source.timeouts[-1] == pytest.approx(0.2)


def test_with_handlers_running_the_wait_for_one_ends_by_the_interval_checkpoint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With concurrency the poll does not block while handlers run; the loop waits for one of
    them to finish instead. That wait is cut short by the interval trigger like a poll is:
    slow handlers must not stretch a 0.2 s checkpoint interval to the poll timeout."""
    waits: list[float] = []

    def await_completion(self: ConcurrentDispatcher, partitions: Mapping[TP, object],
                         timeout: float) -> None:
        waits.append(timeout)  # returns at once: the handler is still running

    monkeypatch.setattr(ConcurrentDispatcher, "await_completion", await_completion)
    release = threading.Event()

    def slow(message: Message, context: Context) -> None:
        release.wait(10)

    source = TimedSource({"t": [values(1)]})
    clock = ManualClock()
    settings = loop_settings(("t",), every_seconds=0.2, route={"concurrency": 2})
    loop = build_loop(settings, Router([Route("t", slow, "x:y")]), source=source,
                      clock=clock, dead_letters=InMemoryDeadLetterSink())
    try:
        assert loop.start()
        loop.run_once()  # polls the message and starts its handler
        clock.advance(0.15)
        loop.run_once()  # nothing new, the handler runs: the loop waits for it
        assert source.timeouts[-1] == 0.0
        assert waits == [pytest.approx(0.05)]
    finally:
        release.set()
        loop.close()
