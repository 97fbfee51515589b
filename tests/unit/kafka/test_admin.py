"""consumer.kafka: the admin client that reads topic ids gets only the properties an admin
client knows (connection and security), never the consumer's own tuning."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import confluent_kafka.admin
import pytest

from consumer.kafka import source as source_module
from consumer.kafka.source import KafkaSource
from consumer.settings import KafkaSettings


class _Described:
    topic_id = "id-orders"


class _Done:
    def result(self) -> _Described:
        return _Described()


class _FakeAdmin:
    configs: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.configs.append(config)

    def describe_topics(self, topics: Any, request_timeout: float) -> dict[str, _Done]:
        return {name: _Done() for name in topics.topic_names}


class _FakeConsumer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config


def test_topic_ids_builds_the_admin_client_from_an_allow_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(source_module, "Consumer", _FakeConsumer)
    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", _FakeAdmin)
    _FakeAdmin.configs = []
    consumer_only = {"max.partition.fetch.bytes": 16_384, "fetch.min.bytes": 1,
                     "queued.min.messages": 10, "isolation.level": "read_committed"}
    shared = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
              "sasl.password": "hush", "socket.timeout.ms": 5000}
    settings = KafkaSettings(bootstrap_servers="k1:9092", group_id="g", client_id="paced",
                             librdkafka={**consumer_only, **shared})
    source = KafkaSource(settings, on_statistics=lambda raw: None)
    assert source.topic_ids(["orders"]) == {"orders": "id-orders"}
    assert _FakeAdmin.configs == [{
        "bootstrap.servers": "k1:9092", "client.id": "paced", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN", "sasl.password": "hush", "socket.timeout.ms": "5000",
        "logger": logging.getLogger("consumer.librdkafka"),
    }]
