"""The in-memory loop benchmark times what it names: every variant handles every record."""

from __future__ import annotations

from benchmarks.loop_in_memory import POLL, VARIANTS, polls


def test_every_variant_handles_every_record_of_every_poll() -> None:
    records = polls(3 * POLL)
    assert [len(poll) for poll in records] == [POLL] * 3
    assert {name: variant(records) for name, variant in VARIANTS.items()} == {
        name: 3 * POLL for name in VARIANTS}
