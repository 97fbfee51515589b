"""Helpers for the engine and checkpoint tests: a recording handler and a loop factory
(the recording observer is :class:`consumer.testing.RecordingObserver`)."""

from __future__ import annotations

from collections.abc import Callable

from consumer.app import build_loop
from consumer.clock import ManualClock
from consumer.engine.loop import ConsumerLoop
from consumer.events import Observer
from consumer.message import TP, Context, Message
from consumer.routing import Route, Router
from consumer.testing import InMemoryDeadLetterSink, InMemorySource
from tests.support.wiring import loop_settings

Handler = Callable[[Message, Context], object]


class Recorder:
    """A handler that remembers the coordinates of every message it was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    def __call__(self, message: Message, context: Context) -> None:
        self.seen.append((message.topic, message.partition, message.offset))


def values(count: int) -> list[bytes]:
    return [f"m{i}".encode() for i in range(count)]


def make_loop(
    source: InMemorySource,
    handler: Handler,
    *,
    topics: tuple[str, ...] = ("t",),
    every_messages: int | None = None,
    every_seconds: float | None = None,
    batch_size: int = 500,
    clock: ManualClock | None = None,
    observer: Observer | None = None,
    max_unconfirmed: int | None = None,
    synchronous_commits: bool = False,
) -> ConsumerLoop:
    """A direct-mode loop wired by the app over ``source``; a failing handler stops it."""
    settings = loop_settings(topics, every_messages=every_messages, every_seconds=every_seconds,
                             batch_size=batch_size, max_unconfirmed=max_unconfirmed,
                             synchronous_commits=synchronous_commits)
    return build_loop(settings, Router(Route(topic, handler, "x:y") for topic in topics),
                      *([] if observer is None else [observer]),
                      source=source, clock=clock or ManualClock(),
                      dead_letters=InMemoryDeadLetterSink())


def commits_never_go_backwards(commits: list[tuple[dict[TP, int], bool]]) -> bool:
    last: dict[TP, int] = {}
    for offsets, _ in commits:
        for tp, offset in offsets.items():
            if offset < last.get(tp, -1):
                return False
            last[tp] = offset
    return True
