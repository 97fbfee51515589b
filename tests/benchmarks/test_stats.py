"""benchmarks.stats: a goal's verdict says how far short it fell."""

from __future__ import annotations

from benchmarks.stats import met


def test_a_goal_missed_by_a_little_says_by_how_much() -> None:
    assert met(0.88, 0.9) == "no: 2% short"
    assert met(2_491, 2_560) == "no: 3% short"


def test_a_goal_reached_or_passed_is_met() -> None:
    assert met(0.9, 0.9) == "yes"
    assert met(5.09, 0.9) == "yes"
