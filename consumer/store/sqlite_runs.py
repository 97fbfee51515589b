"""Runs of processed keys in the SQLite store (its schema version 4).

Within one batch, the messages of consecutive offsets of one partition have consecutive
ordered coordinates keys (consumer.dedup: topic, partition and offset, big-endian). Such a
stretch is kept as one row of ``consumer_processed_runs`` (first and last key, first and last
offset) instead of one row of ``consumer_processed_keys`` per key: a batch of 1,000 messages
over a few partitions writes a handful of rows. Since version 5 every ordered coordinates key
is kept in a run: a stretch of one, and a redriven event's honoured key of a topic the
consumer knows, as a run of one. Every other key (a header's or a function's digest) is kept
one row each, in the group's current generation (consumer.store.sqlite_generations).

A key is processed when ``consumer_processed_keys`` holds it or a run covers it. No run
overlaps another run, nor a key that table held before version 5 (generation 0, where the
lone coordinates keys of older versions are): every claim checks both, so the only run that
can cover a key is the one starting at or below it, one index seek away. A run need not ask
the later generations, which hold no ordered coordinates keys. SQLite takes one writer at a
time (``BEGIN IMMEDIATE``), so nothing lands between a check and its insert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consumer.store.base import Claim

#: Fewer consecutive keys than this stay one row each.
MIN_RUN = 2

TABLE = """CREATE TABLE IF NOT EXISTS consumer_processed_runs (
    group_id TEXT NOT NULL, first_key BLOB NOT NULL, last_key BLOB NOT NULL,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, first_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL, processed_at REAL NOT NULL,
    PRIMARY KEY (group_id, first_key)) WITHOUT ROWID"""
AGE_INDEX = """CREATE INDEX IF NOT EXISTS consumer_processed_runs_group_age
    ON consumer_processed_runs (group_id, processed_at)"""

#: The last key of the run starting at or below key ``K`` in group ``G`` (the only run that
#: may cover K), or an empty blob, which sorts below every key.
_LAST_KEY_BELOW = ("coalesce((SELECT last_key FROM consumer_processed_runs WHERE group_id = {G} "
                   "AND first_key <= {K} ORDER BY first_key DESC LIMIT 1), x'')")


def uncovered(group: str, key: str) -> str:
    """SQL true when no run of ``group`` covers ``key`` (both SQL expressions)."""
    return f"{_LAST_KEY_BELOW.format(G=group, K=key)} < {key}"


#: One run, unless a key of the table's generation 0 lies in it or a run overlaps it (then no
#: row: the change count says which). Parameters: group, first key, last key, topic, partition,
#: first offset, last offset, time.
INSERT_RUN = f"""INSERT INTO consumer_processed_runs
        (group_id, first_key, last_key, topic, partition, first_offset, last_offset,
         processed_at)
    SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
    WHERE NOT EXISTS (SELECT 1 FROM consumer_processed_keys
                      WHERE group_id = ?1 AND generation = 0 AND key BETWEEN ?2 AND ?3)
      AND {_LAST_KEY_BELOW.format(G="?1", K="?3")} < ?2"""

#: The run that may cover a key: parameters group and key; compare ``last_key`` to the key.
RUN_BELOW = """SELECT first_key, last_key, topic, partition, first_offset, last_offset,
        processed_at
    FROM consumer_processed_runs WHERE group_id = ? AND first_key <= ?
    ORDER BY first_key DESC LIMIT 1"""


@dataclass(frozen=True, slots=True)
class Run:
    """Claims ``first`` to ``last`` (indexes, inclusive) of a batch: one partition's
    consecutive offsets with consecutive keys."""

    first: int
    last: int


def split(claims: Sequence[Claim]) -> tuple[list[Run], list[Claim]]:
    """The batch's runs (in order), and the claims in none of them."""
    runs: list[Run] = []
    singles: list[Claim] = []
    from_bytes = int.from_bytes
    start = 0
    previous: Claim | None = None
    previous_value = -2
    for index, claim in enumerate(claims):
        value = from_bytes(claim.key, "big")
        if previous is None or value != previous_value + 1 \
                or claim.offset != previous.offset + 1 \
                or claim.partition != previous.partition or claim.topic != previous.topic:
            if index - start >= MIN_RUN:
                runs.append(Run(start, index - 1))
            else:  # a digest key breaks off at every claim: keep this path short
                singles.extend(claims[start:index])
            start = index
        previous, previous_value = claim, value
    if len(claims) - start >= MIN_RUN:
        runs.append(Run(start, len(claims) - 1))
    else:
        singles.extend(claims[start:])
    return runs, singles


def key_at(first_key: bytes, steps: int) -> bytes:
    """The key ``steps`` after ``first_key`` in its run."""
    return (int.from_bytes(first_key, "big") + steps).to_bytes(len(first_key), "big")
