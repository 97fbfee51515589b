"""`consumer run` as a member of a chaos run: the product unchanged, plus the zombie gate the
test opens (tests/support/zombie.py); with ``--defect``, one guarantee removed
(tests/support/broken_consumer.py).

    python -m tests.support.chaos_member [--defect NAME] run --config FILE

The gate: when ``$CHAOS_ZOMBIE_DIR/freeze`` exists, the first member to start a count or
interval checkpoint with a batch in hand takes it, writes the rows it is about to checkpoint,
and stops itself (SIGSTOP) before opening the store transaction. Continued, it goes straight
on with that checkpoint and writes how it ended. With concurrency (a route's handlers on
workers, ``consumer.checkpoint.store_message.StoreRows``), the same at a count or interval
checkpoint with rows to move, once a worker at least holds its transaction open (keys
claimed, effects written, no COMMIT: workers that finish a message's work wait there while
the gate is closing; an ``async def`` handler's awaits there): the whole process stops with
those transactions open (a MariaDB pool's micro-batch is its messages' transactions one by one,
each held the same way). Each member's
PostgreSQL sessions carry the application name ``chaos-member-PID``, so the test can see the
zombie's open transactions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from consumer.checkpoint.progress import PartitionProgress
from consumer.checkpoint.store_batch import BatchOutcome, StoreCheckpoint
from consumer.checkpoint.store_message import StoreRows
from consumer.cli import main
from consumer.events import Trigger
from consumer.message import TP, StoreLike
from consumer.store import Claim
from consumer.store.mariadb_async import AsyncMariaDBTransactions
from consumer.store.mariadb_pool import MariaDBTransactions
from consumer.store.postgres_async import AsyncPostgresTransactions
from consumer.store.postgres_pool import PostgresTransactions

T = TypeVar("T")

log = logging.getLogger("chaos.member")


def install_zombie_gate(directory: Path) -> None:
    original = StoreCheckpoint.run

    def run(self: StoreCheckpoint) -> BatchOutcome:
        if (self.trigger not in (Trigger.COUNT, Trigger.INTERVAL) or not self._messages
                or not (directory / "freeze").exists() or not _log_goes_on(self)
                or not _take_request(directory)):
            return original(self)
        _freeze(self, directory)
        return _late(directory, lambda: _answered(original, self))

    StoreCheckpoint.run = run  # type: ignore[method-assign]
    _install_concurrent_gate(directory)


class _Held:
    """Workers held inside their open transactions while the gate is closing.

    Closing lasts from one checkpoint to the next: a checkpoint often finds every worker
    between jobs, so waiting there for one to finish would rarely catch one; instead the loop
    goes on, workers that finish meanwhile stay in their transactions, and a later checkpoint
    that finds one held freezes the member."""

    def __init__(self) -> None:
        self.closing = False
        self.count = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def work(self, work: Callable[[StoreLike], None]) -> Callable[[StoreLike], None]:
        def held(db: StoreLike) -> None:
            work(db)
            if self.closing:
                with self.lock:
                    self.count += 1
                self.release.wait()
                with self.lock:
                    self.count -= 1

        return held

    def awaited(self, work: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """:meth:`work` for an ``async def`` handler's transaction: the wait for the release
        runs on a thread of the loop's executor, so the loop goes on meanwhile."""
        async def held(db: Any) -> None:
            await work(db)
            if self.closing:
                release = self.release
                with self.lock:
                    self.count += 1
                await asyncio.get_running_loop().run_in_executor(None, release.wait)
                with self.lock:
                    self.count -= 1

        return held

    def close(self, timeout: float) -> bool:
        """Start holding workers (if not yet); whether one is held within ``timeout``."""
        if not self.closing:
            self.release = threading.Event()
            self.closing = True
        deadline = time.monotonic() + timeout
        while self.count == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.count > 0

    def open(self) -> None:
        self.closing = False
        self.release.set()


