"""Turns at the write lock of an SQLite file that several processes share.

SQLite's busy handler polls: a writer that finds the file locked sleeps and tries again, up to
100 ms apart, while a process committing batch after batch takes the lock again within
microseconds of releasing it. So a waiting writer could lose every try for as long as another
kept writing: a member's final checkpoint ran past its shutdown grace period this way, and a
member's start-up waited 20 s.

Writers that share a file take turns through a second file beside it, ``<database>-writers``:

1. A writer about to begin looks for writers waiting to begin (an exclusive, non-blocking
   ``flock`` fails while one holds its shared lock). If there is one, it stands aside until
   that writer has begun, at most :data:`STAND_ASIDE_SECONDS`, so the waiter takes the write
   lock at its busy handler's next try.
2. It then announces itself (a shared ``flock``) for as long as its ``BEGIN`` waits, and
   withdraws once it has begun.

A writer that never announces itself (another program, an older version) is served as SQLite
serves it. Standing aside is bounded, so a waiter that is frozen (SIGSTOP) or never gets the
lock costs the others at most that bound per batch. A process's locks go when it dies.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from consumer.errors import StoreUnavailable

#: How long a writer stands aside for a waiting one before it begins anyway: a few of the busy
#: handler's tries (100 ms apart at most).
STAND_ASIDE_SECONDS = 0.5
#: How often a writer standing aside looks whether the waiter has begun.
LOOK_EVERY_SECONDS = 0.002


class WriterTurns:
    """Takes turns with the other writers of one SQLite file; one per connection."""

    def __init__(self, database: str, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.path = f"{database}-writers"
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                           0o644)
        except OSError as error:
            raise StoreUnavailable(
                f"cannot open {self.path}, which writers of the SQLite store {database} use "
                f"to take turns: {error.strerror}; the store's directory must be writable"
            ) from None
        self._clock = clock
        self._sleep = sleep

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Around a statement that waits for the write lock (``BEGIN IMMEDIATE``, a write
        outside a transaction): stand aside for a waiting writer, then wait announced."""
        if self._fd is None:
            raise StoreUnavailable(f"{self.path} is closed")
        self._stand_aside(self._fd)
        announced = _try_flock(self._fd, fcntl.LOCK_SH)
        try:
            yield
        finally:
            if announced:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _stand_aside(self, fd: int) -> None:
        deadline = self._clock() + STAND_ASIDE_SECONDS
        while not _try_flock(fd, fcntl.LOCK_EX):
            if self._clock() >= deadline:
                return
            self._sleep(LOOK_EVERY_SECONDS)
        fcntl.flock(fd, fcntl.LOCK_UN)


def _try_flock(fd: int, kind: int) -> bool:
    """Takes the lock unless another open file holds a conflicting one; never blocks (a
    process frozen while it holds the lock for a moment must not stop the others)."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
