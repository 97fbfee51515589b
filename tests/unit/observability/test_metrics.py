"""consumer.observability.metrics: the exported series, computed at scrape time from the loop's
snapshot.

Messages in InMemorySource carry timestamp 0.0 and the ManualClock starts at 0, so a message's
age is simply the clock's reading.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from consumer.clock import ManualClock
from consumer.dedup import KeyFormat, key_function
from consumer.errors import HandlerFailed, KafkaError, StoreUnavailable
from consumer.message import TP, Context, Message
from consumer.observability.instruments import Instruments
from consumer.observability.metrics import METRICS
from consumer.store import CheckpointRow, Claim, ClaimBatch
from consumer.store.claim_batch import EveryKey
from consumer.store.postgres import PostgresStore
from consumer.store.sqlite import SQLiteStore
from consumer.testing import InMemorySource
from tests.support.scrape import PER_PARTITION
from tests.unit.engine_support import values
from tests.unit.metrics_support import Metered, metered

# --- lag -----------------------------------------------------------------------------------


class FetchesNothing(InMemorySource):
    """Its partitions are assigned and deliver nothing, as a paused one would."""

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        super().poll(0, timeout)  # assigns; takes no message
        return []


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
    source = FetchesNothing({"t": [values(100)]})
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
    source = FetchesNothing({"t": [values(3)]})
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
    """starting, then rebalancing while joining the group (until the poll that brought the
    assignment is over), running, stopped."""
    m = metered(InMemorySource({"t": [values(1)]}))

    def states() -> dict[str, float | None]:
        return {s: m.value("consumer_state", state=s) for s in
                ("starting", "running", "rebalancing", "draining", "stopped", "failed")}

    assert states() == {"starting": 1, "running": 0, "rebalancing": 0, "draining": 0,
                        "stopped": 0, "failed": 0}
    m.loop.start()
    assert states()["rebalancing"] == 1 and sum(v or 0 for v in states().values()) == 1
    m.loop.run_once()
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


# --- histograms ----------------------------------------------------------------------------


def test_handler_durations_count_every_call_by_outcome_and_ages_every_done_message() -> None:
    """10 messages each taking 0.2 s (the third fails once and is retried later): 10
    successful calls and one error in handler_duration, 10 ages observed, 0.2 s each call."""
    failed_once: set[int] = set()
    m: Metered

    def slow(message: Message, _context: Context) -> None:
        m.clock.advance(0.2)
        if message.offset == 2 and 2 not in failed_once:
            failed_once.add(2)
            raise ValueError("not yet")

    m = metered(InMemorySource({"t": [values(10)]}), slow, retry_backoff=1.0)
    m.loop.start()
    m.loop.run_once()  # 0, 1 done; 2 fails; partition paused
    m.clock.advance(1.0)
    m.loop.run_once()  # resumed: 2..9
    name = "consumer_handler_duration_seconds"
    count, total = m.histogram(name, topic="t", outcome="success")
    assert count == 10 and total == pytest.approx(2.0)
    assert m.bucket(name, "0.25", topic="t", outcome="success") == 10
    assert m.bucket(name, "0.1", topic="t", outcome="success") == 0
    assert m.histogram(name, topic="t", outcome="error") == (1, pytest.approx(0.2))
    age_count, _ = m.histogram("consumer_message_age_seconds", topic="t")
    assert age_count == 10
    assert m.value("consumer_messages_processed_total", topic="t", outcome="success") == 10


def test_the_handler_call_in_progress_shows_its_start_and_none_after() -> None:
    scraped: list[float | None] = []
    m: Metered

    def stuck(message: Message, _context: Context) -> None:
        if message.offset == 1:
            m.clock.advance(30)
            scraped.append(m.value("consumer_handler_oldest_start_timestamp_seconds"))

    m = metered(InMemorySource({"t": [values(3)]}), stuck)
    m.loop.start()
    m.clock.advance(100)
    m.loop.run_once()
    assert scraped == [pytest.approx(100)]
    assert m.value("consumer_handler_oldest_start_timestamp_seconds") == 0


def test_commit_duration_counts_every_commit() -> None:
    m = metered(InMemorySource({"t": [values(10)]}), every_messages=3)
    m.loop.start()
    for _ in range(4):
        m.loop.run_once()
    m.loop.close()
    commits = sum(m.value("consumer_commits_total", trigger=t, result="success") or 0
                  for t in ("count", "shutdown"))
    assert commits == 4
    assert m.histogram("consumer_commit_duration_seconds")[0] == commits


def test_a_rebalance_shows_as_rebalancing_until_the_poll_after_the_assignment() -> None:
    """Joining is the first rebalance; a revoke starts another, which lasts until the poll
    that brings the (cooperative, possibly empty) assignment is over."""
    source = InMemorySource({"t": [values(2), values(2)]})
    m = metered(source)
    m.loop.start()
    m.clock.advance(2)
    m.loop.run_once()
    assert m.histogram("consumer_rebalance_duration_seconds") == (1, 2)
    source.revoke([("t", 1)])
    assert m.value("consumer_state", state="rebalancing") == 1
    m.clock.advance(3)
    m.loop.run_once()  # no assignment yet: still rebalancing
    assert m.value("consumer_state", state="rebalancing") == 1
    m.loop.on_assigned([])
    m.loop.run_once()
    assert m.value("consumer_state", state="running") == 1
    assert m.histogram("consumer_rebalance_duration_seconds") == (2, 5)


# --- paused partitions and transactional input ---------------------------------------------


def test_a_paused_partition_is_counted_and_its_end_refreshed_from_the_broker() -> None:
    """Partition 0 waits 60 s for a retry while 5 messages are produced to it: the statistics
    would freeze its end, the loop's throttled query moves it."""
    def fail_on_zero(message: Message, _context: Context) -> None:
        if message.offset == 0 and message.partition == 0:
            raise ValueError("later")

    source = InMemorySource({"t": [values(3), values(3)]})
    m = metered(source, fail_on_zero, retry_backoff=60)
    m.loop.start()
    m.loop.run_once()
    m.log_ends({("t", 0): 3, ("t", 1): 3})
    assert m.value("consumer_paused_partitions", topic="t") == 1
    for _ in range(5):
        source.append("t", 0, b"new")
    m.clock.advance(1)
    m.loop.run_once()  # the refresh asks the broker (here: the in-memory log)
    m.log_ends({("t", 0): 3, ("t", 1): 3})  # the client's statistics: frozen
    assert m.partition_value("consumer_partition_end_offset", 0) == 8
    assert m.partition_value("consumer_partition_lag_messages", 0) == 8
    assert m.partition_value("consumer_partition_end_offset", 1) == 3


