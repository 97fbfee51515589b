"""consumer.client_stats: librdkafka statistics JSON -> LogOffsets per partition."""

from __future__ import annotations

import json

from consumer.client_stats import log_offsets
from consumer.snapshot import LogOffsets


def stats(kind: str = "consumer") -> str:
    """The fields we read, shaped as librdkafka 2.x emits them (trimmed)."""
    return json.dumps({"type": kind, "topics": {"orders": {"partitions": {
        "0": {"hi_offset": 50, "lo_offset": 0, "committed_offset": 50, "rxbytes": 500},
        "1": {"hi_offset": 70, "lo_offset": 5, "committed_offset": -1001, "rxbytes": 10},
        "2": {"hi_offset": -1001, "lo_offset": -1001, "committed_offset": -1001,
              "rxbytes": 0},
        "-1": {"hi_offset": -1001, "lo_offset": -1001, "committed_offset": -1001},
    }}}})


def test_watermarks_committed_offsets_and_bytes_per_partition() -> None:
    assert log_offsets(stats()) == {
        ("orders", 0): LogOffsets(start=0, end=50, committed=50, fetched_bytes=500),
        ("orders", 1): LogOffsets(start=5, end=70, committed=None, fetched_bytes=10),
    }


def test_other_clients_and_garbage_give_nothing() -> None:
    assert log_offsets(stats("producer")) == {}
    assert log_offsets("{not json") == {}