def _install_concurrent_gate(directory: Path) -> None:
    original = StoreRows.run
    held = _Held()
    apply, apply_batch = PostgresTransactions.apply, PostgresTransactions.apply_batch
    apply_async = AsyncPostgresTransactions.apply

    def run(self: StoreRows, trigger: Trigger,
            partitions: Iterable[PartitionProgress]) -> dict[TP, int]:
        chosen = list(partitions)
        rows = _moving_rows(self, chosen) if trigger in (Trigger.COUNT, Trigger.INTERVAL) else []
        if not rows or not (directory / "freeze").exists() or not _rows_go_on(self, rows):
            held.open()  # not this checkpoint: whoever is held goes on
            return original(self, trigger, chosen)
        if not held.close(timeout=0.2):
            return original(self, trigger, chosen)  # still closing: the next one may freeze
        if not _take_request(directory):
            held.open()
            return original(self, trigger, chosen)
        _stop_as_zombie(directory, rows)
        held.open()
        return _late(directory, lambda: original(self, trigger, chosen))

    def one(self: PostgresTransactions, group: str, claim: Claim, now: float,
            work: Callable[[StoreLike], None]) -> bool:
        return apply(self, group, claim, now, held.work(work))

    def many(self: PostgresTransactions, group: str, claims: Sequence[Claim], now: float,
             works: Sequence[Callable[[StoreLike], None]]) -> list[bool | BaseException]:
        return apply_batch(self, group, claims, now, [held.work(w) for w in works])

    maria_apply = MariaDBTransactions.apply

    def maria_one(self: MariaDBTransactions, group: str, claim: Claim, now: float,
                  work: Callable[[StoreLike], None]) -> bool:
        return maria_apply(self, group, claim, now, held.work(work))

    async def awaited(self: AsyncPostgresTransactions, group: str, claim: Claim, now: float,
                      work: Callable[[Any], Awaitable[None]]) -> bool:
        return await apply_async(self, group, claim, now, held.awaited(work))

    maria_awaited_apply = AsyncMariaDBTransactions.apply

    async def maria_awaited(self: AsyncMariaDBTransactions, group: str, claim: Claim,
                            now: float, work: Callable[[Any], Awaitable[None]]) -> bool:
        return await maria_awaited_apply(self, group, claim, now, held.awaited(work))

    StoreRows.run = run  # type: ignore[method-assign]
    AsyncMariaDBTransactions.apply = maria_awaited  # type: ignore[method-assign]
    AsyncPostgresTransactions.apply = awaited  # type: ignore[method-assign]
    PostgresTransactions.apply = one  # type: ignore[method-assign]
    PostgresTransactions.apply_batch = many  # type: ignore[method-assign]
    MariaDBTransactions.apply = maria_one  # type: ignore[method-assign]


def _moving_rows(rows: StoreRows, partitions: list[PartitionProgress]) -> list[list[Any]]:
    """The rows this checkpoint is about to write (the watermarks that moved)."""
    return [[p.topic, p.partition, p.watermark, p.epoch] for p in partitions
            if p.watermark is not None
            and rows._stored.get((p.topic, p.partition)) != p.watermark]


def _rows_go_on(rows: StoreRows, moving: list[list[Any]]) -> bool:
    source = rows._commits._source
    return any(source.offset_range((t, p))[1] > offset for t, p, offset, _ in moving)


def _answered(run: Callable[[StoreCheckpoint], BatchOutcome],
              checkpoint: StoreCheckpoint) -> BatchOutcome:
    """The checkpoint, its store's answer read at once: the zombie's outcome is the
    answer's (the store sends a batch's closing and reads the answer later, which the loop
    would do at its next checkpoint)."""
    outcome = run(checkpoint)
    return checkpoint.finish() if checkpoint.answer_pending else outcome


def _late(directory: Path, checkpoint: Callable[[], T]) -> T:
    """The zombie's checkpoint, continued; writes how it ended (the error's class, and its
    message on the lines after)."""
    outcome = directory / f"zombie-{os.getpid()}.outcome"
    try:
        result = checkpoint()
    except BaseException as error:
        log.warning("chaos: the zombie's late checkpoint raised %s", type(error).__name__)
        outcome.write_text(f"{type(error).__name__}\n{error}")
        raise
    log.warning("chaos: the zombie's late checkpoint committed")
    outcome.write_text("committed")
    return result


def _batch_ends(checkpoint: StoreCheckpoint) -> dict[tuple[str, int], int]:
    ends: dict[tuple[str, int], int] = {}
    for message in checkpoint._messages:
        tp = (message.topic, message.partition)
        ends[tp] = max(ends.get(tp, 0), message.offset + 1)
    return ends


def _log_goes_on(checkpoint: StoreCheckpoint) -> bool:
    """Whether a partition of the batch has messages after it, so the new owner can
    checkpoint past the zombie's batch (and a late write would move its row back)."""
    return any(checkpoint._source.offset_range(tp)[1] > end
               for tp, end in _batch_ends(checkpoint).items())


def _take_request(directory: Path) -> bool:
    try:
        os.rename(directory / "freeze", directory / f"taken-{os.getpid()}")
    except FileNotFoundError:
        return False
    return True


def _freeze(checkpoint: StoreCheckpoint, directory: Path) -> None:
    """Write the rows this checkpoint is about to write, then stop until SIGCONT."""
    rows = [[t, p, offset, checkpoint._partitions[(t, p)].epoch]
            for (t, p), offset in _batch_ends(checkpoint).items()]
    _stop_as_zombie(directory, rows)


def _stop_as_zombie(directory: Path, rows: list[list[Any]]) -> None:
    staging = directory / f".zombie-{os.getpid()}.json"
    staging.write_text(json.dumps({"pid": os.getpid(), "rows": rows}))
    staging.rename(directory / f"zombie-{os.getpid()}.json")
    log.warning("chaos: freezing before the checkpoint of %s", rows)
    os.kill(os.getpid(), signal.SIGSTOP)
    log.warning("chaos: continued, checkpointing late as a zombie")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--defect"]:
        from tests.support.broken_consumer import break_consumer

        break_consumer(args[1])
        args = args[2:]
    # libpq names this process's sessions (pg_stat_activity.application_name)
    os.environ.setdefault("PGAPPNAME", f"chaos-member-{os.getpid()}")
    install_zombie_gate(Path(os.environ["CHAOS_ZOMBIE_DIR"]))
    sys.exit(main(args))
