"""Routes with concurrency through the app's wiring over in-memory parts: handlers on workers,
the watermark never passing an unfinished message, ordering, back-pressure, per-key retries,
shutdown and revoke waiting for running work."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping

import pytest

from consumer.app import build_loop
from consumer.clock import ManualClock
from consumer.engine.concurrency.dispatcher import ConcurrentDispatcher
from consumer.engine.dispatch import Dispatcher
from consumer.engine.loop import ConsumerLoop
from consumer.errors import DeadLetterFailed, HandlerFailed
from consumer.kafka.commit_metadata import finished_in, with_gap
from consumer.kafka.protocol import COMMIT_MARKER
from consumer.message import TP, Context, Message
from consumer.routing import Route, Router
from consumer.testing import InMemoryDeadLetterSink, InMemorySource
from tests.support.wiring import loop_settings

P0: TP = ("t", 0)
P1: TP = ("t", 1)
Handler = Callable[[Message, Context], object]


def concurrent_loop(source: InMemorySource, handler: Handler, *, concurrency: int = 8,
                    ordering: str = "key", clock: ManualClock | None = None,
                    batch_size: int = 500, max_buffered: int | None = None,
                    route: Mapping[str, object] | None = None,
                    sink: InMemoryDeadLetterSink | None = None,
                    every_seconds: float | None = None,
                    grace_seconds: float | None = None) -> ConsumerLoop:
    settings = loop_settings(["t"], batch_size=batch_size, every_seconds=every_seconds, route={
        "on_failure": "stop", "retry": {"attempts": 1}, **(route or {}),
        "concurrency": concurrency, "ordering": ordering})
    if max_buffered is not None:
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
            update={"max_buffered_messages": max_buffered})})
    if grace_seconds is not None:
        settings = settings.model_copy(update={"shutdown": settings.shutdown.model_copy(
            update={"grace_seconds": grace_seconds})})
    return build_loop(settings, Router([Route("t", handler, "x:y")]), source=source,
                      clock=clock or ManualClock(), dead_letters=sink or InMemoryDeadLetterSink())


def dispatcher_of(loop: ConsumerLoop) -> ConcurrentDispatcher:
    dispatcher = loop.mode._dispatcher  # type: ignore[attr-defined]
    assert isinstance(dispatcher, ConcurrentDispatcher)
    return dispatcher


def run_until(loop: ConsumerLoop, condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        loop.run_once()


def keyed_source(count: int, keys: int, partitions: int = 1) -> InMemorySource:
    source = InMemorySource({"t": [[] for _ in range(partitions)]})
    for i in range(count):
        source.append("t", i % partitions, str(i).encode(), key=str(i % keys).encode())
    return source


class Calls:
    """A handler recording (key, offset, start, end) per call, optionally gated."""

    def __init__(self, delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[bytes | None, int, int, float, float]] = []
        self.delay = delay
        self.running = 0
        self.most_running = 0

    def __call__(self, message: Message, context: Context) -> None:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        start = time.monotonic()
        if self.delay:
            time.sleep(self.delay)
        end = time.monotonic()
        with self.lock:
            self.running -= 1
            self.calls.append((message.key, message.partition, message.offset, start, end))


class SlowKey:
    """A handler that holds the message keyed ``slow`` until :attr:`release` is set, and
    records the offsets it finished."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.done: list[int] = []

    def __call__(self, message: Message, _context: Context) -> None:
        if message.key == b"slow":
            self.release.wait(10)
        self.done.append(message.offset)


def test_concurrency_one_keeps_the_sequential_dispatcher() -> None:
    loop = concurrent_loop(InMemorySource({"t": [[b"a"]]}), lambda m, c: None, concurrency=1)
    assert isinstance(loop.mode._dispatcher, Dispatcher)  # type: ignore[attr-defined]


def test_every_message_is_handled_and_the_checkpoint_covers_them_all() -> None:
    source = keyed_source(300, keys=30, partitions=2)
    calls = Calls(delay=0.001)
    loop = concurrent_loop(source, calls, concurrency=16)
    dispatcher_of(loop)
    loop.start()
    run_until(loop, lambda: len(calls.calls) == 300 and loop.watermarks() == {P0: 150, P1: 150})
    loop.close()
    assert source.committed_offsets == {P0: 150, P1: 150}
    assert 1 < calls.most_running <= 16


