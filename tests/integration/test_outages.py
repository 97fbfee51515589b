"""Outages mid-run (issue 5): the broker stopped for 30 s and started again, and the store
(PostgreSQL) stopped for 30 s and started again. The consumer stays up through both, nothing is
lost or applied twice, and the run completes.

Each test takes down a server of its own (started in its own state folder by the project's
launchers), never the session-wide ones other tests use. The consumer is paced by a broker-side
fetch quota, so the outage lands mid-run: without it, it reads the whole topic in two seconds.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.chaos import Ledger, Verdict, check, make_ledger, produce_ledger
from tests.support.kafka import create_topic, group_offsets, unique_name
from tests.support.outage import HealthWatch, LocalServer, lift_fetch_rate, limit_fetch_rate
from tests.support.scrape import endpoint, health
from tests.support.stores import StoreUnderTest

pytestmark = pytest.mark.integration

EVENTS = 20_000
PARTITIONS = 3
OUTAGE_SECONDS = 30.0
#: Fetch quota for the consumer: about 450 ledger messages a second once its first ten
#: seconds' worth (about 4,500 messages) is spent, so the run lasts well past the outage. Once
#: the outage is over and it is seen to have landed mid-run, the quota is lifted.
FETCH_BYTES_PER_SECOND = 50_000
#: The largest record batch the ledger is produced in. A fetch returns at least one whole
#: batch of its first partition, however small ``max.partition.fetch.bytes`` is: with the
#: producer's default (about 1 MB), each quota window went to one partition while another
#: waited minutes for its first fetch, and the run outlasted RECOVERY_TIMEOUT.
LEDGER_BATCH_BYTES = 8_192
#: Applied events before the outage starts: the consumer is well under way.
APPLIED_BEFORE_OUTAGE = 1_000
#: librdkafka retries the bootstrap connection about every 50 ms through the outage (600 lines
#: unchecked); each distinct line is logged once per 30 s: one per connection and error kind.
MAX_REFUSAL_LINES = 12
#: From the end of an outage until every event is applied (reconnect backoff plus pacing).
RECOVERY_TIMEOUT = 240.0


@pytest.fixture
def dedicated_kafka(tmp_path: Path) -> Iterator[LocalServer]:
    """A broker of this test's own, which it may stop and start."""
    server = LocalServer.kafka(tmp_path / "kafka-state")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dedicated_postgres(tmp_path: Path) -> Iterator[LocalServer]:
    """A PostgreSQL server of this test's own, which it may stop and start."""
    server = LocalServer.postgres(tmp_path / "postgres-state")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_broker_stopped_for_30_s_mid_run(dedicated_kafka: LocalServer, tmp_path: Path) -> None:
    """A dedicated broker is stopped cleanly (SIGTERM, data kept) for 30 s once the consumer
    is under way, then started again on the same port with the same data. The consumer stays
    up and live throughout, and finishes the topic: every event applied exactly once, the
    processed keys number the distinct events, and the store's and Kafka's offsets end at the
    end of the topic. /readyz reports the outage while it lasts (issue 5: "liveness stays true,
    readiness reflects the outage") and is true again at the end."""
    bootstrap = dedicated_kafka.address
    assert bootstrap is not None
    store = StoreUnderTest("sqlite", f"sqlite:///{tmp_path / 'store.db'}")
    run = _Run.prepare(bootstrap, store, tmp_path, tool_state=dedicated_kafka.state)
    run.consumer.start()
    try:
        base = endpoint(run.consumer)
        watch = HealthWatch(run.consumer, base)
        run.wait_applied(APPLIED_BEFORE_OUTAGE, timeout=120)

        dedicated_kafka.stop(keep_data=True)
        at_stop = run.applied()
        watch.watch(OUTAGE_SECONDS)
        readiness_during_outage = watch.readiness()
        assert dedicated_kafka.start() == bootstrap
        at_restart = run.applied()
        assert at_restart < EVENTS, (
            f"all {EVENTS} events were applied before the broker came back ({at_stop} when it "
            "stopped): the outage did not land mid-run; lower FETCH_BYTES_PER_SECOND")

        run.unpace()
        run.wait_complete(watch)
        assert watch.not_live() == [], (
            f"the consumer died or /livez failed during the outage: {watch.not_live()[:5]}\n"
            f"{run.consumer.log_tail(40)}")
        ready_at_end = health(base, "/readyz")
        run.stop_cleanly()
    finally:
        run.consumer.stop_if_running()
    run.assert_exactly_once()
    assert ready_at_end[0] == 200, ready_at_end
    refusals = [line for line in run.consumer.log_file.read_text(errors="replace").splitlines()
                if "Connection refused" in line]
    assert len(refusals) <= MAX_REFUSAL_LINES, (
        f"{len(refusals)} 'Connection refused' lines logged over a {OUTAGE_SECONDS:.0f} s "
        f"outage: librdkafka's repeats are not held back\n" + "\n".join(refusals[:5]))
    # Last, so a failure here says only this: nothing in /readyz looks at the brokers.
    assert 503 in readiness_during_outage, (
        f"/readyz answered {sorted(set(readiness_during_outage))} all through the "
        f"{OUTAGE_SECONDS:.0f} s broker outage: readiness does not reflect it")


