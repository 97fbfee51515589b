"""Per-partition progress: the watermark of done messages, and how much of it Kafka confirmed.

The one owner of the rule that offsets never move backwards: moving the watermark or the offset
sent to Kafka back raises OffsetWentBackwards with the partition's coordinates, and an older
broker answer arriving late never lowers the confirmed offset (a failed commit returns the sent
offset to the confirmed one, so the next checkpoint sends it again). Read and written on the
loop's thread; snapshots copy it for the scrape.

Messages of one partition are done in offset order. Offsets need not be contiguous (transaction
markers, compaction), so the watermark is the done message's offset + 1, never a count.
"""

from __future__ import annotations

from collections import deque

from consumer.errors import OffsetWentBackwards


class PartitionProgress:
    """Watermark and commit bookkeeping for one assigned partition."""

    __slots__ = ("_confirmed_done", "_in_flight", "acked", "committed", "done", "done_since_commit",
                 "epoch", "gap_sent", "gap_written", "new_keys_from", "oldest_uncommitted_at",
                 "partition", "topic", "watermark")

    def __init__(self, topic: str, partition: int, *, committed: int | None = None,
                 epoch: int = 0) -> None:
        self.topic = topic
        self.partition = partition
        #: Our ownership epoch in the store (0 without a store).
        self.epoch = epoch
        #: The offset from which the store holds no processed key of this partition, as far
        #: as this process knows (None: not known): read at assignment, moved past each
        #: batch's claims (consumer.checkpoint.store_batch).
        self.new_keys_from: int | None = None
        #: Next offset after the last done message; None until something is done.
        self.watermark: int | None = committed
        #: Last offset we asked Kafka to commit (the next one to read).
        self.committed: int | None = committed
        #: Last offset the broker confirmed; trails ``committed`` while a commit is in flight.
        self.acked: int | None = committed
        #: Messages done since the partition was assigned, and how many the broker confirmed.
        self.done = 0
        self._confirmed_done = 0
        #: (offset, done) of each commit sent and not confirmed yet, oldest first.
        self._in_flight: deque[tuple[int, int]] = deque()
        self.done_since_commit = 0
        #: Monotonic time at which the oldest done-but-uncommitted message was done.
        self.oldest_uncommitted_at: float | None = None
        #: (offset, messages finished above it) of the last commit that carried a gap
        #: (handlers running concurrently): a gap that grew is committed again.
        self.gap_sent: tuple[int, int] | None = None
        #: (monotonic time, metadata) of the gap last written out for a commit.
        self.gap_written: tuple[float, str] | None = None

    def mark_done(self, offset: int, now: float) -> None:
        """One message is done: a run of one."""
        self.begin_run(offset)
        self.watermark = offset + 1
        self.count_done(1, now)

    def begin_run(self, offset: int) -> None:
        """A run of this partition's messages from ``offset`` on is about to be done one by
        one (the dispatcher's hot path): raises OffsetWentBackwards when it starts behind
        :attr:`watermark`. The caller then moves :attr:`watermark` to each done message's
        offset + 1 itself, one attribute write per message, and counts the run with
        :meth:`count_done`. A run is consecutive messages of the partition from one poll, which
        the log hands over in offset order, so checking its first offset checks them all."""
        self._refuse_backwards(self.watermark, offset, offset + 1)

    def count_done(self, count: int, now: float) -> None:
        """``count`` messages are done; the caller moved :attr:`watermark` past the last one
        (a run begun with :meth:`begin_run`)."""
        self.done += count
        self.done_since_commit += count
        if self.oldest_uncommitted_at is None:
            self.oldest_uncommitted_at = now

    def advance(self, watermark: int, count: int, now: float) -> None:
        """``count`` messages up to ``watermark`` are done (a store batch, or one message)."""
        self._refuse_backwards(self.watermark, watermark, watermark)
        self.watermark = watermark
        self.count_done(count, now)

    def pending_commit(self) -> int | None:
        """The offset to commit, or None when the watermark has not moved since the last commit."""
        if self.watermark is None or self.watermark == self.committed:
            return None
        return self.watermark

    def mark_committed(self, offset: int) -> None:
        """A commit of ``offset`` was sent (it is confirmed by :meth:`mark_acked`)."""
        self._refuse_backwards(self.committed, offset, offset)
        self.committed = offset
        self._in_flight.append((offset, self.done))
        if offset == self.watermark:
            self.done_since_commit = 0
            self.oldest_uncommitted_at = None

    def mark_acked(self, offset: int) -> None:
        """The broker confirmed a commit of ``offset``."""
        if self.acked is None or offset > self.acked:
            self.acked = offset
        while self._in_flight and self._in_flight[0][0] <= offset:
            self._confirmed_done = self._in_flight.popleft()[1]

    @property
    def unconfirmed(self) -> int:
        """Messages done whose commit the broker has not confirmed: what a crash would repeat."""
        return self.done - self._confirmed_done

    def _refuse_backwards(self, old: int | None, offset: int, new: int) -> None:
        """The one rule of this partition's offsets: nothing moves backwards. ``offset`` (a
        done message's, or the watermark or commit moved to) is refused behind ``old`` (the
        watermark or the committed offset); ``new`` is where the move was going."""
        if old is not None and offset < old:
            raise OffsetWentBackwards(self.topic, self.partition, old, new)

    def commit_failed(self) -> None:
        """The last commit did not reach the broker: the next checkpoint must send it again,
        with the finished offsets it listed."""
        self.committed = self.acked
        self.gap_sent = None
