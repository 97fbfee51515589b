"""Medians and spreads over repeated runs."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread | None:
        present = [v for v in values if v is not None]
        if not present:
            return None
        return cls(statistics.median(present), min(present), max(present), len(present))

    def ratio(self, other: Spread) -> float | None:
        return self.median / other.median if other.median else None


def met(measured: float, target: float) -> str:
    """A goal's verdict for a report: ``yes``, or how far short of ``target`` it fell."""
    if measured >= target:
        return "yes"
    return f"no: {1 - measured / target:.0%} short"