def no_overlap_in_offset_order(calls: list[tuple[bytes | None, int, int, float, float]],
                               lane: Callable[[tuple[bytes | None, int]], object]) -> bool:
    by_lane: dict[object, list[tuple[int, float, float]]] = {}
    for key, partition, offset, start, end in sorted(calls, key=lambda c: c[3]):
        by_lane.setdefault(lane((key, partition)), []).append((offset, start, end))
    for runs in by_lane.values():
        for (o1, _, e1), (o2, s2, _) in itertools.pairwise(runs):
            if o2 < o1 or s2 < e1:
                return False
    return True


def test_key_ordering_never_runs_a_key_twice_at_once_and_keeps_its_offset_order() -> None:
    source = keyed_source(400, keys=10, partitions=2)
    calls = Calls(delay=0.002)
    loop = concurrent_loop(source, calls, concurrency=20, ordering="key")
    loop.start()
    run_until(loop, lambda: len(calls.calls) == 400)
    loop.close()
    assert no_overlap_in_offset_order(calls.calls, lambda c: c)
    assert calls.most_running > 2  # different keys did run together


def test_partition_ordering_runs_one_message_per_partition() -> None:
    source = keyed_source(200, keys=10, partitions=2)
    calls = Calls(delay=0.001)
    loop = concurrent_loop(source, calls, concurrency=20, ordering="partition")
    loop.start()
    run_until(loop, lambda: len(calls.calls) == 200)
    loop.close()
    assert no_overlap_in_offset_order(calls.calls, lambda c: c[1])
    assert calls.most_running == 2


def test_the_checker_sees_none_ordering_break_key_order() -> None:
    """The ordering check above can fail: with ordering none a key's messages overlap."""
    source = keyed_source(200, keys=2)
    calls = Calls(delay=0.002)
    loop = concurrent_loop(source, calls, concurrency=20, ordering="none")
    loop.start()
    run_until(loop, lambda: len(calls.calls) == 200)
    loop.close()
    assert not no_overlap_in_offset_order(calls.calls, lambda c: c)
    assert calls.most_running > 2


def test_the_watermark_stops_at_the_lowest_unfinished_message() -> None:
    gate = threading.Event()
    done: list[int] = []

    def handler(message: Message, _context: Context) -> None:
        if message.offset == 2:
            gate.wait(10)
        done.append(message.offset)

    source = keyed_source(6, keys=6)  # six keys: all may run at once
    loop = concurrent_loop(source, handler, concurrency=6)
    loop.start()
    run_until(loop, lambda: gap(loop) == 3)  # 3, 4 and 5 finished above the watermark
    snapshot = loop.snapshot()
    assert loop.watermarks() == {P0: 2}
    assert snapshot.in_flight == {"t": 1}
    gate.set()
    run_until(loop, lambda: loop.watermarks() == {P0: 6})
    assert loop.snapshot().partitions[P0].gap == 0
    loop.close()
    assert source.committed_offsets == {P0: 6}


def gap(loop: ConsumerLoop) -> int | None:
    partition = loop.snapshot().partitions.get(P0)
    return None if partition is None else partition.gap


def test_a_full_buffer_takes_nothing_more_and_pauses_the_route() -> None:
    gate = threading.Event()
    source = keyed_source(100, keys=1)  # one key: one message at a time
    loop = concurrent_loop(source, lambda m, c: gate.wait(10), concurrency=4, max_buffered=10,
                           batch_size=5)
    loop.start()
    for _ in range(6):
        loop.run_once()
    snapshot = loop.snapshot()
    assert snapshot.queued == {P0: 10}  # the buffer is full, nothing more was taken
    assert snapshot.in_flight == {"t": 1}
    assert P0 in snapshot.paused
    # The turns that wait for room (every partition paused while polling) leave it paused.
    assert source.paused == {P0}
    gate.set()
    run_until(loop, lambda: loop.watermarks() == {P0: 100})
    assert P0 not in loop.snapshot().paused
    loop.close()


