"""One partition's offsets with gaps: which polled messages are finished, and the watermark.

Messages of a partition are polled in offset order and may finish in any order. The watermark
is the lowest offset polled and not finished yet (after the last polled message when all are
finished); finished offsets above it are the partition's *gap*. A checkpoint commits only the
watermark, so it never passes an unfinished message. Offsets need not be contiguous
(transaction markers, compaction): the tracker keeps the polled offsets themselves.

Poll thread only; pure bookkeeping (no clock, no I/O). The partition's
:class:`~consumer.checkpoint.progress.PartitionProgress` is moved by the caller with what
:meth:`FinishedOffsets.finish` returns, so the never-backwards rule stays there.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from consumer.errors import OffsetWentBackwards

if TYPE_CHECKING:
    from consumer.checkpoint.progress import PartitionProgress
    from consumer.engine.concurrency.lanes import Lanes


class FinishedOffsets:
    """The polled, not-yet-checkpointable offsets of one partition."""

    __slots__ = ("_finished", "_polled", "partition", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        #: Offsets polled and not below the watermark, in offset order.
        self._polled: deque[int] = deque()
        #: Those of them that are finished (done, dead-lettered): the gap.
        self._finished: set[int] = set()

    def polled(self, offset: int) -> None:
        """A message was taken in; raises OffsetWentBackwards unless it is past the last."""
        polled = self._polled
        if polled and offset <= polled[-1]:
            raise OffsetWentBackwards(self.topic, self.partition, polled[-1] + 1, offset)
        polled.append(offset)

    def finish(self, offset: int) -> tuple[int | None, int]:
        """``offset`` is finished: returns (the new watermark, how many messages it moved
        past), or (None, 0) when the lowest unfinished message is still unfinished."""
        polled = self._polled
        if not polled or offset != polled[0]:
            self._finished.add(offset)
            return None, 0
        polled.popleft()
        count = 1
        watermark = offset + 1
        finished = self._finished
        while polled and polled[0] in finished:
            head = polled.popleft()
            finished.discard(head)
            watermark = head + 1
            count += 1
        return watermark, count

    @property
    def watermark(self) -> int | None:
        """The lowest unfinished polled offset; None when every polled message is finished."""
        return self._polled[0] if self._polled else None

    @property
    def finished(self) -> set[int]:
        """The offsets finished above the watermark (the caller only reads it)."""
        return self._finished

    @property
    def gap(self) -> int:
        """Messages finished above the watermark."""
        return len(self._finished)

    @property
    def highest_finished(self) -> int | None:
        """The highest finished offset above the watermark; None when the gap is empty."""
        return max(self._finished) if self._finished else None

    @property
    def unfinished(self) -> int:
        """Messages polled and not finished (queued or running)."""
        return len(self._polled) - len(self._finished)


class PartitionWork(FinishedOffsets):
    """One assigned partition's work in the dispatcher: its finished offsets, plus what the
    poll thread needs per message without looking the partition up again. A job carries its
    partition's object from the poll to its completion (:attr:`Job.owner`).

    Written on the poll thread only. The counters are plain ints, so a snapshot read from
    another thread (metrics) sees a value that was true a moment ago, never a torn one."""

    __slots__ = ("gone", "key_lanes", "lanes", "moved", "moved_to", "progress", "queued",
                 "running")

    def __init__(self, topic: str, partition: int, *, progress: PartitionProgress,
                 lanes: Lanes) -> None:
        super().__init__(topic, partition)
        #: The partition's progress, moved when its watermark does.
        self.progress = progress
        #: The lanes of the partition's route, and the partition's own among them.
        self.lanes = lanes
        self.key_lanes = lanes.of_partition((topic, partition))
        #: Messages queued (polled, not started, or held for a retry), and running now.
        self.queued = 0
        self.running = 0
        #: Revoked or lost: results of its running jobs are ignored when they come.
        self.gone = False
        #: Messages the watermark moved past since the last flush, and where it is now: the
        #: dispatcher moves :attr:`progress` once per drained batch, not once per message.
        self.moved = 0
        self.moved_to = 0
