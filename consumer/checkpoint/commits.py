"""Kafka's copy of every checkpoint: commit the offsets, record them, report them.

Owns the one path by which a checkpoint's offsets reach Kafka (both modes, and the loop's
synchronous confirmation at the unconfirmed bound all use it) and the one rule for commits in
flight: one asynchronous commit is unanswered at a time, because the group coordinator answers
one commit per connection at a time and more would only queue (about 5 ms each on Kafka 4).

Called on the loop's thread only (answers arrive inside ``poll`` on that thread). A synchronous
commit blocks for the broker's answer; a failed one raises :class:`KafkaError` after it was
reported to the observer, and leaves the watermarks pending for the next checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

from consumer.checkpoint.progress import PartitionProgress
from consumer.errors import KafkaError
from consumer.events import Observer, Trigger
from consumer.kafka.commit_metadata import with_gap
from consumer.kafka.protocol import Source
from consumer.message import TP

#: Seconds after which an unanswered asynchronous commit no longer holds the next one back.
KAFKA_ANSWER_TIMEOUT = 30.0

#: Seconds a partition's gap, once written out, may be sent again as it was by commits of the
#: count trigger (encoding 5,000 offsets costs about 1.5 ms): a commit
#: that lists what finished a moment ago is still true, it only lists less. Other triggers
#: (interval, revoke, shutdown) write it out afresh.
GAP_REFRESH_SECONDS = 1.0

#: A partition's gap: (its lowest unfinished offset, the offsets finished above it); None
#: when nothing finished above it.
FinishedAbove = Callable[[TP], "tuple[int, Collection[int]] | None"]
#: A partition's gap as a commit sends it: (its progress, the metadata, how many offsets the
#: list held when written out now; None when a recent list was reused).
Listed = tuple[PartitionProgress, str, "int | None"]


class KafkaCommits:
    """Commits offsets to Kafka and keeps each partition's record of them.

    ``committed`` moves when a commit is sent, ``acked`` when the broker confirms it; offsets
    never move backwards (:class:`PartitionProgress` raises if asked to).
    """

    def __init__(self, source: Source, *, observer: Observer, monotonic: Callable[[], float],
                 answer_timeout: float = KAFKA_ANSWER_TIMEOUT) -> None:
        self._source = source
        #: Handlers running concurrently: each partition's gap, which commits carry in their
        #: metadata (:mod:`consumer.kafka.commit_metadata`); None: no gaps.
        self.finished_above: FinishedAbove | None = None
        self._observer = observer
        self._monotonic = monotonic
        self._answer_timeout = answer_timeout
        #: When the last asynchronous commit went out, until the broker answers it.
        self._sent_at: float | None = None

    @property
    def in_flight(self) -> bool:
        """Whether an asynchronous commit waits for its answer: the next asynchronous one then
        waits too (should an answer never come, for ``answer_timeout`` seconds at most)."""
        sent_at = self._sent_at
        return sent_at is not None and self._monotonic() - sent_at <= self._answer_timeout

    def commit(self, trigger: Trigger, partitions: Iterable[PartitionProgress], *,
               synchronous: bool, durable: bool = False, hold_while_in_flight: bool = False,
               ) -> dict[TP, int]:
        """Commit the watermark of every partition that moved since its last commit; returns
        what was committed (empty when nothing moved, or when ``hold_while_in_flight`` and an
        asynchronous commit is in flight: the watermarks stay pending).

        ``durable``: the offsets are saved elsewhere already (the store), so they count as
        confirmed once sent. Raises KafkaError when a synchronous commit fails.
        """
        gaps = self.finished_above
        lists: dict[TP, Listed] = {}
        moved: dict[TP, tuple[PartitionProgress, int]] = {}
        for p in partitions:
            offset = p.pending_commit()
            tp = (p.topic, p.partition)
            if gaps is not None and (gap := gaps(tp)) is not None:
                # the finished messages above the watermark go out even when it did not move
                lowest, finished = gap
                at = offset if offset is not None else (
                    p.watermark if p.watermark is not None else lowest)
                if offset is not None or p.gap_sent != (at, len(finished)):
                    lists[tp] = self._list(trigger, p, at, finished)
                    offset = at
            if offset is not None:
                moved[tp] = (p, offset)
        if not moved:
            self._observer.checkpoint_noop(trigger)
            return {}
        if hold_while_in_flight and not synchronous and self.in_flight:
            return {}
        offsets = {tp: offset for tp, (_, offset) in moved.items()}
        self._send(trigger, offsets, synchronous=synchronous, lists=lists)
        for progress, offset in moved.values():
            progress.mark_committed(offset)
            if synchronous or durable:
                progress.mark_acked(offset)
        self._observer.checkpoint_committed(trigger, offsets)
        return offsets

    def confirm(self, trigger: Trigger, partitions: Mapping[TP, PartitionProgress]
                ) -> dict[TP, int]:
        """Commit every watermark synchronously, moved or not: the coordinator answers commits
        in order, so its answer confirms every earlier commit too. Returns the offsets that
        moved (reported as a checkpoint); raises KafkaError when the commit fails."""
        offsets = {tp: p.watermark for tp, p in partitions.items() if p.watermark is not None}
        if not offsets:
            return {}
        gaps = self.finished_above
        lists = {} if gaps is None else {
            tp: self._list(trigger, partitions[tp], offset, gap[1])
            for tp, offset in offsets.items() if (gap := gaps(tp)) is not None}
        self._send(trigger, offsets, synchronous=True, lists=lists)
        moved = {}
        for tp, offset in offsets.items():
            progress = partitions[tp]
            if offset != progress.committed:
                progress.mark_committed(offset)
                moved[tp] = offset
            progress.mark_acked(offset)
        if moved:
            self._observer.checkpoint_committed(trigger, moved)
        self._observer.commit_acknowledged(offsets)
        return moved

    def answered(self, offsets: Mapping[TP, int], error: KafkaError | None,
                 partitions: Mapping[TP, PartitionProgress]) -> None:
        """The broker answered an asynchronous commit (answers come in order: every earlier
        one is answered too). A failed commit leaves its watermarks pending again."""
        self._sent_at = None
        for tp, offset in offsets.items():
            progress = partitions.get(tp)
            if progress is not None:
                progress.mark_acked(offset)
        if error is not None:
            for progress in partitions.values():
                progress.commit_failed()
            self._observer.commit_failed(None, error)
        elif offsets:
            self._observer.commit_acknowledged(offsets)

    def _list(self, trigger: Trigger, progress: PartitionProgress, offset: int,
              finished: Collection[int]) -> Listed:
        """A commit at ``offset`` that lists ``finished``: the count trigger sends the list
        written out up to :data:`GAP_REFRESH_SECONDS` ago, the others write it out now."""
        now = self._monotonic()
        written = progress.gap_written
        if (trigger is Trigger.COUNT and written is not None
                and now - written[0] < GAP_REFRESH_SECONDS):
            return progress, written[1], None
        metadata = with_gap(offset, finished)
        progress.gap_written = (now, metadata)
        return progress, metadata, len(finished)

    def _send(self, trigger: Trigger, offsets: Mapping[TP, int], *, synchronous: bool,
              lists: Mapping[TP, Listed] | None = None) -> None:
        """Commit ``offsets``, those in ``lists`` with their gap's metadata; once sent, each
        listed partition records what its list held (nothing known for a reused one)."""
        lists = lists or {}
        metadata = {tp: listed[1] for tp, listed in lists.items()}
        try:
            self._source.commit(offsets, asynchronous=not synchronous, metadata=metadata)
        except KafkaError as error:
            self._observer.commit_failed(trigger, error)
            raise
        for tp, (progress, _, size) in lists.items():
            progress.gap_sent = None if size is None else (offsets[tp], size)
        if synchronous:
            self._sent_at = None  # answered in order: the earlier ones are answered too
        else:
            self._sent_at = self._monotonic()
