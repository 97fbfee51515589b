"""The MariaDB store's runs, on the Python side: which stretches of a run no run covers, and the
statement reading the runs that may overlap a batch's (on a real server:
tests/integration/test_mariadb_runs.py)."""

from __future__ import annotations

from consumer.store.key_runs import Run
from consumer.store.mariadb_runs import _near, _uncovered

HEAD = b"\x01" * 10


def run(low: int, high: int, head: bytes = HEAD) -> Run:
    """Key offsets ``low`` to ``high`` - 1 of partition 0, from message offset 1000."""
    return Run(head, low, high, "t", 0, 1000)


def stretches(found: list) -> list[tuple[int, int]]:
    return [(piece.first, piece.last) for piece in found]


def test_nothing_covered_is_the_whole_run() -> None:
    assert stretches(_uncovered(run(10, 20), [])) == [(10, 19)]


def test_runs_below_above_and_inside_leave_the_gaps() -> None:
    taken = [(15, 16), (0, 11), (19, 40)]  # unsorted, as read
    assert stretches(_uncovered(run(10, 20), taken)) == [(12, 14), (17, 18)]


def test_a_covered_run_has_no_stretch() -> None:
    assert _uncovered(run(10, 20), [(5, 25)]) == []
    assert _uncovered(run(10, 20), [(10, 14), (15, 19)]) == []


def test_runs_that_only_touch_its_ends_leave_it_whole() -> None:
    assert stretches(_uncovered(run(10, 20), [(0, 9), (20, 30)])) == [(10, 19)]


def test_a_stretch_keeps_its_keys() -> None:
    found = _uncovered(run(10, 20), [(12, 17)])
    assert [piece.keys for piece in found] == [run(10, 12).key_list(), run(18, 20).key_list()]
    assert run(10, 12).key_list() == [HEAD + bytes([0, 0, 0, 0, 0, 10]),
                                      HEAD + bytes([0, 0, 0, 0, 0, 11])]


def test_the_read_spans_each_head_once() -> None:
    other = b"\x02" * 10
    sql = _near("'g'", [run(10, 20), run(30, 40), run(0, 5, head=other)])
    assert sql.count(f"X'{HEAD.hex()}'") == 2 and sql.count(f"X'{other.hex()}'") == 2
    assert "key_first >= 10 AND key_first < 40" in sql
    assert "key_first < 10 ORDER BY key_first DESC LIMIT 1" in sql
