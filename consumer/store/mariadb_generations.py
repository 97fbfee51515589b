"""Generations of processed keys in the MariaDB store (its schema version 5; the why is in
:mod:`consumer.store.key_generations`).

``consumer_key_generations`` holds a row per generation of each group; the newest is the
group's current one (``newest_at`` NULL). Several sessions claim at once (members, a zombie),
so, as on PostgreSQL (:mod:`consumer.store.postgres_generations`), three rules carry the
concurrency, here with InnoDB's row locks:

- Every transaction claiming a group's keys as rows first reads the group's row of
  ``consumer_key_rotation`` with a shared lock (``LOCK IN SHARE MODE``, :func:`share`): the
  number of the group's current generation. A seal takes that row exclusively (``FOR UPDATE
  NOWAIT``, :func:`rotate`) and moves the number on, so it happens only when no claim is open:
  every key of the generation is committed or gone, and it is written no more. A locking read
  sees the latest committed row, so the claim learns of every seal before it, and none can
  come until it commits; only when the number moved does the claim read the generations
  again (:data:`LIST`): one statement a batch otherwise. Once overdue, the seal waits up to a
  second (``WAIT 1``; InnoDB counts whole seconds) for the claims open at the time; InnoDB
  queues the claims opening meanwhile behind it.
- The lock lives in a table of its own, not on the generation's row: deleting keys counts
  them into that row (``forgotten``), and a batch that forgets a key while holding the lock
  shared would otherwise wait for every other claim, and deadlock with another doing the same.
- A sealed generation's ``keys`` are counted at its seal, keys deleted from it meanwhile
  included (``forgotten``, :func:`count_forgotten`): what was ever claimed into it, the figure
  :class:`~consumer.store.key_generations.GroupKeys` compares with what its filters hold. The
  seal reads ``forgotten`` as the latest committed value (its row locked) and the keys present
  as of the statement's start: a deletion committing in between is counted twice, which only
  makes a member read the generation once more; none is missed.

The keys a member's filters flag are looked up in the sealed generations before the claim's
``INSERT IGNORE`` (:func:`held`); those found there are processed already.

DDL commits on its own in MariaDB: the migration is one ``ALTER TABLE`` (atomic), run only if
the column is missing, then statements safe to run again (:func:`migrate_to_5`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import pymysql

from consumer.errors import StoreError
from consumer.store.key_generations import KEY_BYTES, Generation, split_keys
from consumer.store.mariadb_session import (
    COMMIT,
    ROLLBACK,
    START,
    MariaDBConnection,
    error_code,
)

#: What InnoDB answers a lock not granted in time, ``NOWAIT`` included.
LOCK_WAIT_TIMEOUT = 1205

_TABLE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
TABLES = [
    f"""CREATE TABLE IF NOT EXISTS consumer_key_generations (
        group_id varchar(255) NOT NULL, generation integer NOT NULL,
        "keys" bigint NOT NULL DEFAULT 0, forgotten bigint NOT NULL DEFAULT 0,
        newest_at double,
        PRIMARY KEY (group_id, generation)) {_TABLE}""",
    # One row per group, its current generation: held shared by every claim, exclusively by
    # a seal.
    f"""CREATE TABLE IF NOT EXISTS consumer_key_rotation (
        group_id varchar(255) NOT NULL PRIMARY KEY, generation integer NOT NULL) {_TABLE}""",
]

SHARE = """SELECT generation FROM consumer_key_rotation WHERE group_id = %s
    LOCK IN SHARE MODE"""
LIST = """SELECT generation, "keys", newest_at IS NOT NULL FROM consumer_key_generations
    WHERE group_id = %s ORDER BY generation"""
#: The group's lock row (group, its current generation).
START_ROTATION = "INSERT IGNORE INTO consumer_key_rotation (group_id, generation) VALUES (%s, 0)"
SET_CURRENT = "UPDATE consumer_key_rotation SET generation = %s WHERE group_id = %s"
START_GENERATION = """INSERT INTO consumer_key_generations (group_id, generation)
    VALUES (%s, %s)"""
#: Seal the group's current generation: the keys ever claimed into it, and its newest key's
#: time, ``now`` if it holds none (parameters: group, generation, group, generation, now,
#: group, generation).
SEAL = """UPDATE consumer_key_generations SET
        "keys" = forgotten + (SELECT count(*) FROM consumer_processed_keys
                              WHERE group_id = %s AND generation = %s),
        newest_at = coalesce((SELECT max(processed_at) FROM consumer_processed_keys
                              WHERE group_id = %s AND generation = %s), %s)
    WHERE group_id = %s AND generation = %s AND newest_at IS NULL"""
#: A page of a generation's keys after the last one read (keyset paging: each page one seek),
#: as one row: how many, the last, the 16-byte keys (digests: nearly all) joined, and any
#: others in hex, comma-separated. PyMySQL parses a row in Python, so a row a key read at half
#: the speed (1.75 against 0.85 s a million keys, on the machine of Performance).
KEYS_PAGE = f"""SET STATEMENT group_concat_max_len = {1 << 26} FOR
    SELECT count(*), max(k),
           group_concat(if(length(k) = {KEY_BYTES}, k, NULL) SEPARATOR ''),
           group_concat(if(length(k) = {KEY_BYTES}, NULL, hex(k)) SEPARATOR ',')
    FROM (SELECT "key" AS k FROM consumer_processed_keys
          WHERE group_id = %s AND generation = %s AND "key" > %s ORDER BY "key" LIMIT %s)
         AS page"""
PAGE_KEYS = 50_000
#: The generations of a group, the numbers an ``IN`` of the key index seeks.
NUMBERS = "SELECT generation FROM consumer_key_generations WHERE group_id = %s"
#: Sealed generations whose every key is past the retention: parameters group, older than.
PAST = """SELECT generation FROM consumer_key_generations
    WHERE group_id = %s AND newest_at < %s ORDER BY generation"""
FORGET = "DELETE FROM consumer_key_generations WHERE group_id = %s AND generation = %s"
CURRENT = "SELECT max(generation) FROM consumer_key_generations WHERE group_id = %s"
COUNT_FORGOTTEN = """UPDATE consumer_key_generations SET forgotten = forgotten + %s
    WHERE group_id = %s AND generation = %s"""

#: Version 4 -> 5, as one statement (MariaDB's ALTER TABLE is atomic): the key table gains the
#: generation (0 for the keys already claimed), its primary key and age index lead with it.
ALTER_TO_5 = """ALTER TABLE consumer_processed_keys
    ADD COLUMN generation integer NOT NULL DEFAULT 0 AFTER group_id,
    DROP PRIMARY KEY, ADD PRIMARY KEY (group_id, generation, "key"),
    DROP INDEX consumer_processed_keys_group_age,
    ADD INDEX consumer_processed_keys_group_age (group_id, generation, processed_at)"""
HAS_GENERATION = """SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE()
    AND table_name = 'consumer_processed_keys' AND column_name = 'generation'"""
#: Each group's keys already claimed are its generation 0, sealed at its newest key's time.
SEAL_MIGRATED = """INSERT IGNORE INTO consumer_key_generations
        (group_id, generation, "keys", newest_at)
    SELECT group_id, 0, count(*), max(processed_at) FROM consumer_processed_keys
    WHERE generation = 0 GROUP BY group_id"""


def migrate_to_5(db: MariaDBConnection) -> None:
    """Versions 2-4 -> 5, each step committed on its own and safe to run again: a migration
    cut short completes at the next start (the version row is written after it)."""
    if db.execute(HAS_GENERATION).fetchone() is None:
        db.execute(ALTER_TO_5)
    for statement in TABLES:
        db.execute(statement)
    db.execute(SEAL_MIGRATED)


def prepare(db: MariaDBConnection, group: str) -> None:
    """The group's lock row and its current generation (after those a migration sealed),
    made in a transaction of their own when ``db`` is in none (so a member frozen mid-batch
    never holds another's first claim). A session doing the same meanwhile waits for the lock
    row's insertion, then finds it made."""
    own = not db.in_transaction()
    if own:
        db.execute(START)
    try:
        if db.execute(START_ROTATION, (group,)).rowcount:
            generations = listed(db, group)
            number = generations[-1].number + 1 if generations else 1
            db.execute(START_GENERATION, (group, number))
            db.execute(SET_CURRENT, (number, group))
        if own:
            db.execute(COMMIT)
    except BaseException:
        if own and db.open:
            db.execute(ROLLBACK)
        raise


def listed(db: MariaDBConnection, group: str) -> list[Generation]:
    return [Generation(int(number), int(keys), bool(sealed))
            for number, keys, sealed in db.execute(LIST, (group,)).fetchall()]


def share(db: MariaDBConnection, group: str) -> int | None:
    """Hold the group's rotation lock shared for the open transaction; the group's current
    generation, None if it has no lock row yet (:func:`prepare`)."""
    row = db.execute(SHARE, (group,)).fetchone()
    return None if row is None else int(row[0])


def current_listed(db: MariaDBConnection, group: str, current: int) -> list[Generation]:
    """The group's generations, read while holding its rotation lock shared: ``current``
    (from :func:`share`) is the newest, not sealed."""
    generations = listed(db, group)
    if not generations or generations[-1].number != current or generations[-1].sealed:
        raise StoreError(
            f"consumer_key_rotation names generation {current} as group {group}'s current one, "
            "but consumer_key_generations does not end with it unsealed (its newest: "
            f"{generations[-3:]}); were the tables changed by hand?")
    return generations


def keys_of(db: MariaDBConnection, group: str, number: int) -> Iterator[bytes]:
    """Every key of a sealed generation, a page at a time (:data:`KEYS_PAGE`)."""
    last = b""
    while True:
        count, newest, digests, others = db.execute(
            KEYS_PAGE, (group, number, last, PAGE_KEYS)).fetchone()
        if digests:
            yield from split_keys([bytes(digests)])
        if others:
            yield from (bytes.fromhex(key) for key in others.split(","))
        if count < PAGE_KEYS:
            return
        last = bytes(newest)


def held(db: MariaDBConnection, group: str, sealed: Sequence[int],
         keys: Sequence[bytes]) -> set[bytes]:
    """Which of ``keys`` (those the filters flagged) a sealed generation holds."""
    if not keys or not sealed:
        return set()
    numbers = ",".join(str(int(n)) for n in sealed)
    listed_keys = ",".join(f"X'{key.hex()}'" for key in keys)
    rows = db.execute(
        f'SELECT "key" FROM consumer_processed_keys WHERE group_id = %s '
        f'AND generation IN ({numbers}) AND "key" IN ({listed_keys})', (group,)).fetchall()
    return {bytes(key) for (key,) in rows}


def numbers(db: MariaDBConnection, group: str) -> str:
    """The group's generations as a list ``IN`` takes (``-1`` when it has none)."""
    found = [str(int(n)) for (n,) in db.execute(NUMBERS, (group,)).fetchall()]
    return ",".join(found) or "-1"


def count_forgotten(db: MariaDBConnection, group: str, generations: Iterable[int]) -> int:
    """In the deleting statement's transaction: the deleted keys' generations (one number per
    key, from its ``RETURNING generation``) counted into their ``forgotten``; how many."""
    counted = Counter(int(n) for n in generations)
    for number, count in sorted(counted.items()):
        db.execute(COUNT_FORGOTTEN, (count, group, number))
    return sum(counted.values())


def rotate(db: MariaDBConnection, group: str, current: int, now: float, *,
           wait: bool = False) -> bool:
    """Seal the group's current generation and start the next, in a transaction of its own
    (``db`` in no transaction), if no claim is open anywhere, or (``wait``) once the claims
    open now have ended, if that is within a second: claims opening meanwhile wait behind the
    seal. Whether it sealed; the caller reads the generations again either way."""
    db.execute(START)
    try:
        try:
            row = db.execute("SELECT generation FROM consumer_key_rotation WHERE group_id = %s "
                             f"FOR UPDATE {'WAIT 1' if wait else 'NOWAIT'}", (group,)
                             ).fetchone()
        except pymysql.err.OperationalError as error:
            if error_code(error) != LOCK_WAIT_TIMEOUT:
                raise
            db.execute(ROLLBACK)
            return False
        sealed = row is not None and int(row[0]) == current and bool(db.execute(
            SEAL, (group, current, group, current, now, group, current)).rowcount)
        if sealed:
            db.execute(START_GENERATION, (group, current + 1))
            db.execute(SET_CURRENT, (current + 1, group))
        db.execute(COMMIT)
        return sealed
    except BaseException:
        if db.open:
            db.execute(ROLLBACK)
        raise
