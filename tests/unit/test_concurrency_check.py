"""The ordering checker's holds: a member that loses a partition and gets it back re-runs the
suffix from where the commit stood, as another member would; a repeat inside one hold is still
a violation."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import pytest

from tests.support.concurrency_check import (
    Call,
    OrderingViolation,
    by_assignment,
    check_order,
    largest_gap,
)

RUN = 100
EXPECTED: Mapping[Hashable, Sequence[int]] = {"k": [1, 2, 3]}


def _call(seq: int, start: int) -> Call:
    return Call(RUN, "k", 0, seq * 10, seq, start, start + 5, "t", True)


def test_a_re_run_after_the_partition_came_back_is_a_new_hold() -> None:
    # seq 1 and 2 handled, partition 0 revoked (the commit stood at 1) and assigned again at
    # 50, then 1, 2, 3 handled again in order.
    calls = [_call(1, 10), _call(2, 20), _call(1, 60), _call(2, 70), _call(3, 80)]
    assigned = {RUN: [(0, 0), (50, 0)]}

    check_order(calls, lane="key", expected=EXPECTED, holding=by_assignment(assigned))
    with pytest.raises(OrderingViolation, match=r"k#1 .* followed k#2"):
        check_order(calls, lane="key", expected=EXPECTED)  # one hold per process


def test_a_repeat_inside_one_assignment_is_still_caught() -> None:
    calls = [_call(1, 10), _call(2, 20), _call(2, 30), _call(3, 40)]
    assigned = {RUN: [(0, 0)]}

    with pytest.raises(OrderingViolation, match=r"k#2 .* followed k#2"):
        check_order(calls, lane="key", expected=EXPECTED, holding=by_assignment(assigned))


def test_a_new_hold_may_not_start_past_what_was_handled() -> None:
    calls = [_call(1, 10), _call(3, 60)]
    assigned = {RUN: [(0, 0), (50, 0)]}

    with pytest.raises(OrderingViolation, match="began at k#3"):
        check_order(calls, lane="key", expected=EXPECTED, holding=by_assignment(assigned))


def _ended(offset: int, end: int) -> Call:
    return Call(RUN, "k", 0, offset, 0, end - 5, end, "t", True)


def test_offsets_a_commit_listed_as_finished_are_not_the_runs_gap() -> None:
    # the run began at 10; 11 and 12 were listed as finished by the previous run's commit,
    # so once 10 is done the watermark passes them and 13's completion is no gap
    calls = [_ended(13, 1), _ended(10, 2), _ended(14, 3)]
    assert largest_gap(calls, RUN, {0: 10}, {0: {11, 12}}) == 1
    # without the list, 13 and 14 wait above 11 and 12, which the run never handles
    assert largest_gap(calls, RUN, {0: 10}) == 2
