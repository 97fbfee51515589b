"""consumer.handler_call: the one way handlers are called, and what a call's duration measures."""

from __future__ import annotations

import pytest

from consumer.clock import ManualClock
from consumer.handler_call import TrialCalls, handler_calls
from consumer.message import Context, Message, Scope
from consumer.observability.instruments import Instruments
from consumer.routing import Handler

MESSAGE = Message("t", 0, 0, b"x", timestamp=0.0)
CONTEXT = Context(Scope("g"), MESSAGE)


def taking(clock: ManualClock, seconds: float, *, fails: bool = False) -> Handler:
    def handler(_message: Message, _context: Context) -> None:
        clock.advance(seconds)
        if fails:
            raise ValueError("bad")

    return handler


def test_with_metrics_off_the_handler_is_called_as_it_is() -> None:
    """Nothing is paid with metrics off: not even a call frame around the handler."""
    handler = taking(ManualClock(), 0.0)
    assert handler_calls({"t": handler}, None) == {"t": handler}
    assert TrialCalls({"t": handler}, None).calls == {"t": handler}


def test_a_call_lasts_from_just_before_the_handler_to_just_after_it() -> None:
    """Time outside the call (the loop's own work) is not part of it; success is recorded."""
    clock = ManualClock()
    timer = Instruments(now=clock.monotonic)
    call = handler_calls({"t": taking(clock, 0.2)}, timer)["t"]
    call(MESSAGE, CONTEXT)
    clock.advance(5.0)
    call(MESSAGE, CONTEXT)
    assert timer.durations("t") == [pytest.approx(0.2), pytest.approx(0.2)]


def test_a_call_that_raises_is_observed_as_an_error_and_its_exception_goes_on() -> None:
    clock = ManualClock()
    timer = Instruments(now=clock.monotonic)
    call = handler_calls({"t": taking(clock, 0.3, fails=True)}, timer)["t"]
    with pytest.raises(ValueError, match="bad"):
        call(MESSAGE, CONTEXT)
    assert timer.durations("t") == []
    assert (timer.handler[("t", "error")].count, timer.handler[("t", "error")].sum) == (
        1, pytest.approx(0.3))
    assert timer.started == 0.0


def test_the_call_in_progress_shows_its_start_and_none_between_calls() -> None:
    clock = ManualClock(start=100.0)
    timer = Instruments(now=clock.monotonic)
    seen: list[float] = []

    def handler(_message: Message, _context: Context) -> None:
        seen.append(timer.started)

    call = handler_calls({"t": handler}, timer)["t"]
    call(MESSAGE, CONTEXT)
    assert (seen, timer.started) == ([100.0], 0.0)


def test_a_trial_run_counts_its_calls_only_if_it_stands() -> None:
    """The store's optimistic batch: a run rolled back and done again is timed once, by the
    run done again; a call that raised in the trial is not observed (the next run observes
    it)."""
    clock = ManualClock()
    timer = Instruments(now=clock.monotonic)
    handlers = {"t": taking(clock, 0.2), "u": taking(clock, 0.1, fails=True)}
    rolled_back = TrialCalls(handlers, timer)
    rolled_back.calls["t"](MESSAGE, CONTEXT)
    with pytest.raises(ValueError):
        rolled_back.calls["u"](MESSAGE, CONTEXT)
    assert (timer.durations("t"), timer.handler[("u", "error")].count) == ([], 0)

    stands = TrialCalls(handlers, timer)
    stands.calls["t"](MESSAGE, CONTEXT)
    stands.calls["t"](MESSAGE, CONTEXT)
    assert timer.durations("t") == []
    stands.keep()
    assert timer.durations("t") == [pytest.approx(0.2), pytest.approx(0.2)]


def test_a_timed_handler_of_the_message_alone_is_called_with_it_alone() -> None:
    clock = ManualClock()
    timer = Instruments(now=clock.monotonic)
    seen: list[Message] = []

    def handle(message: Message) -> None:
        clock.advance(0.3)
        seen.append(message)

    handler_calls({"t": handle}, timer)["t"](MESSAGE)
    trial = TrialCalls({"t": handle}, timer)
    trial.calls["t"](MESSAGE)
    trial.keep()
    assert seen == [MESSAGE, MESSAGE]
    assert timer.durations("t") == [pytest.approx(0.3)] * 2