def test_a_transaction_marker_does_not_leave_a_lag_of_one() -> None:
    """Messages 0..9 then a commit marker at offset 10: the end is 11, the client's position
    too, so processed and committed lag reach 0, not 1."""
    source = InMemorySource({"t": [values(10)]})
    source.append_marker("t", 0)
    m = metered(source, every_messages=10)
    m.loop.start()
    m.loop.run_once()
    m.log_ends({("t", 0): 11})
    m.clock.advance(1)
    m.loop.run_once()  # the refresh reads the position past the marker
    assert m.partition_value("consumer_partition_processed_offset", 0) == 11
    assert m.partition_value("consumer_partition_lag_messages", 0) == 0
    assert m.partition_value("consumer_partition_committed_lag_messages", 0) == 0
    assert m.partition_value("consumer_partition_lag_seconds", 0) == 0


def test_lag_counts_what_a_stuck_concurrent_handler_holds_back() -> None:
    """Concurrency 4: offset 5 hangs in its handler while 6..9 finish above it. The client's
    position (10) is past the watermark (5) because of that, not because of transaction
    markers: 5 messages of lag, not 0."""
    release = threading.Event()

    def stuck_on_five(message: Message, _context: Context) -> None:
        if message.offset == 5:
            release.wait(10)

    m = metered(InMemorySource({"t": [values(10)]}), stuck_on_five,
                route={"concurrency": 4, "ordering": "none"})
    m.loop.start()
    try:
        deadline = time.monotonic() + 10
        while (partition := m.loop.snapshot().partitions.get(("t", 0))) is None \
                or partition.gap < 4 or partition.watermark != 5:
            assert time.monotonic() < deadline, "offsets 0..4 and 6..9 did not finish"
            m.loop.run_once()
        m.log_ends({("t", 0): 10})
        m.clock.advance(1)
        m.loop.run_once()  # a refresh while the handler is stuck
        assert m.partition_value("consumer_partition_processed_offset", 0) == 5
        assert m.partition_value("consumer_partition_lag_messages", 0) == 5
    finally:
        release.set()
    m.loop.close()


# --- store -----------------------------------------------------------------------------------


