"""Generations of processed keys in the SQLite store (its schema version 5; the why is in
:mod:`consumer.store.key_generations`).

``consumer_key_generations`` holds a row per generation of each group: the keys ever claimed
into it, and once it is sealed, when its newest key was claimed (NULL while it is the group's
current one, its newest). SQLite takes one writer at a time (``BEGIN IMMEDIATE``), so the
rows read at a claim's start stay true until its commit: no member can seal a generation
another is writing, nor start one it does not see.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from consumer.store.key_generations import Generation, GroupKeys

TABLE = """CREATE TABLE IF NOT EXISTS consumer_key_generations (
    group_id TEXT NOT NULL, generation INTEGER NOT NULL, keys INTEGER NOT NULL DEFAULT 0,
    newest_at REAL,
    PRIMARY KEY (group_id, generation)) WITHOUT ROWID"""

#: Every generation of a group, in a form ``IN`` takes: each is one seek of the key index.
OF_GROUP = "SELECT generation FROM consumer_key_generations WHERE group_id = {G}"

LIST = """SELECT generation, keys, newest_at IS NOT NULL FROM consumer_key_generations
    WHERE group_id = ? ORDER BY generation"""
START = "INSERT INTO consumer_key_generations (group_id, generation) VALUES (?, ?)"
#: Seal a generation (group ?1, generation ?2) at its newest key's time (the age index's
#: last entry of it), or ?3 if it holds none.
SEAL = """UPDATE consumer_key_generations SET newest_at = coalesce((
        SELECT max(processed_at) FROM consumer_processed_keys
        WHERE group_id = ?1 AND generation = ?2), ?3)
    WHERE group_id = ?1 AND generation = ?2"""
COUNT = "UPDATE consumer_key_generations SET keys = keys + ? WHERE group_id = ? AND generation = ?"
KEYS_OF = "SELECT key FROM consumer_processed_keys WHERE group_id = ? AND generation = ?"
#: Whether any generation of group ?1 holds key ?2.
HOLDS = f"""SELECT 1 FROM consumer_processed_keys
    WHERE group_id = ?1 AND generation IN ({OF_GROUP.format(G="?1")}) AND key = ?2"""
#: Sealed generations whose every key is past the retention, oldest first: parameters group,
#: older than.
PAST = """SELECT generation FROM consumer_key_generations
    WHERE group_id = ? AND newest_at < ? ORDER BY generation"""
DROP_KEYS = """DELETE FROM consumer_processed_keys WHERE rowid IN (
    SELECT rowid FROM consumer_processed_keys WHERE group_id = ? AND generation = ? LIMIT ?)"""
FORGET = "DELETE FROM consumer_key_generations WHERE group_id = ? AND generation = ?"
CURRENT = "SELECT max(generation) FROM consumer_key_generations WHERE group_id = ?"

#: Version 4 -> 5: the key table gains the generation (a new table, the keys copied in key
#: order as generation 0 of their group, sealed at its newest key's time). Before
#: SCHEMA, which creates the new table and indexes; AFTER_SCHEMA fills them.
MIGRATE_TO_5 = [
    "DROP INDEX IF EXISTS consumer_processed_keys_group_age",
    "ALTER TABLE consumer_processed_keys RENAME TO consumer_processed_keys_v4",
]
MIGRATE_TO_5_AFTER_SCHEMA = [
    """INSERT INTO consumer_processed_keys
           (group_id, generation, key, topic, partition, "offset", processed_at)
       SELECT group_id, 0, key, topic, partition, "offset", processed_at
       FROM consumer_processed_keys_v4 ORDER BY group_id, key""",
    """INSERT INTO consumer_key_generations (group_id, generation, keys, newest_at)
       SELECT group_id, 0, count(*), max(processed_at) FROM consumer_processed_keys_v4
       GROUP BY group_id""",
    "DROP TABLE consumer_processed_keys_v4",
]


def refresh(db: sqlite3.Connection, group: str, keys: GroupKeys, now: float) -> None:
    """In a claim's transaction: the group's generations as they stand (a current one started
    if the group has none), the current one sealed and a new one started if it is full, and
    the filters caught up (:meth:`GroupKeys.refresh`)."""
    generations = _listed(db, group)
    if not generations or generations[-1].sealed:
        number = generations[-1].number + 1 if generations else 1
        db.execute(START, (group, number))
        generations.append(Generation(number, 0, False))
    keys.refresh(generations, lambda number: _keys_of(db, group, number))
    if keys.rotation_due:
        db.execute(SEAL, (group, keys.current, now))
        db.execute(START, (group, keys.current + 1))
        keys.refresh(_listed(db, group), lambda number: _keys_of(db, group, number))


def prime(db: sqlite3.Connection, group: str, keys: GroupKeys) -> None:
    """Outside a claim (at start): the sealed generations read into the filters in a read
    transaction of their own, so other writers of the file go on meanwhile. A sealed
    generation is written no more, so what this snapshot shows of it stays true."""
    generations = _listed(db, group)
    if not generations:
        return
    if generations[-1].sealed:  # a migrated group: its current generation starts at a claim
        generations.append(Generation(generations[-1].number + 1, 0, False))
    keys.refresh(generations, lambda number: _keys_of(db, group, number))


def _listed(db: sqlite3.Connection, group: str) -> list[Generation]:
    return [Generation(number, count, bool(sealed))
            for number, count, sealed in db.execute(LIST, (group,))]


def _keys_of(db: sqlite3.Connection, group: str, number: int) -> Iterator[bytes]:
    for (key,) in db.execute(KEYS_OF, (group, number)):
        yield key
