"""consumer.checkpoint.policy: when a checkpoint is due (count, interval, both, either off)."""

from __future__ import annotations

from consumer.checkpoint.policy import CheckpointPolicy, CheckpointState
from consumer.events import Trigger


def test_count_trigger_is_due_at_exactly_every_messages() -> None:
    state = CheckpointState(CheckpointPolicy(every_messages=3, every_seconds=None), now=0.0)
    state.record_done(2)
    assert state.due(now=1_000.0) is None
    state.record_done()
    assert state.due(now=0.0) is Trigger.COUNT


def test_interval_trigger_is_due_after_every_seconds_even_with_nothing_done() -> None:
    state = CheckpointState(CheckpointPolicy(every_messages=None, every_seconds=5.0), now=100.0)
    assert state.due(now=104.99) is None
    assert state.due(now=105.0) is Trigger.INTERVAL
    assert state.done == 0


def test_interval_off_never_fires_on_time() -> None:
    state = CheckpointState(CheckpointPolicy(every_messages=10, every_seconds=None), now=0.0)
    state.record_done(9)
    assert state.due(now=1e9) is None


def test_count_off_never_fires_on_messages() -> None:
    state = CheckpointState(CheckpointPolicy(every_messages=None, every_seconds=5.0), now=0.0)
    state.record_done(10**9)
    assert state.due(now=1.0) is None


def test_with_both_triggers_whichever_comes_first_fires() -> None:
    policy = CheckpointPolicy(every_messages=3, every_seconds=5.0)
    by_count = CheckpointState(policy, now=0.0)
    by_count.record_done(3)
    assert by_count.due(now=1.0) is Trigger.COUNT
    by_time = CheckpointState(policy, now=0.0)
    by_time.record_done(1)
    assert by_time.due(now=5.0) is Trigger.INTERVAL


def test_count_is_reported_when_both_are_due() -> None:
    state = CheckpointState(CheckpointPolicy(every_messages=3, every_seconds=5.0), now=0.0)
    state.record_done(3)
    assert state.due(now=6.0) is Trigger.COUNT


def test_room_is_what_remains_before_the_count_trigger_and_never_negative() -> None:
    state = CheckpointState(CheckpointPolicy(every_messages=3, every_seconds=None), now=0.0)
    assert state.room() == 3
    state.record_done()
    assert state.room() == 2
    state.record_done(5)
    assert state.room() == 0


def test_room_is_unlimited_without_a_count_trigger() -> None:
    state = CheckpointState(CheckpointPolicy(every_messages=None, every_seconds=1.0), now=0.0)
    state.record_done(10)
    assert state.room() is None


def test_reset_clears_the_count_and_restarts_the_interval() -> None:
    state = CheckpointState(CheckpointPolicy(every_messages=3, every_seconds=5.0), now=0.0)
    state.record_done(3)
    state.reset(now=4.0)
    assert state.done == 0
    assert state.room() == 3
    assert state.due(now=8.9) is None
    assert state.due(now=9.0) is Trigger.INTERVAL


def test_default_policy_is_a_thousand_messages_or_five_seconds() -> None:
    assert CheckpointPolicy() == CheckpointPolicy(every_messages=1_000, every_seconds=5.0)
