"""The checker's eye on the store's own rows: a trigger that notes every checkpoint row moving
backwards, so a late write by a stale owner is seen even when processed keys keep its effects
from repeating (the epoch fence's job is exactly this row).

Install it before any consumer starts (it creates our tables first, through the product's own
``ensure_schema``, so the schema version is the one the consumers expect).
"""

from __future__ import annotations

from consumer.store import open_store
from tests.support.stores import StoreUnderTest

_TABLE = """CREATE TABLE IF NOT EXISTS checker_regressions (
    group_id TEXT NOT NULL, topic TEXT NOT NULL, "partition" INTEGER NOT NULL,
    old_offset BIGINT NOT NULL, new_offset BIGINT NOT NULL)"""

_SQLITE_TRIGGER = """CREATE TRIGGER IF NOT EXISTS checker_no_regression
    AFTER UPDATE OF next_offset ON consumer_checkpoints
    WHEN NEW.next_offset < OLD.next_offset
    BEGIN
        INSERT INTO checker_regressions
        VALUES (NEW.group_id, NEW.topic, NEW.partition, OLD.next_offset, NEW.next_offset);
    END"""

_POSTGRES_FUNCTION = """CREATE OR REPLACE FUNCTION checker_note_regression() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO checker_regressions
        VALUES (NEW.group_id, NEW.topic, NEW.partition, OLD.next_offset, NEW.next_offset);
        RETURN NEW;
    END $$"""

_POSTGRES_TRIGGER = """CREATE TRIGGER checker_no_regression
    AFTER UPDATE ON consumer_checkpoints FOR EACH ROW
    WHEN (NEW.next_offset < OLD.next_offset)
    EXECUTE FUNCTION checker_note_regression()"""


_MARIADB_TRIGGER = """CREATE TRIGGER checker_no_regression
    AFTER UPDATE ON consumer_checkpoints FOR EACH ROW
    INSERT INTO checker_regressions
    SELECT NEW.group_id, NEW.topic, NEW."partition", OLD.next_offset, NEW.next_offset
    FROM DUAL WHERE NEW.next_offset < OLD.next_offset"""


def install_audit(store: StoreUnderTest) -> None:
    """Create the store's tables and the regression trigger on ``consumer_checkpoints``."""
    product = open_store(store.url)
    try:
        product.ensure_schema()
    finally:
        product.close()
    store.execute(_TABLE)
    if store.backend == "sqlite":
        store.execute(_SQLITE_TRIGGER)
    elif store.backend == "mariadb":
        store.execute(_MARIADB_TRIGGER)
    else:
        store.execute(_POSTGRES_FUNCTION)
        store.execute(_POSTGRES_TRIGGER)


def regressions(store: StoreUnderTest, group: str) -> list[tuple[str, int, int, int]]:
    """(topic, partition, old offset, new offset) of every backwards move of ``group``'s rows
    (fails if :func:`install_audit` never ran: an unaudited run proves nothing here)."""
    rows = store.query('SELECT topic, "partition", old_offset, new_offset '
                       "FROM checker_regressions WHERE group_id = %s", (group,))
    return [(str(t), int(p), int(o), int(n)) for t, p, o, n in rows]
