"""The ceiling: a plain confluent-kafka loop, the one users already know.

``consume`` in batches of 500, ``enable.auto.commit=false``, an asynchronous commit of explicit
offsets (last handled offset + 1 per partition) every 1,000 messages or 1 s, and a synchronous
one at the end. The client's defaults, unless the ``librdkafka`` option gives properties (the
``raw-tuned`` contender: the fetch setting the framework's consumer uses).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.runners.tally import RunSpec, Tally


def run(spec: RunSpec, tally: Tally) -> dict[str, Any]:
    from importlib.metadata import version

    import confluent_kafka
    from confluent_kafka import Consumer, TopicPartition

    batch = int(spec.options.get("batch", 500))
    every_messages = int(spec.options.get("every_messages", 1000))
    every_seconds = float(spec.options.get("every_seconds", 1.0))
    consumer = Consumer({
        "bootstrap.servers": spec.bootstrap,
        "group.id": spec.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        **dict(spec.options.get("librdkafka", {})),
    })

    def handle(message: Any) -> None:  # the no-op handler
        pass

    tally.subscribing()
    consumer.subscribe([spec.topic])
    next_offsets: dict[int, int] = {}
    since_commit, last_commit_at, commits = 0, time.monotonic(), 0
    while not tally.done:
        for message in consumer.consume(num_messages=batch, timeout=1.0):
            if message.error() is not None:
                continue
            handle(message)
            next_offsets[message.partition()] = message.offset() + 1
            since_commit += 1
            if tally.add():
                break
            if since_commit >= every_messages:
                commit_offsets(consumer, spec.topic, next_offsets, TopicPartition)
                since_commit, last_commit_at, commits = 0, time.monotonic(), commits + 1
        if since_commit and time.monotonic() - last_commit_at >= every_seconds:
            commit_offsets(consumer, spec.topic, next_offsets, TopicPartition)
            since_commit, last_commit_at, commits = 0, time.monotonic(), commits + 1
    final = [TopicPartition(spec.topic, p, o) for p, o in next_offsets.items()]
    consumer.commit(offsets=final, asynchronous=False)
    consumer.close()
    return {"client": f"confluent-kafka {version('confluent-kafka')}",
            "librdkafka": confluent_kafka.libversion()[0], "commits": commits + 1}


def commit_offsets(consumer: Any, topic: str, offsets: dict[int, int], tp: Any) -> None:
    consumer.commit(offsets=[tp(topic, p, o) for p, o in offsets.items()], asynchronous=True)
