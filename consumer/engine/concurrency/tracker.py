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

from consumer.errors import OffsetWentBackwards


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
    def gap(self) -> int:
        """Messages finished above the watermark."""
        return len(self._finished)

    @property
    def unfinished(self) -> int:
        """Messages polled and not finished (queued or running)."""
        return len(self._polled) - len(self._finished)
