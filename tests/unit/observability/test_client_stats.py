"""consumer.observability.client_stats: librdkafka statistics JSON -> PartitionOffsets per
partition."""

from __future__ import annotations

import json

from consumer.kafka.protocol import PartitionOffsets
from consumer.observability.client_stats import brokers_up, parse, partition_offsets


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
    assert partition_offsets(stats()) == {
        ("orders", 0): PartitionOffsets(start=0, end=50, committed=50, fetched_bytes=500),
        ("orders", 1): PartitionOffsets(start=5, end=70, committed=None, fetched_bytes=10),
    }


def test_other_clients_and_garbage_give_nothing() -> None:
    assert partition_offsets(stats("producer")) == {}
    assert partition_offsets("{not json") == {}


def with_brokers(*brokers: tuple[str, int, str, str]) -> str:
    """A consumer's statistics with these (name, nodeid, source, state) broker entries, as
    librdkafka 2.16 reports them."""
    return json.dumps({"type": "consumer", "topics": {}, "brokers": {
        name: {"name": name, "nodeid": nodeid, "source": source, "state": state}
        for name, nodeid, source, state in brokers}})


COORDINATOR_UP = ("GroupCoordinator", -1, "logical", "UP")
INTERNAL = (":0/internal", -1, "internal", "UP")


def test_a_broker_is_up_when_one_learned_broker_is_up() -> None:
    assert brokers_up(with_brokers(("k1:9092/1", 1, "learned", "DOWN"),
                                   ("k2:9092/2", 2, "learned", "UP"), COORDINATOR_UP)) is True
    assert brokers_up(with_brokers(("k1:9092/1", 1, "learned", "UPDATE"))) is True


def test_no_broker_is_up_when_every_learned_broker_is_down() -> None:
    # The group coordinator's alias and the internal broker are not brokers of their own.
    assert brokers_up(with_brokers(("k1:9092/1", 1, "learned", "TRY_CONNECT"),
                                   ("k2:9092/2", 2, "learned", "CONNECT"),
                                   COORDINATOR_UP, INTERNAL)) is False


def test_during_an_outage_the_client_reports_only_its_bootstrap_brokers() -> None:
    # What librdkafka 2.16 reports with its one broker stopped: the learned broker is gone,
    # the bootstrap entry is back (in INIT between failed attempts).
    assert brokers_up(with_brokers(("k1:9092/bootstrap", -1, "configured", "INIT"),
                                   ("GroupCoordinator", -1, "logical", "INIT"))) is False
    assert brokers_up(with_brokers(("k1:9092/bootstrap", -1, "configured", "UP"))) is True


def test_without_a_source_field_only_learned_brokers_count() -> None:
    document = {"type": "consumer", "brokers": {
        "k1:9092/bootstrap": {"nodeid": -1, "state": "UP"},
        "k1:9092/1": {"nodeid": 1, "state": "DOWN"}}}
    assert brokers_up(json.dumps(document)) is False


def test_unknown_without_brokers_and_for_other_documents() -> None:
    assert brokers_up(with_brokers()) is None
    assert brokers_up(with_brokers(COORDINATOR_UP, INTERNAL)) is None
    assert brokers_up(json.dumps({"type": "producer", "brokers": {
        "k1:9092/1": {"nodeid": 1, "source": "learned", "state": "UP"}}})) is None
    assert brokers_up("{not json") is None


def test_one_parsed_document_serves_both_readers() -> None:
    document = parse(stats())
    assert document is not None
    assert partition_offsets(document) == partition_offsets(stats())
    assert brokers_up(document) is None  # no "brokers" in this trimmed document
    assert parse(stats("producer")) is None
