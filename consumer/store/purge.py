"""Retention of processed keys: a daemon thread with its own store connection deletes the
group's keys past retention, ``batch_size`` rows per transaction, off the poll thread.

Started and stopped by ``consumer run``. Never touches the loop, its connection or another
group's keys. A ``StoreError`` is logged (logger ``consumer.purge``) and retried at the next
interval, never raised into the consumer; ``processed_keys_purged`` reaches the observer on
this thread. Reads only the wall clock it is given.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from consumer.errors import StoreError
from consumer.events import Observer
from consumer.store import Store

log = logging.getLogger("consumer.purge")


class ProcessedKeyPurger:
    """Every ``every_seconds``, deletes the group's keys first seen more than
    ``retention_seconds`` ago, ``batch_size`` rows per transaction so no lock is held for long.
    Other groups sharing the database keep theirs: each purges with its own retention."""

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        group: str,
        retention_seconds: float,
        every_seconds: float,
        batch_size: int,
        observer: Observer,
        wall: Callable[[], float],
    ) -> None:
        self._open_store = open_store
        self._group = group
        self._retention = retention_seconds
        self._every = every_seconds
        self._batch_size = batch_size
        self._observer = observer
        self._wall = wall
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: Store | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="processed-key-purge",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def purge_once(self) -> int:
        """Delete the group's keys past retention, batch by batch; returns how many went."""
        if self._store is None:
            self._store = self._open_store()
        cutoff = self._wall() - self._retention
        total = 0
        while not self._stop.is_set():
            deleted = self._store.purge_processed_keys(self._group, cutoff,
                                                       self._batch_size)
            total += deleted
            if deleted < self._batch_size:
                break
        if total:
            self._observer.processed_keys_purged(total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.purge_once()
            except StoreError as error:
                log.warning("purging processed keys failed (will try again in %.0f s): %s",
                            self._every, error)
        if self._store is not None:
            self._store.close()
