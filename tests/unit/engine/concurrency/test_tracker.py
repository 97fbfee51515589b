"""consumer.engine.concurrency.tracker: the watermark is the lowest unfinished polled offset."""

from __future__ import annotations

import pytest

from consumer.engine.concurrency.tracker import FinishedOffsets
from consumer.errors import OffsetWentBackwards


def tracker(*offsets: int) -> FinishedOffsets:
    finished = FinishedOffsets("t", 0)
    for offset in offsets:
        finished.polled(offset)
    return finished


def test_finishing_above_a_gap_moves_nothing_until_the_gap_closes() -> None:
    offsets = tracker(0, 1, 2, 3)
    assert offsets.finish(2) == (None, 0)
    assert offsets.finish(1) == (None, 0)
    assert (offsets.watermark, offsets.gap, offsets.unfinished) == (0, 2, 2)
    assert offsets.finish(0) == (3, 3)  # the prefix 0, 1, 2 is finished: commit 3
    assert (offsets.watermark, offsets.gap, offsets.unfinished) == (3, 0, 1)
    assert offsets.finish(3) == (4, 1)
    assert offsets.watermark is None


def test_offsets_need_not_be_contiguous() -> None:
    offsets = tracker(5, 9, 12)  # transaction markers and compaction leave holes
    assert offsets.finish(9) == (None, 0)
    assert offsets.finish(5) == (10, 2)
    assert offsets.finish(12) == (13, 1)


def test_a_polled_offset_behind_the_last_one_is_refused() -> None:
    offsets = tracker(3, 4)
    with pytest.raises(OffsetWentBackwards):
        offsets.polled(4)