def test_store_mode_lag_seconds_counts_the_pending_batch_and_store_metrics_count(
    tmp_path: Path,
) -> None:
    """Five messages wait in the store's pending batch for the interval checkpoint: they are
    lag (5 messages, 4 s old), not done; after the checkpoint, the dedup lookups were misses,
    each store operation was timed once, and nothing failed."""
    store = SQLiteStore(str(tmp_path / "store.db"))
    store.ensure_schema()
    m = metered(InMemorySource({"t": [values(5)]}), store=store, every_seconds=5)
    m.loop.start()
    m.clock.advance(1)
    m.loop.run_once()
    m.log_ends({("t", 0): 5})
    m.clock.advance(3)
    assert m.partition_value("consumer_partition_lag_messages", 0) == 5
    assert m.partition_value("consumer_partition_lag_seconds", 0) == 4
    m.clock.advance(1)
    m.loop.run_once()  # the interval checkpoint applies the batch
    assert m.partition_value("consumer_partition_lag_seconds", 0) == 0
    assert m.value("consumer_dedup_lookups_total", topic="t", result="miss") == 5
    assert m.value("consumer_dedup_lookups_total", topic="t", result="hit") == 0
    for operation in ("open_batch", "close_batch", "assign"):
        assert m.histogram("consumer_store_duration_seconds", operation=operation)[0] == 1
        assert m.value("consumer_store_errors_total", operation=operation) == 0
    assert m.histogram("consumer_message_age_seconds", topic="t") == (5, 25)
    assert m.histogram("consumer_handler_duration_seconds", topic="t",
                       outcome="success")[0] == 5


def test_with_metrics_a_batch_opens_and_closes_in_the_stores_own_steps() -> None:
    """The timed store hands a batch's opening and closing to the store itself (where a
    server store sends each in one round trip), not to its own begin, claim, rows and commit."""
    calls: list[str] = []

    class OneStep(SQLiteStore):
        def open_batch(self, group: str, claims: Sequence[Claim], now: float) -> set[bytes]:
            calls.append("open_batch")
            return super().open_batch(group, claims, now)

        def close_batch(self, group: str, rows: Sequence[CheckpointRow],
                        now: float) -> list[TP]:
            calls.append("close_batch")
            return super().close_batch(group, rows, now)

    instruments = Instruments(now=ManualClock().monotonic)
    store = instruments.store(OneStep(":memory:"))
    store.ensure_schema("g")
    store.assign("g", [("t", 0)], 1.0)
    claim = Claim(bytes(16), "t", 0, 4)
    assert store.open_batch("g", [claim], 2.0) == {claim.key}
    assert store.close_batch("g", [CheckpointRow("t", 0, 5, 1)], 2.0) == []
    assert calls == ["open_batch", "close_batch"]
    assert store.checkpoints("g") == {("t", 0): 5}
    assert (instruments.store_duration["open_batch"].count,
            instruments.store_duration["close_batch"].count) == (1, 1)
    assert instruments.store_duration["begin"].count == 0


def test_dedup_lookups_of_a_batch_of_stretches_are_counted_per_topic() -> None:
    keys = key_function("coordinates", {}, key_format=KeyFormat(ordered_coordinates=True))
    messages = [Message("t", 0, o, b"") for o in range(4)] + \
        [Message("u", 1, o, b"") for o in range(3)]
    stretches = keys.stretches(messages)
    assert stretches is not None
    batch = ClaimBatch(stretches)
    instruments = Instruments(now=ManualClock().monotonic)
    instruments.claimed(batch, EveryKey(batch))
    assert instruments.dedup == {("t", "hit"): 0, ("t", "miss"): 4,
                                 ("u", "hit"): 0, ("u", "miss"): 3}
    instruments.claimed(batch, {keys(messages[0]), keys(messages[1])})
    assert instruments.dedup == {("t", "hit"): 2, ("t", "miss"): 6,
                                 ("u", "hit"): 3, ("u", "miss"): 3}


def test_a_failing_store_operation_is_counted_by_operation() -> None:
    class Unreachable(SQLiteStore):
        def begin(self) -> None:
            raise StoreUnavailable("database is locked")

    instruments = Instruments(now=ManualClock().monotonic)
    store = instruments.store(Unreachable(":memory:"))
    with pytest.raises(StoreUnavailable):
        store.begin()
    assert instruments.store_errors["begin"] == 1
    assert instruments.store_duration["begin"].count == 1


def test_a_large_batch_ages_a_sample_that_stands_for_every_message() -> None:
    """500 messages in one batch: the age histogram still counts 500 (32 sampled members,
    each standing for its share of the batch)."""
    m = metered(InMemorySource({"t": [values(500)]}), batch_size=500)
    m.loop.start()
    m.clock.advance(7.0)
    assert m.loop.run_once() == 500
    count, total = m.histogram("consumer_message_age_seconds", topic="t")
    assert count == 500
    assert total == pytest.approx(500 * 7.0)



def test_the_timed_store_passes_the_concurrent_transactions_through() -> None:
    """The store's transactions for concurrent handlers come from the wrapped store: the base
    class's defaults refuse them, so the consumer stopped at start with an ``async def``
    handler and a PostgreSQL store whenever metrics were on. (PostgreSQL connects at first
    use: nothing here reaches a server.)"""
    timed = Instruments(now=ManualClock().monotonic).store(
        PostgresStore("postgresql://nobody@127.0.0.1:1/none"))
    assert type(timed.message_transactions(2)).__name__ == "PostgresTransactions"
    assert type(timed.async_message_transactions(2)).__name__ == "AsyncPostgresTransactions"
