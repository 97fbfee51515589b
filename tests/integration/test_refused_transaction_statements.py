"""A handler that tries to end the batch's transaction on the SQLite or MariaDB store,
against a real broker: a ``COMMIT`` statement (alone, or followed by a ``BEGIN`` of its own)
or ``commit()`` on ``context.db``. The store's connection refuses transaction statements while
a batch is open (SQLite's authorizer; the MariaDB store's connection reads each statement's
first words): nothing of the batch commits, the consumer exits 1 saying so, and the fixed
handler then applies every message exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ending import SEQUENTIAL_ROUTE, run_fixed, run_until_it_stops
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "mariadb"])
def refusing_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    url = request.getfixturevalue("mariadb_url") if request.param == "mariadb" else None
    with fresh_store(request.param, tmp_path, url) as store:
        yield store


@pytest.mark.parametrize("handler", ["commit_statement_at_three", "commit_and_begin_at_three",
                                     "commit_at_three"])
def test_a_handler_ending_the_batch_is_refused_and_the_restart_applies_every_message_once(
    kafka_bootstrap: str, refusing_store: StoreUnderTest, tmp_path: Path, handler: str
) -> None:
    store = refusing_store
    topic, group, config, log = run_until_it_stops(
        kafka_bootstrap, store, tmp_path, "refused-commit",
        f"tests.support.ledger_concurrent:{handler}", SEQUENTIAL_ROUTE)
    assert "a handler must never end that transaction" in log and "Refused" in log, log[-3000:]
    assert store.query('SELECT "offset" FROM handled') == []
    assert store.query("SELECT group_id FROM consumer_processed_keys") == []
    run_fixed(kafka_bootstrap, store, tmp_path, topic, group, config)
