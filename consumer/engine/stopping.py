"""The stop request: set by a signal handler or another thread, read by the loop between
messages. Setting it is one attribute write, so it never blocks or raises and is safe inside a
signal handler; what stopping means (drain, commit, leave the group) is the loop's business."""

from __future__ import annotations


class StopRequest:
    """A flag the loop reads after every message; one attribute read, so it stays cheap."""

    __slots__ = ("requested",)

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True
