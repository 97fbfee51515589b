"""consumer.kafka.admin: the admin client that reads topic ids gets only the properties an
admin client knows (connection and security), never the consumer's own tuning; a group's
committed offsets are asked again while its coordinator is not ready."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import confluent_kafka
import confluent_kafka.admin
import pytest

from consumer.kafka import source as source_module
from consumer.kafka.admin import committed_offsets
from consumer.kafka.source import KafkaSource
from consumer.settings import KafkaSettings
from tests.support.scripted_reader import ScriptedReader

REPO_ROOT = Path(__file__).resolve().parents[3]


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


WANTED = [("orders", 0), ("orders", 1)]


def test_a_cluster_where_no_group_committed_yet_is_not_asked_for_a_groups_offsets() -> None:
    """Without ``__consumer_offsets`` nothing is committed anywhere: say so, rather than have
    the broker create that topic for a read and wait for it."""
    reader = ScriptedReader(topics=("orders",))
    found = committed_offsets(reader, WANTED, timeout=10.0)
    assert found == {("orders", 0): (None, None), ("orders", 1): (None, None)}
    assert reader.asked == 0


def test_topics_the_caller_just_read_are_not_read_again() -> None:
    """``consumer lag`` has read the cluster's topics already: one metadata read."""
    offsets = [confluent_kafka.TopicPartition("orders", 0, 7)]
    reader = ScriptedReader(offsets)
    found = committed_offsets(reader, WANTED[:1], timeout=10.0,
                              cluster_topics={"orders", "__consumer_offsets"})
    assert found == {("orders", 0): (7, None)}
    assert reader.metadata_reads == 0
    assert committed_offsets(ScriptedReader(topics=("orders",)), WANTED, timeout=10.0,
                             cluster_topics={"orders"})[("orders", 0)] == (None, None)


#: Run in a child: on the old path this answer crashed the process (SIGSEGV).
_NOT_COORDINATOR_TWICE = """
import json
from confluent_kafka import Consumer, TopicPartition
from consumer.kafka.admin import read_group_positions
from consumer.settings import KafkaSettings
from tests.support.mock_cluster import NOT_COORDINATOR, OFFSET_FETCH, MockCluster
cluster = MockCluster()
cluster.create_topic("orders", 2)
cluster.create_topic("__consumer_offsets", 1)  # a cluster where some group has committed
committer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "g",
                      "enable.auto.commit": False})
committer.commit(offsets=[TopicPartition("orders", 0, 3)], asynchronous=False)
committer.close()
cluster.fail_next(OFFSET_FETCH, NOT_COORDINATOR, NOT_COORDINATOR)
positions = read_group_positions(KafkaSettings(bootstrap_servers=cluster.bootstrap,
                                               group_id="g"), "g", ["orders"], timeout=10)
print(json.dumps([[p.partition, p.committed] for p in positions]))
cluster.close()
"""


def test_a_group_coordinator_that_is_not_ready_yet_is_asked_again() -> None:
    """A broker taking its groups back after a restart answers "not the coordinator" for a
    moment. librdkafka's admin client crashes the process on that answer (it asks a consumer
    group handle it does not have to find the coordinator again), so a group's offsets are
    read through a consumer of the group that never joins it. Two such answers, then the
    offsets (librdkafka's mock cluster, in a child process)."""
    child = subprocess.run([sys.executable, "-c", _NOT_COORDINATOR_TWICE], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=60, check=False)
    assert child.returncode == 0, f"the child exited {child.returncode}: {child.stderr[-2000:]}"
    assert json.loads(child.stdout.splitlines()[-1]) == [[0, 3], [1, None]]
