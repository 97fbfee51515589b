"""Calling a handler: the one way every mode calls a route's handler, and what its timing means.

Both modes (without a store: engine/dispatch.py; with one: checkpoint/store_batch.py, optimistic
and one by one) call a topic's handler through the function :func:`handler_calls` gives for it,
resolved once per dispatcher or batch, never per message:

- metrics off: the handler itself. Nothing is paid, not even a call frame.
- metrics on: the handler wrapped in the one definition of a handler call's duration (the
  ``consumer_handler_duration_seconds`` histogram): from just before the handler is called to
  just after it returns or raises, two reads of the timer's clock. A call that returns is a
  success, appended to the topic's durations; a call that raises is an error, observed with its
  duration, and its exception goes on unchanged. While a call runs,
  :attr:`~consumer.events.HandlerTimings.started` holds its start (the scrape sees a stuck
  handler there); it is 0.0 between calls.
- A handler of the message alone (``def handle(message)``, a route's ``message_only``) is
  called with the message alone, timed or not: a mode gives it no context to build and drop.

What a mode does around the call (the failure policy's checks, dedup, savepoints) is not part
of it. A run that may be rolled back and run again (the store's optimistic batch) calls through
:class:`TrialCalls`, which holds the durations until the run stands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from consumer.events import HandlerTimings
from consumer.message import Context, Message

#: A handler as the modes call it: ``(message, context)``, or ``(message)`` for one that takes
#: the message alone (a route's ``message_only``).
AnyHandler = Callable[..., object]


def handler_calls(handlers: Mapping[str, AnyHandler],
                  timer: HandlerTimings | None) -> dict[str, AnyHandler]:
    """Per topic, what to call instead of its handler, with the same arguments: the handler
    itself with metrics off (``timer`` None), else the handler timed into ``timer``."""
    if timer is None:
        return dict(handlers)
    return {topic: _timed(handler, topic, timer, timer.durations(topic), timer.failed)
            for topic, handler in handlers.items()}


class TrialCalls:
    """Handler calls of a run whose writes may be rolled back and the run done again (the
    store's optimistic batch): its durations count only if it stands (:meth:`keep`), and a
    call that raises is not observed, since the run done again observes it; otherwise timed
    as :func:`handler_calls` times them."""

    def __init__(self, handlers: Mapping[str, AnyHandler], timer: HandlerTimings | None) -> None:
        self._timer = timer
        self._held: dict[str, list[float]] = {topic: [] for topic in handlers}
        if timer is not None:
            for topic in handlers:
                timer.durations(topic)  # the topic's series exist from its first call on
        #: Per topic, what to call instead of its handler.
        self.calls: dict[str, AnyHandler] = (
            dict(handlers) if timer is None else
            {topic: _timed(handler, topic, timer, self._held[topic], _unobserved)
             for topic, handler in handlers.items()})

    def keep(self) -> None:
        """The run stands: its calls' durations join the timer's."""
        timer = self._timer
        if timer is not None:
            for topic, held in self._held.items():
                if held:
                    timer.durations(topic).extend(held)
                    held.clear()


def _timed(handler: AnyHandler, topic: str, timer: HandlerTimings, durations: list[float],
           failed: Callable[[str, float], None]) -> AnyHandler:
    """``handler`` timed; called as it is (without a context: a handler of the message
    alone)."""
    now = timer.now
    succeeded = durations.append

    def call(message: Message, context: Context | None = None) -> None:
        timer.started = start = now()
        try:
            if context is None:
                handler(message)
            else:
                handler(message, context)
        except BaseException:
            seconds = now() - start
            timer.started = 0.0
            failed(topic, seconds)
            raise
        seconds = now() - start
        timer.started = 0.0
        succeeded(seconds)

    return call


def _unobserved(topic: str, seconds: float) -> None:
    """A call of a trial run raised: the run is done again, which observes it."""


class WorkerCalls:
    """Handler calls on worker threads (routes with ``concurrency``): the one way they are
    timed, into the same ``consumer_handler_duration_seconds``.

    A worker reads :attr:`clock` (the timer's) just before and just after the call, the same
    two points :func:`handler_calls` times, and hands the seconds to the poll thread with the
    call's outcome; only the poll thread records them (:meth:`record`), so the histograms are
    never written from two threads. Many calls run at once, so
    :attr:`~consumer.events.HandlerTimings.started` holds the start of the *oldest call still
    running*, as the poll thread last saw it (:meth:`oldest_running`); 0.0 when none runs.
    """

    def __init__(self, timer: HandlerTimings | None) -> None:
        self._timer = timer
        #: What workers read before and after a call; None: metrics off, calls are not timed.
        self.clock: Callable[[], float] | None = None if timer is None else timer.now

    def record(self, topic: str, seconds: float, *, failed: bool) -> None:
        """A worker's call finished after ``seconds`` (poll thread)."""
        timer = self._timer
        if timer is None:
            return
        if failed:
            timer.failed(topic, seconds)
        else:
            timer.durations(topic).append(seconds)

    def oldest_running(self, started: float) -> None:
        """The oldest call still running started at ``started`` (0.0: none runs)."""
        if self._timer is not None:
            self._timer.started = started
