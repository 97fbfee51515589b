"""The processed keys a store holds, whichever rows hold them: the SQLite store (and a PostgreSQL
or MariaDB store created at version 4) keeps a batch's consecutive coordinates keys as one row
of ``consumer_processed_runs`` (consumer.store.sqlite_runs, postgres_runs, mariadb_runs);
these helpers count and list each key of a run as one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Query = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]


@dataclass(frozen=True, order=True)
class ProcessedKey:
    group: str
    topic: str
    partition: int
    offset: int
    key: bytes
    processed_at: float


def processed_keys(query: Query, *, backend: str,
                   group: str | None = None) -> list[ProcessedKey]:
    """Every processed key (of ``group``, or of every group), in coordinate order."""
    where, params = ("WHERE group_id = %s", (group,)) if group is not None else ("", ())
    found = [ProcessedKey(g, t, int(p), int(o), bytes(k), float(at)) for g, t, p, o, k, at in query(
        'SELECT group_id, topic, "partition", "offset", "key", processed_at '
        f"FROM consumer_processed_keys {where}", params)]
    if backend == "sqlite" and _has_runs_table(query, backend):
        for g, t, p, first, last, key, at in query(
                "SELECT group_id, topic, partition, first_offset, last_offset, first_key, "
                f"processed_at FROM consumer_processed_runs {where}", params):
            start = int.from_bytes(bytes(key), "big")
            found += [ProcessedKey(g, t, int(p), int(first) + step,
                                   (start + step).to_bytes(len(key), "big"), float(at))
                      for step in range(int(last) - int(first) + 1)]
    elif backend == "postgresql" and _has_runs_table(query, backend):
        for g, t, p, first, last, head, low, at in query(
                "SELECT group_id, topic, partition, first_offset, last_offset, key_head, "
                f"lower(key_offsets), processed_at FROM consumer_processed_runs {where}",
                params):
            found += [ProcessedKey(g, t, int(p), int(first) + step,
                                   bytes(head) + (int(low) + step).to_bytes(6, "big"),
                                   float(at))
                      for step in range(int(last) - int(first) + 1)]
    elif backend == "mariadb" and _has_runs_table(query, backend):
        for g, t, p, first, last, head, low, at in query(
                'SELECT group_id, topic, "partition", first_offset, last_offset, key_head, '
                f"key_first, processed_at FROM consumer_processed_runs {where}", params):
            found += [ProcessedKey(g, t, int(p), int(first) + step,
                                   bytes(head) + (int(low) + step).to_bytes(6, "big"),
                                   float(at))
                      for step in range(int(last) - int(first) + 1)]
    return sorted(found)


def processed_key_count(query: Query, *, backend: str, group: str | None = None) -> int:
    return len(processed_keys(query, backend=backend, group=group))


def _has_runs_table(query: Query, backend: str) -> bool:
    if backend == "sqlite":
        return bool(query(
            "SELECT 1 FROM sqlite_master WHERE name = 'consumer_processed_runs'", ()))
    if backend == "mariadb":
        return bool(query(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() "
            "AND table_name = 'consumer_processed_runs'", ()))
    return query("SELECT to_regclass('consumer_processed_runs')", ())[0][0] is not None
