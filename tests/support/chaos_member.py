"""`consumer run` as a member of a chaos run: the product unchanged, plus the zombie gate the
test opens (tests/support/zombie.py); with ``--defect``, one guarantee removed
(tests/support/broken_consumer.py).

    python -m tests.support.chaos_member [--defect NAME] run --config FILE

The gate: when ``$CHAOS_ZOMBIE_DIR/freeze`` exists, the first member to start a count or
interval checkpoint with a batch in hand takes it, writes the rows it is about to checkpoint,
and stops itself (SIGSTOP) before opening the store transaction. Continued, it goes straight
on with that checkpoint and writes how it ended.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

from consumer.checkpoint.store_batch import BatchOutcome, StoreCheckpoint
from consumer.cli import main
from consumer.events import Trigger

log = logging.getLogger("chaos.member")


def install_zombie_gate(directory: Path) -> None:
    original = StoreCheckpoint.run

    def run(self: StoreCheckpoint) -> BatchOutcome:
        if (self.trigger not in (Trigger.COUNT, Trigger.INTERVAL) or not self._messages
                or not (directory / "freeze").exists() or not _log_goes_on(self)
                or not _take_request(directory)):
            return original(self)
        _freeze(self, directory)
        outcome = directory / f"zombie-{os.getpid()}.outcome"
        try:
            result = original(self)
        except BaseException as error:
            log.warning("chaos: the zombie's late checkpoint raised %s", type(error).__name__)
            outcome.write_text(type(error).__name__)
            raise
        log.warning("chaos: the zombie's late checkpoint committed")
        outcome.write_text("committed")
        return result

    StoreCheckpoint.run = run  # type: ignore[method-assign]


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
    install_zombie_gate(Path(os.environ["CHAOS_ZOMBIE_DIR"]))
    sys.exit(main(args))
