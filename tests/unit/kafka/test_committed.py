"""consumer.kafka.committed: a group's committed offsets are asked again while its coordinator
is loading or moving, and only then."""

from __future__ import annotations

import confluent_kafka
import pytest

from consumer.kafka.committed import ask_committed
from tests.support.scripted_reader import ScriptedReader, refused

WANTED = [("orders", 0), ("orders", 1)]


def test_group_offsets_are_asked_again_while_the_coordinator_loads_them() -> None:
    """A broker that just started answers COORDINATOR_LOAD_IN_PROGRESS until it has read
    ``__consumer_offsets``: the reader asks again rather than failing."""
    offsets = [confluent_kafka.TopicPartition("orders", 0, 5)]
    reader = ScriptedReader(refused(confluent_kafka.KafkaError.COORDINATOR_LOAD_IN_PROGRESS),
                            refused(confluent_kafka.KafkaError.NOT_COORDINATOR), offsets)
    pauses: list[float] = []
    found = ask_committed(reader, WANTED[:1], timeout=10.0, pause=pauses.append)
    assert found == {("orders", 0): (5, None)}
    assert reader.asked == 3 and len(pauses) == 2


def test_other_refusals_and_a_coordinator_loading_past_the_timeout_are_raised() -> None:
    denied = ScriptedReader(refused(confluent_kafka.KafkaError.GROUP_AUTHORIZATION_FAILED))
    with pytest.raises(confluent_kafka.KafkaException):
        ask_committed(denied, WANTED, timeout=10.0, pause=lambda _: None)
    assert denied.asked == 1
    clock = iter([0.0, 1.0, 5.0, 6.0, 11.0])
    loading = ScriptedReader(
        *[refused(confluent_kafka.KafkaError.COORDINATOR_LOAD_IN_PROGRESS)] * 3)
    with pytest.raises(confluent_kafka.KafkaException):
        ask_committed(loading, WANTED, timeout=10.0, monotonic=lambda: next(clock),
                      pause=lambda _: None)
    assert loading.asked == 2
