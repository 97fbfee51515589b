"""When to checkpoint: every N done messages or T seconds, whichever comes first.

:class:`CheckpointPolicy` is frozen settings; :class:`CheckpointState` counts and answers
``due(now)``. Pure: the loop passes monotonic ``now`` in (poll thread); nothing here reads a
clock, blocks or raises.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumer.events import Trigger


@dataclass(frozen=True)
class CheckpointPolicy:
    """Either trigger may be None (off); the settings refuse both off."""

    every_messages: int | None = 1_000
    every_seconds: float | None = 5.0


class CheckpointState:
    """Counts done messages and time since the last checkpoint; answers ``due(now)``."""

    __slots__ = ("_last_at", "_policy", "done")

    def __init__(self, policy: CheckpointPolicy, now: float) -> None:
        self._policy = policy
        self._last_at = now
        self.done = 0

    def record_done(self, count: int = 1) -> None:
        self.done += count

    def due(self, now: float) -> Trigger | None:
        """The trigger that makes a checkpoint due now, or None."""
        policy = self._policy
        if policy.every_messages is not None and self.done >= policy.every_messages:
            return Trigger.COUNT
        if policy.every_seconds is not None and now - self._last_at >= policy.every_seconds:
            return Trigger.INTERVAL
        return None

    def seconds_until_interval(self, now: float) -> float | None:
        """Seconds until the interval trigger fires (0 when it is due); None when it is off."""
        if self._policy.every_seconds is None:
            return None
        return max(0.0, self._last_at + self._policy.every_seconds - now)

    def room(self) -> int | None:
        """Messages that may still be done before the count trigger fires (None: no limit)."""
        if self._policy.every_messages is None:
            return None
        return max(0, self._policy.every_messages - self.done)

    def reset(self, now: float) -> None:
        self._last_at = now
        self.done = 0
