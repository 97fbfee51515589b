"""consumer.checkpoint.commits: the one path that commits offsets to Kafka and records them, and
the one rule that keeps a single asynchronous commit in flight."""

from __future__ import annotations

import pytest

from consumer.checkpoint.commits import GAP_REFRESH_SECONDS, KAFKA_ANSWER_TIMEOUT, KafkaCommits
from consumer.checkpoint.progress import PartitionProgress
from consumer.clock import ManualClock
from consumer.errors import KafkaError
from consumer.events import Trigger
from consumer.kafka.commit_metadata import finished_in
from consumer.message import TP
from consumer.testing import InMemorySource, RecordingObserver

P0: TP = ("t", 0)


def done_up_to(watermark: int) -> PartitionProgress:
    progress = PartitionProgress(*P0)
    for offset in range(watermark):
        progress.mark_done(offset, now=0.0)
    return progress


def commits(source: InMemorySource, clock: ManualClock,
            observer: RecordingObserver | None = None) -> KafkaCommits:
    return KafkaCommits(source, observer=observer or RecordingObserver(),
                        monotonic=clock.monotonic)


def test_an_asynchronous_commit_is_in_flight_until_the_broker_answers() -> None:
    source, clock = InMemorySource({}), ManualClock()
    kafka = commits(source, clock)
    progress = done_up_to(3)
    assert kafka.commit(Trigger.COUNT, [progress], synchronous=False) == {P0: 3}
    assert kafka.in_flight
    assert progress.acked is None, "confirmed only by the answer"
    kafka.answered({P0: 3}, None, {P0: progress})
    assert not kafka.in_flight
    assert progress.acked == 3


def test_an_unanswered_commit_stops_holding_the_next_back_after_the_timeout() -> None:
    source, clock = InMemorySource({}), ManualClock()
    kafka = commits(source, clock)
    kafka.commit(Trigger.COUNT, [done_up_to(1)], synchronous=False)
    clock.advance(KAFKA_ANSWER_TIMEOUT)
    assert kafka.in_flight
    clock.advance(0.001)
    assert not kafka.in_flight


def test_a_synchronous_commit_answers_the_asynchronous_one_before_it() -> None:
    """The coordinator answers commits in order."""
    source, clock = InMemorySource({}), ManualClock()
    kafka = commits(source, clock)
    progress = done_up_to(1)
    kafka.commit(Trigger.COUNT, [progress], synchronous=False)
    progress.mark_done(1, now=0.0)
    kafka.commit(Trigger.REVOKE, [progress], synchronous=True)
    assert not kafka.in_flight
    assert progress.acked == 2


def test_holding_while_in_flight_leaves_the_watermark_pending() -> None:
    source, clock = InMemorySource({}), ManualClock()
    kafka = commits(source, clock)
    progress = done_up_to(1)
    kafka.commit(Trigger.COUNT, [progress], synchronous=False)
    progress.mark_done(1, now=0.0)
    assert kafka.commit(Trigger.COUNT, [progress], synchronous=False,
                        hold_while_in_flight=True) == {}
    assert progress.pending_commit() == 2
    assert len(source.commits) == 1


def test_durable_offsets_count_as_confirmed_once_sent() -> None:
    """With a store, the store holds the checkpoint: Kafka's copy is confirmed when sent."""
    source, clock = InMemorySource({}), ManualClock()
    progress = done_up_to(2)
    commits(source, clock).commit(Trigger.COUNT, [progress], synchronous=False, durable=True)
    assert progress.acked == 2
    assert progress.unconfirmed == 0


def test_a_failed_commit_is_reported_and_raised_and_stays_pending() -> None:
    source, clock = InMemorySource({}), ManualClock()
    observer = RecordingObserver()
    source.fail_next_commit = KafkaError("REBALANCE_IN_PROGRESS", "rebalancing")
    progress = done_up_to(2)
    with pytest.raises(KafkaError):
        commits(source, clock, observer).commit(Trigger.SHUTDOWN, [progress], synchronous=True)
    assert observer.commit_failures == [(Trigger.SHUTDOWN, "REBALANCE_IN_PROGRESS")]
    assert progress.pending_commit() == 2


