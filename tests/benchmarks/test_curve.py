"""benchmarks.curve: a kill lands while the topic lasts, however fast the point is."""

from __future__ import annotations

import random

from benchmarks.curve import kill_moment
from benchmarks.stats import Spread


def test_a_fast_point_is_killed_within_the_first_80_percent_of_its_topic() -> None:
    rng = random.Random(7)
    fast = Spread(median=1_000_000.0, low=900_000.0, high=1_100_000.0, count=3)
    moments = [kill_moment(rng, (1.0, 4.0), fast, 1_000_000) for _ in range(200)]
    assert all(0.2 <= m <= 0.8 for m in moments)


def test_a_slow_or_unmeasured_point_keeps_the_window() -> None:
    rng = random.Random(7)
    slow = Spread(median=170.0, low=160.0, high=180.0, count=3)
    for rate in (slow, None):
        moments = [kill_moment(rng, (1.0, 4.0), rate, 1_000_000) for _ in range(200)]
        assert all(1.0 <= m <= 4.0 for m in moments)
        assert max(moments) > 3.5, "the whole window is used"