class PauseRecordingSource(InMemorySource):
    """Records every partition it was asked to pause."""

    def __init__(self, topics: Mapping[str, list[list[bytes]]]) -> None:
        super().__init__(topics)
        self.ever_paused: set[TP] = set()

    def pause(self, partitions: list[TP]) -> None:
        self.ever_paused.update(partitions)
        super().pause(partitions)


def test_a_lone_route_whose_handlers_drain_the_full_buffer_is_not_paused() -> None:
    # Pausing costs the client its prefetched messages (a resumed partition delivers nothing
    # for up to a second): a full buffer that drains within the wait only stops the intake.
    source = PauseRecordingSource({"t": [[]]})
    for i in range(100):
        source.append("t", 0, str(i).encode(), key=b"k")  # one key: one message at a time
    calls = Calls(delay=0.001)
    loop = concurrent_loop(source, calls, concurrency=4, max_buffered=10, batch_size=5)
    loop.start()
    run_until(loop, lambda: loop.watermarks() == {P0: 100})
    loop.close()
    assert len(calls.calls) == 100
    assert source.ever_paused == set()


def test_a_failing_key_holds_back_only_its_own_messages() -> None:
    clock = ManualClock()
    failing = {"attempts": 0}
    handled: list[tuple[bytes | None, int]] = []

    def handler(message: Message, _context: Context) -> None:
        if message.key == b"0" and failing["attempts"] < 2:
            failing["attempts"] += 1
            raise RuntimeError("down")
        handled.append((message.key, message.offset))

    source = keyed_source(20, keys=2)
    loop = concurrent_loop(source, handler, concurrency=4, clock=clock, route={
        "on_failure": "dead_letter",
        "retry": {"attempts": 5, "initial_backoff_seconds": 10, "jitter": 0}})
    loop.start()
    run_until(loop, lambda: len(handled) == 10)  # every message of key 1, none of key 0
    assert {key for key, _ in handled} == {b"1"}
    assert loop.watermarks() == {P0: None}  # the failing message 0 holds the watermark
    assert source.paused == set()  # the partition keeps flowing

    def later() -> bool:
        clock.advance(5)  # retry times come while the loop turns
        return len(handled) == 20

    run_until(loop, later)
    assert [o for k, o in handled if k == b"0"] == list(range(0, 20, 2))  # in order
    run_until(loop, lambda: loop.watermarks() == {P0: 20})
    loop.close()


def test_a_dead_lettered_message_is_done_and_its_key_moves_on() -> None:
    sink = InMemoryDeadLetterSink()

    def handler(message: Message, _context: Context) -> None:
        if message.offset == 0:
            raise ValueError("bad")

    source = keyed_source(6, keys=2)
    loop = concurrent_loop(source, handler, concurrency=4, sink=sink,
                           route={"on_failure": "dead_letter", "retry": {"attempts": 1}})
    loop.start()
    run_until(loop, lambda: loop.watermarks() == {P0: 6})
    loop.close()
    assert [m.offset for _, m, _ in sink.sent] == [0]


def test_a_message_whose_dead_letter_failed_is_not_run_again_and_its_key_follows_in_order(
) -> None:
    """Message 0 used up its attempts but the broker refused its dead letter: it is retried
    without its handler, with its key's later messages chained behind it. They wait for its
    dead letter and then run in order."""
    clock = ManualClock()
    sink = InMemoryDeadLetterSink()
    sink.fail_with = DeadLetterFailed("t", 0, 0, "t.dlq", "broker away", retriable=True)
    handled: list[int] = []

    def handler(message: Message, _context: Context) -> None:
        handled.append(message.offset)
        if message.offset == 0:
            raise ValueError("bad")

    source = keyed_source(5, keys=1)
    loop = concurrent_loop(source, handler, concurrency=4, clock=clock, sink=sink,
                           route={"on_failure": "dead_letter", "retry": {"attempts": 1}})
    loop.start()
    run_until(loop, lambda: loop.snapshot().queued == {P0: 4})  # 0 waits for its letter
    sink.fail_with = None

    def later() -> bool:
        clock.advance(5)  # the letter's retry comes while the loop turns
        return loop.watermarks() == {P0: 5}

    run_until(loop, later)
    loop.close()
    assert [m.offset for _, m, _ in sink.sent] == [0]
    assert handled == [0, 1, 2, 3, 4]  # 0 once: its retry only sent the letter


