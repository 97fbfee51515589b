"""consumer.observability.health: /livez fails only when a restart helps; /readyz follows the
lifecycle."""

from __future__ import annotations

import json

from consumer.clock import ManualClock
from consumer.errors import KafkaError, KafkaFatalError, StoreUnavailable
from consumer.observability.health import BROKERS_DOWN_GRACE_SECONDS, Lifecycle
from consumer.testing import InMemorySource
from tests.unit.engine_support import values
from tests.unit.metrics_support import Metered, metered


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


def broker_statistics(state: str) -> str:
    """The client's statistics with its one learned broker in ``state``."""
    return json.dumps({"type": "consumer", "topics": {}, "brokers": {
        "k1:9092/1": {"name": "k1:9092/1", "nodeid": 1, "source": "learned", "state": state},
        "GroupCoordinator": {"name": "GroupCoordinator", "nodeid": -1, "source": "logical",
                             "state": "UP"}}})


def report_brokers(m: Metered, state: str) -> None:
    on_statistics = m.observability.on_statistics
    assert on_statistics is not None
    on_statistics(broker_statistics(state))


def test_lifecycle_records_since_when_no_broker_is_up() -> None:
    clock = ManualClock(start=100.0)
    lifecycle = Lifecycle(clock)
    lifecycle.brokers_reported(None)  # nothing learned yet: no opinion
    assert lifecycle.brokers_down_since is None
    lifecycle.brokers_reported(False)
    clock.advance(3)
    lifecycle.brokers_reported(False)  # still down: since when is kept
    lifecycle.brokers_reported(None)
    assert lifecycle.brokers_down_since == 100.0
    lifecycle.brokers_reported(True)
    assert lifecycle.brokers_down_since is None


def test_no_broker_reachable_past_the_grace_turns_ready_false_and_live_stays_true() -> None:
    m = metered(InMemorySource({"t": [values(1)]}))
    m.loop.start()
    m.loop.run_once()
    report_brokers(m, "UP")
    assert m.health.ready().ok
    report_brokers(m, "TRY_CONNECT")
    m.clock.advance(BROKERS_DOWN_GRACE_SECONDS)
    report_brokers(m, "CONNECT")
    assert m.health.ready().ok  # a blip within the grace does not flap readiness
    m.clock.advance(2)
    report = m.health.ready()
    assert report.body()["failing"] == ["kafka"]
    assert report.checks["kafka"] == "no Kafka broker reachable for 7 s"
    assert m.value("consumer_ready") == 0
    for _ in range(60):  # a long outage, polling on: restarting would not bring brokers back
        m.clock.advance(10)
        m.loop.run_once()
        report_brokers(m, "CONNECT")
    assert m.health.ready().body()["failing"] == ["kafka"]
    assert m.health.live().ok
    assert m.value("consumer_live") == 1
    report_brokers(m, "UP")
    assert m.health.ready().ok
    assert m.value("consumer_ready") == 1


def test_each_outage_gets_its_own_grace() -> None:
    m = metered(InMemorySource({"t": [values(1)]}))
    m.loop.start()
    m.loop.run_once()
    report_brokers(m, "DOWN")
    m.clock.advance(4)
    report_brokers(m, "UP")
    m.clock.advance(10)
    report_brokers(m, "DOWN")
    m.clock.advance(4)
    assert m.health.ready().ok
