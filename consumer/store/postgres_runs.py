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
from contextlib import suppress
from typing import Any, TypeVar

import psycopg
from psycopg import generators
from psycopg.pq import ExecStatus

from consumer.store import postgres_mark
from consumer.store.key_runs import Run
from consumer.store.postgres_literals import bytea_array, int_array, text_array

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
_INSERT_RUNS = """INSERT INTO consumer_processed_runs
        (group_id, key_head, key_offsets, topic, partition, first_offset, last_offset,
         processed_at)
    SELECT {0}, h, int8range(lo, hi), t, p, o, o + (hi - lo) - 1, {1}
    FROM unnest({2}::bytea[], {3}::bigint[], {4}::bigint[], {5}::text[], {6}::integer[],
                {7}::bigint[]) AS u(h, lo, hi, t, p, o)
    ON CONFLICT DO NOTHING
    RETURNING key_head, lower(key_offsets), upper(key_offsets)"""
INSERT_RUNS = _INSERT_RUNS.format(*["%s"] * 8)

#: The same, prepared once on each connection (SQL ``PREPARE``), so that a batch opens with
#: one query string, ``BEGIN; …; EXECUTE …`` (:func:`open_query`): one round trip, and a plan
#: the server keeps.
OPEN_STATEMENT = "consumer_open_runs"
PREPARE_OPEN = (f"PREPARE {OPEN_STATEMENT} (text, double precision, bytea[], bigint[], "
                "bigint[], text[], integer[], bigint[]) AS "
                + _INSERT_RUNS.format(*(f"${n}" for n in range(1, 9))))

Execute = Callable[[str, Sequence[Any]], Any]
AnyCursor = TypeVar("AnyCursor", psycopg.Cursor[Any], psycopg.AsyncCursor[Any])


def claim(execute: Execute, group: str, now: float, runs: Sequence[Run]) -> set[bytes] | None:
    """Insert the runs; return their keys that were new, or None when every run went in whole
    (each of their keys is new: nobody needs to make them)."""
    ordered = in_key_order(runs)
    return claimed(execute, group, now, ordered, _insert(execute, group, now, ordered))


def in_key_order(runs: Sequence[Run]) -> list[Run]:
    """The runs in key order: two writers claiming overlapping keys never wait for each other
    in a cycle."""
    return sorted(runs, key=lambda run: (run.head, run.low))


def open_query(group: str, now: float, ordered: Sequence[Run],
               literal: Callable[[str], str]) -> str:
    """The statements opening a marked transaction (:data:`postgres_mark.OPENING`) and
    :data:`OPEN_STATEMENT` executed for runs in key order, as one query string, its values
    written out (:mod:`consumer.store.postgres_literals`; the time as its ``repr``)."""
    return (f"{postgres_mark.OPENING}; EXECUTE {OPEN_STATEMENT}({literal(group)}, {float(now)!r}, "
            f"{bytea_array(r.head for r in ordered)}, {int_array(r.low for r in ordered)}, "
            f"{int_array(r.high for r in ordered)}, "
            f"{text_array((r.topic for r in ordered), literal)}, "
            f"{int_array(r.partition for r in ordered)}, "
            f"{int_array(r.first_offset for r in ordered)})")


def prepare_open(db: psycopg.Connection[Any]) -> None:
    """:data:`PREPARE_OPEN` on ``db``, outside a transaction (there already: nothing to do)."""
    with suppress(psycopg.errors.DuplicatePreparedStatement):
        db.execute(PREPARE_OPEN)


def send_open(db: psycopg.Connection[Any], query: str) -> list[Any]:
    """Send an :func:`open_query` string on ``db``, whose statement was prepared there; the
    rows the INSERT returned (for :func:`claimed`). psycopg deallocates every prepared
    statement (``DEALLOCATE ALL``) after a ROLLBACK (a savepoint's too) or a DROP once it
    holds statements of its own; the statement is then prepared again and the query sent
    again."""
    try:
        cursor = db.execute(query)
    except psycopg.errors.InvalidSqlStatementName:
        db.execute("ROLLBACK")
        prepare_open(db)
        cursor = db.execute(query)
    return last_result(cursor).fetchall()


def unanswered_rows(db: psycopg.Connection[Any]) -> int:
    """The answer to an :func:`open_query` string sent on ``db`` without waiting (libpq's
    ``send_query``): how many runs the INSERT inserted. Raises the first statement's error,
    as psycopg would have."""
    results = db.wait(generators.fetch_many(db.pgconn))
    for result in results:
        if result.status == ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(result, encoding=db.info.encoding)
    return int(results[-1].ntuples)


def last_result(cursor: AnyCursor) -> AnyCursor:
    """``cursor`` moved past the opening's statements to the last one's result: the
    INSERT's rows."""
    while cursor.nextset():
        pass
    return cursor


def claimed(execute: Execute, group: str, now: float, runs: Sequence[Run],
            inserted_rows: Sequence[Sequence[Any]]) -> set[bytes] | None:
    """What :func:`claim` returns, given the rows :data:`INSERT_RUNS` returned for the runs
    (in key order). A run that overlapped a row (processed or claimed by another session,
    which was waited for) is claimed again one key at a time (a second statement)."""
    inserted = _ranges(inserted_rows)
    if len(inserted) == len(runs):
        return None
    new: set[bytes] = set()
    refused: list[Run] = []
    for run in runs:
        if (run.head, run.low, run.high) in inserted:
            new.update(run.key_list())
        else:
            refused.extend(run.singles())
    inserted = _ranges(_insert(execute, group, now, in_key_order(refused)))
    new.update(single.key_list()[0] for single in refused
               if (single.head, single.low, single.high) in inserted)
    return new


def _insert(execute: Execute, group: str, now: float,
            ordered: Sequence[Run]) -> Sequence[Sequence[Any]]:
    """:data:`INSERT_RUNS` for runs in key order: the rows it returned."""
    return execute(INSERT_RUNS, (  # type: ignore[no-any-return]
        group, now, [r.head for r in ordered], [r.low for r in ordered],
        [r.high for r in ordered], [r.topic for r in ordered], [r.partition for r in ordered],
        [r.first_offset for r in ordered])).fetchall()


def _ranges(rows: Sequence[Sequence[Any]]) -> set[tuple[bytes, int, int]]:
    return {(bytes(head), int(low), int(high)) for head, low, high in rows}
