"""A commit's metadata: the marker, and the offsets above the committed one that finished."""

from __future__ import annotations

import random

import pytest

from consumer.kafka.commit_metadata import GAP_LIMIT, finished_in, is_ours, with_gap
from consumer.kafka.protocol import COMMIT_MARKER


def test_finished_offsets_travel_in_the_metadata() -> None:
    finished = {101, 102, 105, 300, 5_000}
    metadata = with_gap(100, finished)
    assert metadata.startswith(COMMIT_MARKER + ";gap=100:")
    assert finished_in(metadata, 100) == finished
    # a commit further on reads only what lies at or above it
    assert finished_in(metadata, 200) == {300, 5_000}


def test_a_large_random_gap_fits_and_reads_back_whole() -> None:
    finished = set(random.Random(3).sample(range(10_001, 20_000), 5_000))
    metadata = with_gap(10_000, finished)
    assert len(metadata) <= GAP_LIMIT
    assert finished_in(metadata, 10_000) == finished


def test_no_gap_or_one_too_large_leaves_the_marker_alone() -> None:
    assert with_gap(7, ()) == COMMIT_MARKER
    # offsets spread so thinly that the bitmap does not compress under the cap
    sparse = set(random.Random(5).sample(range(1, 2_000_000), 20_000))
    assert with_gap(0, sparse) == COMMIT_MARKER
    assert finished_in(COMMIT_MARKER, 0) == set()


def test_offsets_below_the_base_are_left_out() -> None:
    assert finished_in(with_gap(10, {4, 12}), 10) == {12}
    assert with_gap(10, {4}) == COMMIT_MARKER


@pytest.mark.parametrize("metadata", [
    None, "", "kafka-consumer-groups", COMMIT_MARKER + ";gap=", COMMIT_MARKER + ";gap=x:AAAA",
    COMMIT_MARKER + ";gap=5:not base64!", COMMIT_MARKER + ";gap=5:AAAA",
])
def test_what_cannot_be_read_says_nothing_finished(metadata: str | None) -> None:
    assert finished_in(metadata, 0) == set()


def test_ours_with_or_without_a_gap() -> None:
    assert is_ours(COMMIT_MARKER)
    assert is_ours(with_gap(0, {1}))
    assert not is_ours(None)
    assert not is_ours("")
    assert not is_ours("checkpoint-consumer/1x")
