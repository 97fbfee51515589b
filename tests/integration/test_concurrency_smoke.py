"""Concurrency on a real broker, the smoke test: a route with concurrency 20 handles 2,000
messages over 4 partitions and 100 keys, each once, and the group's committed offsets end at
the log end (the watermarks with gaps closed)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from consumer.app import build_loop
from consumer.message import Context, Message
from consumer.routing import Route, Router
from consumer.settings import Settings
from tests.support.kafka import (
    create_topic,
    end_offsets,
    group_offsets,
    produce,
    unique_name,
    wait_for,
)

pytestmark = pytest.mark.integration

MESSAGES = 2_000
PARTITIONS = 4


def test_a_route_with_concurrency_20_handles_everything_and_commits_the_log_end(
        kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, PARTITIONS, prefix="conc")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(MESSAGES)),
            key=lambda i: str(i % 100).encode())
    lock = threading.Lock()
    handled: Counter[tuple[int, int]] = Counter()
    running = {"now": 0, "most": 0}

    def handle(message: Message, _context: Context) -> None:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        time.sleep(0.002)
        with lock:
            running["now"] -= 1
            handled[(message.partition, message.offset)] += 1

    group = unique_name("conc")
    settings = Settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "group_id": group,
               "poll_timeout_seconds": 0.1},
        routes={topic: {"handler": "handlers.echo:handle", "concurrency": 20}},
        checkpoint={"every_messages": 500, "every_seconds": 1.0},
        store={"url": "none"},
    )
    loop = build_loop(settings, Router([Route(topic, handle, "test:handle")]))
    assert loop.start()
    deadline = time.monotonic() + 120
    while len(handled) < MESSAGES:
        assert time.monotonic() < deadline, f"only {len(handled)} of {MESSAGES} handled"
        loop.run_once()
    loop.close()

    assert len(handled) == MESSAGES and set(handled.values()) == {1}  # each once
    assert 1 < running["most"] <= 20
    ends = end_offsets(kafka_bootstrap, topic)
    wait_for(lambda: group_offsets(kafka_bootstrap, group, topic, PARTITIONS) == ends,
             timeout=10, what=f"the committed offsets to reach the log end {ends}")