def test_a_stopping_failure_checkpoints_the_work_before_it_and_runs_nothing_more() -> None:
    calls = Calls()

    def handler(message: Message, context: Context) -> None:
        if message.offset == 5:
            raise RuntimeError("fatal")
        calls(message, context)

    source = keyed_source(50, keys=50)
    loop = concurrent_loop(source, handler, concurrency=2, ordering="partition")
    with pytest.raises(HandlerFailed):
        loop.run()
    assert source.committed_offsets == {P0: 5}
    assert sorted(o for _, _, o, _, _ in calls.calls) == [0, 1, 2, 3, 4]


def test_shutdown_waits_for_running_handlers_and_commits_them() -> None:
    started = threading.Event()
    release = threading.Event()
    done: list[int] = []

    def handler(message: Message, _context: Context) -> None:
        started.set()
        release.wait(10)
        done.append(message.offset)

    source = keyed_source(3, keys=3)
    loop = concurrent_loop(source, handler, concurrency=3)
    loop.start()
    run_until(loop, lambda: loop.snapshot().in_flight == {"t": 3})
    threading.Timer(0.2, release.set).start()
    loop.request_stop()
    loop.close()
    assert sorted(done) == [0, 1, 2]
    assert source.committed_offsets == {P0: 3}


def test_shutdown_runs_the_queued_messages_too_so_a_restart_repeats_nothing_finished() -> None:
    """A key's second message waits behind its first while other keys finish far above it:
    dropping it at shutdown would leave the watermark at it, and the restart would handle
    every finished message above it again."""
    release = threading.Event()
    done: list[int] = []

    def handler(message: Message, _context: Context) -> None:
        if message.offset == 0:
            release.wait(10)
        done.append(message.offset)

    source = InMemorySource({"t": [[]]})
    source.append("t", 0, b"0", key=b"slow")
    source.append("t", 0, b"1", key=b"slow")  # queued behind offset 0 (same key)
    for i in range(2, 10):
        source.append("t", 0, str(i).encode(), key=b"fast")
    loop = concurrent_loop(source, handler, concurrency=4)
    loop.start()
    run_until(loop, lambda: sorted(done) == list(range(2, 10)))
    threading.Timer(0.2, release.set).start()
    loop.request_stop()
    loop.close()
    assert sorted(done) == list(range(10))
    assert source.committed_offsets == {P0: 10}


def test_shutdown_drops_the_queued_messages_above_every_started_one() -> None:
    """Nothing finished above them, so the restart reads them and repeats nothing: running
    them would spend the grace period on the whole buffer. Those below a finished message
    still run (the test above)."""
    release = threading.Event()
    done: list[tuple[int, int]] = []

    def handler(message: Message, _context: Context) -> None:
        if message.offset == 0:
            release.wait(10)
        done.append((message.partition, message.offset))

    source = InMemorySource({"t": [[]]})
    source.append("t", 0, b"0", key=b"slow")
    source.append("t", 0, b"1", key=b"slow")  # below offset 2, which finishes: runs
    source.append("t", 0, b"2", key=b"fast")
    for i in range(3, 10):
        source.append("t", 0, str(i).encode(), key=b"slow")  # above it: dropped
    loop = concurrent_loop(source, handler, concurrency=4)
    loop.start()
    run_until(loop, lambda: done == [(0, 2)])
    threading.Timer(0.2, release.set).start()
    loop.close()
    assert sorted(done) == [(0, 0), (0, 1), (0, 2)]
    assert source.committed_offsets == {P0: 3}


