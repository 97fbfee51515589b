"""consumer.observability.histogram: batch binning agrees with one bisect per value, Prometheus'
``le``."""

from __future__ import annotations

import random

from consumer.observability.histogram import Histogram


def naive(bounds: tuple[float, ...], values: list[float]) -> list[int]:
    counts = [0] * (len(bounds) + 1)
    for value in values:
        counts[next((i for i, b in enumerate(bounds) if value <= b), len(bounds))] += 1
    return counts


def test_a_value_on_a_bound_counts_in_that_bucket_and_export_is_cumulative() -> None:
    histogram = Histogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 2.0, 3.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]
    assert histogram.export() == ([("1.0", 2.0), ("2.0", 4.0), ("+Inf", 5.0)], 8.0)
    assert histogram.count == 5


def test_binning_a_sorted_batch_equals_observing_each_value() -> None:
    rng = random.Random(3)
    bounds = (0.001, 0.01, 0.1, 1.0)
    values = sorted([rng.choice([0.001, 0.01, 1.0, 5.0]) for _ in range(50)]
                    + [rng.random() * 2 for _ in range(200)])
    one_by_one, batched = Histogram(bounds), Histogram(bounds)
    for value in values:
        one_by_one.observe(value)
    batched.observe_sorted(values)
    assert batched.counts == one_by_one.counts == naive(bounds, values)
    assert abs(batched.sum - one_by_one.sum) < 1e-9


def test_a_weighted_observation_stands_for_that_many() -> None:
    bounds = (1.0, 10.0, 60.0)
    weighted, repeated = Histogram(bounds), Histogram(bounds)
    weighted.observe_weighted(5.0, 3)
    weighted.observe_weighted(90.0, 2)
    for value in (5.0, 5.0, 5.0, 90.0, 90.0):
        repeated.observe(value)
    assert weighted.counts == repeated.counts == naive(bounds, [5.0] * 3 + [90.0] * 2)
    assert weighted.sum == repeated.sum
