"""The processed-keys table benchmark starts every run from the same place: the runs' own keys
gone, whichever rows held them, the ballast kept."""

from __future__ import annotations

from pathlib import Path

from benchmarks.key_table import forget_run
from consumer.store import Claim
from consumer.store.sqlite import SQLiteStore


def test_forget_run_leaves_none_of_the_runs_keys_on_sqlite(tmp_path: Path) -> None:
    """The consumer's claims of 100 consecutive offsets are a run of keys on SQLite: forgotten
    with the rest, so the next run claims them afresh. The ballast (another topic) stays."""
    path = tmp_path / "store.db"
    store = SQLiteStore(str(path))
    store.ensure_schema()
    store.begin()
    store.claim("g", [Claim(o.to_bytes(16, "big"), "run-topic", 0, o) for o in range(100)], 1.0)
    store.claim("g", [Claim(b"\xff" * 16, "ballast", 0, 0)], 1.0)
    store.commit()

    forget_run("sqlite", str(path), "g", "run-topic")

    store.begin()
    again = store.claim("g", [Claim(o.to_bytes(16, "big"), "run-topic", 0, o)
                              for o in range(100)], 2.0)
    ballast = store.claim("g", [Claim(b"\xff" * 16, "ballast", 0, 0)], 2.0)
    store.rollback()
    assert len(again) == 100
    assert ballast == set()
