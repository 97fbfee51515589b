"""A checkpoint without a store: the watermarks of the partitions that moved, committed to Kafka.

Used by direct mode on the loop's thread; the commit itself and its bookkeeping are
:class:`~consumer.checkpoint.commits.KafkaCommits`'. Asynchronous for the count and interval
triggers (unless synchronous commits are configured), synchronous on revoke and shutdown, where
a failure raises KafkaError and the watermarks stay pending.
"""

from __future__ import annotations

from collections.abc import Iterable

from consumer.checkpoint.commits import KafkaCommits
from consumer.checkpoint.progress import PartitionProgress
from consumer.events import Trigger
from consumer.message import TP


class KafkaCheckpoint:
    """Commits the watermark of every given partition that moved since its last commit.

    1. collect the watermarks that moved
    2. commit them to Kafka, with the marker in the metadata: asynchronously for the count and
       interval triggers (unless told otherwise), synchronously on revoke and shutdown
    3. record them as committed, so offsets never move backwards
    """

    def __init__(
        self,
        trigger: Trigger,
        partitions: Iterable[PartitionProgress],
        *,
        commits: KafkaCommits,
        synchronous: bool = False,
    ) -> None:
        self.trigger = trigger
        self._synchronous = synchronous
        self._partitions = list(partitions)
        self._commits = commits

    @property
    def synchronous(self) -> bool:
        return self._synchronous or self.trigger in (Trigger.REVOKE, Trigger.SHUTDOWN)

    def run(self) -> dict[TP, int]:
        """Take the checkpoint; returns what was committed (empty when nothing moved).
        Raises KafkaError when a synchronous commit fails (the watermarks stay pending)."""
        # 1. collect the watermarks that moved, 2. commit them, 3. record them as committed
        return self._commits.commit(self.trigger, self._partitions, synchronous=self.synchronous)
