"""The no-op handler's bookkeeping, the same for every contender, and the child's run spec.

Standard library only: this module is imported inside every benchmark environment.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunSpec:
    """What one child run consumes, and how the contender is configured."""

    bootstrap: str
    topic: str
    group: str
    messages: int
    options: dict[str, Any] = field(default_factory=dict)
    #: Stop once this many seconds passed since the first message, even short of ``messages``.
    cap_seconds: float | None = None


class Tally:
    """Counts messages reaching the handler; notes when the first and the last arrived.

    The timed phase runs from the first message reaching the handler to the ``target``-th (or
    the first one past ``cap_seconds``), so process start, imports, group join and the final
    commit are all outside it. Every call reads the clock once, whichever contender calls.
    """

    __slots__ = ("_stop_at", "cap_seconds", "capped", "count", "cpu_first", "cpu_last",
                 "first_at", "last_at", "subscribed_at", "target", "timed")

    def __init__(self, target: int, cap_seconds: float | None = None) -> None:
        self.target = target
        self.cap_seconds = cap_seconds
        #: Messages that reached the handler; ``timed``: those up to the end of the timed phase
        #: (a contender may hand over a few more while it stops).
        self.count = 0
        self.timed = 0
        self.capped = False
        self.subscribed_at: float | None = None
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.cpu_first: float | None = None
        self.cpu_last: float | None = None
        self._stop_at = math.inf

    def subscribing(self) -> None:
        """Call just before the contender subscribes (or starts, when that subscribes)."""
        self.subscribed_at = time.perf_counter()

    def add(self, count: int = 1) -> bool:
        """Count ``count`` handled messages; True once the run should stop."""
        now = time.perf_counter()
        if self.count == 0:
            self.first_at = now
            self.cpu_first = time.process_time()
            if self.cap_seconds is not None:
                self._stop_at = now + self.cap_seconds
        self.count += count
        if self.last_at is not None:
            return True
        if self.count >= self.target or now >= self._stop_at:
            self.last_at = now
            self.cpu_last = time.process_time()
            self.timed = self.count
            self.capped = self.count < self.target
            return True
        return False

    @property
    def done(self) -> bool:
        return self.last_at is not None

    def phases(self) -> dict[str, float | None]:
        """Seconds of each phase (None when it never started)."""
        def between(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else b - a

        return {
            "join_s": between(self.subscribed_at, self.first_at),
            "consume_s": between(self.first_at, self.last_at),
            "consume_cpu_s": between(self.cpu_first, self.cpu_last),
        }
