"""consumer.observability.lag: lag in messages and seconds, and the end-offset timeline it
interpolates."""

from __future__ import annotations

import pytest

from consumer.kafka.protocol import PartitionOffsets
from consumer.observability.lag import (
    MAX_SAMPLES,
    EndTimeline,
    OffsetTracker,
    lag_messages,
    lag_seconds,
)


@pytest.mark.parametrize(
    ("end", "position", "start", "lag"),
    [
        (100, 60, 0, 40),     # ordinary
        (100, None, 0, 100),  # nothing processed nor committed: from the log start
        (100, None, 30, 70),  # ... which retention moved
        (100, 10, 30, 70),    # a position retention deleted counts from the start
        (100, 100, 0, 0),     # caught up
        (100, 120, 0, 0),     # ahead of a stale end: never negative
    ],
)
def test_lag_in_messages(end: int, position: int | None, start: int, lag: int) -> None:
    assert lag_messages(end, position, start) == lag


def test_lag_seconds_is_zero_whenever_nothing_is_left_to_process() -> None:
    assert lag_seconds(now=1_000, lag=0, oldest_held=1.0, produced_at=1.0) == 0


def test_lag_seconds_prefers_the_message_in_hand_and_is_never_negative() -> None:
    assert lag_seconds(now=100, lag=5, oldest_held=90, produced_at=10) == 10
    assert lag_seconds(now=100, lag=5, oldest_held=None, produced_at=10) == 90
    assert lag_seconds(now=100, lag=5, oldest_held=105, produced_at=None) == 0  # clock skew


def test_timeline_interpolates_when_the_end_passed_an_offset() -> None:
    timeline = EndTimeline()
    timeline.record(100, 10.0)
    timeline.record(100, 20.0)  # still 100 at t=20: offset 100 arrived after that
    timeline.record(200, 30.0)
    assert timeline.produced_at(149) == pytest.approx(25.0)
    assert timeline.produced_at(199) == pytest.approx(30.0)


def test_timeline_never_extrapolates() -> None:
    timeline = EndTimeline()
    timeline.record(100, 10.0)
    timeline.record(200, 20.0)
    assert timeline.produced_at(5) == 10.0  # older than every sample: the oldest sample's time
    assert timeline.produced_at(200) is None  # not produced yet, as far as we know


def test_timeline_forgets_its_history_when_the_log_goes_backwards() -> None:
    timeline = EndTimeline()
    timeline.record(500, 10.0)
    timeline.record(20, 20.0)  # topic recreated
    assert timeline.produced_at(10) == 20.0


def test_timeline_thins_old_samples_instead_of_dropping_them() -> None:
    timeline = EndTimeline()
    for i in range(10 * MAX_SAMPLES):
        timeline.record(i + 1, float(i))
    assert len(timeline._samples) <= MAX_SAMPLES
    assert timeline.produced_at(0) == 0.0  # the oldest sample survives thinning
    assert timeline.produced_at(10 * MAX_SAMPLES - 1) == pytest.approx(10 * MAX_SAMPLES - 1)


def test_tracker_counts_fetched_bytes_per_topic_across_client_counter_resets() -> None:
    tracker = OffsetTracker()
    tracker.update({("t", 0): PartitionOffsets(0, 10, fetched_bytes=100),
                    ("t", 1): PartitionOffsets(0, 10, fetched_bytes=50)}, 1.0)
    tracker.update({("t", 0): PartitionOffsets(0, 20, fetched_bytes=300)}, 2.0)
    tracker.update({("t", 0): PartitionOffsets(0, 30, fetched_bytes=40)}, 3.0)  # client restarted
    assert tracker.fetched_bytes() == {"t": 100 + 50 + 200 + 40}


def test_tracker_forgets_partitions_no_longer_owned() -> None:
    tracker = OffsetTracker()
    tracker.update({("t", 0): PartitionOffsets(0, 10), ("t", 1): PartitionOffsets(0, 10)}, 1.0)
    tracker.forget([("t", 1)])
    assert set(tracker.offsets()) == {("t", 0)}
    assert tracker.produced_at(("t", 1), 0) is None
