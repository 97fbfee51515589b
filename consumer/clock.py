"""Time, passed in: the engine, checkpoint and failure code read the clock they were given
(:class:`SystemClock` in a process, :class:`ManualClock` in tests), never ``time`` directly,
so tests use plain numbers. ``monotonic`` is for intervals and deadlines, ``wall`` for
timestamps and store rows. No I/O; nothing here raises."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; for intervals."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch; for timestamps."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to; for tests."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
