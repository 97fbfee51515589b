"""What the client's statistics cannot tell, learned on the poll thread for the scrape.

- Paused partitions (retry backoff, store outage) are not fetched, so the client's cached
  watermarks stop moving while producers go on: their end offset is asked from the broker, at
  most every :data:`PAUSED_QUERY_SECONDS` per partition and :data:`QUERIES_PER_REFRESH` per
  refresh, with a short timeout, and pinned in the
  :class:`~consumer.observability.lag.OffsetTracker`.
- Transactional input: a transaction's commit marker takes an offset no handler sees, so the
  watermark stops one short of the end. Where the consumer holds nothing of a partition, the
  client's position (past the marker) is recorded as a :class:`~consumer.observability.lag.Skip`.

The loop calls :meth:`OffsetRefresher.refresh` when :meth:`OffsetRefresher.due`, on the poll
thread, which each refresh blocks for at most its bounded queries; a broker that does not
answer is logged and asked again later, never raised. The scrape only reads the tracker.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

from consumer.checkpoint.progress import PartitionProgress
from consumer.clock import Clock
from consumer.errors import KafkaError
from consumer.kafka.protocol import Source
from consumer.message import TP
from consumer.observability.lag import OffsetTracker, Skip

log = logging.getLogger("consumer.metrics")

#: Seconds between two refreshes (positions of every quiet partition, due end queries).
REFRESH_SECONDS = 1.0
#: Seconds between two broker queries of one paused partition's end offset.
PAUSED_QUERY_SECONDS = 5.0
#: Broker queries at most per refresh, so many paused partitions never stall the loop.
QUERIES_PER_REFRESH = 8
#: Seconds one broker query may take (it blocks the poll thread).
QUERY_TIMEOUT_SECONDS = 1.0


class OffsetRefresher:
    """Refreshes paused partitions' ends and quiet partitions' positions (poll thread)."""

    def __init__(self, tracker: OffsetTracker, *, source: Source, clock: Clock) -> None:
        self._tracker = tracker
        self._source = source
        self._clock = clock
        self._next_refresh = 0.0
        #: Per paused partition: monotonic time of its next end query.
        self._next_query: dict[TP, float] = {}

    def due(self, now: float) -> bool:
        return now >= self._next_refresh

    def refresh(self, partitions: Mapping[TP, PartitionProgress], paused: Collection[TP],
                held: Collection[TP]) -> None:
        """``paused``: partitions not fetched now; ``held``: partitions with messages polled
        but not done (a store's pending batch)."""
        now = self._clock.monotonic()
        self._next_refresh = now + REFRESH_SECONDS
        quiet = [tp for tp in partitions if tp not in paused and tp not in held]
        self._record_skips(partitions, quiet)
        released = [tp for tp in self._next_query if tp not in paused or tp not in partitions]
        for tp in released:
            del self._next_query[tp]
        if released:
            self._tracker.release(released, self._clock.wall())
        self._query_paused([tp for tp in paused if tp in partitions], now)

    def _record_skips(self, partitions: Mapping[TP, PartitionProgress],
                      quiet: list[TP]) -> None:
        skips = {}
        if quiet:
            for tp, position in self._source.positions(quiet).items():
                watermark = partitions[tp].watermark
                if watermark is not None and position > watermark:
                    skips[tp] = Skip(watermark, position)
        self._tracker.record_skips(skips)

    def _query_paused(self, paused: list[TP], now: float) -> None:
        due = sorted((self._next_query.get(tp, 0.0), tp) for tp in paused)
        for at, tp in due[:QUERIES_PER_REFRESH]:
            if at > now:
                break
            try:
                start, end = self._source.offset_range(tp, timeout=QUERY_TIMEOUT_SECONDS)
            except KafkaError as error:
                # The broker is slow or away: try every paused partition again later.
                log.debug("could not refresh the end offset of paused %s[%d]: %s", *tp, error)
                for waiting in paused:
                    self._next_query[waiting] = now + PAUSED_QUERY_SECONDS
                return
            self._next_query[tp] = now + PAUSED_QUERY_SECONDS
            self._tracker.pin_end(tp, start, end, self._clock.wall())
