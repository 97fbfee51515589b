"""Checkpoint triggers against a real broker: count, interval (also when idle), both; and the
offsets Kafka holds for the group equal the consumer's watermarks after every checkpoint."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest

from consumer.app import build_loop
from consumer.engine.loop import ConsumerLoop
from consumer.events import Trigger
from consumer.message import Context, Message
from consumer.routing import Route, Router
from consumer.settings import Settings
from consumer.testing import RecordingObserver
from tests.support.kafka import create_topic, group_offsets, produce, unique_name, wait_for

pytestmark = pytest.mark.integration

TP = tuple[str, int]


def _taken(observer: RecordingObserver
           ) -> list[tuple[Trigger, dict[TP, int], dict[TP, int | None]]]:
    """Every committed checkpoint, with the loop's watermarks at that moment."""
    return [(*event.args, event.snapshot) for event in observer.events  # type: ignore[misc]
            if event.name == "checkpoint_committed"]


def _loop(bootstrap: str, topic: str, handled: list[Message], observer: RecordingObserver,
          *, group: str, every_messages: int | None, every_seconds: float | None,
          synchronous_commits: bool = False,
          max_unconfirmed: int | None = None) -> ConsumerLoop:
    settings = Settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": group,
               "poll_timeout_seconds": 0.1},
        routes={topic: "handlers.echo:handle"},
        checkpoint={"every_messages": every_messages, "every_seconds": every_seconds,
                    "synchronous_commits": synchronous_commits,
                    "max_unconfirmed_messages": max_unconfirmed},
        store={"url": "none"},  # Kafka's own commits are what these tests are about.
    )

    def remember(message: Message, _context: Context) -> None:
        handled.append(message)

    loop = build_loop(settings, Router([Route(topic, remember, "test:remember")]), observer)
    observer.snapshot = loop.watermarks
    return loop


def _run_until(loop: ConsumerLoop, condition: Callable[[], bool], timeout: float,
               what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        loop.run_once()


def _kafka_matches(bootstrap: str, group: str, topic: str, offsets: dict[TP, int]) -> None:
    wanted = {p: o for (_, p), o in offsets.items()}
    wait_for(
        lambda: {p: o for p, o in group_offsets(bootstrap, group, topic, 1).items()
                 if p in wanted} == wanted,
        timeout=10, what=f"Kafka to report committed offsets {wanted} for {group}",
    )


def test_count_trigger_alone_commits_every_n_and_kafka_agrees(kafka_bootstrap: str) -> None:
    """every_messages=100, interval off, synchronous commits: 1,000 messages give checkpoints
    at 100, 200, ... 1000, each equal to the watermark then, and Kafka reports each one."""
    topic = create_topic(kafka_bootstrap, 1, prefix="count")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(1000)))
    handled: list[Message] = []
    observer = RecordingObserver()
    group = unique_name("triggers")
    loop = _loop(kafka_bootstrap, topic, handled, observer, group=group, every_messages=100,
                 every_seconds=None, synchronous_commits=True)
    assert loop.start()
    try:
        _run_until(loop, lambda: len(handled) >= 1000, 60, "1,000 messages")
        for trigger, offsets, watermarks in _taken(observer):
            assert trigger is Trigger.COUNT
            assert offsets == {tp: w for tp, w in watermarks.items() if w is not None}
    finally:
        loop.close()
    counted = [offsets[(topic, 0)] for trigger, offsets, _ in _taken(observer)
               if trigger is Trigger.COUNT]
    assert counted == list(range(100, 1001, 100))
    _kafka_matches(kafka_bootstrap, group, topic, {(topic, 0): 1000})


