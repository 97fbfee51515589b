"""A group's committed offsets, read through a consumer of the group and asked again while the
group's coordinator is not ready.

Right after a broker starts, or while a group moves to another broker, the coordinator answers
an offset request with "loading" or "not the coordinator". A consumer's ``committed`` reports
that answer at once (an admin client's crashes the process: ``consumer.kafka.admin``), so both
the running consumer (``consumer.kafka.source``) and the commands ask again, for their timeout
in all. Blocks the calling thread; raises ``KafkaException`` with what the coordinator last
said, or its timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from consumer.message import TP

#: The group coordinator's answers that mean "not yet, ask again": it is loading the group's
#: offsets (a broker just started or took over the partition of ``__consumer_offsets``), or
#: the group moved to another broker.
COORDINATOR_MOVING = frozenset({
    confluent_kafka.KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    confluent_kafka.KafkaError.COORDINATOR_NOT_AVAILABLE,
    confluent_kafka.KafkaError.NOT_COORDINATOR,
})
#: Seconds between two asks of a coordinator that is not ready.
COORDINATOR_RETRY_SECONDS = 0.2


def ask_committed(consumer: Any, partitions: Iterable[TP], *, timeout: float,
                  monotonic: Callable[[], float] = time.monotonic,
                  pause: Callable[[float], None] = time.sleep,
                  ) -> dict[TP, tuple[int | None, str | None]]:
    """The committed offset and its metadata per partition of ``consumer``'s group ((None,
    None): nothing committed), asked again while the coordinator is loading or moving, for
    ``timeout`` seconds in all."""
    request = [TopicPartition(t, p) for t, p in partitions]
    if not request:
        return {}
    deadline = monotonic() + timeout
    while True:
        try:
            found = consumer.committed(request, timeout=max(0.1, deadline - monotonic()))
        except confluent_kafka.KafkaException as error:
            if error.args[0].code() not in COORDINATOR_MOVING or monotonic() >= deadline:
                raise
            pause(COORDINATOR_RETRY_SECONDS)
            continue
        return {(tp.topic, tp.partition): (tp.offset, tp.metadata) if tp.offset >= 0
                else (None, None) for tp in found}
