"""``python -m benchmarks.store_cycle``: what a checkpoint batch of plain messages costs a store
on its own, without a broker: the store's opening (``open_batch`` with the batch's stretches of
ordered coordinates keys) and closing (``send_close`` of its partition's row), as the loop runs
them, with the loop's own work between two batches stood in for by ``--gap-ms`` of spinning.
The closing's answer is read by the next opening, as in the loop.

A store on a server (``--store postgres``: ``CONSUMER_TEST_POSTGRES_DSN``; ``mariadb``:
``CONSUMER_TEST_MARIADB_URL``) gets a database of its own, dropped at the end; SQLite a file
in a temporary directory. Prints the median wall time of a batch's opening and closing, and
the process's CPU a batch outside the gap. To compare two versions of the code, run it from
each tree in turn, several times (the figure moves with the machine's hour):

    python -m benchmarks.store_cycle --store mariadb [--batches 1200] [--keys 1000] [--gap-ms 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.key_table import Databases
from consumer.dedup import KeyFormat, key_function
from consumer.message import Message
from consumer.store import CheckpointRow, ClaimBatch, Store, open_store

GROUP = "bench"
TOPIC = "bench-topic"
PARTITIONS = 6
TOPIC_IDS = {TOPIC: "bench-topic-id"}


def batches(count: int, keys: int) -> list[tuple[int, ClaimBatch, int]]:
    """``count`` batches of ``keys`` consecutive messages, partition by partition in turn:
    (partition, the batch's stretches, the partition's next offset after it)."""
    ordered = key_function("coordinates", TOPIC_IDS,
                           key_format=KeyFormat(ordered_coordinates=True))
    offsets = [0] * PARTITIONS
    made = []
    for number in range(count):
        partition = number % PARTITIONS
        first = offsets[partition]
        offsets[partition] += keys
        found = ordered.stretches([Message(TOPIC, partition, offset, b"", timestamp=0.0)
                                   for offset in range(first, first + keys)])
        if found is None:
            raise RuntimeError("the key function made no stretches of plain messages")
        made.append((partition, ClaimBatch(found), offsets[partition]))
    return made


def cycle(store: Store, made: list[tuple[int, ClaimBatch, int]],
          gap: float) -> tuple[float, float]:
    """Open and close every batch; the median wall seconds of one's opening and closing, and
    the CPU seconds a batch outside the gaps."""
    times = []
    cpu = time.process_time()
    spun = 0.0
    for partition, claims, next_offset in made:
        started = time.perf_counter()
        new = store.open_batch(GROUP, claims, 2.0)
        if len(new) != len(claims):
            raise RuntimeError(f"{len(claims) - len(new)} keys were claimed before")
        closing = store.send_close(GROUP, [CheckpointRow(TOPIC, partition, next_offset, 1)],
                                   2.0)
        times.append(time.perf_counter() - started)
        spin_started = time.process_time()
        until = time.perf_counter() + gap
        while time.perf_counter() < until:
            pass
        spun += time.process_time() - spin_started
    if closing.result():
        raise RuntimeError("the last batch was fenced")
    return statistics.median(times), (time.process_time() - cpu - spun) / len(made)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store_cycle",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "mariadb"], required=True)
    parser.add_argument("--batches", type=int, default=1200)
    parser.add_argument("--keys", type=int, default=1000, help="messages a batch")
    parser.add_argument("--gap-ms", type=float, default=1.0,
                        help="the loop's own work between two batches, spun")
    args = parser.parse_args(argv)
    made = batches(args.batches, args.keys)
    with tempfile.TemporaryDirectory(prefix="store-cycle-") as workdir:
        databases = Databases(args.store, Path(workdir), uuid.uuid4().hex[:8])
        try:
            store = open_store(databases.create("cycle"))
            try:
                store.ensure_schema(GROUP)
                store.use_topic_ids(TOPIC_IDS)
                store.assign(GROUP, [(TOPIC, p) for p in range(PARTITIONS)], 1.0)
                wall, cpu = cycle(store, made, args.gap_ms / 1000)
            finally:
                store.close()
        finally:
            databases.drop_all()
    print(f"{args.store}: {args.batches} batches of {args.keys} messages, "
          f"{args.gap_ms:g} ms between: {wall * 1e3:.3f} ms a batch (median, opening and "
          f"closing), {cpu * 1e6:.0f} µs of CPU a batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