def test_asynchronous_count_checkpoints_wait_for_the_previous_answer(
    kafka_bootstrap: str
) -> None:
    """Asynchronous commits, every_messages=100, 5,000 messages handled faster than the broker
    answers commits: the first checkpoint is at 100; a checkpoint due while the previous one
    is unanswered goes out later with the newest watermark (so at least 100 apart, always
    forward); unconfirmed work never exceeds its bound (ten intervals here); Kafka ends with
    everything."""
    topic = create_topic(kafka_bootstrap, 1, prefix="count-async")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(5000)))
    handled: list[Message] = []
    observer = RecordingObserver()
    group = unique_name("triggers")
    loop = _loop(kafka_bootstrap, topic, handled, observer, group=group, every_messages=100,
                 every_seconds=None, max_unconfirmed=1000)
    assert loop.start()
    try:
        deadline = time.monotonic() + 60
        while len(handled) < 5000:
            assert time.monotonic() < deadline, "timed out waiting for 5,000 messages"
            loop.run_once()
            assert all(p.unconfirmed <= 1000 for p in loop.snapshot().partitions.values())
    finally:
        loop.close()
    counted = [offsets[(topic, 0)] for trigger, offsets, _ in _taken(observer)
               if trigger is Trigger.COUNT]
    assert counted[0] == 100
    assert all(later - earlier >= 100 for earlier, later in itertools.pairwise(counted))
    _kafka_matches(kafka_bootstrap, group, topic, {(topic, 0): 5000})


def test_count_checkpoints_are_in_kafka_after_each_one(kafka_bootstrap: str) -> None:
    """After every checkpoint, Kafka's committed offset for the group equals the watermark."""
    topic = create_topic(kafka_bootstrap, 1, prefix="readback")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(300)))
    handled: list[Message] = []
    observer = RecordingObserver()
    group = unique_name("triggers")
    loop = _loop(kafka_bootstrap, topic, handled, observer, group=group, every_messages=50,
                 every_seconds=None)
    assert loop.start()
    checked = 0
    try:
        while checked < 6:
            loop.run_once()
            for _trigger, offsets, watermarks in _taken(observer)[checked:]:
                assert offsets[(topic, 0)] == watermarks[(topic, 0)]
                _kafka_matches(kafka_bootstrap, group, topic, offsets)
                checked += 1
    finally:
        loop.close()
    assert checked == 6


def test_interval_trigger_alone_commits_an_idle_consumers_work(kafka_bootstrap: str) -> None:
    """Count trigger off, every_seconds=1: 50 messages are handled, no more arrive, and the
    interval still commits them while the consumer sits idle."""
    topic = create_topic(kafka_bootstrap, 1, prefix="interval")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(50)))
    handled: list[Message] = []
    observer = RecordingObserver()
    group = unique_name("triggers")
    loop = _loop(kafka_bootstrap, topic, handled, observer, group=group, every_messages=None,
                 every_seconds=1.0)
    assert loop.start()
    try:
        _run_until(loop, lambda: len(handled) == 50, 60, "50 messages")
        _run_until(loop, lambda: any(o.get((topic, 0)) == 50 for _, o, _ in _taken(observer)),
                   10, "an interval checkpoint of the idle consumer")
        assert {t for t, _, _ in _taken(observer)} == {Trigger.INTERVAL}
        _kafka_matches(kafka_bootstrap, group, topic, {(topic, 0): 50})
    finally:
        loop.close()


def test_both_triggers_whichever_comes_first(kafka_bootstrap: str) -> None:
    """every_messages=100 and every_seconds=1 with 250 messages (synchronous commits, so every
    due checkpoint goes out at once): the count commits 100 and 200, the interval commits the
    remaining 50 once the consumer is idle."""
    topic = create_topic(kafka_bootstrap, 1, prefix="both")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(250)))
    handled: list[Message] = []
    observer = RecordingObserver()
    group = unique_name("triggers")
    loop = _loop(kafka_bootstrap, topic, handled, observer, group=group, every_messages=100,
                 every_seconds=1.0, synchronous_commits=True)
    assert loop.start()
    try:
        _run_until(loop, lambda: any(o.get((topic, 0)) == 250 for _, o, _ in _taken(observer)),
                   60, "the last 50 messages to be committed")
    finally:
        loop.close()
    by_trigger = [(t, o[(topic, 0)]) for t, o, _ in _taken(observer)]
    assert (Trigger.COUNT, 100) in by_trigger
    assert (Trigger.COUNT, 200) in by_trigger
    assert (Trigger.INTERVAL, 250) in by_trigger
    assert len(handled) == 250
