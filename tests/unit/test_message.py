"""consumer.message: a record's message reads the client's record, made in bulk per poll;
a context made by the modes is the one the class makes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from confluent_kafka import Message as ClientRecord

from consumer.message import Context, Message, RecordMessage, Scope, any_with_headers


@dataclass
class Record:
    """The parts of a confluent-kafka record a message reads."""

    topic_: str
    partition_: int
    offset_: int
    value_: bytes | None = b"v"
    error_: object = None
    key_: bytes | None = None
    headers_: list[tuple[str, bytes | None]] = field(default_factory=list)

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def value(self) -> bytes | None:
        return self.value_

    def key(self) -> bytes | None:
        return self.key_

    def headers(self) -> list[tuple[str, bytes | None]]:
        return self.headers_

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_500)

    def error(self) -> object:
        return self.error_


def test_messages_of_records_skip_the_errors_and_keep_the_order() -> None:
    records = [Record("t", 0, 5, b"a", key_=b"k", headers_=[("h", b"1")]),
               Record("t", -1, -1001, None, error_="broker down"),
               Record("t", 1, 7, b"b")]
    messages = RecordMessage.of_records(records, "t")
    assert [(m.topic, m.partition, m.offset, m.value) for m in messages] == [
        ("t", 0, 5, b"a"), ("t", 1, 7, b"b")]
    first = messages[0]
    assert (first.key, first.headers, first.timestamp) == (b"k", [("h", b"1")], 1.5)
    assert all(isinstance(m, RecordMessage) for m in messages)


def test_without_one_topic_each_message_reads_its_records() -> None:
    records = [Record("a", 0, 1), Record("b", 0, 2)]
    assert [m.topic for m in RecordMessage.of_records(records, None)] == ["a", "b"]


def test_a_message_made_in_bulk_is_the_one_the_class_makes() -> None:
    record = Record("t", 3, 9, b"x")
    bulk, = RecordMessage.of_records([record], "t")
    single = RecordMessage(record, "t", 3, 9)
    assert (bulk.topic, bulk.partition, bulk.offset, bulk.value, repr(bulk)) == (
        single.topic, single.partition, single.offset, single.value, repr(single))


def test_any_with_headers_asks_the_client_records_the_other_records_and_plain_messages() -> None:
    bare = [ClientRecord(topic="t", partition=0, offset=i, value=b"v") for i in range(3)]
    headed = ClientRecord(topic="t", partition=0, offset=3, value=b"v", headers=[("h", b"1")])
    plain = Message("t", 0, 9, b"v")
    plain_headed = Message("t", 0, 10, b"v", headers=[("h", b"1")])
    assert not any_with_headers([])
    assert not any_with_headers(RecordMessage.of_records(bare, "t"))
    assert any_with_headers(RecordMessage.of_records([*bare, headed], "t"))
    assert not any_with_headers([*RecordMessage.of_records(bare, "t"), plain])
    assert any_with_headers([plain, *RecordMessage.of_records([headed], "t")])
    assert any_with_headers([*RecordMessage.of_records(bare, "t"), plain_headed])
    # records other than the client's (this module's own) are read through the messages
    assert not any_with_headers(RecordMessage.of_records([Record("t", 0, 1)], "t"))
    assert any_with_headers(RecordMessage.of_records(
        [Record("t", 0, 1), Record("t", 0, 2, headers_=[("h", b"1")])], "t"))


def test_a_context_made_by_of_is_the_one_the_class_makes() -> None:
    def key_function(message: Message) -> bytes:
        return message.value or b""

    scope = Scope("g", key_function=key_function)
    message = Message("t", 2, 7, b"\x01\x02")
    for made in (Context(scope, message), Context.of(scope, message)):
        assert (made.group, made.message, made.idempotency_key) == ("g", message, "0102")
        assert made.logger.extra == {"group": "g", "topic": "t", "partition": 2, "offset": 7}
        assert made.logger is made.logger, "bound once, on first use"
        with pytest.raises(AttributeError, match="needs a store"):
            made.execute("SELECT 1")
    given = Context.of(scope, message, b"\xff")
    assert given.idempotency_key == "ff", "a key given is not made again"
    assert isinstance(given, Context)
