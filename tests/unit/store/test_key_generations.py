"""What a member knows of a group's generations: every key of a sealed generation is flagged,
whoever claimed it, and nothing a rolled-back transaction saw counts as known."""

from __future__ import annotations

import os
from collections.abc import Iterable

import pytest

from consumer.store.key_generations import GENERATIONS_KEPT, Generation, GroupKeys
from consumer.store.postgres_generations import seal_wait_ms


class Database:
    """The generations as a database would hold them: keys by generation, counts monotonic."""

    def __init__(self) -> None:
        self.keys: dict[int, list[bytes]] = {1: []}
        self.counts: dict[int, int] = {1: 0}
        self.sealed: set[int] = set()
        self.reads: list[int] = []

    def claim(self, keys: list[bytes]) -> None:
        current = max(self.keys)
        self.keys[current] += keys
        self.counts[current] += len(keys)

    def seal(self) -> None:
        current = max(self.keys)
        self.sealed.add(current)
        self.keys[current + 1], self.counts[current + 1] = [], 0

    def drop(self, number: int) -> None:
        del self.keys[number], self.counts[number]

    def rows(self) -> list[Generation]:
        return [Generation(n, self.counts[n], n in self.sealed) for n in sorted(self.keys)]

    def read(self, number: int) -> Iterable[bytes]:
        self.reads.append(number)
        return list(self.keys[number])


def fresh(count: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(count)]


def claim_here(db: Database, member: GroupKeys, keys: list[bytes]) -> None:
    """The member claims the keys in a transaction that commits."""
    db.claim(keys)
    member.claimed(keys)
    member.committed()


def test_keys_claimed_here_are_flagged_once_their_generation_is_sealed_without_a_read() -> None:
    db, member = Database(), GroupKeys(generation_keys=10)
    member.refresh(db.rows(), db.read)
    mine = fresh(10)
    claim_here(db, member, mine)
    db.seal()
    member.refresh(db.rows(), db.read)
    assert member.sealed == (1,) and member.current == 2
    assert db.reads == [], "every key of generation 1 was claimed here"
    assert member.flagged(mine) == mine


def test_a_sealed_generation_with_keys_claimed_elsewhere_is_read() -> None:
    db, member = Database(), GroupKeys(generation_keys=10)
    member.refresh(db.rows(), db.read)
    mine, theirs = fresh(5), fresh(5)
    claim_here(db, member, mine)
    db.claim(theirs)  # another member
    db.seal()
    member.refresh(db.rows(), db.read)
    assert db.reads == [1]
    assert member.flagged(theirs + mine) == theirs + mine
    member.refresh(db.rows(), db.read)
    assert db.reads == [1], "read once"


def test_a_member_starting_late_reads_every_sealed_generation() -> None:
    db = Database()
    old = fresh(20)
    db.claim(old[:10])
    db.seal()
    db.claim(old[10:])
    db.seal()
    member = GroupKeys(generation_keys=10)
    member.refresh(db.rows(), db.read)
    assert db.reads == [1, 2]
    assert member.flagged(old) == old
    assert len(member.flagged(fresh(10_000))) < 50


def test_what_a_rolled_back_transaction_read_is_read_again() -> None:
    """The transaction that sealed a generation and read it rolls back: the generation is
    current again, and keys claimed into it afterwards are not covered by that read."""
    db, member = Database(), GroupKeys(generation_keys=10)
    first = fresh(10)
    db.claim(first)
    member.refresh(db.rows(), db.read)
    db.seal()  # in the member's own transaction, which then rolls back
    member.refresh(db.rows(), db.read)
    assert db.reads == [1]
    member.rolled_back()
    db.sealed.discard(1)
    del db.keys[2], db.counts[2]
    db.keys[1], db.counts[1] = first[:5], 5  # as before that transaction, say
    later = fresh(5)
    db.claim(later)  # another member: generation 1 counts 10 again
    db.seal()
    member.refresh(db.rows(), db.read)
    assert db.reads == [1, 1]
    assert member.flagged(later) == later


