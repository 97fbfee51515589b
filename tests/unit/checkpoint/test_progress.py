"""consumer.checkpoint.progress: PartitionProgress bookkeeping of done, committed and acked
offsets."""

from __future__ import annotations

import pytest

from consumer.checkpoint.progress import PartitionProgress
from consumer.errors import ConsumerError, OffsetWentBackwards


def test_nothing_done_means_no_watermark_and_nothing_to_commit() -> None:
    progress = PartitionProgress("t", 0)
    assert progress.watermark is None
    assert progress.committed is None
    assert progress.pending_commit() is None


def test_watermark_is_last_done_offset_plus_one_with_gaps_in_offsets() -> None:
    """Offsets 5, 7, 10 (gaps from compaction or markers) give watermark 11, not a count."""
    progress = PartitionProgress("t", 0)
    for offset in (5, 7, 10):
        progress.mark_done(offset, now=1.0)
    assert progress.watermark == 11
    assert progress.done_since_commit == 3
    assert progress.pending_commit() == 11


def test_oldest_uncommitted_at_is_the_time_of_the_first_done_message() -> None:
    progress = PartitionProgress("t", 0)
    progress.mark_done(0, now=1.0)
    progress.mark_done(1, now=2.0)
    assert progress.oldest_uncommitted_at == 1.0


def test_done_offset_below_the_watermark_raises_with_coordinates() -> None:
    progress = PartitionProgress("orders", 3)
    progress.mark_done(10, now=0.0)
    with pytest.raises(OffsetWentBackwards) as caught:
        progress.mark_done(7, now=0.0)
    error = caught.value
    assert isinstance(error, ConsumerError)
    assert (error.topic, error.partition, error.old, error.new) == ("orders", 3, 11, 8)
    assert "orders[3]" in str(error)
    assert progress.watermark == 11


def test_the_same_offset_done_twice_raises() -> None:
    progress = PartitionProgress("t", 0)
    progress.mark_done(4, now=0.0)
    with pytest.raises(OffsetWentBackwards):
        progress.mark_done(4, now=0.0)


def test_progress_resumed_from_a_committed_offset_refuses_offsets_before_it() -> None:
    progress = PartitionProgress("t", 1, committed=5)
    assert progress.watermark == 5
    assert progress.acked == 5
    assert progress.pending_commit() is None
    with pytest.raises(OffsetWentBackwards) as caught:
        progress.mark_done(3, now=0.0)
    assert (caught.value.old, caught.value.new) == (5, 4)
    progress.mark_done(5, now=0.0)
    assert progress.pending_commit() == 6


def test_pending_commit_is_none_once_the_watermark_is_committed() -> None:
    progress = PartitionProgress("t", 0)
    progress.mark_done(0, now=1.0)
    progress.mark_done(1, now=1.0)
    progress.mark_committed(2)
    assert progress.committed == 2
    assert progress.pending_commit() is None
    assert progress.done_since_commit == 0
    assert progress.oldest_uncommitted_at is None


def test_watermark_moving_after_a_commit_makes_a_commit_pending_again() -> None:
    progress = PartitionProgress("t", 0)
    progress.mark_done(0, now=1.0)
    progress.mark_committed(1)
    progress.mark_done(1, now=2.0)
    assert progress.pending_commit() == 2


def test_committing_less_than_the_watermark_keeps_the_uncommitted_counters() -> None:
    progress = PartitionProgress("t", 0)
    progress.mark_done(0, now=1.0)
    progress.mark_done(1, now=1.0)
    progress.mark_committed(1)
    assert progress.pending_commit() == 2
    assert progress.done_since_commit == 2
    assert progress.oldest_uncommitted_at == 1.0


def test_committing_backwards_raises() -> None:
    progress = PartitionProgress("t", 2)
    progress.mark_committed(10)
    with pytest.raises(OffsetWentBackwards) as caught:
        progress.mark_committed(9)
    assert (caught.value.topic, caught.value.partition) == ("t", 2)
    assert (caught.value.old, caught.value.new) == (10, 9)
    assert progress.committed == 10


def test_acked_never_moves_backwards() -> None:
    progress = PartitionProgress("t", 0)
    progress.mark_acked(5)
    progress.mark_acked(3)
    assert progress.acked == 5
    progress.mark_acked(8)
    assert progress.acked == 8


def test_commit_failed_restores_committed_to_acked_so_the_next_checkpoint_resends() -> None:
    progress = PartitionProgress("t", 0)
    for offset in range(3):
        progress.mark_done(offset, now=1.0)
    progress.mark_committed(3)
    progress.mark_acked(3)
    progress.mark_done(3, now=2.0)
    progress.mark_committed(4)  # in flight, never acknowledged
    assert progress.pending_commit() is None
    progress.commit_failed()
    assert progress.committed == 3
    assert progress.pending_commit() == 4


def test_commit_failed_before_any_ack_makes_the_whole_watermark_pending() -> None:
    progress = PartitionProgress("t", 0)
    progress.mark_done(0, now=1.0)
    progress.mark_committed(1)
    progress.commit_failed()
    assert progress.committed is None
    assert progress.pending_commit() == 1


def test_a_run_starting_behind_the_watermark_is_refused_with_coordinates() -> None:
    """The dispatcher checks a run of one partition's messages once, here, then moves the
    watermark itself message by message."""
    progress = PartitionProgress("orders", 2, committed=5)
    with pytest.raises(OffsetWentBackwards) as caught:
        progress.begin_run(4)
    assert (caught.value.topic, caught.value.partition) == ("orders", 2)
    assert (caught.value.old, caught.value.new) == (5, 5)
    progress.begin_run(5)
    progress.watermark = 7
    progress.count_done(2, now=1.0)
    assert (progress.pending_commit(), progress.done) == (7, 2)
    with pytest.raises(OffsetWentBackwards):
        progress.begin_run(6)
