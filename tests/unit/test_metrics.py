"""consumer.metrics: the exported series, computed at scrape time from the loop's snapshot.

Messages in InMemorySource carry timestamp 0.0 and the ManualClock starts at 0, so a message's
age is simply the clock's reading.
"""

from __future__ import annotations

import pytest

from consumer.errors import HandlerFailed, KafkaError
from consumer.message import Context, Message
from consumer.metrics import METRICS
from consumer.testing import InMemorySource
from tests.unit.engine_support import values
from tests.unit.metrics_support import Metered, metered

PER_PARTITION = (
    "consumer_messages_consumed_total", "consumer_uncommitted_messages",
    "consumer_checkpoint_age_seconds", "consumer_committed_offset",
    "consumer_last_commit_timestamp_seconds", "consumer_partition_processed_offset",
    "consumer_partition_end_offset", "consumer_partition_start_offset",
    "consumer_partition_lag_messages", "consumer_partition_committed_lag_messages",
    "consumer_partition_lag_seconds",
)


# --- lag -----------------------------------------------------------------------------------


def test_idle_caught_up_consumer_reads_zero_lag_seconds_not_time_since_last_message() -> None:
    m = metered(InMemorySource({"t": [values(10)]}), every_seconds=5)
    m.loop.start()
    m.loop.run_once()
    m.log_ends({("t", 0): 10})
    m.clock.advance(3_600)
    m.loop.run_once()  # idle
    assert m.partition_value("consumer_partition_lag_messages", 0) == 0
    assert m.partition_value("consumer_partition_lag_seconds", 0) == 0
    assert m.partition_value("consumer_partition_processed_offset", 0) == 10


def test_lag_seconds_is_the_age_of_the_message_in_hand_while_a_handler_is_stuck() -> None:
    """The handler blocks 7 s on message 5 of 10; a scrape meanwhile (as the HTTP thread
    would) sees 5 messages of lag, 7 s old; after the batch, lag is 0 in both units."""
    scraped: list[tuple[float | None, float | None]] = []
    m: Metered

    def stuck_on_five(message: Message, _context: Context) -> None:
        if message.offset == 5:
            m.clock.advance(7)
            scraped.append((m.partition_value("consumer_partition_lag_messages", 0),
                            m.partition_value("consumer_partition_lag_seconds", 0)))

    m = metered(InMemorySource({"t": [values(10)]}), stuck_on_five)
    m.loop.start()
    # The client last reported an empty log: the batch in hand still shows the true end.
    m.log_ends({("t", 0): 0})
    m.loop.run_once()
    assert scraped == [(5, 7)]
    m.log_ends({("t", 0): 10})
    assert m.partition_value("consumer_partition_lag_seconds", 0) == 0
    assert m.partition_value("consumer_partition_lag_messages", 0) == 0


def test_lag_seconds_interpolates_from_end_offset_samples_when_nothing_is_fetched() -> None:
    """A paused partition: the end went 0 -> 100 between t=0 and t=10, so offset 0 arrived
    at about t=0.1; at t=20 its age is 19.9 s."""
    source = InMemorySource({"t": [values(100)]})
    source.pause([("t", 0)])
    m = metered(source)
    m.loop.start()
    m.log_ends({("t", 0): 0})
    m.clock.advance(10)
    m.log_ends({("t", 0): 100})
    m.clock.advance(10)
    m.loop.run_once()
    assert m.partition_value("consumer_partition_lag_messages", 0) == 100
    assert m.partition_value("consumer_partition_lag_seconds", 0) == pytest.approx(19.9)


