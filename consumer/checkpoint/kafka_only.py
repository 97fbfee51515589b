"""A checkpoint: saving the watermarks of the partitions that moved, as one short-lived step."""

from __future__ import annotations

from collections.abc import Iterable

from consumer.checkpoint.progress import PartitionProgress
from consumer.events import Observer, Trigger
from consumer.kafka.protocol import Source
from consumer.message import TP


class Checkpoint:
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
        source: Source,
        observer: Observer,
        synchronous: bool = False,
    ) -> None:
        self.trigger = trigger
        self._synchronous = synchronous
        self._partitions = list(partitions)
        self._source = source
        self._observer = observer

    @property
    def synchronous(self) -> bool:
        return self._synchronous or self.trigger in (Trigger.REVOKE, Trigger.SHUTDOWN)

    def run(self) -> dict[TP, int]:
        """Take the checkpoint; returns what was committed (empty when nothing moved)."""
        # 1. collect the watermarks that moved
        moved = {}
        for progress in self._partitions:
            offset = progress.pending_commit()
            if offset is not None:
                moved[(progress.topic, progress.partition)] = (progress, offset)
        if not moved:
            self._observer.checkpoint_noop(self.trigger)
            return {}
        offsets = {tp: offset for tp, (_, offset) in moved.items()}

        # 2. commit to Kafka (a synchronous commit raises KafkaError when it fails)
        self._source.commit(offsets, asynchronous=not self.synchronous)

        # 3. record as committed
        for progress, offset in moved.values():
            progress.mark_committed(offset)
            if self.synchronous:
                progress.mark_acked(offset)
        self._observer.checkpoint_committed(self.trigger, offsets)
        return offsets
