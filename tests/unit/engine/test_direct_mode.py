"""consumer.engine.direct_mode with handlers on workers: the poll never waits while handlers
run (their completions would wait for it); the turn waits for a handler instead."""

from __future__ import annotations

import threading
import time

from consumer.app import build_loop
from consumer.clock import ManualClock
from consumer.message import TP, Context, Message
from consumer.routing import Route, Router
from consumer.testing import InMemoryDeadLetterSink, InMemorySource
from tests.support.wiring import loop_settings

P0: TP = ("t", 0)


class TimedSource(InMemorySource):
    """Records each poll's timeout."""

    def __init__(self) -> None:
        super().__init__({"t": [[]]})
        self.timeouts: list[float] = []

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        self.timeouts.append(timeout)
        return super().poll(max_messages, timeout)


def test_the_poll_does_not_wait_while_handlers_run_and_the_turn_waits_for_one() -> None:
    source = TimedSource()
    for i in range(2):
        source.append("t", 0, b"v", key=str(i).encode())
    release = threading.Event()
    finished: list[int] = []

    def handler(message: Message, _context: Context) -> None:
        release.wait(10)
        finished.append(message.offset)

    settings = loop_settings(["t"], route={"concurrency": 4, "on_failure": "stop",
                                           "retry": {"attempts": 1}})
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"poll_timeout_seconds": 30.0})})
    loop = build_loop(settings, Router([Route("t", handler, "x:y")]), source=source,
                      clock=ManualClock(), dead_letters=InMemoryDeadLetterSink())
    loop.start()
    loop.run_once()  # nothing runs yet: the poll may wait its whole timeout
    assert source.timeouts == [30.0]
    timer = threading.Timer(0.05, release.set)
    timer.start()
    began = time.monotonic()
    loop.run_once()  # two handlers run: the poll does not wait, the turn waits for them
    took = time.monotonic() - began
    timer.join()
    assert source.timeouts[1] == 0.0
    assert took < 5.0  # woken by the handlers finishing, not by the 30 s poll timeout
    loop.run_once()
    assert sorted(finished) == [0, 1]
    assert loop.watermarks() == {P0: 2}
    loop.close()
