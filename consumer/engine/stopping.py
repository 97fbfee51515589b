"""The stop request: set from a signal handler, read by the loop between messages."""

from __future__ import annotations


class StopRequest:
    """A flag the loop reads after every message; one attribute read, so it stays cheap."""

    __slots__ = ("requested",)

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True