def test_store_stopped_for_30_s_mid_run(
    kafka_bootstrap: str, dedicated_postgres: LocalServer, tmp_path: Path
) -> None:
    """The consumer's PostgreSQL store (a dedicated server) is stopped for 30 s once the
    consumer is under way, then started again with the same data, port and DSN. The consumer
    stays up and live; /readyz turns false while the store is down and true again after; it
    finishes the topic with every event applied exactly once."""
    dsn = dedicated_postgres.address
    assert dsn is not None
    verdict = store_outage_story(kafka_bootstrap, dedicated_postgres,
                                 StoreUnderTest("postgresql", dsn), tmp_path,
                                 outage_seconds=OUTAGE_SECONDS,
                                 hint="; lower FETCH_BYTES_PER_SECOND")
    assert verdict.exact, verdict
    assert verdict.distinct_events == verdict.processed_keys == EVENTS, verdict


def test_kept_data_survives_a_restart_and_a_plain_stop_deletes_it(tmp_path: Path) -> None:
    """The launchers' outage mode, on PostgreSQL (seconds): ``stop --keep-data`` then
    ``start`` brings back the same DSN with the data; a plain ``stop`` still deletes it, so
    the next ``start`` is a fresh, empty server as before."""
    import psycopg

    server = LocalServer.postgres(tmp_path / "state")
    dsn = server.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute("CREATE TABLE kept (n integer)")
            db.execute("INSERT INTO kept VALUES (42)")
        server.stop(keep_data=True)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=2)
        assert server.start() == dsn
        with psycopg.connect(dsn) as db:
            assert db.execute("SELECT n FROM kept").fetchall() == [(42,)]
        server.stop(keep_data=True)
        server.stop()
        fresh = server.start()
        with psycopg.connect(fresh) as db:
            assert db.execute("SELECT to_regclass('kept')").fetchone() == (None,)
    finally:
        server.stop()


def store_outage_story(kafka_bootstrap: str, server: LocalServer, store: StoreUnderTest,
                       tmp_path: Path, *, outage_seconds: float,
                       handler: str = "handlers.ledger:apply", hint: str = "") -> Verdict:
    """The store's own ``server`` stopped for ``outage_seconds`` once a paced consumer is under
    way, then started again with the same data and address: the consumer stays up and live,
    /readyz is false while the store is down and true after, and it finishes the topic with
    every event applied exactly once. ``hint``: what to tune when the outage missed the run.
    Returns the ledger's verdict, for the test to judge."""
    address = server.address
    run = _Run.prepare(kafka_bootstrap, store, tmp_path, tool_state=tmp_path / "tool-state",
                       handler=handler, max_backoff_seconds=5)
    run.consumer.start()
    try:
        base = endpoint(run.consumer)
        watch = HealthWatch(run.consumer, base)
        run.wait_applied(APPLIED_BEFORE_OUTAGE, timeout=120)
        assert health(base, "/readyz")[0] == 200

        at_stop = run.applied()
        server.stop(keep_data=True)
        stopped_at = time.monotonic()
        wait_for(lambda: _store_not_ready(run.consumer, base), timeout=outage_seconds,
                 what=f"/readyz to report the store down ({run.consumer.log_tail()})",
                 interval=0.2)
        watch.watch(outage_seconds - (time.monotonic() - stopped_at))
        assert 503 in watch.readiness() and 200 not in watch.readiness()

        assert server.start() == address
        wait_for(lambda: run.alive() and health(base, "/readyz")[0] == 200, timeout=60,
                 what=f"/readyz to turn true again ({run.consumer.log_tail()})", interval=0.2)
        assert run.applied() < EVENTS, (
            f"all {EVENTS} events were applied right after the store came back ({at_stop} "
            f"when it stopped): the outage did not land mid-run{hint}")

        run.unpace()
        run.wait_complete(watch)
        assert watch.not_live() == [], (
            f"the consumer died or /livez failed during the outage: {watch.not_live()[:5]}\n"
            f"{run.consumer.log_tail(40)}")
        run.stop_cleanly()
    finally:
        run.consumer.stop_if_running()
    return run.verdict()


