"""Generations of processed keys in the PostgreSQL store (its schema version 5; the why is in
:mod:`consumer.store.key_generations`).

``consumer_key_generations`` holds a row per generation of each group; the newest is the
group's current one (``newest_at`` NULL). Unlike SQLite's single writer, several sessions claim
at once (members, a zombie, a message pool's connections), so:

- Every transaction claiming a group's keys as rows holds the group's rotation lock shared
  (:func:`opening`: an advisory lock named by the schema and the group). A rotation seals the
  current generation only if it takes that lock exclusively at once
  (``pg_try_advisory_xact_lock``): then no claim is open, every key of the generation is
  committed or gone, and it is written no more. Otherwise it is deferred, and once overdue it
  waits a moment (:func:`seal_wait_ms`: 100 ms, doubled at each miss, up to a second) for the
  claims open at the time, claims opening meanwhile waiting behind it.
- A claim names the generation it believes current, and its statement fails (a division by
  zero) unless that is still the group's newest (:func:`claim_statement`): the claimer reads
  the generations again and claims again. Its shared lock, taken by an earlier statement, keeps
  the generation current until it commits.
- The sealed generation's keys are counted at its seal, keys deleted from it meanwhile
  included (``forgotten``: every statement deleting keys counts them, :func:`forgetting`), so
  ``keys`` is what was ever claimed into it, the figure :class:`GroupKeys` compares with what
  its filters hold.

A message pool keeps no filters: its claims ask every sealed generation in the database (one
index probe each), as the store did with one table. Only the batch store rotates.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from functools import cache
from typing import Any

import psycopg

from consumer.store import postgres_mark
from consumer.store.key_generations import Generation, GroupKeys

#: How long a seal may wait for the claims open at the time to end, once its generation holds
#: a quarter more keys than its share (:func:`rotate`): claims opening meanwhile wait too.
ROTATION_WAIT_MS = 100
#: The longest such wait: it doubles at each seal missed once overdue (:func:`seal_wait_ms`),
#: so claims that overlap without a gap do not defer the seal for ever; a second, as on MariaDB.
ROTATION_WAIT_MAX_MS = 1000

TABLE = """CREATE TABLE IF NOT EXISTS consumer_key_generations (
    group_id text NOT NULL, generation integer NOT NULL,
    keys bigint NOT NULL DEFAULT 0, forgotten bigint NOT NULL DEFAULT 0,
    newest_at double precision,
    PRIMARY KEY (group_id, generation))"""

LIST = """SELECT generation, keys, newest_at IS NOT NULL FROM consumer_key_generations
    WHERE group_id = %s ORDER BY generation"""
#: A group's next generation; two sessions starting it at once make one.
START = """INSERT INTO consumer_key_generations (group_id, generation) VALUES (%s, %s)
    ON CONFLICT DO NOTHING"""
#: Seal the group's current generation ``gen``: the keys ever claimed into it, and its newest
#: key's time (``now`` if it holds none).
SEAL = """UPDATE consumer_key_generations AS g SET
        keys = g.forgotten + (SELECT count(*) FROM consumer_processed_keys AS k
                              WHERE k.group_id = g.group_id AND k.generation = g.generation),
        newest_at = coalesce((SELECT max(processed_at) FROM consumer_processed_keys AS k
                              WHERE k.group_id = g.group_id AND k.generation = g.generation),
                             %(now)s)
    WHERE group_id = %(g)s AND generation = %(gen)s AND newest_at IS NULL"""
KEYS_OF = "SELECT key FROM consumer_processed_keys WHERE group_id = %s AND generation = %s"
#: Every generation of group ``%(g)s`` as an array: an index condition seeks each.
OF_GROUP = """ARRAY(SELECT generation FROM consumer_key_generations
                    WHERE group_id = %(g)s)"""
#: Sealed generations whose every key is past the retention: parameters group, older than.
PAST = """SELECT generation FROM consumer_key_generations
    WHERE group_id = %s AND newest_at < %s ORDER BY generation"""
FORGET = "DELETE FROM consumer_key_generations WHERE group_id = %s AND generation = %s"
CURRENT = "SELECT max(generation) FROM consumer_key_generations WHERE group_id = %s"

#: Versions 1-4 -> 5, after their own steps: the key table gains the generation (0 for the
#: keys already claimed, each group's generation 0, sealed at its newest key's time).
MIGRATE_TO_5 = [
    "ALTER TABLE consumer_processed_keys ADD COLUMN generation integer NOT NULL DEFAULT 0",
    "ALTER TABLE consumer_processed_keys DROP CONSTRAINT consumer_processed_keys_pkey",
    "ALTER TABLE consumer_processed_keys ADD PRIMARY KEY (group_id, generation, key)",
    "DROP INDEX IF EXISTS consumer_processed_keys_group_age",
    """CREATE INDEX consumer_processed_keys_group_age
        ON consumer_processed_keys (group_id, generation, processed_at)""",
    TABLE,
    """INSERT INTO consumer_key_generations (group_id, generation, keys, newest_at)
       SELECT group_id, 0, count(*), max(processed_at) FROM consumer_processed_keys
       GROUP BY group_id""",
]

#: A claim's rows (parameters: group, the generation, the time, then the keys as hex, topics,
#: partitions and offsets, comma-joined: consumer.store.postgres.claim_values), inserted only
#: while ``%(gen)s`` is the group's current generation: else the statement fails (a division
#: by zero, which no key can cause).
_CLAIM = """INSERT INTO consumer_processed_keys
        (group_id, generation, key, topic, partition, "offset", processed_at)
    SELECT %(g)s, %(gen)s, decode(k, 'hex'), t, p, o, %(now)s
    FROM unnest(string_to_array(%(k)s, ','), string_to_array(%(t)s, ','),
                string_to_array(%(p)s, ',')::integer[],
                string_to_array(%(o)s, ',')::bigint[]) AS u(k, t, p, o)
    WHERE (SELECT 1 / (coalesce(max(generation), -1) = %(gen)s)::int
           FROM consumer_key_generations WHERE group_id = %(g)s) = 1"""
#: Whether a sealed generation (``%(sealed)s``, an array) holds the row's key.
_IN_SEALED = """EXISTS (SELECT 1 FROM consumer_processed_keys AS s
    WHERE s.group_id = %(g)s AND s.generation = ANY(%(sealed)s::integer[])
          AND s.key = decode(u.k, 'hex'))"""


def _lock(group: str) -> str:
    """The arguments naming the group's rotation lock: the schema's hash and a 32-bit CRC of
    the group's name (the same in every process). Two groups sharing one only rotate less
    often."""
    key = zlib.crc32(group.encode())
    return f"hashtext(current_schema()), {key - (1 << 32) if key >= 1 << 31 else key}"


@cache
def share_rotation(group: str) -> str:
    """The statement taking the group's rotation lock shared, for the open transaction."""
    return f"SELECT pg_advisory_xact_lock_shared({_lock(group)})"


