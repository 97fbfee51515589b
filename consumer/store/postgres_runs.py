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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consumer.dedup import ordered_prefix
from consumer.store.base import Claim

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

_HEAD = 10  # bytes of topic and partition
_KEY = 16


class CoordinatesKeys:
    """Tells the claims whose key is an ordered coordinates key of their message's topic
    (kept as runs) from the rest. Reads the topic ids the key functions read (see
    :meth:`consumer.store.base.Store.use_topic_ids`), so it names a topic as they do.
    ``as_runs`` is set once the store's schema says it keeps runs; shared by the store and
    its message transactions, which are made before that."""

    __slots__ = ("_prefixes", "as_runs", "topic_ids")

    def __init__(self) -> None:
        self.as_runs = False
        self.topic_ids: Mapping[str, str] = {}
        self._prefixes: dict[str, bytes] = {}

    def prefix(self, topic: str) -> bytes:
        name = self.topic_ids.get(topic) or topic
        prefix = self._prefixes.get(name)
        if prefix is None:
            prefix = self._prefixes[name] = ordered_prefix(name)
        return prefix

    def holds(self, claim: Claim) -> bool:
        """Whether the store keeps this claim's key in a run."""
        key = claim.key
        return self.as_runs and len(key) == _KEY and key[:8] == self.prefix(claim.topic)


@dataclass(slots=True)
class Run:
    """Consecutive keys (offsets ``low`` to ``high`` - 1 after ``head``) of messages at
    consecutive offsets of one partition, from ``first_offset``."""

    head: bytes
    low: int
    high: int
    topic: str
    partition: int
    first_offset: int
    keys: list[bytes]

    def singles(self) -> list[Run]:
        return [Run(self.head, self.low + step, self.low + step + 1, self.topic,
                    self.partition, self.first_offset + step, [key])
                for step, key in enumerate(self.keys)]


def split(claims: Sequence[Claim], keys: CoordinatesKeys) -> tuple[list[Run], list[Claim]]:
    """The batch's ordered coordinates keys as runs (a partition's stretch continues across
    other partitions' messages), and the other claims (every claim, where the store keeps
    no runs). Runs every message of a batch: the
    common case, the next key of the run in hand, costs one conversion and four comparisons
    (a key one above a coordinates key of the same partition is one too: offsets stay far
    below the partition bytes)."""
    if not keys.as_runs:
        return [], list(claims)
    runs: list[Run] = []
    others: list[Claim] = []
    open_runs: dict[bytes, Run] = {}
    prefixes: dict[str, bytes] = {}
    from_bytes = int.from_bytes
    # The run in hand: the next key and offset that continue it, its partition, topic, keys.
    next_key = next_offset = partition = -1
    topic = ""
    run_keys: list[bytes] = []
    for claim in claims:
        key = claim.key
        if claim.offset == next_offset and from_bytes(key, "big") == next_key \
                and claim.partition == partition and claim.topic == topic:
            run_keys.append(key)
            next_key += 1
            next_offset += 1
            continue
        prefix = prefixes.get(claim.topic)
        if prefix is None:
            prefix = prefixes[claim.topic] = keys.prefix(claim.topic)
        if len(key) != _KEY or key[:8] != prefix:
            others.append(claim)
            continue
        head, low = key[:_HEAD], from_bytes(key[_HEAD:], "big")
        run = open_runs.get(head)
        if run is None or run.low + len(run.keys) != low or run.topic != claim.topic \
                or run.partition != claim.partition \
                or run.first_offset + len(run.keys) != claim.offset:
            run = open_runs[head] = Run(head, low, low, claim.topic, claim.partition,
                                        claim.offset, [])
            runs.append(run)
        run_keys, partition, topic = run.keys, run.partition, run.topic
        run_keys.append(key)
        next_key, next_offset = from_bytes(key, "big") + 1, claim.offset + 1
    for run in runs:
        run.high = run.low + len(run.keys)
    return runs, others


Execute = Callable[[str, Sequence[Any]], Any]


def claim(execute: Execute, group: str, now: float, runs: Sequence[Run]) -> set[bytes]:
    """Insert the runs; return their keys that were new. A run that overlaps a row (processed
    or claimed by another session, which is waited for) is claimed again one key at a time."""
    new: set[bytes] = set()
    refused: list[Run] = []
    inserted = _insert(execute, group, now, runs)
    for run in runs:
        if (run.head, run.low, run.high) in inserted:
            new.update(run.keys)
        else:
            refused.extend(run.singles())
    if refused:
        inserted = _insert(execute, group, now, refused)
        new.update(single.keys[0] for single in refused
                   if (single.head, single.low, single.high) in inserted)
    return new


def one_values(group: str, claim: Claim, now: float) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT_ONE` for a claim :class:`CoordinatesKeys` holds."""
    head, offset = head_and_offset(claim.key)
    return (group, head, offset, offset, claim.topic, claim.partition, claim.offset,
            claim.offset, now)


def head_and_offset(key: bytes) -> tuple[bytes, int]:
    """Where a run would hold ``key``."""
    return key[:_HEAD], int.from_bytes(key[_HEAD:], "big")


def _insert(execute: Execute, group: str, now: float,
            runs: Sequence[Run]) -> set[tuple[bytes, int, int]]:
    # In key order: two writers claiming overlapping keys never wait for each other in a cycle.
    ordered = sorted(runs, key=lambda run: (run.head, run.low))
    rows = execute(INSERT_RUNS, (
        group, now, [r.head for r in ordered], [r.low for r in ordered],
        [r.high for r in ordered], [r.topic for r in ordered], [r.partition for r in ordered],
        [r.first_offset for r in ordered])).fetchall()
    return {(bytes(head), int(low), int(high)) for head, low, high in rows}

