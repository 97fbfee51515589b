"""consumer.checkpoint.kafka_only: one checkpoint commits the watermarks that moved, and only
those."""

from __future__ import annotations

import pytest

from consumer.checkpoint.commits import KafkaCommits
from consumer.checkpoint.kafka_only import KafkaCheckpoint
from consumer.checkpoint.progress import PartitionProgress
from consumer.errors import KafkaError
from consumer.events import Trigger
from consumer.testing import InMemorySource, RecordingObserver


def commits(source: InMemorySource, observer: RecordingObserver | None = None) -> KafkaCommits:
    return KafkaCommits(source, observer=observer or RecordingObserver(), monotonic=lambda: 0.0)


def progress_at(topic: str, partition: int, *done: int) -> PartitionProgress:
    progress = PartitionProgress(topic, partition)
    for offset in done:
        progress.mark_done(offset, now=0.0)
    return progress


def test_only_partitions_whose_watermark_moved_are_committed() -> None:
    source = InMemorySource({})
    moved = progress_at("t", 0, 0, 1)
    still = progress_at("t", 1, 0)
    still.mark_committed(1)
    untouched = PartitionProgress("t", 2)
    observer = RecordingObserver()
    committed = KafkaCheckpoint(
        Trigger.INTERVAL, [moved, still, untouched], commits=commits(source, observer)
    ).run()
    assert committed == {("t", 0): 2}
    assert source.commits == [({("t", 0): 2}, True)]
    assert moved.committed == 2
    assert observer.checkpoints == [(Trigger.INTERVAL, {("t", 0): 2})]


def test_nothing_moved_commits_nothing_and_reports_a_noop() -> None:
    source = InMemorySource({})
    observer = RecordingObserver()
    assert KafkaCheckpoint(
        Trigger.COUNT, [PartitionProgress("t", 0)], commits=commits(source, observer)
    ).run() == {}
    assert source.commits == []
    assert observer.named("checkpoint_noop") == [(Trigger.COUNT,)]


@pytest.mark.parametrize(
    ("trigger", "synchronous"),
    [(Trigger.COUNT, False), (Trigger.INTERVAL, False), (Trigger.REVOKE, True),
     (Trigger.SHUTDOWN, True)],
)
def test_revoke_and_shutdown_commit_synchronously_count_and_interval_asynchronously(
    trigger: Trigger, synchronous: bool
) -> None:
    source = InMemorySource({})
    progress = progress_at("t", 0, 0)
    checkpoint = KafkaCheckpoint(trigger, [progress], commits=commits(source))
    assert checkpoint.synchronous is synchronous
    checkpoint.run()
    assert source.commits == [({("t", 0): 1}, not synchronous)]


def test_a_synchronous_commit_is_acknowledged_at_once() -> None:
    source = InMemorySource({})
    progress = progress_at("t", 0, 0, 1, 2)
    KafkaCheckpoint(Trigger.SHUTDOWN, [progress], commits=commits(source)).run()
    assert progress.acked == 3


def test_a_failed_synchronous_commit_raises_and_leaves_the_watermark_pending() -> None:
    source = InMemorySource({})
    source.fail_next_commit = KafkaError("REQUEST_TIMED_OUT", "no answer")
    progress = progress_at("t", 0, 0)
    with pytest.raises(KafkaError):
        KafkaCheckpoint(Trigger.REVOKE, [progress], commits=commits(source)).run()
    assert progress.committed is None
    assert progress.pending_commit() == 1
    assert source.committed_offsets == {}