@cache
def opening(group: str | None) -> str:
    """:data:`postgres_mark.OPENING` and :func:`share_rotation`: a transaction that may claim
    the group's keys as rows, opened in one query string (no group: the plain opening)."""
    if group is None:
        return postgres_mark.OPENING
    return f"{postgres_mark.OPENING}; {share_rotation(group)}"


@cache
def claim_statement(*, plain: bool, sealed: str) -> str:
    """The claim of a batch's rows into the current generation. ``plain``: every key new (the
    statement fails on one the generation holds, or a sealed one found); else ``ON CONFLICT
    DO NOTHING RETURNING key``, the keys already processed skipped. ``sealed``: which keys
    are asked of the sealed generations: ``"none"``, ``"flagged"`` (the hex keys in
    ``%(flagged)s``, which the filters flagged) or ``"all"`` (no filters: a message pool)."""
    statement = _CLAIM
    if sealed != "none":
        held = f"1 / (NOT {_IN_SEALED})::int = 1" if plain else f"NOT {_IN_SEALED}"
        if sealed == "flagged":
            statement += f" AND (u.k <> ALL(%(flagged)s::text[]) OR {held})"
        else:
            statement += f" AND {held}"
    return statement if plain else f"{statement} ON CONFLICT DO NOTHING RETURNING key"


def forgetting(delete: str) -> str:
    """``delete`` (a ``DELETE FROM consumer_processed_keys … RETURNING group_id,
    generation``) with its keys counted into their generations' ``forgotten``, as one
    statement returning how many it deleted."""
    return f"""WITH gone AS ({delete}), counted AS (
        UPDATE consumer_key_generations AS c SET forgotten = c.forgotten + f.n
        FROM (SELECT group_id, generation, count(*) AS n FROM gone
              GROUP BY group_id, generation) AS f
        WHERE c.group_id = f.group_id AND c.generation = f.generation)
    SELECT count(*) FROM gone"""


