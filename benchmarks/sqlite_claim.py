"""``python -m benchmarks.sqlite_claim``: what one checkpoint batch costs the SQLite store, with
its claim against a claim of one ``INSERT`` per key, in the same run. No broker.

A batch here is what a store checkpoint does to the file: ``BEGIN IMMEDIATE``, claim
``--keys`` keys of one partition (``--key-kind``: ordered coordinates keys, which the store
keeps as one run, or digests, as header and function keys are, one row each), move that
partition's checkpoint row,
``COMMIT`` (durable: ``synchronous=FULL``). The two claims alternate batch by batch on one new
file, so both see the same table size and the same disk; the figure is each one's median
wall time per batch.

    python -m benchmarks.sqlite_claim [--batches 60] [--keys 1000] [--key-kind digest] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from consumer.dedup import KeyFormat, key_function
from consumer.message import Message
from consumer.store import CheckpointRow, Claim
from consumer.store.sqlite import SQLiteStore

GROUP = "bench"
TOPIC = "bench-topic"
PARTITIONS = 6

#: The baseline: one INSERT per key, as the store claimed before (``executemany``), into the
#: group's first generation, where the store's claims go too.
ONE_PER_KEY = """INSERT INTO consumer_processed_keys
                     (group_id, generation, key, topic, partition, "offset", processed_at)
                 VALUES (?, 1, ?, ?, ?, ?, ?)"""


def one_per_key(store: SQLiteStore, claims: Sequence[Claim], now: float) -> None:
    store.connection.executemany(
        ONE_PER_KEY, [(GROUP, c.key, c.topic, c.partition, c.offset, now) for c in claims])


def the_stores(store: SQLiteStore, claims: Sequence[Claim], now: float) -> None:
    new = store.claim(GROUP, claims, now)
    if len(new) != len(claims):
        raise RuntimeError(f"{len(claims) - len(new)} keys were already claimed")


def digest(message: Message) -> bytes:
    """A header key's form: 16 bytes all over the key space."""
    return hashlib.blake2b(b"%d/%d" % (message.partition, message.offset),
                           digest_size=16).digest()


def measure(directory: Path, batches: int, keys: int,
            key_kind: str = "coordinates") -> dict[str, list[float]]:
    store = SQLiteStore(str(directory / "claims.db"))
    store.ensure_schema(GROUP)
    positions = store.assign(GROUP, [(TOPIC, p) for p in range(PARTITIONS)], 0.0)
    key = digest if key_kind == "digest" else key_function(
        "coordinates", {TOPIC: "bench-topic-id"},
        key_format=KeyFormat(ordered_coordinates=store.ordered_coordinates))
    claims: dict[str, Callable[[SQLiteStore, Sequence[Claim], float], None]] = {
        "one INSERT per key": one_per_key, "the store's claim": the_stores}
    times: dict[str, list[float]] = {name: [] for name in claims}
    next_offset = [0] * PARTITIONS
    for batch in range(batches):
        for name, claim in claims.items():
            partition = batch % PARTITIONS
            first = next_offset[partition]
            next_offset[partition] += keys
            batch_claims = [Claim(key(Message(TOPIC, partition, o, b"")), TOPIC, partition, o)
                            for o in range(first, first + keys)]
            row = CheckpointRow(TOPIC, partition, first + keys, positions[(TOPIC, partition)].epoch)
            started = time.perf_counter()
            store.begin()
            claim(store, batch_claims, float(batch))
            if store.write_checkpoints(GROUP, [row], float(batch)):
                raise RuntimeError("the checkpoint row was refused")
            store.commit()
            times[name].append(time.perf_counter() - started)
    store.close()
    return times


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sqlite_claim",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--key-kind", choices=("coordinates", "digest"), default="coordinates")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the database file goes (default: a new temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        times = measure(Path(folder), args.batches, args.keys, args.key_kind)
    baseline = statistics.median(times["one INSERT per key"])
    print(f"{args.batches} batches of {args.keys:,} {args.key_kind} keys each way, alternated, "
          "one new file; "
          "median wall time per batch (BEGIN, claim, checkpoint row, durable COMMIT):")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:20} {median * 1000:6.2f} ms  ({median / baseline:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
