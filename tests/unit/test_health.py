"""consumer.health: /livez fails only when a restart helps; /readyz follows the lifecycle."""

from __future__ import annotations

from consumer.errors import KafkaError, KafkaFatalError, StoreUnavailable
from consumer.testing import InMemorySource
from tests.unit.engine_support import values
from tests.unit.metrics_support import metered


def test_not_ready_before_subscribing_nor_before_the_first_assignment() -> None:
    m = metered(InMemorySource({"t": [values(1)]}))
    report = m.health.ready()
    assert not report.ok
    assert report.body()["failing"] == ["assignment", "subscribed"]
    assert m.health.live().ok  # waiting for the brokers is no reason to restart
    m.loop.start()
    assert m.health.ready().body()["failing"] == ["assignment"]
    m.loop.run_once()
    assert m.health.ready().ok


def test_ready_with_zero_partitions_assigned() -> None:
    m = metered(InMemorySource({"t": [values(1)]}))
    m.loop.start()
    m.loop.on_assigned([])  # the group gave this member nothing
    assert m.health.ready().ok
    assert m.value("consumer_ready") == 1
    assert m.value("consumer_assigned_partitions", topic="t") == 0


def test_a_stop_request_turns_ready_false_first_and_live_stays_true() -> None:
    m = metered(InMemorySource({"t": [values(1)]}))
    m.loop.start()
    m.loop.run_once()
    m.loop.request_stop()  # what SIGTERM does
    report = m.health.ready()
    assert report.body()["failing"] == ["shutdown"]
    assert m.health.live().ok
    m.loop.close()
    assert not m.health.ready().ok


def test_live_fails_when_the_loop_has_not_polled_for_longer_than_max_poll_interval() -> None:
    m = metered(InMemorySource({"t": [values(1)]}))
    m.loop.start()
    m.loop.run_once()
    m.clock.advance(300)  # max.poll.interval.ms 300,000: within the margin
    assert m.health.live().ok
    m.clock.advance(31)
    report = m.health.live()
    assert report.body()["failing"] == ["poll"]
    assert "no poll for 331 s" in report.checks["poll"]
    m.loop.run_once()
    assert m.health.live().ok


def test_live_fails_on_a_fatal_client_error_only() -> None:
    m = metered(InMemorySource({"t": [values(1)]}))
    m.loop.on_client_error(KafkaError("_TRANSPORT", "broker down"))
    assert m.health.live().ok  # a broker outage: restarting makes it worse
    m.loop.on_client_error(KafkaFatalError("_FENCED", "fenced by a newer instance"))
    assert m.health.live().body()["failing"] == ["kafka"]


def test_an_unreachable_store_makes_the_consumer_unready_but_not_dead() -> None:
    m = metered(InMemorySource({"t": [values(1)]}))
    m.loop.start()
    m.loop.run_once()
    m.observability.lifecycle.store_unavailable(StoreUnavailable("connection refused"))
    assert m.health.ready().body()["failing"] == ["store"]
    assert m.health.live().ok
    m.observability.lifecycle.store_available()
    assert m.health.ready().ok
