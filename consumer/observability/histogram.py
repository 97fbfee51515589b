"""A histogram accumulator cheap enough for the hot path, exported at scrape time.

One thread writes (the poll thread); the scrape thread reads. Values are binned per batch
where possible: sorting a batch's values once and bisecting each bucket bound into them costs
a few nanoseconds per value, far less than a bisect per value.

Buckets follow Prometheus: a value counts in every bucket whose upper bound ``le`` it does not
exceed. :meth:`Histogram.export` returns the cumulative counts (``+Inf`` last) and the sum.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

#: Handler calls and store operations: 100 µs to 60 s.
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Message age and rebalances: 1 ms to 1 h.
AGE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
               120.0, 300.0, 600.0, 1800.0, 3600.0)


class Histogram:
    """Counts per bucket (not cumulative; the last one is ``+Inf``) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = DURATION_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_sorted(self, values: Sequence[float]) -> None:
        """Observe every value of an ascending sequence, binned in one pass per bound."""
        if not values:
            return
        counts, below = self.counts, 0
        for index, bound in enumerate(self.bounds):
            upto = bisect_right(values, bound)
            counts[index] += upto - below
            below = upto
        counts[-1] += len(values) - below
        self.sum += sum(values)

    def observe_weighted(self, value: float, weight: int) -> None:
        """Observe ``value`` standing for ``weight`` observations (a sample's member)."""
        self.counts[bisect_left(self.bounds, value)] += weight
        self.sum += value * weight

    def export(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last, and the sum (for the scrape)."""
        counts = list(self.counts)  # one C-level copy: the writer may be mid-batch
        buckets, total = [], 0
        for bound, count in zip((*map(_le, self.bounds), "+Inf"), counts, strict=True):
            total += count
            buckets.append((bound, float(total)))
        return buckets, self.sum

    @property
    def count(self) -> int:
        return sum(self.counts)


def _le(bound: float) -> str:
    return repr(float(bound))
