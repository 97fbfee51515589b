"""librdkafka's statistics (``statistics.interval.ms``, delivered to ``stats_cb`` inside
``poll`` on the poll thread), read into :class:`~consumer.kafka.protocol.PartitionOffsets` and
whether any broker is reachable.

The client keeps each fetched partition's high and low watermarks as fetch responses arrive,
and each broker connection's state; the statistics hand them over without a broker round trip.
Only plain JSON is read here: the client itself stays in :mod:`consumer.kafka.source`.
Unreadable documents are logged and read as nothing; the caller
(:mod:`~consumer.observability.wiring`) keeps any other failure out of ``poll``.

Each reader takes the raw document or one :func:`parse` already read, so a caller reading
several things out of one document parses it once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from consumer.kafka.protocol import PartitionOffsets
from consumer.message import TP

log = logging.getLogger("consumer.metrics")

#: One statistics document: the JSON text, or what :func:`parse` made of it.
Statistics = str | Mapping[str, Any] | None


def parse(raw: str) -> Mapping[str, Any] | None:
    """A consumer's statistics document; None for other clients' documents and garbage."""
    try:
        stats: Any = json.loads(raw)
    except ValueError as error:
        log.warning("unreadable librdkafka statistics ignored: %s", error)
        return None
    if not isinstance(stats, dict) or stats.get("type") != "consumer":
        return None
    return stats


def _document(stats: Statistics) -> Mapping[str, Any] | None:
    return parse(stats) if isinstance(stats, str) else stats


def partition_offsets(stats: Statistics) -> dict[TP, PartitionOffsets]:
    """Per-partition offsets from one statistics document; {} for other clients' documents.

    Partitions the client knows but does not fetch (no watermarks yet, -1001) are left out,
    and so is librdkafka's internal partition -1.
    """
    document = _document(stats)
    if document is None:
        return {}
    found: dict[TP, PartitionOffsets] = {}
    for topic, detail in (document.get("topics") or {}).items():
        for number, partition in (detail.get("partitions") or {}).items():
            index = int(number)
            end, start = partition.get("hi_offset", -1), partition.get("lo_offset", -1)
            if index < 0 or end < 0 or start < 0:
                continue
            committed = partition.get("committed_offset", -1)
            found[(topic, index)] = PartitionOffsets(
                start=start,
                end=end,
                committed=committed if committed >= 0 else None,
                fetched_bytes=int(partition.get("rxbytes", 0)),
            )
    return found


#: Broker connection states in which the Kafka protocol is up (librdkafka: "any state >= UP").
_UP_STATES = frozenset({"UP", "UPDATE", "REAUTH"})
#: Broker entries that are not connections to a broker of their own: the group coordinator's
#: alias and the client's internal queue broker.
_NOT_BROKERS = frozenset({"logical", "internal"})


def brokers_up(stats: Statistics) -> bool | None:
    """Whether the client has a connection up to at least one broker of the cluster.

    Brokers learned from the metadata (``nodeid`` >= 0) count, and so do the bootstrap
    entries (``source`` "configured", ``nodeid`` -1): when every learned broker is down,
    librdkafka drops them and goes back to the bootstrap list, so during an outage the
    bootstrap entries are all it reports. The group coordinator's logical alias and the
    internal broker do not count. True when one broker is up; False when the client reports
    brokers and none is up; None when it cannot say (no broker listed, another client's
    document, garbage).
    """
    document = _document(stats)
    if document is None:
        return None
    known = False
    for broker in (document.get("brokers") or {}).values():
        if not isinstance(broker, Mapping):
            continue
        source = broker.get("source")
        if source in _NOT_BROKERS or (source is None and int(broker.get("nodeid", -1)) < 0):
            continue  # without "source" (older clients), only learned brokers are certain
        if broker.get("state") in _UP_STATES:
            return True
        known = True
    return False if known else None
