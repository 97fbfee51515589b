import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize(("url", "awaited", "threaded"), [
    ("postgresql://nobody@127.0.0.1:1/none", "AsyncPostgresTransactions",
     lambda pool: pool._pool.max_size),
    ("mysql://nobody@127.0.0.1:1/none", "AsyncMariaDBTransactions", lambda pool: pool._size),
], ids=["postgresql", "mariadb"])
def test_an_async_handler_gets_transactions_of_capped_size_beside_the_threads_pool(
    url: str, awaited: str, threaded: Callable[[Any], int]
) -> None:
    """The async route's transactions share ``store.async_connections`` connections (its
    concurrency is higher; on MariaDB, slots with each statement on a thread); the plain
    route beside it keeps its threads' pool. Nothing connects here: the pools open at the
    first message."""
    settings = loop_settings(["a", "b"], route={"concurrency": 100},
                             store={"url": url, "async_connections": 20})
    router = Router([Route("a", _async_handler, "x:a"), Route("b", _plain_handler, "x:b")])
    loop = build_loop(settings, router, source=InMemorySource({"a": [[]], "b": [[]]}))
    mode = loop._mode
    assert isinstance(mode, ConcurrentStoreMode)
    pools = {type(pool).__name__: pool for pool in mode._transactions}
    assert pools[awaited]._size == 20
    assert threaded(pools[awaited.removeprefix("Async")]) == 100
