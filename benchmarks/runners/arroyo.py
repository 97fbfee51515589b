"""Sentry's arroyo: ``StreamProcessor`` -> ``RunTask(no-op)`` -> ``CommitOffsets``.

Configured as arroyo's offsets guide describes: ``CommitOffsets`` as the last step and a
``CommitPolicy`` of 1,000 messages or 1 s; ``build_kafka_consumer_configuration`` with its
defaults except ``enable_auto_commit=False``, so that the policy, not librdkafka, decides the
commits. Arroyo's consumer polls one message at a time and commits synchronously; shutdown
joins the strategy, which forces a last commit.

Option ``auto_commit`` (false): arroyo's newer mode where each message's offset is stored and
librdkafka commits in the background (``enable_auto_commit=True`` in the config builder).
"""

from __future__ import annotations

from typing import Any

from benchmarks.runners.tally import RunSpec, Tally


def run(spec: RunSpec, tally: Tally) -> dict[str, Any]:
    from importlib.metadata import version

    import confluent_kafka
    from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
    from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
    from arroyo.commit import CommitPolicy
    from arroyo.processing import StreamProcessor
    from arroyo.processing.strategies import (
        CommitOffsets,
        ProcessingStrategy,
        ProcessingStrategyFactory,
        RunTask,
    )
    from arroyo.types import Commit, Message, Topic

    processor: Any = None

    def handle(message: Message[KafkaPayload]) -> KafkaPayload:  # the no-op handler
        if tally.add():
            processor.signal_shutdown()
        return message.payload

    class NoopFactory(ProcessingStrategyFactory[KafkaPayload]):
        def create_with_partitions(
            self, commit: Commit, partitions: Any
        ) -> ProcessingStrategy[KafkaPayload]:
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
        KafkaConsumer(config), Topic(spec.topic), NoopFactory(),
        commit_policy=CommitPolicy(min_commit_frequency_sec=1.0, min_commit_messages=1000),
    )
    processor.run()
    return {"client": f"sentry-arroyo {version('sentry-arroyo')}",
            "librdkafka": confluent_kafka.libversion()[0]}
