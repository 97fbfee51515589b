"""The MariaDB store stopped mid-run and started again (the PostgreSQL story of
test_outages.py, on a dedicated MariaDB server of this test's own, with a 10 s outage to
spare CI's time): the consumer stays up, /readyz reports the store down and then up, and
every event is applied exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.errors import StoreUnavailable
from tests.integration.test_outages import EVENTS, store_outage_story
from tests.support.ledger_mariadb import create_tables
from tests.support.outage import LocalServer
from tests.support.stores import StoreUnderTest

pytestmark = pytest.mark.integration

#: Long enough for /readyz to report it and for batches to fail and back off.
OUTAGE_SECONDS = 10.0


@pytest.fixture
def dedicated_mariadb(tmp_path: Path) -> Iterator[LocalServer]:
    """A MariaDB server of this test's own, which it may stop and start."""
    server = LocalServer.mariadb(tmp_path / "mariadb-state")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_mariadb_store_stopped_for_10_s_mid_run(
    kafka_bootstrap: str, dedicated_mariadb: LocalServer, tmp_path: Path
) -> None:
    url = dedicated_mariadb.address
    assert url is not None
    store = StoreUnderTest("mariadb", url)
    create_tables(store)
    verdict = store_outage_story(kafka_bootstrap, dedicated_mariadb, store, tmp_path,
                                 outage_seconds=OUTAGE_SECONDS,
                                 handler="tests.support.ledger_mariadb:apply")
    assert verdict.exact, verdict
    assert verdict.distinct_events == verdict.processed_keys == EVENTS, verdict


def test_mariadb_kept_data_survives_a_restart_and_a_plain_stop_deletes_it(
    tmp_path: Path,
) -> None:
    """The MariaDB launcher's outage mode (seconds): ``stop --keep-data`` then ``start``
    brings back the same URL with the data; a plain ``stop`` deletes it, so the next
    ``start`` is a fresh, empty server on a new URL."""
    server = LocalServer.mariadb(tmp_path / "state")
    url = server.start()
    try:
        kept = StoreUnderTest("mariadb", url)
        kept.execute("CREATE TABLE kept (n integer)")
        kept.execute("INSERT INTO kept VALUES (42)")
        server.stop(keep_data=True)
        with pytest.raises(StoreUnavailable):
            kept.query("SELECT n FROM kept")
        assert server.start() == url
        assert kept.query("SELECT n FROM kept") == [(42,)]
        server.stop()
        fresh = StoreUnderTest("mariadb", server.start())
        assert fresh.url != url
        assert fresh.query("SELECT count(*) FROM information_schema.tables "
                           "WHERE table_schema = DATABASE() AND table_name = 'kept'") == [(0,)]
    finally:
        server.stop()