def test_a_shutdown_that_runs_out_of_time_says_what_the_restart_repeats(
        caplog: pytest.LogCaptureFixture) -> None:
    """A handler outlives the time to settle (grace 1 s: 0.5 s) with a message finished
    above it: the watermark stays at it, and the warning says so and what to change."""
    handler = SlowKey()
    source = InMemorySource({"t": [[]]})
    source.append("t", 0, b"0", key=b"slow")
    source.append("t", 0, b"1", key=b"fast")
    loop = concurrent_loop(source, handler, concurrency=4, grace_seconds=1.0)
    loop.start()
    run_until(loop, lambda: handler.done == [1])
    loop.request_stop()
    try:
        with caplog.at_level("WARNING", logger="consumer.engine"):
            loop.close()
    finally:
        handler.release.set()
    # the watermark stays at the running message; the commit lists the one finished above
    assert source.committed_offsets == {("t", 0): 0}
    assert finished_in(source.commit_metadata[("t", 0)], 0) == {1}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "stopping: the 0.5 s to finish work ran out (not started or waiting for a retry: 0; "
        "still running: 1): the next run handles them again, but not the 1 messages that "
        "finished above them (the commit lists them; the store's keys skip them). A longer "
        "shutdown.grace_seconds avoids it."]


def test_leaving_the_group_after_the_shutdown_waits_for_no_handler_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shutdown's checkpoint waits for a stuck handler as long as the grace allows; the
    revoke that leaving the group runs next must not wait for it a second time, or the
    shutdown outlasts its grace and the watchdog ends the process. (The manual clock never
    moves: each settle waits exactly once, as long as its time to settle.)"""
    handler = SlowKey()
    source = InMemorySource({"t": [[]]})
    source.append("t", 0, b"0", key=b"slow")
    loop = concurrent_loop(source, handler, concurrency=4, grace_seconds=1.0)
    loop.start()
    run_until(loop, lambda: loop.snapshot().in_flight == {"t": 1})
    dispatcher = dispatcher_of(loop)
    waits: list[float] = []
    drain = dispatcher._drain

    def recorded(partitions: Mapping[TP, object], *, block: float, **kwargs: object) -> bool:
        if block > 0:
            waits.append(block)
        return drain(partitions, block=block, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dispatcher, "_drain", recorded)
    loop.request_stop()
    try:
        loop.close()
    finally:
        handler.release.set()
    assert waits == [0.5]
    assert source.closed


@pytest.mark.parametrize("compacted", [(), (4, 5)], ids=["all-there", "4-5-compacted"])
def test_a_restart_skips_the_messages_its_commit_says_finished(
        compacted: tuple[int, ...]) -> None:
    """The last commit stopped at offset 2 and listed 4, 5 and 8 as finished above it: the
    next run handles the rest only, and its commit moves past all of them. Listed offsets
    that compaction removed since are never polled: once the run passes them they leave the
    skip list, so later commits stop carrying them."""
    source = keyed_source(10, keys=10)
    source._log[P0] = [m for m in source._log[P0] if m.offset not in compacted]
    source.committed_offsets[P0] = 2
    source.commit_metadata[P0] = with_gap(2, {4, 5, 8})
    calls = Calls()
    loop = concurrent_loop(source, calls, concurrency=4)
    loop.start()
    run_until(loop, lambda: loop.watermarks() == {P0: 10})
    assert dispatcher_of(loop).finished_above(P0) is None
    loop.close()
    assert sorted(offset for _, _, offset, _, _ in calls.calls) == [2, 3, 6, 7, 9]
    assert source.committed_offsets == {P0: 10}
    assert source.commit_metadata[P0] == COMMIT_MARKER  # nothing finished above 10


def test_interval_checkpoints_list_what_finished_above_a_stuck_message() -> None:
    """The watermark stays at a blocked message; each interval's commit (same offset) says
    which messages finished above it, and none once the watermark passed them."""
    handler = SlowKey()
    source = InMemorySource({"t": [[]]})
    source.append("t", 0, b"0", key=b"fast")
    source.append("t", 0, b"1", key=b"slow")
    for offset in range(2, 6):
        source.append("t", 0, str(offset).encode(), key=f"k{offset}".encode())
    clock = ManualClock()
    loop = concurrent_loop(source, handler, concurrency=4, clock=clock, every_seconds=1.0)
    loop.start()
    try:
        run_until(loop, lambda: sorted(handler.done) == [0, 2, 3, 4, 5])
        clock.advance(1.5)
        run_until(loop, lambda: source.commit_metadata.get(P0, "") != COMMIT_MARKER
                  and P0 in source.committed_offsets)
        assert source.committed_offsets == {P0: 1}
        assert finished_in(source.commit_metadata[P0], 1) == {2, 3, 4, 5}
        commits = len(source.commits)
        clock.advance(1.5)
        for _ in range(3):
            loop.run_once()
        assert len(source.commits) == commits  # the same gap is not committed twice
    finally:
        handler.release.set()
    run_until(loop, lambda: loop.watermarks() == {P0: 6})
    loop.close()
    assert source.committed_offsets == {P0: 6}
    assert source.commit_metadata[P0] == COMMIT_MARKER


def test_a_revoked_partition_finishes_its_running_work_and_drops_the_queue() -> None:
    release = threading.Event()
    source = keyed_source(10, keys=1)  # one key: one runs, nine wait
    loop = concurrent_loop(source, lambda m, c: release.wait(10), concurrency=4)
    loop.start()
    run_until(loop, lambda: loop.snapshot().in_flight == {"t": 1})
    threading.Timer(0.2, release.set).start()
    source.revoke([P0])
    assert source.committed_offsets == {P0: 1}  # the running one, not the queued nine
    assert loop.snapshot().queued == {}
    loop.close()


def test_a_lost_partitions_running_work_is_abandoned_without_a_commit() -> None:
    release = threading.Event()
    source = keyed_source(3, keys=3)
    loop = concurrent_loop(source, lambda m, c: release.wait(10), concurrency=3)
    loop.start()
    run_until(loop, lambda: loop.snapshot().in_flight == {"t": 3})
    loop.on_lost([P0])
    release.set()
    time.sleep(0.05)
    loop.run_once()
    assert source.committed_offsets == {}
    assert loop.watermarks() == {}
    loop.close()


def test_a_lost_partitions_messages_chained_behind_a_running_one_never_start() -> None:
    """One key: its worker is handed the next messages with the first (a chain); the loss
    cuts the chain, so they are left to the new owner rather than run here too."""
    release = threading.Event()
    ran: list[int] = []

    def handler(message: Message, _context: Context) -> None:
        ran.append(message.offset)
        release.wait(10)

    source = keyed_source(10, keys=1)
    loop = concurrent_loop(source, handler, concurrency=4)
    loop.start()
    run_until(loop, lambda: loop.snapshot().in_flight == {"t": 1})
    loop.on_lost([P0])
    release.set()
    run_until(loop, lambda: loop.snapshot().in_flight == {"t": 0})
    assert ran == [0]
    assert loop.snapshot().queued == {}
    loop.close()


def test_async_handlers_run_on_the_event_loop_many_at_once() -> None:
    import asyncio

    running = {"now": 0, "most": 0}
    done: list[int] = []

    async def handler(message: Message, _context: Context) -> None:
        running["now"] += 1  # one event loop thread: no lock needed
        running["most"] = max(running["most"], running["now"])
        await asyncio.sleep(0.01)
        running["now"] -= 1
        done.append(message.offset)

    source = keyed_source(100, keys=100)
    loop = concurrent_loop(source, handler, concurrency=50)  # type: ignore[arg-type]
    loop.start()
    run_until(loop, lambda: loop.watermarks() == {P0: 100})
    loop.close()
    assert sorted(done) == list(range(100))
    assert 10 < running["most"] <= 50
    assert source.committed_offsets == {P0: 100}


def test_an_async_handler_with_concurrency_one_is_awaited_one_at_a_time() -> None:
    seen: list[int] = []

    async def handler(message: Message, _context: Context) -> None:
        seen.append(message.offset)

    source = keyed_source(5, keys=5)
    loop = concurrent_loop(source, handler, concurrency=1)  # type: ignore[arg-type]
    dispatcher_of(loop)
    loop.start()
    run_until(loop, lambda: loop.watermarks() == {P0: 5})
    loop.close()
    assert sorted(seen) == [0, 1, 2, 3, 4]
