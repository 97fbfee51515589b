"""consumer.kafka: the admin client that reads topic ids gets only the properties an admin
client knows (connection and security), never the consumer's own tuning."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any, ClassVar

import confluent_kafka
import confluent_kafka.admin
import pytest

from consumer.kafka import source as source_module
from consumer.kafka.admin import committed_offsets
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


class _Answers:
    """An admin client whose group-offsets answers are given: an exception, or offsets."""

    def __init__(self, *answers: Any, topics: tuple[str, ...] = ("__consumer_offsets",)
                 ) -> None:
        self.answers = list(answers)
        self.asked = 0
        self.topics = {name: object() for name in topics}
        self.metadata_reads = 0

    def list_topics(self, timeout: float) -> Any:
        self.metadata_reads += 1
        return SimpleNamespace(topics=self.topics)

    def list_consumer_group_offsets(self, requests: list[Any],
                                    request_timeout: float) -> dict[str, Any]:
        self.asked += 1
        answer = self.answers.pop(0)
        future: Future[Any] = Future()
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(confluent_kafka.ConsumerGroupTopicPartitions("g", answer))
        return {"g": future}


def _refused(code: int) -> confluent_kafka.KafkaException:
    return confluent_kafka.KafkaException(confluent_kafka.KafkaError(code))


def test_group_offsets_are_asked_again_while_the_coordinator_loads_them() -> None:
    """A broker that just started answers COORDINATOR_LOAD_IN_PROGRESS until it has read
    ``__consumer_offsets``: ``consumer lag`` asks again rather than failing."""
    offsets = [confluent_kafka.TopicPartition("t", 0, 5)]
    admin = _Answers(_refused(confluent_kafka.KafkaError.COORDINATOR_LOAD_IN_PROGRESS),
                     _refused(confluent_kafka.KafkaError.NOT_COORDINATOR), offsets)
    pauses: list[float] = []
    request = confluent_kafka.ConsumerGroupTopicPartitions("g")
    found = committed_offsets(admin, request, timeout=10.0, pause=pauses.append)
    assert [(tp.topic, tp.partition, tp.offset) for tp in found] == [("t", 0, 5)]
    assert admin.asked == 3 and len(pauses) == 2


def test_other_refusals_and_a_coordinator_loading_past_the_timeout_are_raised() -> None:
    request = confluent_kafka.ConsumerGroupTopicPartitions("g")
    denied = _Answers(_refused(confluent_kafka.KafkaError.GROUP_AUTHORIZATION_FAILED))
    with pytest.raises(confluent_kafka.KafkaException):
        committed_offsets(denied, request, timeout=10.0, pause=lambda _: None)
    assert denied.asked == 1
    clock = iter([0.0, 5.0, 11.0])
    loading = _Answers(*[_refused(confluent_kafka.KafkaError.COORDINATOR_LOAD_IN_PROGRESS)] * 3)
    with pytest.raises(confluent_kafka.KafkaException):
        committed_offsets(loading, request, timeout=10.0, monotonic=lambda: next(clock),
                          pause=lambda _: None)
    assert loading.asked == 2


def test_a_cluster_where_no_group_committed_yet_is_not_asked_for_a_groups_offsets() -> None:
    """Without ``__consumer_offsets`` confluent-kafka 2.16 crashes the process asking for a
    group's offsets (seen on a new broker): nothing is committed anywhere, so say so."""
    admin = _Answers(topics=("orders",))
    wanted = confluent_kafka.ConsumerGroupTopicPartitions(
        "g", [confluent_kafka.TopicPartition("orders", p) for p in (0, 1)])
    found = committed_offsets(admin, wanted, timeout=10.0)
    nothing = confluent_kafka.OFFSET_INVALID
    assert [(tp.topic, tp.partition, tp.offset) for tp in found] == [
        ("orders", 0, nothing), ("orders", 1, nothing)]
    assert committed_offsets(admin, confluent_kafka.ConsumerGroupTopicPartitions("g"),
                             timeout=10.0) == []
    assert admin.asked == 0


def test_topics_the_caller_just_read_are_not_read_again() -> None:
    """``consumer lag --topic`` has read the cluster's topics already: one metadata read."""
    offsets = [confluent_kafka.TopicPartition("orders", 0, 7)]
    admin = _Answers(offsets)
    request = confluent_kafka.ConsumerGroupTopicPartitions("g")
    found = committed_offsets(admin, request, timeout=10.0,
                              cluster_topics={"orders", "__consumer_offsets"})
    assert [(tp.topic, tp.offset) for tp in found] == [("orders", 7)]
    assert admin.metadata_reads == 0
    assert committed_offsets(_Answers(topics=("orders",)), request, timeout=10.0,
                             cluster_topics={"orders"}) == []