def test_lag_without_a_commit_is_measured_from_the_log_start_never_negative() -> None:
    source = InMemorySource({"t": [values(3)]})
    source.pause([("t", 0)])
    m = metered(source)
    m.loop.start()
    m.loop.run_once()
    m.log_ends({("t", 0): 100}, start=50)  # retention removed offsets 0..49
    assert m.partition_value("consumer_partition_lag_messages", 0) == 50
    assert m.partition_value("consumer_partition_committed_lag_messages", 0) == 50
    assert m.partition_value("consumer_partition_processed_offset", 0) == 50
    assert m.partition_value("consumer_committed_offset", 0) is None
    m.log_ends({("t", 0): 0}, start=0)  # recreated topic: the end is behind us
    assert m.partition_value("consumer_partition_lag_messages", 0) == 0


# --- checkpoints ---------------------------------------------------------------------------


def test_commits_total_by_trigger_and_committed_offset_once_the_broker_confirms() -> None:
    m = metered(InMemorySource({"t": [values(10)]}), every_messages=3)
    m.loop.start()
    for _ in range(3):
        m.loop.run_once()
    assert m.value("consumer_commits_total", trigger="count", result="success") == 3
    # The third commit (9) is confirmed during the next poll, like the real client's.
    assert m.partition_value("consumer_committed_offset", 0) == 6
    m.loop.run_once()
    assert m.partition_value("consumer_committed_offset", 0) == 9
    assert m.partition_value("consumer_last_commit_timestamp_seconds", 0) == 0
    m.loop.close()
    assert m.value("consumer_commits_total", trigger="shutdown", result="success") == 1
    assert m.value("consumer_commits_total", trigger="count", result="error") == 0


def test_a_failed_asynchronous_commit_counts_as_an_error_of_its_trigger() -> None:
    source = InMemorySource({"t": [values(6)]})
    m = metered(source, every_seconds=5)
    m.loop.start()
    m.loop.run_once()
    m.clock.advance(5)
    source.fail_next_commit = KafkaError("REQUEST_TIMED_OUT", "slow broker")
    m.loop.run_once()
    m.loop.run_once()  # the failure arrives with the next poll
    assert m.value("consumer_commits_total", trigger="interval", result="error") == 1
    assert m.partition_value("consumer_committed_offset", 0) is None


def test_checkpoint_age_rises_while_work_is_uncommitted_and_falls_to_zero_after() -> None:
    m = metered(InMemorySource({"t": [values(10)]}), every_seconds=5)
    m.loop.start()
    m.loop.run_once()
    m.clock.advance(3)
    assert m.partition_value("consumer_checkpoint_age_seconds", 0) == 3
    assert m.partition_value("consumer_uncommitted_messages", 0) == 10
    m.clock.advance(2)
    m.loop.run_once()  # the interval checkpoint
    m.loop.run_once()  # its confirmation
    assert m.partition_value("consumer_checkpoint_age_seconds", 0) == 0
    assert m.partition_value("consumer_uncommitted_messages", 0) == 0
    assert m.partition_value("consumer_last_commit_timestamp_seconds", 0) == 5


# --- partitions come and go ----------------------------------------------------------------


def test_series_of_a_revoked_partition_disappear_and_the_others_stay() -> None:
    source = InMemorySource({"t": [values(4), values(4)]})
    m = metered(source, every_messages=8)
    m.loop.start()
    m.loop.run_once()
    m.loop.run_once()  # the commit's confirmation
    m.log_ends({("t", 0): 4, ("t", 1): 4})
    for name in PER_PARTITION:
        assert m.partitions_in(name) == {("t", "0"), ("t", "1")}, name
    source.revoke([("t", 1)])
    for name in PER_PARTITION:
        assert m.partitions_in(name) == {("t", "0")}, name
    assert m.value("consumer_assigned_partitions", topic="t") == 1
    assert m.value("consumer_rebalances_total", event="revoke") == 1


def test_series_of_a_lost_partition_disappear() -> None:
    m = metered(InMemorySource({"t": [values(2), values(2)]}))
    m.loop.start()
    m.loop.run_once()
    m.loop.on_lost([("t", 0)])
    assert m.partitions_in("consumer_partition_processed_offset") == {("t", "1")}
    assert m.value("consumer_rebalances_total", event="lost") == 1


# --- counters ------------------------------------------------------------------------------


