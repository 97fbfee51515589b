"""Writers of one SQLite file take turns: a writer about to begin stands aside, for a bounded
time, while another announces that it waits to begin (real flocks on a file in tmp_path)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from consumer.errors import StoreUnavailable
from consumer.store.sqlite_turns import LOOK_EVERY_SECONDS, STAND_ASIDE_SECONDS, WriterTurns


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def turns(tmp_path: Path, time: FakeTime) -> WriterTurns:
    return WriterTurns(str(tmp_path / "store.db"), clock=time.clock, sleep=time.sleep)


def test_a_writer_alone_begins_at_once(tmp_path: Path) -> None:
    time = FakeTime()
    writer = turns(tmp_path, time)
    with writer.turn():
        pass
    with writer.turn():
        pass
    assert time.slept == 0.0
    writer.close()


def test_a_writer_stands_aside_while_another_waits_but_no_longer_than_the_bound(
    tmp_path: Path,
) -> None:
    """The waiter never begins (frozen while it waits): the other stands aside for
    STAND_ASIDE_SECONDS and then begins anyway."""
    time = FakeTime()
    waiter, writer = turns(tmp_path, time), turns(tmp_path, time)
    with waiter.turn(), writer.turn():
        stood_aside = time.slept
    assert STAND_ASIDE_SECONDS <= stood_aside <= STAND_ASIDE_SECONDS + LOOK_EVERY_SECONDS
    waiter.close()
    writer.close()


def test_a_writer_stops_standing_aside_once_the_waiter_has_begun(tmp_path: Path) -> None:
    time = FakeTime()
    waiter = turns(tmp_path, time)
    waiting = ExitStack()
    waiting.enter_context(waiter.turn())
    looks = 0

    def sleep(seconds: float) -> None:
        nonlocal looks
        looks += 1
        time.sleep(seconds)
        if looks == 3:  # the waiter's BEGIN returns
            waiting.close()

    writer = WriterTurns(str(tmp_path / "store.db"), clock=time.clock, sleep=sleep)
    with writer.turn():
        pass
    assert looks == 3
    assert time.slept == pytest.approx(3 * LOOK_EVERY_SECONDS)
    waiter.close()
    writer.close()


def test_a_writer_announces_itself_only_while_its_statement_waits(tmp_path: Path) -> None:
    time = FakeTime()
    first, second = turns(tmp_path, time), turns(tmp_path, time)
    with first.turn():
        pass
    with second.turn():
        pass
    assert time.slept == 0.0
    first.close()
    second.close()


def test_a_turns_file_that_cannot_be_opened_is_a_store_outage_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-directory" / "store.db"
    with pytest.raises(StoreUnavailable, match=r"store\.db-writers.*must be writable"):
        WriterTurns(str(missing))
