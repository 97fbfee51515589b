"""consumer.kafka.source: the consumer client's configuration, as librdkafka receives it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consumer.kafka import source as source_module
from consumer.kafka.source import KafkaSource
from consumer.settings import KafkaSettings, load_settings


class _FakeConsumer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config


def client_config(monkeypatch: pytest.MonkeyPatch, settings: KafkaSettings) -> dict[str, Any]:
    monkeypatch.setattr(source_module, "Consumer", _FakeConsumer)
    consumer = KafkaSource(settings)._consumer
    assert isinstance(consumer, _FakeConsumer)
    return consumer.config


def test_group_instance_id_makes_the_member_static(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = KafkaSettings(bootstrap_servers="k1:9092", group_id="g",
                             group_instance_id="consumer-0")
    assert client_config(monkeypatch, settings)["group.instance.id"] == "consumer-0"


def test_without_group_instance_id_membership_is_dynamic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = KafkaSettings(bootstrap_servers="k1:9092", group_id="g")
    assert "group.instance.id" not in client_config(monkeypatch, settings)


def test_group_instance_id_comes_from_the_environment_as_kubernetes_sets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Deployment sets CONSUMER_KAFKA__GROUP_INSTANCE_ID from the pod's name."""
    config = tmp_path / "c.yaml"
    config.write_text("kafka: {bootstrap_servers: 'k1:9092', group_id: g}\n"
                      "routes: {events: handlers.echo:handle}\n")
    monkeypatch.setenv("CONSUMER_KAFKA__GROUP_INSTANCE_ID", "checkpoint-consumer-7d9f8-x2k4q")
    settings = load_settings(config)
    assert settings.kafka.group_instance_id == "checkpoint-consumer-7d9f8-x2k4q"


def test_committed_offsets_are_asked_again_while_the_coordinator_is_not_ready() -> None:
    """At an assignment the source reads the partitions' commits (the store mode compares
    them with its own; with concurrency they list what finished above the offset). A broker
    taking its groups back answers "not the coordinator" for a moment: asked again, not an
    assignment that fails (librdkafka's mock cluster answers so twice)."""
    from confluent_kafka import Consumer, TopicPartition

    from tests.support.mock_cluster import NOT_COORDINATOR, OFFSET_FETCH, MockCluster

    cluster = MockCluster()
    try:
        cluster.create_topic("orders", 2)
        committer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "g",
                              "enable.auto.commit": False})
        committer.commit(offsets=[TopicPartition("orders", 0, 3, metadata="m")],
                         asynchronous=False)
        committer.close()
        source = KafkaSource(KafkaSettings(bootstrap_servers=cluster.bootstrap, group_id="g"))
        try:
            cluster.fail_next(OFFSET_FETCH, NOT_COORDINATOR, NOT_COORDINATOR)
            assert source.committed_with_metadata([("orders", 0), ("orders", 1)]) == {
                ("orders", 0): (3, "m"), ("orders", 1): (None, None)}
            cluster.fail_next(OFFSET_FETCH, NOT_COORDINATOR)
            assert source.committed([("orders", 0)]) == {("orders", 0): 3}
        finally:
            source.close()
    finally:
        cluster.close()