def test_no_sealed_generation_flags_nothing_and_a_full_one_is_due_for_rotation() -> None:
    db, member = Database(), GroupKeys(generation_keys=3)
    member.refresh(db.rows(), db.read)
    keys = fresh(3)
    member.claimed(keys)
    assert member.flagged(keys) == [], "the current generation's own index finds these"
    assert not member.rotation_due
    db.claim(keys)
    member.committed()
    member.refresh(db.rows(), db.read)
    assert member.rotation_due


def test_a_seal_is_overdue_from_a_quarter_more_keys_and_more_so_each_eighth_beyond() -> None:
    db, member = Database(), GroupKeys(generation_keys=16)
    member.refresh(db.rows(), db.read)
    overdue = []
    for _ in range(24):
        member.claimed(fresh(1))
        member.committed()
        overdue.append(member.seal_overdue)
    # 20 keys are a quarter more than 16; an eighth of a generation is 2 keys
    assert overdue == [0] * 19 + [1, 1, 2, 2, 3]


def test_an_overdue_seal_waits_twice_as_long_at_each_miss_up_to_a_second() -> None:
    assert [seal_wait_ms(overdue) for overdue in (0, 1, 2, 3, 4, 5, 6, 1_000)] == \
        [0, 100, 200, 400, 800, 1000, 1000, 1000]


def test_filters_go_once_every_generation_they_hold_keys_of_is_dropped() -> None:
    db, member = Database(), GroupKeys(generation_keys=2)
    old = fresh(2)
    db.claim(old)
    db.seal()
    member.refresh(db.rows(), db.read)
    assert member.filter_bytes > 0
    db.drop(1)
    member.refresh(db.rows(), db.read)
    assert member.filter_bytes == 0
    assert member.sealed == ()


def test_the_newest_generation_is_never_sealed() -> None:
    with pytest.raises(ValueError, match="current"):
        GroupKeys().refresh([Generation(1, 0, True)], lambda number: [])


def test_keys_claimed_here_reach_a_filter_only_when_their_generation_is_sealed() -> None:
    """The current generation's own index finds its keys: until it is sealed they cost no
    filter work (a store that never fills a generation keeps no filter at all)."""
    db, member = Database(), GroupKeys(generation_keys=10)
    member.refresh(db.rows(), db.read)
    mine = fresh(6)
    claim_here(db, member, mine)
    member.refresh(db.rows(), db.read)
    assert member.filter_bytes == 0
    db.seal()
    member.refresh(db.rows(), db.read)
    assert member.filter_bytes > 0 and db.reads == []
    assert member.flagged(mine) == mine


def test_keys_of_a_rolled_back_claim_never_reach_a_filter() -> None:
    db, member = Database(), GroupKeys(generation_keys=10)
    member.refresh(db.rows(), db.read)
    lost, kept = fresh(3), fresh(3)
    member.claimed(lost)
    member.rolled_back()
    claim_here(db, member, kept)
    db.seal()
    member.refresh(db.rows(), db.read)
    assert member.flagged(kept) == kept
    assert member.flagged(lost) == []


def test_a_generation_also_holds_a_share_of_the_groups_keys_before_it_is_sealed() -> None:
    """However many keys the retention keeps, a group keeps about GENERATIONS_KEPT
    generations: a generation is sealed at generation_keys keys or at that share of the
    group's, whichever is more."""
    db, member = Database(), GroupKeys(generation_keys=2)
    db.claim(fresh(4 * GENERATIONS_KEPT))
    db.seal()
    db.claim(fresh(3))
    member.refresh(db.rows(), db.read)
    assert not member.rotation_due, "3 keys of 67 are not a sixteenth, though above 2"
    db.claim(fresh(1))
    member.refresh(db.rows(), db.read)
    assert member.rotation_due, "4 keys of 68 are"
