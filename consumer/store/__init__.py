"""The store: checkpoints and processed keys in the handlers' own database.

``open_store("sqlite:///state/checkpoints.db")`` or ``open_store("postgresql://…")``.
"""

from __future__ import annotations

from consumer.errors import ConfigError
from consumer.store.base import CheckpointRow, Claim, Position, SchemaUpgrade, Store


def open_store(url: str, *, sqlite_synchronous: str = "FULL") -> Store:
    """The store named by ``url``. SQLite opens the file now; PostgreSQL connects on first use,
    so an unreachable server is retried by the loop instead of failing here."""
    if url.startswith("sqlite://"):
        from consumer.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite://")
        # sqlite:///relative.db -> "relative.db"; sqlite:////abs/path.db -> "/abs/path.db"
        path = path[1:] if path.startswith("/") else path
        return SQLiteStore(path or ":memory:", synchronous=sqlite_synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        from consumer.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError([f"store.url: {url.split(':', 1)[0]!r} is not a store; use "
                       "sqlite:///path/file.db or postgresql://user@host/db, or none"])


__all__ = ["CheckpointRow", "Claim", "Position", "SchemaUpgrade", "Store", "open_store"]
