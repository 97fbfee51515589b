"""The generations experiment's parts that decide its figures: the Bloom filter never misses a
key it holds and flags about the rate it promises, and a generations claim leaves out a key
the sealed generation holds (SQLite here; PostgreSQL's single statement in the run itself,
which raises if a fresh key is refused)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.key_generations import (
    CURRENT,
    CURRENT_COLUMN,
    SEALED,
    SEALED_COLUMN,
    Bloom,
    SQLite,
)


@pytest.mark.parametrize("hash_name", ["slice", "blake2b"])
def test_the_filter_flags_every_key_it_holds_and_few_others(hash_name: str) -> None:
    held = [os.urandom(16) for _ in range(20_000)]
    bloom = Bloom(len(held), hash_name=hash_name)
    assert bloom.add_all(held) == len(held)
    assert bloom.flagged(held) == held
    fresh = [os.urandom(16) for _ in range(50_000)]
    rate = len(bloom.flagged(fresh)) / len(fresh)
    assert rate < 3 * bloom.expected_fpr(len(held)) < 0.02, rate


def test_more_probes_than_a_key_has_bits_are_refused() -> None:
    with pytest.raises(ValueError, match="exceed a 128-bit key"):
        Bloom(10_000_000, bits_per_key=16, probes=5)


@pytest.mark.parametrize(("current", "sealed"), [(CURRENT, SEALED),
                                                (CURRENT_COLUMN, SEALED_COLUMN)])
def test_a_key_the_sealed_generation_holds_is_left_out_of_the_claim(
        tmp_path: Path, current: str, sealed: str) -> None:
    db = SQLite(tmp_path / "generations.db")
    try:
        for table in (current, sealed):
            db.create_table(table)
        old, new = os.urandom(16), os.urandom(16)
        db.begin()
        db.insert(sealed, [old], [0], 1.0)
        db.commit()
        db.begin()
        claimed = db.insert_unless_held(current, [old, new], [1, 2], 2.0, sealed, [old, new])
        db.commit()
        assert claimed == [new]
        assert list(db.keys(current)) == [new]
        assert list(db.keys(sealed)) == [old]
    finally:
        db.close()
