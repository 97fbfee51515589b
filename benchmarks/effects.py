"""The effect the transaction-size curve's kills apply, and how the store is read back after.

:func:`apply` is a route handler (``benchmarks.effects:apply``) for ``consumer run`` with a
store: it inserts one row per message into ``bench_effects`` through ``context.execute``, so the
row commits with the processed key and the checkpoint row, or rolls back with them. It also
appends the message to ``$RECORD_FILE`` (``handlers.record``), outside the transaction, so what
was handled survives a SIGKILL even when its effect was rolled back.

:class:`EffectsStore` opens the same store from the benchmark's side, through the framework's
own :func:`~consumer.store.open_store`: it creates the table before the consumer starts and
counts rows after it stopped.

:func:`apply_then_wait` is the IO-bound group's store handler: the same row through
``context.execute``, then the 10 ms wait and the count of the framework runner's
:func:`~benchmarks.runners.framework.handle_sleep` (no record file); :func:`apply_then_wait_async`
the same as an ``async def``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.runners import framework
from consumer.message import Context, Message
from consumer.store import Store, open_store
from handlers import record

HANDLER_PATH = "benchmarks.effects:apply"
#: No key on purpose: an effect applied twice must show up as two rows, not as an error.
#: ``"partition"`` quoted: MariaDB reserves the word (its store's sessions use ANSI_QUOTES).
TABLE = """CREATE TABLE IF NOT EXISTS bench_effects (
    group_id varchar(255) NOT NULL, topic varchar(255) NOT NULL, "partition" INTEGER NOT NULL,
    "offset" BIGINT NOT NULL)"""
INSERT = """INSERT INTO bench_effects (group_id, topic, "partition", "offset")
            VALUES (%s, %s, %s, %s)"""


def apply(message: Message, context: Context) -> None:
    """One effect row in the store's transaction, then one record line outside it."""
    context.execute(INSERT, (context.group, message.topic, message.partition, message.offset))
    record.handle(message)


def apply_then_wait(message: Message, context: Context) -> None:
    """One effect row in the message's transaction, then 10 ms of waiting, then the count."""
    context.execute(INSERT, (context.group, message.topic, message.partition, message.offset))
    framework.handle_sleep(message, context)


async def apply_then_wait_async(message: Message, context: Context) -> None:
    """:func:`apply_then_wait` as an ``async def``: the row awaited, then 10 ms awaited."""
    await context.execute(INSERT, (context.group, message.topic, message.partition,
                                   message.offset))
    await framework.handle_sleep_async(message, context)


@dataclass(frozen=True)
class EffectCount:
    rows: int
    #: Distinct (partition, offset) pairs among the rows.
    distinct: int
    #: partition -> next offset, from the store's checkpoint rows of the group.
    checkpoints: dict[int, int]

    @property
    def applied_twice(self) -> int:
        """Rows beyond the first for the same message: each is an effect applied again."""
        return self.rows - self.distinct


class EffectsStore:
    """The benchmark's own connection to a store the consumer under test writes to."""

    def __init__(self, url: str) -> None:
        self._store: Store = open_store(url)

    def __enter__(self) -> EffectsStore:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._store.close()

    def prepare(self) -> None:
        self._store.execute(TABLE)

    def count(self, group: str, topic: str) -> EffectCount:
        rows = self._one("SELECT count(*) FROM bench_effects WHERE group_id = %s", group)
        distinct = self._one(
            """SELECT count(*) FROM (SELECT DISTINCT "partition", "offset" FROM bench_effects
                                      WHERE group_id = %s) AS messages""", group)
        checkpoints = {partition: offset
                       for (name, partition), offset in self._store.checkpoints(group).items()
                       if name == topic and offset is not None}
        return EffectCount(rows, distinct, checkpoints)

    def forget(self, group: str) -> None:
        """Delete the group's effect rows (a shared PostgreSQL keeps no benchmark litter)."""
        self._store.execute("DELETE FROM bench_effects WHERE group_id = %s", (group,))

    def _one(self, sql: str, group: str) -> int:
        row = self._store.execute(sql, (group,)).fetchone()
        return int(row[0]) if row else 0
