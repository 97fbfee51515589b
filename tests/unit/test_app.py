import gc
from pathlib import Path

import pytest

from consumer.app import YOUNG_GENERATION_THRESHOLD, build_loop, collecting_garbage_less
from consumer.engine.concurrent_store_mode import ConcurrentStoreMode
from consumer.errors import ConfigError
from consumer.message import Context, Message
from consumer.routing import Route, Router
from consumer.testing import InMemorySource
from tests.support.wiring import loop_settings


def test_the_loop_runs_with_what_exists_frozen_and_fewer_young_collections_then_all_is_undone(
) -> None:
    before = gc.get_threshold()
    with collecting_garbage_less():
        assert gc.get_freeze_count() > 0  # the modules and settings loaded at start
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def _async_handler(message: Message, context: Context) -> None:
    await context.execute("SELECT 1")


def _plain_handler(message: Message, context: Context) -> None:
    context.execute("SELECT 1")


def test_an_async_handler_with_a_sqlite_store_is_refused_naming_the_async_handler(
        tmp_path: Path) -> None:
    """SQLite takes one writer: the error names the async handler (not the one-writer error
    of the plain route beside it), and what to do."""
    settings = loop_settings(["a", "b"], route={"concurrency": 1},
                             store={"url": f"sqlite:///{tmp_path / 'store.db'}"})
    router = Router([Route("a", _async_handler, "x:a"), Route("b", _plain_handler, "x:b")])
    with pytest.raises(ConfigError, match=r"async def handler.*PostgreSQL or MariaDB store"):
        build_loop(settings, router, source=InMemorySource({"a": [[]], "b": [[]]}))


def test_an_async_handler_with_a_postgres_store_gets_its_own_pool_of_capped_size() -> None:
    """The async route's transactions share ``store.async_connections`` connections
    (its concurrency is higher); the plain route beside it keeps its threads' pool. Nothing
    connects here: PostgreSQL pools open at the first message."""
    settings = loop_settings(["a", "b"], route={"concurrency": 100},
                             store={"url": "postgresql://nobody@127.0.0.1:1/none",
                                    "async_connections": 20})
    router = Router([Route("a", _async_handler, "x:a"), Route("b", _plain_handler, "x:b")])
    loop = build_loop(settings, router, source=InMemorySource({"a": [[]], "b": [[]]}))
    mode = loop._mode
    assert isinstance(mode, ConcurrentStoreMode)
    pools = {type(pool).__name__: pool for pool in mode._transactions}
    assert pools["AsyncPostgresTransactions"]._size == 20
    assert pools["PostgresTransactions"]._pool.max_size == 100


def test_an_async_handler_with_a_mariadb_store_gets_slots_of_capped_size() -> None:
    """The same on MariaDB: the async route's transactions take at most
    ``store.async_connections`` slots (each statement on a thread); the plain route
    keeps its own pool. Nothing connects here: connections are made at the first message."""
    settings = loop_settings(["a", "b"], route={"concurrency": 100},
                             store={"url": "mysql://nobody@127.0.0.1:1/none",
                                    "async_connections": 20})
    router = Router([Route("a", _async_handler, "x:a"), Route("b", _plain_handler, "x:b")])
    loop = build_loop(settings, router, source=InMemorySource({"a": [[]], "b": [[]]}))
    mode = loop._mode
    assert isinstance(mode, ConcurrentStoreMode)
    pools = {type(pool).__name__: pool for pool in mode._transactions}
    assert pools["AsyncMariaDBTransactions"]._size == 20
    assert pools["MariaDBTransactions"]._size == 100
