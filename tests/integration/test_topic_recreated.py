"""A topic deleted and recreated under the same name, whose new log already reaches the
store's checkpoint: the consumer never resumes mid-log silently (real broker and stores)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.kafka import create_topic, produce, unique_name
from tests.support.stores import StoreUnderTest

pytestmark = pytest.mark.integration


def _topic_id(admin: AdminClient, topic: str) -> str:
    future = admin.describe_topics(TopicCollection([topic]))[topic]
    return str(future.result(timeout=10).topic_id)


def _recreate(bootstrap: str, topic: str) -> None:
    """Delete the topic, wait until the broker forgot it, create it again with leaders."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic])[topic].result(timeout=30)

    def created() -> bool:
        try:
            admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=10)
            return True
        except KafkaException:  # still being deleted
            return False

    wait_for(created, timeout=60, what=f"{topic} to be created again", interval=0.5)

    def has_leader() -> bool:
        found = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
        return found is not None and found.error is None and all(
            p.leader >= 0 for p in found.partitions.values()) and len(found.partitions) == 1

    wait_for(has_leader, timeout=30, what=f"{topic} to have a leader")


def _events(bootstrap: str, topic: str, prefix: str, count: int) -> None:
    produce(bootstrap, topic,
            [json.dumps({"event": f"{prefix}-{i}", "account": "a", "amount": 1}).encode()
             for i in range(count)],
            headers=lambda i: [("idempotency-key", f"{prefix}-{i}".encode())])


def _checkpoint(store: StoreUnderTest) -> tuple[object, ...] | None:
    try:
        rows = store.query("SELECT next_offset, topic_id FROM consumer_checkpoints")
    except Exception:
        return None
    return tuple(rows[0]) if rows else None


@pytest.mark.parametrize("policy", ["fail", "follow"])
def test_recreated_topic_is_not_resumed_mid_log(kafka_bootstrap: str, store: StoreUnderTest,
                                                tmp_path: Path, policy: str) -> None:
    """3 events consumed (checkpoint 3), the topic recreated with 5 new events. fail: exit 1
    naming both topic ids, nothing of the new log applied; follow: the new log is applied
    from its beginning, and the row carries the new id."""
    topic = create_topic(kafka_bootstrap, 1, prefix="recreated")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    old_id = _topic_id(admin, topic)
    _events(kafka_bootstrap, topic, "old", 3)
    config = consumer_config(kafka_bootstrap, unique_name("recreated"), topic,
                             handler="handlers.ledger:apply", every_messages=10,
                             every_seconds=0.5, store=store.url)
    config["store"]["on_external_reset"] = policy
    first = ConsumerProcess(tmp_path, "first", config).start()
    try:
        wait_for(lambda: (_checkpoint(store) or (None,))[0] == 3, timeout=60,
                 what=f"the first run to checkpoint 3 ({first.log_tail()})")
        first.signal(signal.SIGTERM)
        assert first.wait() == 0, first.log_tail()
    finally:
        first.stop_if_running()

    _recreate(kafka_bootstrap, topic)
    new_id = _topic_id(admin, topic)
    assert new_id != old_id
    _events(kafka_bootstrap, topic, "new", 5)

    second = ConsumerProcess(tmp_path, "second", config).start()
    try:
        if policy == "fail":
            assert second.wait(timeout=60) == 1, second.log_tail()
            log = second.log_file.read_text()
            assert old_id in log and new_id in log, second.log_tail()
            assert "recreated" in log
        else:
            wait_for(lambda: len(_applied(store)) == 8, timeout=60,
                     what=f"the new log applied from its start: {_applied(store)} "
                          f"({second.log_tail()})")
            second.signal(signal.SIGTERM)
            assert second.wait() == 0, second.log_tail()
    finally:
        second.stop_if_running()
    expected_new = [] if policy == "fail" else [f"new-{i}" for i in range(5)]
    assert _applied(store) == sorted(["old-0", "old-1", "old-2", *expected_new])
    assert _checkpoint(store) == ((3, old_id) if policy == "fail" else (5, new_id))


def _applied(store: StoreUnderTest) -> list[str]:
    return sorted(e for (e,) in store.query("SELECT event FROM ledger_entries"))
