"""Processed keys past their retention are deleted in batches; recent ones stay."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from consumer.store import Claim
from consumer.store.purge import ProcessedKeyPurger
from consumer.store.sqlite import SQLiteStore
from consumer.testing import RecordingObserver
from tests.support.processed_keys import processed_keys


def test_purge_deletes_only_keys_past_retention_in_batches(tmp_path: Path) -> None:
    """2,500 old keys and 10 recent ones, batches of 1,000: the old go in three batches, the
    recent stay, and the observer hears one total. Another group's old keys are not ours."""
    path = str(tmp_path / "store.db")
    store = SQLiteStore(path)
    store.ensure_schema()
    store.begin()
    store.claim("g", [Claim(i.to_bytes(16, "big"), "t", 0, i) for i in range(2500)], now=100.0)
    store.claim("g", [Claim((10_000 + i).to_bytes(16, "big"), "t", 0, i) for i in range(10)],
                now=5_000.0)
    store.claim("other", [Claim(i.to_bytes(16, "big"), "t", 0, i) for i in range(7)], now=1.0)
    store.commit()
    observer = RecordingObserver()
    purger = ProcessedKeyPurger(lambda: SQLiteStore(path), group="g", retention_seconds=1_000,
                                every_seconds=60, batch_size=1_000, observer=observer,
                                wall=lambda: 5_500.0)
    assert purger.purge_once() == 2500
    assert observer.named("processed_keys_purged") == [(2500,)]
    left = Counter(k.group for k in processed_keys(
        lambda sql, params: store.connection.execute(sql.replace("%s", "?"), params).fetchall(),
        backend="sqlite"))
    assert left == {"g": 10, "other": 7}
    assert purger.purge_once() == 0
    assert observer.named("processed_keys_purged") == [(2500,)]
