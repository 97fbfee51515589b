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

from collections.abc import Callable, Iterable, Mapping

from consumer.checkpoint.progress import PartitionProgress
from consumer.errors import KafkaError
from consumer.events import Observer, Trigger
from consumer.kafka.protocol import Source
from consumer.message import TP

#: Seconds after which an unanswered asynchronous commit no longer holds the next one back.
KAFKA_ANSWER_TIMEOUT = 30.0


class KafkaCommits:
    """Commits offsets to Kafka and keeps each partition's record of them.

    ``committed`` moves when a commit is sent, ``acked`` when the broker confirms it; offsets
    never move backwards (:class:`PartitionProgress` raises if asked to).
    """

    def __init__(self, source: Source, *, observer: Observer, monotonic: Callable[[], float],
                 answer_timeout: float = KAFKA_ANSWER_TIMEOUT) -> None:
        self._source = source
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
        moved = {(p.topic, p.partition): (p, offset) for p in partitions
                 if (offset := p.pending_commit()) is not None}
        if not moved:
            self._observer.checkpoint_noop(trigger)
            return {}
        if hold_while_in_flight and not synchronous and self.in_flight:
            return {}
        offsets = {tp: offset for tp, (_, offset) in moved.items()}
        self._send(trigger, offsets, synchronous=synchronous)
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
        self._send(trigger, offsets, synchronous=True)
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

    def _send(self, trigger: Trigger, offsets: Mapping[TP, int], *, synchronous: bool) -> None:
        try:
            self._source.commit(offsets, asynchronous=not synchronous)
        except KafkaError as error:
            self._observer.commit_failed(trigger, error)
            raise
        if synchronous:
            self._sent_at = None  # answered in order: the earlier ones are answered too
        else:
            self._sent_at = self._monotonic()