def _store_not_ready(consumer: ConsumerProcess, base: str) -> bool:
    assert consumer.alive(), f"the consumer exited: {consumer.log_tail(40)}"
    status, body = health(base, "/readyz")
    return status == 503 and body.get("failing") == ["store"]


class _Run:
    """One paced consumer process applying a ledger topic to a store."""

    def __init__(self, bootstrap: str, store: StoreUnderTest, ledger: Ledger, topic: str,
                 group: str, produced: int, consumer: ConsumerProcess, *, client_id: str,
                 tool_state: Path) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.tool_state = tool_state
        self.store = store
        self.ledger = ledger
        self.topic = topic
        self.group = group
        self.produced = produced
        self.consumer = consumer

    @classmethod
    def prepare(cls, bootstrap: str, store: StoreUnderTest, workdir: Path, *, tool_state: Path,
                handler: str = "handlers.ledger:apply", **store_settings: Any) -> _Run:
        """Produce the ledger, pace a client id with a fetch quota, and configure (not start)
        one consumer process with the ledger ``handler``."""
        ledger = make_ledger(EVENTS)
        topic = create_topic(bootstrap, PARTITIONS, prefix="outage")
        produced = produce_ledger(bootstrap, topic, ledger, batch_bytes=LEDGER_BATCH_BYTES)
        group = unique_name("outage")
        client_id = unique_name("paced")
        limit_fetch_rate(bootstrap, client_id, FETCH_BYTES_PER_SECOND, tool_state)
        config = consumer_config(bootstrap, group, topic, handler=handler,
                                 every_messages=500, every_seconds=1.0, store=store.url,
                                 client_id=client_id)
        # Small fetches, so the quota paces the run instead of one big first fetch.
        config["kafka"]["librdkafka"]["max.partition.fetch.bytes"] = 16_384
        config["store"].update(store_settings)
        consumer = ConsumerProcess(workdir, "consumer", config)
        return cls(bootstrap, store, ledger, topic, group, produced, consumer,
                   client_id=client_id, tool_state=tool_state)

    def unpace(self) -> None:
        """The outage landed mid-run: the rest goes at full pace (the quota only placed it)."""
        lift_fetch_rate(self.bootstrap, self.client_id, self.tool_state)

    def alive(self) -> bool:
        assert self.consumer.alive(), f"the consumer exited: {self.consumer.log_tail(40)}"
        return True

    def applied(self) -> int:
        """Ledger entries in the store (0 before the first batch creates the table)."""
        try:
            return int(self.store.scalar("SELECT count(*) FROM ledger_entries"))
        except Exception:
            return 0

    def applied_in_kafka(self) -> int:
        """Sum of the group's committed offsets, as Kafka reports them."""
        offsets = group_offsets(self.bootstrap, self.group, self.topic, PARTITIONS)
        return sum(offset or 0 for offset in offsets.values())

    def checkpointed(self) -> int:
        """Sum of the store's checkpoint rows' next offsets."""
        try:
            return int(self.store.scalar(
                "SELECT coalesce(sum(next_offset), 0) FROM consumer_checkpoints "
                "WHERE group_id = %s", (self.group,)))
        except Exception:
            return 0

    def wait_applied(self, count: int, *, timeout: float) -> None:
        wait_for(lambda: self.alive() and self.applied() >= count, timeout=timeout,
                 what=f"{count} events applied ({self.consumer.log_tail()})", interval=0.1)

    def wait_complete(self, watch: HealthWatch) -> None:
        """Every event applied, the store's checkpoints and Kafka's commits at the end of the
        topic; the process must stay alive all along (sampled by ``watch``)."""
        def done(level: int, reached: int) -> bool:
            watch.sample()
            return self.alive() and reached >= level

        wait_for(lambda: done(EVENTS, self.applied()), timeout=RECOVERY_TIMEOUT,
                 what=f"every event applied ({self.consumer.log_tail()})", interval=0.5)
        wait_for(lambda: done(self.produced, self.checkpointed()), timeout=30,
                 what=f"the store's checkpoints at the end ({self.consumer.log_tail()})",
                 interval=0.5)
        wait_for(lambda: done(self.produced, self.applied_in_kafka()), timeout=30,
                 what=f"Kafka's committed offsets at the end ({self.consumer.log_tail()})",
                 interval=0.5)

    def stop_cleanly(self) -> None:
        self.consumer.signal(signal.SIGTERM)
        assert self.consumer.wait(timeout=60) == 0, self.consumer.log_tail(40)

    def verdict(self) -> Verdict:
        return check(self.store, self.ledger, self.group)

    def assert_exactly_once(self) -> None:
        verdict = self.verdict()
        assert verdict.exact, verdict
        assert verdict.distinct_events == EVENTS, verdict
        assert verdict.processed_keys == verdict.distinct_events == len(self.ledger.events)
