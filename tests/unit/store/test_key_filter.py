"""The processed keys' Bloom filter: never "no" for a key it holds, rarely "yes" for another."""

from __future__ import annotations

import os

from consumer.store.key_filter import BITS_PER_KEY, MIN_CAPACITY, KeyFilter


def test_every_key_added_may_be_held_and_few_others() -> None:
    held = [os.urandom(16) for _ in range(50_000)]
    keys = KeyFilter(len(held))
    assert keys.add(held) == len(held)
    assert all(keys.may_hold(key) for key in held)
    fresh = [os.urandom(16) for _ in range(100_000)]
    flagged = sum(keys.may_hold(key) for key in fresh)
    assert flagged < 0.005 * len(fresh), flagged


def test_keys_that_share_their_first_bytes_are_told_apart() -> None:
    """Ordered coordinates keys of one topic share their first ten bytes."""
    prefix = os.urandom(10)
    held = [prefix + offset.to_bytes(6, "big") for offset in range(0, 200_000, 2)]
    keys = KeyFilter(len(held))
    keys.add(held)
    assert all(keys.may_hold(key) for key in held)
    others = [prefix + offset.to_bytes(6, "big") for offset in range(1, 200_000, 2)]
    assert sum(keys.may_hold(key) for key in others) < 0.005 * len(others)


def test_a_filter_is_full_at_its_capacity_and_never_smaller_than_the_least() -> None:
    keys = KeyFilter(10)
    assert keys.capacity == MIN_CAPACITY
    assert keys.nbytes * 8 >= MIN_CAPACITY * BITS_PER_KEY
    keys.add([b"k"] * (MIN_CAPACITY - 1))
    assert not keys.full
    keys.add([b"k"])
    assert keys.full
