"""Runs of processed keys in the PostgreSQL store (schema version 4, in stores created at it).

An ordered coordinates key (consumer.dedup) is its topic (8 bytes), partition (2) and offset (6),
big-endian, so a batch's messages of consecutive offsets of one partition have consecutive keys.
Such a stretch is one row of ``consumer_processed_runs``: the keys' first 10 bytes
(``key_head``) and the range of offsets they name (``key_offsets``), beside the messages'
own coordinates (``topic``, ``partition``, ``first_offset`` to ``last_offset``, for replay).
A batch of 1,000 messages over a few partitions writes a handful of rows, not 1,000.

Several writers claim at once (members, a zombie, concurrent handlers), so nobody may look and
then insert. An exclusion constraint (btree_gist) forbids two rows of a group with one head and
overlapping offsets, and ``INSERT … ON CONFLICT DO NOTHING`` waits for a session holding an
overlapping row uncommitted, then skips the row if that session committed: what the unique index
of ``consumer_processed_keys`` does for one key. A run that meets a processed key is not
inserted; its keys are then claimed one row each, so exactly the new ones come back.

For that, every writer keeps every ordered coordinates key here and never in
``consumer_processed_keys``: alone (a run of one) when it has no neighbour. Which keys those are
follows from a key's bytes and its message's topic (:class:`CoordinatesKeys`), so every writer
decides alike, a redriven copy too: it carries its original's key and is on its original's
topic. A digest key (a header's, a function's) whose first 8 bytes equal its topic's prefix
(odds of 1 in 2^64) would be kept here: still claimed once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from consumer.store.base import Claim
from consumer.store.key_runs import Run, head_and_offset

#: Created with the store (version 4) where btree_gist can be had; the age index serves purges.
EXTENSION = "CREATE EXTENSION IF NOT EXISTS btree_gist"
TABLE = """CREATE TABLE IF NOT EXISTS consumer_processed_runs (
    group_id text NOT NULL, key_head bytea NOT NULL, key_offsets int8range NOT NULL,
    topic text NOT NULL, partition integer NOT NULL, first_offset bigint NOT NULL,
    last_offset bigint NOT NULL, processed_at double precision NOT NULL,
    CONSTRAINT consumer_processed_runs_disjoint EXCLUDE USING gist
        (group_id WITH =, key_head WITH =, key_offsets WITH &&))"""
AGE_INDEX = """CREATE INDEX IF NOT EXISTS consumer_processed_runs_group_age
    ON consumer_processed_runs (group_id, processed_at)"""

#: Runs, each unless it overlaps a row; the inserted ones come back. Parameters: group, time,
#: then arrays of heads, first and past-the-last key offsets, topics, partitions, first offsets.
INSERT_RUNS = """INSERT INTO consumer_processed_runs
        (group_id, key_head, key_offsets, topic, partition, first_offset, last_offset,
         processed_at)
    SELECT %s, h, int8range(lo, hi), t, p, o, o + (hi - lo) - 1, %s
    FROM unnest(%s::bytea[], %s::bigint[], %s::bigint[], %s::text[], %s::integer[],
                %s::bigint[]) AS u(h, lo, hi, t, p, o)
    ON CONFLICT DO NOTHING
    RETURNING key_head, lower(key_offsets), upper(key_offsets)"""

#: One key, unless a row holds it (then no row comes back). Parameters: group, head, key
#: offset, topic, partition, offset, time.
INSERT_ONE = """INSERT INTO consumer_processed_runs
        (group_id, key_head, key_offsets, topic, partition, first_offset, last_offset,
         processed_at)
    VALUES (%s, %s, int8range(%s, %s + 1), %s, %s, %s, %s, %s)
    ON CONFLICT DO NOTHING
    RETURNING 1"""

Execute = Callable[[str, Sequence[Any]], Any]


def claim(execute: Execute, group: str, now: float, runs: Sequence[Run]) -> set[bytes] | None:
    """Insert the runs; return their keys that were new, or None when every run went in whole
    (each of their keys is new: nobody needs to make them). A run that overlaps a row
    (processed or claimed by another session, which is waited for) is claimed again one key
    at a time (a second statement)."""
    inserted = _insert(execute, group, now, runs)
    if len(inserted) == len(runs):
        return None
    new: set[bytes] = set()
    refused: list[Run] = []
    for run in runs:
        if (run.head, run.low, run.high) in inserted:
            new.update(run.key_list())
        else:
            refused.extend(run.singles())
    inserted = _insert(execute, group, now, refused)
    new.update(single.key_list()[0] for single in refused
               if (single.head, single.low, single.high) in inserted)
    return new


def _insert(execute: Execute, group: str, now: float,
            runs: Sequence[Run]) -> set[tuple[bytes, int, int]]:
    """:data:`INSERT_RUNS` for the runs; the (head, low, high) of those inserted."""
    # In key order: two writers claiming overlapping keys never wait for each other in a cycle.
    ordered = sorted(runs, key=lambda run: (run.head, run.low))
    return _ranges(execute(INSERT_RUNS, (
        group, now, [r.head for r in ordered], [r.low for r in ordered],
        [r.high for r in ordered], [r.topic for r in ordered], [r.partition for r in ordered],
        [r.first_offset for r in ordered])).fetchall())


def one_values(group: str, claim: Claim, now: float) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT_ONE` for a claim :class:`CoordinatesKeys` holds."""
    head, offset = head_and_offset(claim.key)
    return (group, head, offset, offset, claim.topic, claim.partition, claim.offset,
            claim.offset, now)


def _ranges(rows: Sequence[Sequence[Any]]) -> set[tuple[bytes, int, int]]:
    return {(bytes(head), int(low), int(high)) for head, low, high in rows}
