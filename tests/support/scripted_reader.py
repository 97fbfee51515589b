"""A group's reader (a consumer of the group) whose committed-offsets answers a unit test
scripts: an exception, or offsets; and the cluster topics it lists."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import confluent_kafka


class ScriptedReader:
    def __init__(self, *answers: Any, topics: tuple[str, ...] = ("__consumer_offsets",)
                 ) -> None:
        self.answers = list(answers)
        self.asked = 0
        self.topics = {name: object() for name in topics}
        self.metadata_reads = 0

    def list_topics(self, timeout: float) -> Any:
        self.metadata_reads += 1
        return SimpleNamespace(topics=self.topics)

    def committed(self, partitions: list[Any], timeout: float) -> list[Any]:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return list(answer)


def refused(code: int) -> confluent_kafka.KafkaException:
    return confluent_kafka.KafkaException(confluent_kafka.KafkaError(code))
