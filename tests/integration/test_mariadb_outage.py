"""The MariaDB store stopped mid-run and started again (the PostgreSQL story of
test_outages.py, on a dedicated MariaDB server of this test's own, with a 10 s outage to
spare CI's time): the consumer stays up, /readyz reports the store down and then up, and
every event is applied exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from consumer_process import wait_for

from consumer.errors import StoreUnavailable
from tests.integration.test_outages import (
    APPLIED_BEFORE_OUTAGE,
    EVENTS,
    _Run,
    _store_not_ready,
)
from tests.support.ledger_mariadb import create_tables
from tests.support.outage import HealthWatch, LocalServer
from tests.support.scrape import endpoint, health
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
    run = _Run.prepare(kafka_bootstrap, store, tmp_path, tool_state=tmp_path / "tool-state",
                       handler="tests.support.ledger_mariadb:apply", max_backoff_seconds=5)
    run.consumer.start()
    try:
        base = endpoint(run.consumer)
        watch = HealthWatch(run.consumer, base)
        run.wait_applied(APPLIED_BEFORE_OUTAGE, timeout=120)
        assert health(base, "/readyz")[0] == 200

        at_stop = run.applied()
        dedicated_mariadb.stop(keep_data=True)
        stopped_at = time.monotonic()
        wait_for(lambda: _store_not_ready(run.consumer, base), timeout=OUTAGE_SECONDS,
                 what=f"/readyz to report the store down ({run.consumer.log_tail()})",
                 interval=0.2)
        watch.watch(OUTAGE_SECONDS - (time.monotonic() - stopped_at))
        assert 503 in watch.readiness() and 200 not in watch.readiness()

        assert dedicated_mariadb.start() == url
        wait_for(lambda: run.alive() and health(base, "/readyz")[0] == 200, timeout=60,
                 what=f"/readyz to turn true again ({run.consumer.log_tail()})", interval=0.2)
        assert run.applied() < EVENTS, (
            f"all {EVENTS} events were applied right after the store came back ({at_stop} "
            "when it stopped): the outage did not land mid-run")

        run.wait_complete(watch)
        assert watch.not_live() == [], (
            f"the consumer died or /livez failed during the outage: {watch.not_live()[:5]}\n"
            f"{run.consumer.log_tail(40)}")
        run.stop_cleanly()
    finally:
        run.consumer.stop_if_running()
    run.assert_exactly_once()


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
