"""consumer.commands.replay: the parts that need no broker (times, partition choice, the plan)."""

from __future__ import annotations

import pytest

from consumer.commands.replay import (
    _chosen,
    _parse_datetime,
    _parse_duration,
    _shifted_by,
    render_plan,
)
from consumer.errors import ConfigError
from consumer.kafka.protocol import GroupPosition


def positions() -> list[GroupPosition]:
    return [GroupPosition("t", 0, 20, "checkpoint-consumer/1", 0, 20),
            GroupPosition("t", 1, None, None, 5, 9)]


def test_times_are_iso_8601_and_utc_when_no_zone_is_given() -> None:
    assert _parse_datetime("1970-01-01T00:00:01Z") == 1000
    assert _parse_datetime("1970-01-01T00:00:01") == 1000
    assert _parse_datetime("1970-01-01T01:00:01+01:00") == 1000
    with pytest.raises(ConfigError, match="not an ISO 8601 time"):
        _parse_datetime("yesterday")


def test_an_unknown_partition_is_refused_naming_the_real_ones() -> None:
    assert [p.partition for p in _chosen(positions(), [1])] == [1]
    with pytest.raises(ConfigError, match=r"no partition 7 \(the topic has 0, 1\)"):
        _chosen(positions(), [7])


def test_the_plan_shows_kafka_store_target_and_keys_per_partition() -> None:
    plan = render_plan("g", positions(), {("t", 0): 15, ("t", 1): 5}, {("t", 0): 20},
                       {("t", 0): 5, ("t", 1): 0}, with_store=True)
    lines = plan.splitlines()
    assert lines[0] == "group g"
    assert lines[1].split() == ["topic", "partition", "kafka", "committed", "store",
                                "checkpoint", "resume", "at", "keys", "forgotten"]
    assert lines[2].split() == ["t", "0", "20", "20", "15", "5"]
    assert lines[3].split() == ["t", "1", "-", "-", "5", "0"]


def test_durations_are_iso_8601_days_hours_minutes_and_seconds() -> None:
    assert _parse_duration("PT30M") == 1_800
    assert _parse_duration("P1DT12H") == 129_600
    assert _parse_duration("pt1.5s") == 1.5
    for wrong in ("1h", "P", "PT", "P1H", "P1DT", ""):
        with pytest.raises(ConfigError, match="not an ISO 8601 duration"):
            _parse_duration(wrong)


def test_a_shift_starts_from_the_store_row_else_kafka_and_stays_within_the_log() -> None:
    both = [GroupPosition("t", 0, 20, "checkpoint-consumer/1", 0, 30),
            GroupPosition("t", 1, 8, "checkpoint-consumer/1", 5, 9)]
    rule = _shifted_by(-10)
    assert rule(None, both, {("t", 0): 25}) == {("t", 0): 15, ("t", 1): 5}  # type: ignore[arg-type]
    assert _shifted_by(10)(None, both, {}) == {("t", 0): 30, ("t", 1): 9}  # type: ignore[arg-type]


def test_a_shift_of_a_partition_without_a_checkpoint_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="no checkpoint on partition 1 to shift from"):
        _shifted_by(-1)(None, positions(), {})  # type: ignore[arg-type]
