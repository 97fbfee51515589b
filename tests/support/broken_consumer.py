"""`consumer run` with a guarantee deliberately removed, to prove the chaos checker can fail.

    python -m tests.support.broken_consumer VARIANT run --config FILE

- ``no-keys-checkpoint-outside``: no processed keys, and each message's writes commit on their
  own before the checkpoint row is written (a classic at-least-once consumer): every crash
  re-applies what came after the last checkpoint.
- ``no-keys-no-fence``: no processed keys, and the epoch fence is off: a frozen member that
  wakes up commits a batch its partitions' new owner has applied already.

The processed keys are removed in both because, with them, either change alone is still
caught: a re-delivered message's key is already claimed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from consumer.cli import main
from consumer.store import CheckpointRow, Claim, Store
from consumer.store_checkpoint import StoreCheckpoint
from consumer.transport import TP


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


def _store_classes() -> list[type[Store]]:
    from consumer.store.postgres import PostgresStore
    from consumer.store.sqlite import SQLiteStore

    return [SQLiteStore, PostgresStore]


VARIANTS = {
    "no-keys-checkpoint-outside": (_no_keys, _effects_commit_alone),
    "no-keys-no-fence": (_no_keys, _no_fence),
}

if __name__ == "__main__":
    variant, *rest = sys.argv[1:]
    for breakage in VARIANTS[variant]:
        breakage()
    sys.exit(main(rest))
