"""Runs of processed keys in the MariaDB store (schema version 4, in stores created at it).

A batch's messages of consecutive offsets of one partition have consecutive ordered coordinates
keys (consumer.store.key_runs); such a stretch is one row of ``consumer_processed_runs``: the
keys' head (topic and partition bytes), the first and last key offsets, and the messages' own
coordinates (for replay). A batch of 1,000 messages over a few partitions writes a handful of
rows instead of 1,000 (whose claim was three quarters of the store's time per batch).

InnoDB has no exclusion constraint, so runs are kept disjoint by taking turns: a writer first
locks its heads' rows of ``consumer_processed_run_heads`` (``INSERT … ON DUPLICATE KEY UPDATE``
takes the row's exclusive lock, creating it the first time, held until COMMIT or ROLLBACK), in
head order, then reads the runs near its own and inserts only the stretches no run covers.
Under READ COMMITTED each statement reads the latest committed rows, and any writer that
inserted runs of a head held its lock until it committed: so the read sees every run of the head
but this transaction's own, which it sees anyway. A frozen writer (a zombie) holds its heads
until the server ends its idle transaction; the new owner waits ``innodb_lock_wait_timeout`` per
try and retries, as for a key row.

A message pool's transaction (runs of one key: :func:`claim_singles`) takes its heads' turns
shared instead, so a pool's transactions of one partition go side by side: their runs of one key
overlap only when they hold the same key, and then share a primary key, so the second insert
waits for the first transaction's outcome. A batch's exclusive turn waits for every shared one,
so it reads their runs committed, and they wait for it in turn.

As on PostgreSQL, every writer keeps every ordered coordinates key here and never in
``consumer_processed_keys``, alone (a run of one) when it has no neighbour, and which keys those
are follows from the key's bytes and its topic (:class:`~.key_runs.CoordinatesKeys`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import pymysql

from consumer.store.key_runs import Run, head_and_offset
from consumer.store.mariadb_session import MariaDBConnection, signalled

_TABLE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
TABLES = [
    f"""CREATE TABLE IF NOT EXISTS consumer_processed_runs (
        group_id varchar(255) NOT NULL, key_head varbinary(10) NOT NULL,
        key_first bigint NOT NULL, key_last bigint NOT NULL,
        topic varchar(255) NOT NULL, "partition" integer NOT NULL,
        first_offset bigint NOT NULL, last_offset bigint NOT NULL, processed_at double NOT NULL,
        PRIMARY KEY (group_id, key_head, key_first),
        KEY consumer_processed_runs_group_age (group_id, processed_at)) {_TABLE}""",
    # One row per group and head: its lock is the turn to claim keys of that head.
    f"""CREATE TABLE IF NOT EXISTS consumer_processed_run_heads (
        group_id varchar(255) NOT NULL, key_head varbinary(10) NOT NULL,
        PRIMARY KEY (group_id, key_head)) {_TABLE}""",
]


@dataclass(frozen=True, slots=True)
class _Piece:
    """Key offsets ``first`` to ``last`` (inclusive) of ``run``, which no run covers."""

    run: Run
    first: int
    last: int

    @property
    def keys(self) -> list[bytes]:
        return self.run.key_list(self.first, self.last + 1)


def claim(db: MariaDBConnection, group: str, now: float,
          runs: Sequence[Run]) -> set[bytes] | None:
    """Insert what no run covers yet of ``runs``; return those keys (the new ones), or None
    when that is every key of every run (nobody needs to make them). Inside the batch's
    transaction."""
    g = db.escape(group)
    heads = _take_turns(db, g, runs)
    # 2. the runs that may overlap: those starting inside the batch's span of a head, and the
    # last one starting below it
    covered: dict[bytes, list[tuple[int, int]]] = {head: [] for head in heads}
    for head, first, last in db.execute(_near(g, runs)).fetchall():
        covered[bytes(head)].append((int(first), int(last)))
    # 3. the stretches nobody claimed, in key order (a batch may hold a message twice)
    pieces: list[_Piece] = []
    for run in sorted(runs, key=lambda run: (run.head, run.low)):
        taken = covered[run.head]
        found = _uncovered(run, taken)
        pieces += found
        taken += [(piece.first, piece.last) for piece in found]
    if not pieces:
        return set()
    # 4. insert them: the head's lock keeps anyone else from inserting an overlapping run
    topics = {topic: db.escape(topic) for topic in {piece.run.topic for piece in pieces}}
    n = db.escape(float(now))
    db.execute(_INSERT + ",".join(
        f"({g},X'{p.run.head.hex()}',{p.first:d},{p.last:d},{topics[p.run.topic]},"
        f"{p.run.partition:d},{p.run.first_offset + p.first - p.run.low:d},"
        f"{p.run.first_offset + p.last - p.run.low:d},{n})" for p in pieces))
    if len(pieces) == len(runs) and all(piece.first == piece.run.low
                                        and piece.last == piece.run.high - 1
                                        for piece in pieces):
        return None
    return {key for piece in pieces for key in piece.keys}


def claim_whole(db: MariaDBConnection, group: str, now: float, runs: Sequence[Run]) -> bool:
    """Take the heads' turns and insert every run whole, in one round trip, if no run covers
    any of their keys (nearly every batch): True. False when one does, or two of ``runs``
    overlap (a message twice): then some runs may be in and some not, and the caller rolls the
    transaction back and claims with :func:`claim`, so call it first in a transaction.

    The two statements go as one compound statement (``BEGIN NOT ATOMIC … END``, MariaDB's
    block outside a stored program): the insert runs only once the turns are held, and is a
    statement of its own, which under READ COMMITTED reads what the turns' previous holders
    committed. It fails with :data:`_COVERED` unless every run went in. Two round trips
    fewer than :func:`claim`, which reads the runs near the batch's first."""
    ordered = sorted(runs, key=lambda run: (run.head, run.low))
    for before, after in pairwise(ordered):
        if before.head == after.head and after.low < before.high:
            return False
    g = db.escape(group)
    topics = {topic: db.escape(topic) for topic in {run.topic for run in ordered}}
    n = db.escape(float(now))
    rows = " UNION ALL ".join(
        f"SELECT {g} AS g, X'{r.head.hex()}' AS h, {r.low:d} AS f, {r.high - 1:d} AS l, "
        f"{topics[r.topic]} AS t, {r.partition:d} AS p, {r.first_offset:d} AS fo, "
        f"{r.first_offset + r.high - 1 - r.low:d} AS lo, {n} AS n" for r in ordered)
    try:
        db.execute(f"BEGIN NOT ATOMIC {_turns(g, ordered)}; "
                   f"{_INSERT_GUARDED.format(rows=rows)}; "
                   f"IF ROW_COUNT() < {len(ordered):d} THEN "
                   f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{_COVERED}'; END IF; END")
    except pymysql.err.MySQLError as error:
        if signalled(error, _COVERED):
            return False
        raise
    return True


def make_heads(db: MariaDBConnection, group: str, heads: Iterable[bytes]) -> None:
    """The heads' rows, made (in autocommit, outside any transaction) where missing: a message
    pool's claim locks them shared and cannot insert them. Rows of heads are never deleted."""
    for head in sorted(set(heads)):
        db.execute("INSERT IGNORE INTO consumer_processed_run_heads (group_id, key_head) "
                   "VALUES (%s, %s)", (group, head))


def claim_singles(db: MariaDBConnection, group: str, now: float,
                  runs: Sequence[Run]) -> set[bytes] | None:
    """A message pool's claim of keys as runs of one key each (``runs``: one key each),
    inside its transaction: the keys that were new, or None when a head has no row yet
    (:func:`make_heads`, then a new transaction). The heads' turns are taken shared: a pool's
    transactions of one partition go side by side, while a batch's claim (which takes its
    heads' turns exclusively) and a pool's wait for each other. A pool's runs hold one key
    each, so two of them overlap only when they hold the same key, and then have the same
    primary key: the second ``INSERT IGNORE`` waits for the first transaction, and inserts
    nothing if it committed. A batch's run covering a key is committed before the shared turn
    is granted, and the read finds it."""
    g = db.escape(group)
    heads = sorted({run.head for run in runs})
    listed = ",".join(f"X'{head.hex()}'" for head in heads)
    locked = db.execute(f"SELECT key_head FROM consumer_processed_run_heads WHERE group_id = {g} "
                        f"AND key_head IN ({listed}) ORDER BY key_head LOCK IN SHARE MODE"
                        ).fetchall()
    if len(locked) < len(heads):
        return None
    ordered = sorted({(run.head, run.low): run for run in runs}.values(),
                     key=lambda run: (run.head, run.low))
    # per key, the last run starting at or below it (one index seek; a filter on key_last
    # here would walk back through every earlier run of the head), covering it or not
    covered = {(bytes(head), int(key)) for head, key, last in db.execute(" UNION ALL ".join(
        f"(SELECT key_head, {run.low:d}, key_last FROM consumer_processed_runs "
        f"WHERE group_id = {g} AND key_head = X'{run.head.hex()}' AND key_first <= {run.low:d} "
        "ORDER BY key_first DESC LIMIT 1)" for run in ordered)).fetchall() if int(last) >= key}
    fresh = [run for run in ordered if (run.head, run.low) not in covered]
    if not fresh:
        return set()
    topics = {topic: db.escape(topic) for topic in {run.topic for run in fresh}}
    n = db.escape(float(now))
    inserted = db.execute(_INSERT.replace("INSERT INTO", "INSERT IGNORE INTO", 1) + ",".join(
        f"({g},X'{r.head.hex()}',{r.low:d},{r.low:d},{topics[r.topic]},{r.partition:d},"
        f"{r.first_offset:d},{r.first_offset:d},{n})" for r in fresh)
        + " RETURNING key_head, key_first").fetchall()
    return {bytes(head) + int(first).to_bytes(6, "big") for head, first in inserted}


def forget(db: MariaDBConnection, group: str, keys: Sequence[bytes]) -> None:
    """:func:`unclaim` in a transaction that holds no turn yet: the keys' heads' turns first."""
    heads = sorted({head_and_offset(key)[0] for key in keys})
    if heads:
        _take_turns(db, db.escape(group), [Run(head, 0, 1, "", 0, 0) for head in heads])
        unclaim(db, group, keys)


def _take_turns(db: MariaDBConnection, g: str, runs: Sequence[Run]) -> list[bytes]:
    """1. take the heads' turns (:func:`_turns`); the heads, in order."""
    db.execute(_turns(g, runs))
    return sorted({run.head for run in runs})


def _turns(g: str, runs: Sequence[Run]) -> str:
    """The statement taking the runs' heads' turns, in head order (two batches never wait for
    each other in a cycle)."""
    return ("INSERT INTO consumer_processed_run_heads (group_id, key_head) VALUES "
            + ",".join(f"({g},X'{head.hex()}')" for head in sorted({run.head for run in runs}))
            + " ON DUPLICATE KEY UPDATE key_head = key_head")


#: :func:`claim_whole`'s error when a run of the table covers a key of the batch.
_COVERED = "checkpoint-consumer: a processed run covers a key of the batch"

#: The batch's runs (``rows``: a derived table of g, h, f, l, t, p, fo, lo, n) that no run
#: of the table overlaps: none starts inside one, and the last one starting below it ends
#: below it (the two reads of :func:`_near`, per run).
_INSERT_GUARDED = (
    'INSERT INTO consumer_processed_runs (group_id, key_head, key_first, key_last, topic, '
    '"partition", first_offset, last_offset, processed_at) '
    "SELECT b.g, b.h, b.f, b.l, b.t, b.p, b.fo, b.lo, b.n FROM ({rows}) AS b "
    "WHERE NOT EXISTS (SELECT 1 FROM consumer_processed_runs r WHERE r.group_id = b.g "
    "AND r.key_head = b.h AND r.key_first BETWEEN b.f AND b.l) "
    "AND coalesce((SELECT r.key_last FROM consumer_processed_runs r WHERE r.group_id = b.g "
    "AND r.key_head = b.h AND r.key_first < b.f ORDER BY r.key_first DESC LIMIT 1), -1) < b.f")


def unclaim(db: MariaDBConnection, group: str, keys: Iterable[bytes]) -> None:
    """Take each key out of the run holding it (claimed in this transaction, whose heads' turn
    it holds): the run is replaced by the stretches before and after the key."""
    for key in keys:
        head, offset = head_and_offset(key)
        row = db.execute(
            "SELECT key_first, key_last, topic, \"partition\", first_offset, processed_at "
            "FROM consumer_processed_runs WHERE group_id = %s AND key_head = %s "
            "AND key_first <= %s ORDER BY key_first DESC LIMIT 1",
            (group, head, offset)).fetchone()
        if row is None or int(row[1]) < offset:
            continue
        first, last, topic, partition, first_offset, at = row
        first, last, first_offset = int(first), int(last), int(first_offset)
        db.execute("DELETE FROM consumer_processed_runs WHERE group_id = %s AND key_head = %s "
                   "AND key_first = %s", (group, head, first))
        for low, high in ((first, offset - 1), (offset + 1, last)):
            if high >= low:
                db.execute(_INSERT + "(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                           (group, head, low, high, topic, partition,
                            first_offset + low - first, first_offset + high - first, at))