def test_confirm_commits_every_watermark_and_reports_only_what_moved() -> None:
    source, clock = InMemorySource({}), ManualClock()
    observer = RecordingObserver()
    kafka = commits(source, clock, observer)
    still = done_up_to(2)
    kafka.commit(Trigger.COUNT, [still], synchronous=False)
    moved = PartitionProgress("t", 1)
    moved.mark_done(0, now=0.0)
    assert kafka.confirm(Trigger.COUNT, {P0: still, ("t", 1): moved}) == {("t", 1): 1}
    assert source.commits[-1] == ({P0: 2, ("t", 1): 1}, False)
    assert (still.acked, moved.acked) == (2, 1)
    assert not kafka.in_flight
    assert observer.checkpoints[-1] == (Trigger.COUNT, {("t", 1): 1})


def test_commits_list_the_gap_and_the_count_trigger_reuses_a_recent_one() -> None:
    """With gaps, each commit's metadata lists what finished above its offset; the count
    trigger sends the list written out less than GAP_REFRESH_SECONDS ago (still true, only
    shorter), the interval trigger writes it out afresh, and an unchanged gap over an
    unmoved watermark is not committed again."""
    source, clock = InMemorySource({}), ManualClock()
    kafka = commits(source, clock)
    finished = {5, 6}
    kafka.finished_above = lambda tp: (3, finished)
    progress = done_up_to(3)
    kafka.commit(Trigger.COUNT, [progress], synchronous=True)
    assert finished_in(source.commit_metadata[P0], 3) == {5, 6}
    finished.add(8)
    progress.mark_done(3, now=0.0)  # the watermark moves to 4: a count commit
    kafka.commit(Trigger.COUNT, [progress], synchronous=True)
    assert source.committed_offsets[P0] == 4
    assert finished_in(source.commit_metadata[P0], 4) == {5, 6}, "the recent list, reused"
    kafka.commit(Trigger.INTERVAL, [progress], synchronous=True)
    assert finished_in(source.commit_metadata[P0], 4) == {5, 6, 8}, "written out afresh"
    sent = len(source.commits)
    kafka.commit(Trigger.INTERVAL, [progress], synchronous=True)
    assert len(source.commits) == sent, "the same gap at the same offset"
    clock.advance(GAP_REFRESH_SECONDS)
    finished.add(9)
    kafka.commit(Trigger.COUNT, [progress], synchronous=True)
    assert finished_in(source.commit_metadata[P0], 4) == {5, 6, 8, 9}, "too old to reuse"


def test_a_gap_whose_asynchronous_commit_failed_is_committed_again() -> None:
    """A commit that only carries a grown gap (the watermark did not move) and that the
    broker refuses is sent again at the next checkpoint, not once the gap grows again."""
    source, clock = InMemorySource({}), ManualClock()
    kafka = commits(source, clock)
    kafka.finished_above = lambda tp: (3, {5, 6})
    progress = done_up_to(3)
    kafka.commit(Trigger.INTERVAL, [progress], synchronous=False)
    kafka.answered({P0: 3}, None, {P0: progress})
    kafka.finished_above = lambda tp: (3, {5, 6, 7})
    kafka.commit(Trigger.INTERVAL, [progress], synchronous=False)  # the gap only
    sent = len(source.commits)
    kafka.answered({P0: 3}, KafkaError("REBALANCE_IN_PROGRESS", "rebalancing"),
                   {P0: progress})
    kafka.commit(Trigger.INTERVAL, [progress], synchronous=False)
    assert len(source.commits) == sent + 1, "the refused list goes out again"
    assert finished_in(source.commit_metadata[P0], 3) == {5, 6, 7}
