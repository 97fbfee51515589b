"""Sentry's arroyo: ``StreamProcessor`` -> ``RunTask(no-op)`` -> ``CommitOffsets``.

Configured as arroyo's offsets guide describes: ``CommitOffsets`` as the last step and a
``CommitPolicy`` of 1,000 messages or 1 s; ``build_kafka_consumer_configuration`` with its
defaults except ``enable_auto_commit=False``, so that the policy, not librdkafka, decides the
commits. Arroyo's consumer polls one message at a time and commits synchronously; shutdown
joins the strategy, which forces a last commit.

Option ``auto_commit`` (false): arroyo's newer mode where each message's offset is stored and
librdkafka commits in the background (``enable_auto_commit=True`` in the config builder).

Option ``mode`` ``batch``: arroyo's batching step, as its strategies document it for work done
a batch at a time: ``BatchStep(max_batch_size, max_batch_time)`` -> ``RunTask(no-op over the
batch)`` -> ``CommitOffsets``, batches of ``batch`` messages (1,000) or 1 s. The batch carries
the highest offset of each partition in it, so a commit covers every message of the batches
that reached ``CommitOffsets``; the handler counts the batch's messages. Shutdown joins the
strategy, which hands on the unfinished batch, then forces a last commit.

Option ``mode`` (``noop``): the IO-bound group's handler, which sleeps 10 ms, run by arroyo's
own concurrency. ``threads``: ``RunTaskInThreads(concurrency, max_pending)``; the handler
counts when it finishes. ``processes``: ``RunTaskWithMultiprocessing`` over a pool of
``processes``, batches of ``batch`` messages or 1 s; the handler runs in the pool's processes,
so a step after it counts each message as its result comes back to this one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks.runners.tally import RunSpec, Tally

SLEEP_SECONDS = 0.01  # contenders.SLEEP_SECONDS (standard library only here)


def sleep_then_pass(message: Any) -> Any:
    """The IO-bound handler, module-level so that the multiprocessing pool can pickle it."""
    time.sleep(SLEEP_SECONDS)
    return message.payload


def run(spec: RunSpec, tally: Tally) -> dict[str, Any]:
    from importlib.metadata import version

    import confluent_kafka
    from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
    from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
    from arroyo.commit import CommitPolicy
    from arroyo.processing import StreamProcessor
    from arroyo.processing.strategies import (
        BatchStep,
        CommitOffsets,
        ProcessingStrategy,
        ProcessingStrategyFactory,
        RunTask,
        RunTaskInThreads,
        RunTaskWithMultiprocessing,
    )
    from arroyo.processing.strategies.run_task_with_multiprocessing import MultiprocessingPool
    from arroyo.types import Commit, Message, Topic

    processor: Any = None
    mode = str(spec.options.get("mode", "noop"))
    lock = threading.Lock()
    stop_sent = False

    def handle(message: Message[KafkaPayload]) -> KafkaPayload:  # the no-op handler
        if tally.add():
            processor.signal_shutdown()
        return message.payload

    def handle_batch(batch: Message[Any]) -> None:  # the no-op handler, over a batch
        if tally.add(len(batch.payload)):
            processor.signal_shutdown()

    def count(message: Message[KafkaPayload]) -> KafkaPayload:
        nonlocal stop_sent
        with lock:  # RunTaskInThreads calls it from its workers
            stop = tally.add() and not stop_sent
            stop_sent = stop_sent or stop
        if stop:
            processor.signal_shutdown()
        return message.payload

    def sleep_then_count(message: Message[KafkaPayload]) -> KafkaPayload:
        time.sleep(SLEEP_SECONDS)
        return count(message)

    pool = (MultiprocessingPool(int(spec.options.get("processes", 8)))
            if mode == "processes" else None)

    class Factory(ProcessingStrategyFactory[KafkaPayload]):
        def create_with_partitions(
            self, commit: Commit, partitions: Any
        ) -> ProcessingStrategy[KafkaPayload]:
            if mode == "threads":
                return RunTaskInThreads(
                    sleep_then_count, int(spec.options.get("concurrency", 100)),
                    int(spec.options.get("max_pending", 1000)), CommitOffsets(commit))
            if mode == "processes" and pool is not None:
                return RunTaskWithMultiprocessing(
                    sleep_then_pass, RunTask(count, CommitOffsets(commit)),
                    max_batch_size=int(spec.options.get("batch", 100)), max_batch_time=1.0,
                    pool=pool)
            if mode == "batch":
                return BatchStep(
                    int(spec.options.get("batch", 1000)), 1.0,
                    RunTask(handle_batch, CommitOffsets(commit)))
            return RunTask(handle, CommitOffsets(commit))

    auto_commit = bool(spec.options.get("auto_commit", False))
    config = build_kafka_consumer_configuration(
        {}, group_id=spec.group, auto_offset_reset="earliest",
        bootstrap_servers=[spec.bootstrap], enable_auto_commit=auto_commit,
    )
    if auto_commit:
        config["auto.commit.interval.ms"] = 1000
    tally.subscribing()  # StreamProcessor subscribes in its constructor
    processor = StreamProcessor(
        KafkaConsumer(config), Topic(spec.topic), Factory(),
        commit_policy=CommitPolicy(min_commit_frequency_sec=1.0, min_commit_messages=1000),
    )
    try:
        processor.run()
    finally:
        if pool is not None:
            pool.close()
    return {"client": f"sentry-arroyo {version('sentry-arroyo')}",
            "librdkafka": confluent_kafka.libversion()[0]}
