"""The dead-letter producer (a :class:`~consumer.kafka.protocol.DeadLetterSink` over
confluent-kafka): idempotent, ``acks=all``, each letter acknowledged before ``send`` returns.

Called on the poll thread when a message is dead-lettered, and by ``consumer dlq redrive``.
Blocks up to its timeout per letter; raises :class:`~consumer.errors.DeadLetterFailed`
(``retriable`` says whether another try can help), never a client exception.
"""

from __future__ import annotations

from typing import Any, ClassVar

import confluent_kafka
from confluent_kafka import KafkaException

from consumer.errors import DeadLetterFailed
from consumer.kafka.client import client_config
from consumer.message import Message
from consumer.settings import KafkaSettings


class KafkaDeadLetterSink:
    """Produces dead letters with the original key, value and headers plus provenance, and
    waits for the broker's acknowledgement of each (they are rare; correctness first)."""

    #: Errors that another try can fix; anything else (too large, not authorised) cannot.
    RETRIABLE: ClassVar[frozenset[str]] = frozenset({
        "_MSG_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN", "UNKNOWN_TOPIC_OR_PART",
        "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "NOT_ENOUGH_REPLICAS",
        "REQUEST_TIMED_OUT", "_TIMED_OUT", "NETWORK_EXCEPTION", "_UNKNOWN_TOPIC", "_QUEUE_FULL",
    })

    def __init__(self, settings: KafkaSettings, *, timeout: float = 30.0) -> None:
        config = client_config(settings, {"enable.idempotence": True, "acks": "all",
                                          "message.timeout.ms": int(timeout * 1000)},
                               client_id=f"{settings.client_id}-dead-letters")
        self._producer = confluent_kafka.Producer(config)
        self._timeout = timeout

    def send(self, topic: str, message: Message, provenance: list[tuple[str, bytes]]) -> None:
        outcome: list[Any] = []
        headers: list[tuple[str, str | bytes | None]] = [*(message.headers or []), *provenance]

        def delivered(error: Any, _record: Any) -> None:
            outcome.append(error)

        try:
            self._producer.produce(topic, value=message.value, key=message.key,
                                   headers=headers, on_delivery=delivered)
            self._producer.flush(self._timeout)
        except (KafkaException, BufferError) as error:
            code = error.args[0].name() if isinstance(error, KafkaException) else "_QUEUE_FULL"
            reason = error.args[0].str() if isinstance(error, KafkaException) else str(error)
            raise self._failed(topic, message, code, reason) from None
        if not outcome:
            raise self._failed(topic, message, "_TIMED_OUT", "no acknowledgement in time")
        if outcome[0] is not None:
            raise self._failed(topic, message, outcome[0].name(), outcome[0].str())

    def _failed(self, topic: str, message: Message, code: str, reason: str) -> DeadLetterFailed:
        return DeadLetterFailed(message.topic, message.partition, message.offset, topic,
                                f"{code}: {reason}", retriable=code in self.RETRIABLE)

    def close(self) -> None:
        self._producer.flush(self._timeout)
