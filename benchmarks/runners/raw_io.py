"""The IO-bound group's ceilings: a plain confluent-kafka loop handing messages to hand-written
workers, with none of the framework's guarantees (no key ordering, no watermarks, no processed
keys, no checkpoint rows). What Python itself allows on this machine for the same handler, so a
framework figure reads against it as well as against the ideal.

Option ``mode``:

- ``asyncio``: one event loop (uvloop's when installed, as the framework's async runner) in the
  main thread; the loop takes what the client has fetched (``consume(timeout=0)``) while fewer
  than ``concurrency`` tasks run, each task awaits ``asyncio.sleep(0.01)`` and counts.
- ``postgres``: ``concurrency`` threads, each with its own psycopg connection, take up to
  ``batch`` messages at a time from a queue the main thread fills and, in one transaction,
  insert one row per message into ``bench_effects`` then sleep 10 ms, and commit (the
  framework's micro-batch without its claim statement). Needs CONSUMER_TEST_POSTGRES_DSN.

Offsets: those handed out, committed asynchronously every 1 s (before the handler ran, as
FastStream's ``ACK_FIRST``); a ceiling, not a way to run.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any

from benchmarks.runners.raw import commit_offsets
from benchmarks.runners.tally import RunSpec, Tally

SLEEP_SECONDS = 0.01  # contenders.SLEEP_SECONDS


def run(spec: RunSpec, tally: Tally) -> dict[str, Any]:
    from importlib.metadata import version

    import confluent_kafka
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": spec.bootstrap,
        "group.id": spec.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.queue.backoff.ms": 100,  # the framework's consumer's setting
    })
    mode = str(spec.options.get("mode", "asyncio"))
    concurrency = int(spec.options["concurrency"])
    tally.subscribing()
    consumer.subscribe([spec.topic])
    if mode == "asyncio":
        report = _run_asyncio(consumer, spec, tally, concurrency)
    elif mode == "postgres":
        report = _run_postgres(consumer, spec, tally, concurrency,
                               int(spec.options.get("batch", 8)))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    consumer.close()
    return {"client": f"confluent-kafka {version('confluent-kafka')}",
            "librdkafka": confluent_kafka.libversion()[0], **report}


class _Offsets:
    """Next offsets handed out per partition, committed asynchronously once a second."""

    def __init__(self, consumer: Any, topic: str) -> None:
        from confluent_kafka import TopicPartition

        self._consumer = consumer
        self._topic = topic
        self._tp = TopicPartition
        self._next: dict[int, int] = {}
        self._at = time.monotonic()
        self.commits = 0

    def handed_out(self, message: Any) -> None:
        self._next[message.partition()] = message.offset() + 1

    def maybe_commit(self) -> None:
        if self._next and time.monotonic() - self._at >= 1.0:
            commit_offsets(self._consumer, self._topic, self._next, self._tp)
            self._at = time.monotonic()
            self.commits += 1


def _run_asyncio(consumer: Any, spec: RunSpec, tally: Tally, concurrency: int) -> dict[str, Any]:
    import asyncio

    from consumer.engine.concurrency.runners import new_event_loop  # the framework's choice

    loop = new_event_loop()
    offsets = _Offsets(consumer, spec.topic)
    running = 0

    async def handle() -> None:
        nonlocal running
        await asyncio.sleep(SLEEP_SECONDS)
        running -= 1
        tally.add()

    async def main() -> None:
        nonlocal running
        while not tally.done:
            room = min(500, concurrency - running)
            batch = consumer.consume(num_messages=room, timeout=0) if room > 0 else []
            for message in batch:
                if message.error() is not None:
                    continue
                offsets.handed_out(message)
                running += 1
                loop.create_task(handle())
            offsets.maybe_commit()
            await asyncio.sleep(0 if batch else 0.001)

    loop.run_until_complete(main())
    loop.close()
    return {"commits": offsets.commits}


def _run_postgres(consumer: Any, spec: RunSpec, tally: Tally, concurrency: int,
                  batch: int) -> dict[str, Any]:
    import psycopg

    from benchmarks.effects import INSERT, EffectsStore  # the framework contender's rows

    dsn = os.environ.get("CONSUMER_TEST_POSTGRES_DSN")
    if not dsn:
        raise RuntimeError("mode=postgres needs CONSUMER_TEST_POSTGRES_DSN")
    with EffectsStore(dsn) as effects:
        effects.prepare()
    work: queue.Queue[Any] = queue.Queue(maxsize=concurrency * batch * 2)
    offsets = _Offsets(consumer, spec.topic)
    lock = threading.Lock()

    def serve() -> None:
        with psycopg.connect(dsn) as conn:
            while not tally.done:
                try:
                    taken = [work.get(timeout=0.1)]
                except queue.Empty:
                    continue
                while len(taken) < batch:
                    try:
                        taken.append(work.get_nowait())
                    except queue.Empty:
                        break
                with conn.transaction():
                    for message in taken:
                        conn.execute(INSERT, (spec.group, spec.topic, message.partition(),
                                              message.offset()))
                        time.sleep(SLEEP_SECONDS)
                with lock:
                    tally.add(len(taken))

    threads = [threading.Thread(target=serve, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    while not tally.done:
        for message in consumer.consume(num_messages=500, timeout=0.1):
            if message.error() is not None:
                continue
            offsets.handed_out(message)
            while not tally.done:
                try:
                    work.put(message, timeout=0.1)
                    break
                except queue.Full:
                    continue
        offsets.maybe_commit()
    for thread in threads:
        thread.join()
    with EffectsStore(dsn) as effects:
        effects.forget(spec.group)
    return {"commits": offsets.commits}