_INSERT = ('INSERT INTO consumer_processed_runs (group_id, key_head, key_first, key_last, topic, '
           '"partition", first_offset, last_offset, processed_at) VALUES ')

#: Keys a run holds, for replay and purge: ``key_last - key_first + 1``.
LENGTH = "key_last - key_first + 1"


def _near(g: str, runs: Sequence[Run]) -> str:
    """One statement reading, per head, every run that could overlap the batch's runs."""
    spans: dict[bytes, tuple[int, int]] = {}
    for run in runs:
        low, high = spans.get(run.head, (run.low, run.high))
        spans[run.head] = (min(low, run.low), max(high, run.high))
    parts = []
    for head, (low, high) in sorted(spans.items()):
        where = f"WHERE group_id = {g} AND key_head = X'{head.hex()}'"
        parts.append(f"(SELECT key_head, key_first, key_last FROM consumer_processed_runs "
                     f"{where} AND key_first >= {low:d} AND key_first < {high:d})")
        parts.append(f"(SELECT key_head, key_first, key_last FROM consumer_processed_runs "
                     f"{where} AND key_first < {low:d} ORDER BY key_first DESC LIMIT 1)")
    return " UNION ALL ".join(parts)


def _uncovered(run: Run, taken: list[tuple[int, int]]) -> list[_Piece]:
    """The stretches of ``run``'s key offsets no interval of ``taken`` covers."""
    pieces: list[_Piece] = []
    start = run.low
    end = run.high - 1
    for first, last in sorted(taken):
        if last < start:
            continue
        if first > end:
            break
        if first > start:
            pieces.append(_Piece(run, start, first - 1))
        start = max(start, last + 1)
        if start > end:
            return pieces
    if start <= end:
        pieces.append(_Piece(run, start, end))
    return pieces
