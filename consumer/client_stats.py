"""librdkafka's statistics (``statistics.interval.ms``, delivered to ``stats_cb`` inside
``poll`` on the polling thread), read into :class:`~consumer.snapshot.LogOffsets`.

The client keeps each fetched partition's high and low watermarks as fetch responses arrive;
the statistics hand them over without a broker round trip. Only plain JSON is read here: the
client itself stays in :mod:`consumer.source`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from consumer.snapshot import TP, LogOffsets

log = logging.getLogger("consumer.metrics")


def log_offsets(raw: str) -> dict[TP, LogOffsets]:
    """Per-partition offsets from one statistics document; {} for other clients' documents.

    Partitions the client knows but does not fetch (no watermarks yet, -1001) are left out,
    and so is librdkafka's internal partition -1.
    """
    try:
        stats: Any = json.loads(raw)
    except ValueError as error:
        log.warning("unreadable librdkafka statistics ignored: %s", error)
        return {}
    if not isinstance(stats, dict) or stats.get("type") != "consumer":
        return {}
    found: dict[TP, LogOffsets] = {}
    for topic, detail in (stats.get("topics") or {}).items():
        for number, partition in (detail.get("partitions") or {}).items():
            index = int(number)
            end, start = partition.get("hi_offset", -1), partition.get("lo_offset", -1)
            if index < 0 or end < 0 or start < 0:
                continue
            committed = partition.get("committed_offset", -1)
            found[(topic, index)] = LogOffsets(
                start=start,
                end=end,
                committed=committed if committed >= 0 else None,
                fetched_bytes=int(partition.get("rxbytes", 0)),
            )
    return found
