"""`consumer run` with a guarantee deliberately removed, to prove the chaos checker can fail.

    python -m tests.support.chaos_member --defect VARIANT run --config FILE
    python -m tests.support.broken_consumer VARIANT run --config FILE   (no zombie gate)

One defect each:

- ``kafka-before-store``: Kafka holds the position and is committed before the store: each
  batch commits its offsets to Kafka, then (a crash window later) the store's transaction; a
  new owner resumes at Kafka's offset. A kill in the window rolls the batch's effects back
  while Kafka has moved past them: the checker sees *lost* events.
- ``no-fence``: the checkpoint row's epoch condition is gone, keys kept. A zombie's late
  commit then succeeds; its effects are duplicates its keys already skip, but it moves the
  partition's checkpoint row back: the checker's row audit sees the regression.
- ``keys-apart``: the processed keys commit in their own transaction, before the effects (a
  crash window between). A kill there leaves keys without effects; the redelivered messages
  are skipped as done: *lost* events.

- ``no-keys``: no processed keys at all: a batch whose COMMIT landed unheard is applied
  again (the PostgreSQL connection-cut test).

And two with the processed keys removed too (with keys, either change alone is masked: a
re-delivered message's key is already claimed), caught as events applied twice:

- ``no-keys-checkpoint-outside``: each message's writes commit on their own before the
  checkpoint row is written (a classic at-least-once consumer).
- ``no-keys-no-fence``: a frozen member that wakes up commits a batch its partitions' new
  owner has applied already.

- ``no-claim``: with concurrency, each message's key claim records nothing and answers "new"
  (tests/support/broken_concurrent.py): a message read again is applied again.

A crash window writes ``$CHAOS_WINDOW_DIR/window-PID`` while it lasts
(``$CHAOS_WINDOW_SECONDS``, default 0.3), so the chaos can aim its kills into it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MethodType

from consumer.checkpoint.store_batch import BatchOutcome, StoreCheckpoint
from consumer.cli import main
from consumer.engine.store_mode import StoreMode
from consumer.errors import KafkaError
from consumer.message import TP
from consumer.store import CheckpointRow, Claim, Store


def _no_keys() -> None:
    def claim(self: Store, group: str, claims: Sequence[Claim], now: float) -> set[bytes]:
        return {c.key for c in claims}

    for cls in _store_classes():
        cls.claim = claim  # type: ignore[method-assign]
        cls.unclaim = lambda self, group, keys: None  # type: ignore[method-assign]


def _no_fence() -> None:
    def write_checkpoints(self: Store, group: str, rows: Sequence[CheckpointRow],
                          now: float) -> list[TP]:
        for row in rows:
            self.execute(
                "UPDATE consumer_checkpoints SET next_offset = %s, updated_at = %s "
                "WHERE group_id = %s AND topic = %s AND partition = %s",
                (row.next_offset, now, group, row.topic, row.partition),
            )
        return []

    for cls in _store_classes():
        cls.write_checkpoints = write_checkpoints  # type: ignore[method-assign]
        _close_with_rows(cls)


def _effects_commit_alone() -> None:
    """Commit after every handler: effects land before (outside) the checkpoint's transaction."""
    original = StoreCheckpoint._apply_optimistically

    def apply(self: StoreCheckpoint, *args, **kwargs):  # type: ignore[no-untyped-def]
        store = self._store

        def committing(handler):  # type: ignore[no-untyped-def]
            def run(message, context):  # type: ignore[no-untyped-def]
                handler(message, context)
                store.commit()
                store.begin()
            return run

        self._handlers = {topic: committing(h) for topic, h in self._handlers.items()}
        return original(self, *args, **kwargs)

    StoreCheckpoint._apply_optimistically = apply  # type: ignore[method-assign]


def crash_window() -> None:
    """Sleep where the defect leaves the store and Kafka (or keys and effects) apart."""
    marker = Path(os.environ.get("CHAOS_WINDOW_DIR", ".")) / f"window-{os.getpid()}"
    marker.touch()
    try:
        time.sleep(float(os.environ.get("CHAOS_WINDOW_SECONDS", "0.3")))
    finally:
        marker.unlink(missing_ok=True)


def _kafka_before_store() -> None:
    original = StoreCheckpoint.run

    def run(self: StoreCheckpoint) -> BatchOutcome:
        store = self._store
        commit_store = store.commit

        def commit() -> None:
            offsets: dict[TP, int] = {}
            for message in self._messages:
                tp = (message.topic, message.partition)
                offsets[tp] = max(offsets.get(tp, 0), message.offset + 1)
            if offsets:
                # A commit a rebalance refused (ILLEGAL_GENERATION) leaves Kafka not ahead of
                # the store for this batch. Raising would end every member at the next
                # rebalance and stall the chaos, not show the defect.
                with contextlib.suppress(KafkaError):
                    self._source.commit(offsets, asynchronous=False)
            crash_window()
            commit_store()

        store.commit = commit  # type: ignore[method-assign]
        # the rows and the commit as separate steps, so the commit above is the one called
        store.close_batch = MethodType(Store.close_batch, store)  # type: ignore[method-assign]
        store.send_close = MethodType(Store.send_close, store)  # type: ignore[method-assign]
        try:
            return original(self)
        finally:
            del store.commit, store.close_batch, store.send_close

    def resolve(self: StoreMode, tp: TP, stored: int | None,
                kafka: tuple[int | None, str | None]) -> int | None:
        return kafka[0] if kafka[0] is not None else stored

    StoreCheckpoint.run = run  # type: ignore[method-assign]
    StoreMode._resolve = resolve  # type: ignore[method-assign]


def _keys_apart() -> None:
    for cls in _store_classes():
        def claim(self: Store, group: str, claims: Sequence[Claim], now: float,
                  _claim: Callable[..., set[bytes]] = cls.claim) -> set[bytes]:
            new = _claim(self, group, claims, now)
            self.commit()
            crash_window()
            self.begin()
            return new

        cls.claim = claim  # type: ignore[method-assign]


def _close_with_rows(cls: type[Store]) -> None:
    """A batch closes with the class's own (broken) rows, not in the PostgreSQL store's
    pipeline or query string, which send its rows without calling it."""
    cls.close_batch = Store.close_batch  # type: ignore[method-assign]
    cls.send_close = Store.send_close  # type: ignore[method-assign]


def break_consumer(variant: str) -> None:
    for breakage in VARIANTS[variant]:
        breakage()


def _store_classes() -> list[type[Store]]:
    from consumer.store.postgres import PostgresStore
    from consumer.store.sqlite import SQLiteStore

    return [SQLiteStore, PostgresStore]


def _no_claim() -> None:
    """Concurrency's claims removed (tests/support/broken_concurrent.py)."""
    from tests.support.broken_concurrent import no_claim

    no_claim()


VARIANTS: Mapping[str, tuple[Callable[[], None], ...]] = {
    "kafka-before-store": (_kafka_before_store,),
    "no-fence": (_no_fence,),
    "keys-apart": (_keys_apart,),
    "no-keys": (_no_keys,),
    "no-keys-checkpoint-outside": (_no_keys, _effects_commit_alone),
    "no-keys-no-fence": (_no_keys, _no_fence),
    "no-claim": (_no_claim,),
}

if __name__ == "__main__":
    variant, *rest = sys.argv[1:]
    break_consumer(variant)
    sys.exit(main(rest))
