"""consumer.dispatch: handling a polled batch without a store, run by run of one partition."""

from __future__ import annotations

import pytest

from consumer.checkpoint.progress import PartitionProgress
from consumer.clock import ManualClock
from consumer.engine.dispatch import Dispatcher
from consumer.engine.stopping import StopRequest
from consumer.errors import HandlerFailed, OffsetWentBackwards
from consumer.message import TP, Context, Message
from consumer.observability.instruments import Instruments
from consumer.routing import Route, Router
from consumer.testing import InMemorySource

P0: TP = ("t", 0)
P1: TP = ("t", 1)


def batch(*coordinates: tuple[int, int]) -> list[Message]:
    return [Message("t", p, o, b"x", timestamp=0.0) for p, o in coordinates]


def dispatcher(handler: object) -> Dispatcher:
    router = Router([Route("t", handler, "tests:handler")])  # type: ignore[arg-type]
    return Dispatcher(router, group="g", keys={}, failures=None,
                      source=InMemorySource({"t": [[], []]}))


def progress(*tps: TP) -> dict[TP, PartitionProgress]:
    return {tp: PartitionProgress(*tp) for tp in tps}


def test_interleaved_runs_move_each_partitions_watermark_and_counts() -> None:
    seen: list[tuple[int, int]] = []
    partitions = progress(P0, P1)
    messages = batch((0, 0), (0, 1), (1, 5), (1, 7), (0, 2), (1, 9))
    done = dispatcher(lambda m, c: seen.append((m.partition, m.offset))).run(
        messages, partitions, 10.0, StopRequest())
    assert done == 6
    assert seen == [(0, 0), (0, 1), (1, 5), (1, 7), (0, 2), (1, 9)]
    assert (partitions[P0].watermark, partitions[P0].done) == (3, 3)
    assert (partitions[P1].watermark, partitions[P1].done) == (10, 3)
    assert partitions[P0].oldest_uncommitted_at == 10.0


def test_messages_of_a_partition_no_longer_assigned_are_skipped() -> None:
    seen: list[int] = []
    partitions = progress(P0)
    done = dispatcher(lambda m, c: seen.append(m.partition)).run(
        batch((0, 0), (1, 0), (0, 1)), partitions, 0.0, StopRequest())
    assert (done, seen) == (2, [0, 0])


def test_the_watermark_moves_with_each_message_for_a_scrape_during_a_stuck_handler() -> None:
    partitions = progress(P0)
    watched: list[int | None] = []

    def handler(message: Message, _context: Context) -> None:
        watched.append(partitions[P0].watermark)

    dispatcher(handler).run(batch((0, 0), (0, 1), (0, 2)), partitions, 0.0, StopRequest())
    assert watched == [None, 1, 2]


def test_a_failure_counts_the_messages_done_before_it_then_stops() -> None:
    partitions = progress(P0)

    def handler(message: Message, _context: Context) -> None:
        if message.offset == 2:
            raise ValueError("bad")

    with pytest.raises(HandlerFailed) as failed:
        dispatcher(handler).run(batch((0, 0), (0, 1), (0, 2), (0, 3)), partitions, 0.0,
                                StopRequest())
    assert (failed.value.partition, failed.value.offset) == (0, 2)
    assert (partitions[P0].watermark, partitions[P0].done) == (2, 2)


def test_a_stop_request_ends_the_batch_after_the_message_in_hand() -> None:
    stop = StopRequest()
    partitions = progress(P0)
    done = dispatcher(lambda m, c: stop.set()).run(batch((0, 0), (0, 1)), partitions, 0.0,
                                                   stop)
    assert done == 1
    assert partitions[P0].watermark == 1


def test_an_offset_behind_the_watermark_is_refused() -> None:
    partitions = progress(P0)
    partitions[P0].watermark = 5
    with pytest.raises(OffsetWentBackwards):
        dispatcher(lambda m, c: None).run(batch((0, 3)), partitions, 0.0, StopRequest())


class SlowChecks:
    """A failure policy whose check before each handler takes a second: the loop's own work."""

    checks_needed = True

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock

    def check(self, _message: Message) -> None:
        self._clock.advance(1.0)

    def succeeded(self, _message: Message) -> None:
        self._clock.advance(1.0)


def test_a_handler_call_is_timed_alone_not_with_the_loops_work_around_it() -> None:
    """consumer_handler_duration_seconds measures the call itself, as with a store: the
    checks before and after each call are not part of it."""
    clock = ManualClock()
    timer = Instruments(now=clock.monotonic)
    router = Router([Route("t", lambda m, c: clock.advance(0.2), "tests:handler")])
    dispatcher = Dispatcher(router, group="g", keys={}, failures=SlowChecks(clock),  # type: ignore[arg-type]
                            source=InMemorySource({"t": [[]]}), instruments=timer)
    dispatcher.run(batch((0, 0), (0, 1), (0, 2)), progress(P0), 0.0, StopRequest())
    assert timer.durations("t") == [pytest.approx(0.2)] * 3
    assert timer.started == 0.0


@pytest.mark.parametrize("metrics", [False, True], ids=["metrics-off", "metrics-on"])
def test_a_handler_of_the_message_alone_gets_it_and_no_context_is_built(
    metrics: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_context(*_args: object) -> None:
        raise AssertionError("a context was built for a handler of the message alone")

    monkeypatch.setattr(Context, "of", staticmethod(no_context))
    seen: list[int] = []

    def handle(message: Message) -> None:
        seen.append(message.offset)

    clock = ManualClock()
    timer = Instruments(now=clock.monotonic) if metrics else None
    router = Router([Route.of("t", handle, "tests:handle")])
    dispatcher = Dispatcher(router, group="g", keys={}, failures=None,
                            source=InMemorySource({"t": [[]]}), instruments=timer)
    partitions = progress(P0)
    done = dispatcher.run(batch((0, 0), (0, 1), (0, 2)), partitions, 0.0, StopRequest())
    assert (done, seen, partitions[P0].watermark) == (3, [0, 1, 2], 3)
    if timer is not None:
        assert len(timer.durations("t")) == 3