def test_processed_and_consumed_counts_per_topic_and_partition() -> None:
    source = InMemorySource({"a": [values(3), values(2)], "b": [values(4)]})
    m = metered(source, topics=("a", "b"))
    m.loop.start()
    m.loop.run_once()
    assert m.value("consumer_messages_processed_total", topic="a", outcome="success") == 5
    assert m.value("consumer_messages_processed_total", topic="b", outcome="success") == 4
    assert m.partition_value("consumer_messages_consumed_total", 1, topic="a") == 2


def test_handler_errors_are_counted_by_exception_class_never_by_text() -> None:
    def refuse(message: Message, _context: Context) -> None:
        raise ValueError(f"bad value {message.text()}")

    m = metered(InMemorySource({"t": [values(2)]}), refuse)
    with pytest.raises(HandlerFailed):
        m.loop.run()
    assert m.value("consumer_handler_errors_total", topic="t", error_type="ValueError") == 1
    assert m.value("consumer_state", state="failed") == 1
    assert m.value("consumer_live") == 0


def test_kafka_errors_by_code_and_fatality() -> None:
    m = metered(InMemorySource({"t": [values(1)]}))
    m.loop.on_client_error(KafkaError("_TRANSPORT", "broker down"))
    assert m.value("consumer_kafka_errors_total", code="_TRANSPORT", fatal="false") == 1


# --- process -------------------------------------------------------------------------------


def test_state_is_one_hot_through_the_lifecycle() -> None:
    m = metered(InMemorySource({"t": [values(1)]}))

    def states() -> dict[str, float | None]:
        return {s: m.value("consumer_state", state=s) for s in
                ("starting", "running", "rebalancing", "draining", "stopped", "failed")}

    assert states() == {"starting": 1, "running": 0, "rebalancing": 0, "draining": 0,
                        "stopped": 0, "failed": 0}
    m.loop.start()
    assert states()["running"] == 1 and sum(v or 0 for v in states().values()) == 1
    m.loop.close()
    assert states()["stopped"] == 1 and sum(v or 0 for v in states().values()) == 1


def test_every_exported_name_is_in_the_closed_list() -> None:
    m = metered(InMemorySource({"t": [values(2)]}), every_messages=1)
    m.loop.start()
    m.loop.run_once()
    m.log_ends({("t", 0): 2})
    m.loop.run_once()
    names = {family.name for family in m.registry.collect()}
    assert names <= set(METRICS), names - set(METRICS)
    assert names == set(METRICS), set(METRICS) - names


def test_the_hot_path_emits_one_event_per_batch_not_per_message() -> None:
    """500 messages in one batch: the observers hear one ``polled`` and one ``batch_done``."""
    m = metered(InMemorySource({"t": [values(500)]}))
    calls: list[str] = []
    original = m.observability.events

    class Spy(type(original)):  # type: ignore[misc]
        def polled(self, messages: list[Message]) -> None:
            calls.append("polled")

        def batch_done(self, count: int) -> None:
            calls.append("batch_done")

    original.__class__ = Spy
    m.loop.start()
    assert m.loop.run_once() == 500
    assert calls == ["polled", "batch_done"]


def test_a_handler_stuck_before_the_client_reported_the_log_still_shows_its_lag() -> None:
    """No statistics yet (the handler blocked within the first second): the batch in hand
    alone gives lag in messages and seconds."""
    scraped: list[tuple[float | None, float | None, float | None]] = []
    m: Metered

    def stuck_on_two(message: Message, _context: Context) -> None:
        if message.offset == 2:
            m.clock.advance(4)
            scraped.append((m.partition_value("consumer_partition_lag_messages", 0),
                            m.partition_value("consumer_partition_lag_seconds", 0),
                            m.partition_value("consumer_partition_start_offset", 0)))

    m = metered(InMemorySource({"t": [values(6)]}), stuck_on_two)
    m.loop.start()
    m.loop.run_once()
    assert scraped == [(4, 4, None)]