def listed(db: psycopg.Connection[Any], group: str) -> list[Generation]:
    """The group's generations, a current one started if it has none (a new group, or one
    whose keys a migration sealed as generation 0)."""
    generations = [Generation(number, keys, sealed)
                   for number, keys, sealed in db.execute(LIST, (group,))]
    if not generations or generations[-1].sealed:
        number = generations[-1].number + 1 if generations else 1
        db.execute(START, (group, number))
        return listed(db, group)
    return generations


def keys_of(db: psycopg.Connection[Any], group: str, number: int) -> Iterator[bytes]:
    """Every key of a sealed generation, fetched 100,000 at a time (a cursor on the server)."""
    with db.transaction(), db.cursor(name="consumer_generation_keys") as cursor:
        cursor.execute(KEYS_OF, (group, number))
        while rows := cursor.fetchmany(100_000):
            for (key,) in rows:
                yield bytes(key)


def refresh(db: psycopg.Connection[Any], group: str, keys: GroupKeys) -> None:
    """The generations as they stand, and the filters caught up: each sealed generation
    holding keys they lack is read into them (:meth:`GroupKeys.refresh`). Outside a
    transaction, or in one that holds the rotation lock shared."""
    generations = listed(db, group)
    keys.refresh(generations, lambda number: keys_of(db, group, number))


def seal_wait_ms(overdue: int) -> int:
    """How long a seal ``overdue`` (:attr:`GroupKeys.seal_overdue`) waits for the claims open
    at the time: not at all before it is overdue, then :data:`ROTATION_WAIT_MS`, doubled at
    each step, up to :data:`ROTATION_WAIT_MAX_MS`."""
    if overdue <= 0:
        return 0
    return min(ROTATION_WAIT_MS << min(overdue - 1, 16), ROTATION_WAIT_MAX_MS)


def rotate(db: psycopg.Connection[Any], group: str, current: int, now: float, *,
           wait_ms: int = 0) -> bool:
    """Seal the group's current generation and start the next, in a transaction of its own
    (``db`` in autocommit, no transaction open), if no claim is open anywhere, or (with
    ``wait_ms``) once the claims open now have ended, if that is within ``wait_ms``: claims
    opening meanwhile wait behind the seal. Whether it sealed; the caller reads the
    generations again either way."""
    db.execute("BEGIN")
    try:
        if wait_ms:
            db.execute(f"SET LOCAL lock_timeout = {int(wait_ms)}")
            try:
                db.execute(f"SELECT pg_advisory_xact_lock({_lock(group)})")
            except psycopg.errors.LockNotAvailable:
                db.execute("ROLLBACK")
                return False
        else:
            row = db.execute(f"SELECT pg_try_advisory_xact_lock({_lock(group)})").fetchone()
            if row is None or not row[0]:
                db.execute("ROLLBACK")
                return False
        sealed = db.execute(SEAL, {"g": group, "gen": current, "now": now}).rowcount
        if sealed:
            db.execute(START, (group, current + 1))
        db.execute("COMMIT")
        return bool(sealed)
    except BaseException:
        if not db.closed and not db.broken:
            db.execute("ROLLBACK")
        raise


class PoolGenerations:
    """A message pool's view of each group's generations: the current one and the sealed
    ones, read when first needed and again after a claim found its generation sealed.
    Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views: dict[str, tuple[int, tuple[int, ...]]] = {}

    def view(self, group: str) -> tuple[int, tuple[int, ...]] | None:
        """The group's current and sealed generations, None until read."""
        return self._views.get(group)

    def read(self, group: str, generations: list[Generation]) -> tuple[int, tuple[int, ...]]:
        view = (generations[-1].number, tuple(g.number for g in generations if g.sealed))
        with self._lock:
            self._views[group] = view
        return view

    def stale(self, group: str, current: int) -> None:
        """A claim found ``current`` sealed: read again at the next claim."""
        with self._lock:
            if (found := self._views.get(group)) is not None and found[0] == current:
                del self._views[group]


def claim_parameters(group: str, generation: int, now: float, values: tuple[Any, ...],
                     sealed: tuple[int, ...] = (),
                     flagged: list[str] | None = None) -> dict[str, Any]:
    """:func:`claim_statement`'s parameters; ``values``: the keys, topics, partitions and
    offsets as :func:`consumer.store.postgres.claim_values` joins them."""
    keys, topics, partitions, offsets = values
    return {"g": group, "gen": generation, "now": now, "k": keys, "t": topics,
            "p": partitions, "o": offsets, "sealed": list(sealed), "flagged": flagged or []}
