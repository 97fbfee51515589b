"""The store: checkpoint rows and processed keys in the handlers' own database, so effects,
keys and checkpoints commit together. :class:`~consumer.store.base.Store` is the contract;
``open_store("sqlite:///state/checkpoints.db")``, ``open_store("postgresql://…")`` or
``open_store("mysql://…")`` (MariaDB) picks the backend (an unknown scheme raises ``ConfigError``).

A store is one connection, used by one thread (the poll thread, or the purge thread with its
own); ``Store.message_transactions(size)`` gives concurrent handlers a transaction per message
on pooled connections of their own (PostgreSQL and MariaDB: SQLite takes one writer), and
``Store.async_message_transactions(size)`` the same, awaited, to ``async def`` handlers. Database
errors leave as ``StoreError`` subclasses: ``StoreUnavailable`` (pause and retry),
``StoreSchemaError`` (stop, exit 2). Nothing here knows Kafka.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consumer.errors import ConfigError
from consumer.store.base import (
    AsyncMessageTransactions,
    BatchClosing,
    CheckpointRow,
    Claim,
    ClosedBatch,
    MessageTransactions,
    Position,
    PostgresSession,
    SchemaUpgrade,
    Store,
    transient_cause,
)
from consumer.store.claim_batch import ClaimBatch
from consumer.store.key_generations import GENERATION_KEYS

if TYPE_CHECKING:
    from consumer.settings import StoreSettings


def open_store(url: str, *, sqlite_synchronous: str = "FULL",
               sqlite_busy_timeout: float = 60.0,
               sqlite_cache_mb: int = 64,
               sqlite_generation_keys: int = GENERATION_KEYS,
               postgres: PostgresSession | None = None,
               postgres_generation_keys: int = GENERATION_KEYS,
               mariadb_lock_wait_timeout: int = 10,
               mariadb_idle_transaction_timeout: int = 60,
               mariadb_generation_keys: int = GENERATION_KEYS) -> Store:
    """The store named by ``url``. SQLite opens the file now; PostgreSQL connects on first use,
    so an unreachable server is retried by the loop instead of failing here."""
    if url.startswith("sqlite://"):
        from consumer.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite://")
        # sqlite:///relative.db -> "relative.db"; sqlite:////abs/path.db -> "/abs/path.db"
        path = path[1:] if path.startswith("/") else path
        return SQLiteStore(path or ":memory:", synchronous=sqlite_synchronous,
                           busy_timeout_ms=int(sqlite_busy_timeout * 1000),
                           cache_mb=sqlite_cache_mb,
                           generation_keys=sqlite_generation_keys)
    if url.startswith(("postgresql://", "postgres://")):
        from consumer.store.postgres import PostgresStore

        return PostgresStore(url, session=postgres or PostgresSession(),
                             generation_keys=postgres_generation_keys)
    if url.startswith("mysql://"):
        try:
            from consumer.store.mariadb import MariaDBStore
        except ImportError as error:
            raise ConfigError([f"store.url: a mysql:// (MariaDB) store needs PyMySQL ({error}); "
                               "install checkpoint-consumer[mariadb]"]) from None
        return MariaDBStore(url, lock_wait_timeout=mariadb_lock_wait_timeout,
                            idle_transaction_timeout=mariadb_idle_transaction_timeout,
                            generation_keys=mariadb_generation_keys)
    raise ConfigError([f"store.url: {url.split(':', 1)[0]!r} is not a store; use "
                       "sqlite:///path/file.db, postgresql://user@host/db, "
                       "mysql://user@host/db (MariaDB), or none"])


def open_configured(settings: StoreSettings) -> Store:
    """The store ``settings`` name, with their SQLite, PostgreSQL and MariaDB session limits."""
    return open_store(
        settings.url.get_secret_value(),
        sqlite_synchronous=settings.sqlite_synchronous,
        sqlite_busy_timeout=settings.sqlite_busy_timeout_seconds,
        sqlite_cache_mb=settings.sqlite_cache_mb,
        sqlite_generation_keys=settings.sqlite_generation_keys,
        postgres=PostgresSession(
            lock_timeout=settings.postgres_lock_timeout_seconds,
            idle_in_transaction_timeout=settings.postgres_idle_in_transaction_timeout_seconds,
            keepalives_idle=settings.postgres_keepalives_idle_seconds,
            keepalives_interval=settings.postgres_keepalives_interval_seconds,
            keepalives_count=settings.postgres_keepalives_count,
        ),
        postgres_generation_keys=settings.postgres_generation_keys,
        mariadb_lock_wait_timeout=settings.mariadb_lock_wait_timeout_seconds,
        mariadb_idle_transaction_timeout=settings.mariadb_idle_transaction_timeout_seconds,
        mariadb_generation_keys=settings.mariadb_generation_keys,
    )


__all__ = [
    "AsyncMessageTransactions",
    "BatchClosing",
    "CheckpointRow",
    "Claim",
    "ClaimBatch",
    "ClosedBatch",
    "MessageTransactions",
    "Position",
    "PostgresSession",
    "SchemaUpgrade",
    "Store",
    "open_configured",
    "open_store",
    "transient_cause",
]
