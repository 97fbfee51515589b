"""consumer.dedup: which deliveries count as "the same event", as 16-byte digests."""

from __future__ import annotations

import hashlib

import pytest

from consumer.dedup import HONOURED_KEY_HEADER, KeyFormat, KeyStretch, key_function
from consumer.errors import ConfigError, DedupKeyFailed
from consumer.message import Context, Message, Scope

THIS_MODULE = __name__
IDS = {"orders": "id-orders-1"}


def message(offset: int = 5, *, partition: int = 0, topic: str = "orders",
            headers: list[tuple[str, bytes | None]] | None = None,
            value: bytes = b"v", key: bytes | None = b"customer-7") -> Message:
    return Message(topic, partition, offset, value, key=key, headers=headers, timestamp=0.0)


# Key functions loaded by the ``function:`` spec tests below.
def key_as_bytes(message: Message) -> bytes:
    return (message.value or b"").upper()


def key_as_str(message: Message) -> str:
    return (message.value or b"").decode().upper()


def key_as_int(message: Message) -> int:
    return 42


def key_without_argument() -> bytes:
    return b"x"


NOT_CALLABLE = "a string"


# --- header keys ---------------------------------------------------------------------------


def test_header_key_is_the_same_for_one_event_at_different_coordinates() -> None:
    """A redelivery (another offset, even another partition) carrying the same header value is
    the same event; a different header value is a different event."""
    keys = key_function("header:idempotency-key", IDS)
    first = message(3, headers=[("idempotency-key", b"evt-1")])
    again = message(90, partition=2, headers=[("idempotency-key", b"evt-1")])
    other = message(3, headers=[("idempotency-key", b"evt-2")])
    assert keys(first) == keys(again)
    assert keys(first) != keys(other)


def test_header_key_reads_the_named_header_only() -> None:
    keys = key_function("header:event-id", IDS)
    with_name = message(headers=[("idempotency-key", b"a"), ("event-id", b"evt-1")])
    other_header_differs = message(headers=[("idempotency-key", b"b"), ("event-id", b"evt-1")])
    assert keys(with_name) == keys(other_header_differs)


def test_header_key_is_not_the_kafka_message_key() -> None:
    """Many events share one Kafka message key; two of them must not collide."""
    keys = key_function("header:idempotency-key", IDS)
    a = message(1, key=b"customer-7", headers=[("idempotency-key", b"evt-1")])
    b = message(2, key=b"customer-7", headers=[("idempotency-key", b"evt-2")])
    assert keys(a) != keys(b)


def test_missing_header_falls_back_to_the_coordinates_key() -> None:
    by_header = key_function("header:idempotency-key", IDS)
    by_coordinates = key_function("coordinates", IDS)
    bare = message(7, headers=[("traceparent", b"00-abc")])
    assert by_header(bare) == by_coordinates(bare)
    assert by_header(bare) != by_header(message(8, headers=[]))


def test_an_empty_or_null_header_is_no_key_and_falls_back_to_the_coordinates() -> None:
    """``idempotency-key: ""`` must not make every such event one event."""
    by_header = key_function("header:idempotency-key", IDS)
    by_coordinates = key_function("coordinates", IDS)
    empty = [message(offset, headers=[("idempotency-key", b"")]) for offset in (7, 8)]
    null = message(9, headers=[("idempotency-key", None)])
    assert [by_header(m) for m in empty] == [by_coordinates(m) for m in empty]
    assert by_header(empty[0]) != by_header(empty[1])
    assert by_header(null) == by_coordinates(null)


def test_a_header_value_never_collides_with_a_coordinates_key() -> None:
    """A header whose text equals the coordinates' material is still another key."""
    by_header = key_function("header:idempotency-key", IDS)
    bare = message(5)
    forged = message(6, headers=[("idempotency-key", b"id-orders-1/0/5")])
    assert by_header(forged) != by_header(bare)


# --- coordinates ---------------------------------------------------------------------------


def test_coordinates_key_differs_per_partition_and_offset() -> None:
    keys = key_function("coordinates", IDS)
    assert len({keys(message(5)), keys(message(6)), keys(message(5, partition=1))}) == 3


def test_coordinates_key_ignores_the_header() -> None:
    keys = key_function("coordinates", IDS)
    assert keys(message(5, headers=[("idempotency-key", b"a")])) == keys(message(5))


def test_recreated_topic_with_a_new_id_gives_new_coordinates_keys() -> None:
    """The same name, partition and offset in a deleted-and-recreated topic is another event."""
    before = key_function("coordinates", {"orders": "id-orders-1"})
    after = key_function("coordinates", {"orders": "id-orders-2"})
    assert before(message(5)) != after(message(5))


def test_coordinates_key_reads_topic_ids_learnt_after_it_was_built() -> None:
    """The loop fills the topic-id dict after building the key functions (at prepare)."""
    topic_ids: dict[str, str] = {}
    keys = key_function("coordinates", topic_ids)
    by_name_only = keys(message(5))
    topic_ids["orders"] = "id-orders-1"
    assert keys(message(5)) != by_name_only
    assert keys(message(5)) == key_function("coordinates", IDS)(message(5))


def test_one_key_function_follows_a_topic_id_that_changes_when_the_topic_is_recreated() -> None:
    """The running process learns the recreated topic's id at assignment: the same key
    function then gives offset 5 of the new log another key than offset 5 of the old one."""
    topic_ids = {"orders": "id-orders-1"}
    keys = key_function("coordinates", topic_ids)
    old = keys(message(5))
    topic_ids["orders"] = "id-orders-2"
    assert keys(message(5)) != old
    assert keys(message(5)) == key_function("coordinates", {"orders": "id-orders-2"})(message(5))


# --- ordered coordinates keys (stores created at schema version 3) -------------------------

ORDERED = KeyFormat(ordered_coordinates=True)


def test_ordered_coordinates_keys_sort_by_partition_then_offset() -> None:
    """A partition's keys sort by offset, so a store's key index grows at one place per
    partition: the whole point of the form."""
    keys = key_function("coordinates", IDS, key_format=ORDERED)
    in_order = [keys(message(offset, partition=partition))
                for partition in (0, 1, 7) for offset in (0, 1, 255, 256, 70_000, 2**40)]
    assert in_order == sorted(in_order)
    assert len(set(in_order)) == len(in_order)
    assert all(len(key) == 16 for key in in_order)


def test_ordered_coordinates_keys_are_pinned() -> None:
    """Stored keys must not change between releases: 8 bytes of blake2b over the topic id,
    then partition (2 bytes) and offset (6 bytes) big-endian; the same in either scope."""
    topic = hashlib.blake2b(b"o\0id-orders-1", digest_size=8).digest()
    expected = topic + bytes.fromhex("0003") + (5).to_bytes(6, "big")
    assert key_function("coordinates", IDS, key_format=ORDERED)(message(5, partition=3)) \
        == expected
    assert key_function("coordinates", IDS, "group", ORDERED)(message(5, partition=3)) \
        == expected


def test_ordered_coordinates_keys_differ_per_topic_and_per_topic_id() -> None:
    keys = key_function("coordinates", {"orders": "id-1", "payments": "id-2"},
                        key_format=ORDERED)
    recreated = key_function("coordinates", {"orders": "id-3"}, key_format=ORDERED)
    assert len({keys(message(5)), keys(message(5, topic="payments")),
                recreated(message(5))}) == 3


def test_coordinates_past_the_ordered_bounds_fall_back_to_the_digest() -> None:
    ordered = key_function("coordinates", IDS, key_format=ORDERED)
    digest = key_function("coordinates", IDS)
    for far in (message(2**48), message(5, partition=2**16)):
        assert ordered(far) == digest(far)
    assert ordered(message(2**48 - 1)) != digest(message(2**48 - 1))


def test_a_header_key_ignores_the_format_and_a_missing_header_follows_it() -> None:
    ordered = key_function("header:idempotency-key", IDS, key_format=ORDERED)
    digest = key_function("header:idempotency-key", IDS)
    with_header = message(5, headers=[("idempotency-key", b"evt-1")])
    assert ordered(with_header) == digest(with_header)
    assert ordered(message(5)) == key_function("coordinates", IDS, key_format=ORDERED)(
        message(5))


def test_the_format_is_read_on_every_call() -> None:
    """Key functions are built before the store says which form it keeps (at prepare)."""
    key_format = KeyFormat()
    keys = key_function("coordinates", IDS, key_format=key_format)
    as_digest = keys(message(5))
    key_format.ordered_coordinates = True
    assert keys(message(5)) != as_digest
    assert keys(message(5)) == key_function("coordinates", IDS, key_format=ORDERED)(message(5))


# --- function keys -------------------------------------------------------------------------


def test_function_key_returning_bytes_or_str_gives_the_same_digest() -> None:
    as_bytes = key_function(f"function:{THIS_MODULE}:key_as_bytes", IDS)
    as_str = key_function(f"function:{THIS_MODULE}:key_as_str", IDS)
    assert as_bytes(message(1, value=b"evt-1")) == as_str(message(99, value=b"evt-1"))
    assert as_bytes(message(1, value=b"evt-1")) != as_bytes(message(1, value=b"evt-2"))


def test_function_key_returning_another_type_is_a_dedup_key_failure() -> None:
    keys = key_function(f"function:{THIS_MODULE}:key_as_int", IDS)
    with pytest.raises(DedupKeyFailed, match="key_as_int raised TypeError: it returned int"):
        keys(message())


def key_raising(message: Message) -> bytes:
    raise ValueError("not an event id")


def test_function_key_that_raises_is_a_dedup_key_failure_naming_the_message() -> None:
    keys = key_function(f"function:{THIS_MODULE}:key_raising", IDS)
    with pytest.raises(DedupKeyFailed) as raised:
        keys(message())
    failure = raised.value
    assert isinstance(failure.cause, ValueError)
    assert (failure.function, failure.topic, failure.partition, failure.offset) == (
        f"{THIS_MODULE}:key_raising", message().topic, message().partition, message().offset)
    assert "raised ValueError: not an event id on " in str(failure)


# --- digests -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["header:idempotency-key", "coordinates",
                                  f"function:{THIS_MODULE}:key_as_bytes"])
def test_digests_are_16_bytes(spec: str) -> None:
    keys = key_function(spec, IDS)
    for m in (message(1), message(2, headers=[("idempotency-key", b"x" * 10_000)])):
        digest = keys(m)
        assert isinstance(digest, bytes)
        assert len(digest) == 16


def test_digests_are_stable_across_builds_and_processes() -> None:
    """Keys are stored; they must not depend on the process (no hash() salt), so they are pinned
    here: blake2b-128 of a kind tag, a NUL and the material (group scope), wrapped for the
    topic scope in sha256(b"t" NUL topic NUL digest)[:16], which the v1->v2 migration
    reproduces in SQL."""
    def pinned(kind: bytes, material: bytes) -> bytes:
        return hashlib.blake2b(kind + b"\0" + material, digest_size=16).digest()

    def in_topic(digest: bytes, topic: str = "orders") -> bytes:
        return hashlib.sha256(b"t\0" + topic.encode() + b"\0" + digest).digest()[:16]

    with_header = message(5, headers=[("idempotency-key", b"evt-1")])
    assert key_function("header:idempotency-key", IDS, "group")(with_header) == pinned(
        b"h", b"evt-1")
    assert key_function("header:idempotency-key", IDS)(with_header) == in_topic(
        pinned(b"h", b"evt-1"))
    assert key_function("coordinates", IDS, "group")(message(5)) == pinned(
        b"c", b"id-orders-1/0/5")
    assert key_function("coordinates", IDS)(message(5)) == in_topic(
        pinned(b"c", b"id-orders-1/0/5"))
    by_function = key_function(f"function:{THIS_MODULE}:key_as_bytes", IDS)
    assert by_function(message(value=b"evt-1")) == in_topic(pinned(b"f", b"EVT-1"))


def test_the_same_header_value_on_two_topics_is_two_keys_unless_scoped_to_the_group() -> None:
    orders = message(headers=[("idempotency-key", b"same-1")])
    payments = message(topic="payments", headers=[("idempotency-key", b"same-1")])
    by_topic = key_function("header:idempotency-key", IDS)
    assert by_topic(orders) != by_topic(payments)
    by_group = key_function("header:idempotency-key", IDS, "group")
    assert by_group(orders) == by_group(payments)


# --- bad specs -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    "",
    "header",
    "header:",
    "function:",
    "key",
    "message-key",
    "Coordinates",
    "checksum:sha256",
])
def test_unknown_or_incomplete_spec_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="dedup_key"):
        key_function(spec, IDS)


@pytest.mark.parametrize("spec", [
    "function:no_such_module_for_dedup:key",
    f"function:{THIS_MODULE}:no_such_function",
    f"function:{THIS_MODULE}:NOT_CALLABLE",
    f"function:{THIS_MODULE}:key_without_argument",
])
def test_function_spec_that_cannot_be_loaded_is_a_config_error(spec: str) -> None:
    """Checked when the route is built, before anything connects."""
    with pytest.raises(ConfigError):
        key_function(spec, IDS)


# --- the honoured header of a redriven event -------------------------------------------------


ORIGINAL_KEY = bytes(range(16))


@pytest.mark.parametrize("spec", ["header:idempotency-key", "coordinates",
                                  f"function:{THIS_MODULE}:key_as_bytes"])
def test_a_valid_honoured_header_is_the_final_key_on_every_kind(spec: str) -> None:
    """A redriven copy (new offset, maybe its own key header) claims its original's key."""
    keys = key_function(spec, IDS)
    redriven = message(900, headers=[("idempotency-key", b"evt-1"),
                                     (HONOURED_KEY_HEADER, ORIGINAL_KEY.hex().encode())])
    assert keys(redriven) == ORIGINAL_KEY
    upper = message(901, headers=[(HONOURED_KEY_HEADER, ORIGINAL_KEY.hex().upper().encode())])
    assert keys(upper) == ORIGINAL_KEY


@pytest.mark.parametrize("value", [b"", b"abc", ORIGINAL_KEY.hex().encode() + b"00",
                                   b"zz" * 16, b"00 " * 10 + b"00", "é".encode() * 16, None])
def test_an_invalid_honoured_header_is_ignored_with_one_warning(
    value: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    keys = key_function("coordinates", IDS)
    bad = [message(offset, headers=[(HONOURED_KEY_HEADER, value)]) for offset in (3, 4)]
    with caplog.at_level("WARNING", logger="consumer.dedup"):
        assert [keys(m) for m in bad] == [keys(message(offset)) for offset in (3, 4)]
    warnings = [r for r in caplog.records if HONOURED_KEY_HEADER in r.getMessage()]
    assert len(warnings) == 1
    assert "orders[0]@3" in warnings[0].getMessage()


def test_the_context_idempotency_key_of_a_redriven_event_is_the_original_s() -> None:
    keys = key_function("coordinates", IDS)
    original = message(5)
    redriven = message(77, headers=[(HONOURED_KEY_HEADER, keys(original).hex().encode())])
    scope = Scope("g", key_function=keys)
    assert Context(scope, redriven).idempotency_key == Context(scope, original).idempotency_key


# --- a batch's keys --------------------------------------------------------------------------


def mixed_batch() -> list[Message]:
    """Every case a batch's keying tells apart: no headers, the route's header, an honoured
    header, an empty header, coordinates past the ordered bounds, a second topic and partition."""
    return [
        message(5), message(6), message(7, partition=3),
        message(8, headers=[("idempotency-key", b"evt-8")]),
        message(9, headers=[(HONOURED_KEY_HEADER, ORIGINAL_KEY.hex().encode())]),
        message(10, headers=[("idempotency-key", b"")]),
        message(2**48), message(11, partition=2**16),
        message(12, topic="payments"), message(13, topic="payments", partition=1),
        message(14),
    ]


@pytest.mark.parametrize("key_format", [KeyFormat(), ORDERED], ids=["digest", "ordered"])
@pytest.mark.parametrize("spec", ["header:idempotency-key", "coordinates",
                                  f"function:{THIS_MODULE}:key_as_bytes"])
def test_a_batch_has_the_keys_its_messages_have_one_by_one(spec: str,
                                                           key_format: KeyFormat) -> None:
    keys = key_function(spec, {**IDS, "payments": "id-payments-1"}, key_format=key_format)
    batch = mixed_batch()
    assert keys.keys(batch) == [keys(m) for m in batch]
    assert keys.keys([]) == []


def test_a_batch_reads_topic_ids_learnt_after_the_key_function_was_built() -> None:
    ids: dict[str, str] = {}
    keys = key_function("coordinates", ids, key_format=ORDERED)
    before = keys.keys([message(5)])
    ids["orders"] = "id-orders-2"
    assert keys.keys([message(5)]) != before
    assert keys.keys([message(5)]) == [key_function("coordinates", ids, key_format=ORDERED)(
        message(5))]


def test_a_batch_whose_function_key_fails_raises_the_failure() -> None:
    keys = key_function(f"function:{THIS_MODULE}:key_raising", IDS)
    with pytest.raises(DedupKeyFailed):
        keys.keys([message(1), message(2)])


# --- a batch's stretches -----------------------------------------------------------------------


def stretch_keys(stretches: list[KeyStretch]) -> list[bytes]:
    return [stretch.key(offset) for stretch in stretches
            for offset in range(stretch.first, stretch.end)]


@pytest.mark.parametrize("spec", ["header:idempotency-key", "coordinates"])
def test_a_batch_of_plain_messages_is_stretches_of_the_keys_they_have_one_by_one(
    spec: str,
) -> None:
    keys = key_function(spec, {**IDS, "payments": "id-payments-1"}, key_format=ORDERED)
    batch = [message(5), message(6), message(7), message(3, partition=1), message(4, partition=1),
             message(8), message(12, topic="payments"), message(13, topic="payments"),
             message(6), message(2**48 - 1)]
    stretches = keys.stretches(batch)
    assert stretches is not None
    assert [(s.topic, s.partition, s.first, s.end) for s in stretches] == [
        ("orders", 0, 5, 8), ("orders", 1, 3, 5), ("orders", 0, 8, 9), ("payments", 0, 12, 14),
        ("orders", 0, 6, 7), ("orders", 0, 2**48 - 1, 2**48)]
    assert stretch_keys(stretches) == [keys(m) for m in batch]
    assert keys.stretches([]) == []


@pytest.mark.parametrize("odd", [
    message(6, headers=[("idempotency-key", b"evt-6")]),
    message(6, headers=[(HONOURED_KEY_HEADER, ORIGINAL_KEY.hex().encode())]),
    message(6, headers=[("other", b"x")]),
    message(2**48), message(6, partition=2**16), message(6, partition=-1),
], ids=["route header", "honoured header", "any header", "offset past bounds",
        "partition past bounds", "negative partition"])
def test_a_batch_with_a_message_keyed_otherwise_has_no_stretches(odd: Message) -> None:
    """A header may name a key, and coordinates past the ordered bounds are digests: such a
    batch is keyed message by message."""
    keys = key_function("header:idempotency-key", IDS, key_format=ORDERED)
    assert keys.stretches([message(5), odd, message(7)]) is None


def test_a_stretch_running_past_the_ordered_bounds_is_no_stretch() -> None:
    keys = key_function("coordinates", IDS, key_format=ORDERED)
    assert keys.stretches([message(2**48 - 1), message(2**48)]) is None
    assert keys.stretches([message(2**48 - 1), message(2**48), message(3, partition=1)]) is None


def test_digest_keys_and_function_keys_have_no_stretches() -> None:
    assert key_function("coordinates", IDS).stretches([message(5)]) is None
    assert key_function(f"function:{THIS_MODULE}:key_as_bytes", IDS,
                        key_format=ORDERED).stretches([message(5)]) is None


def test_stretches_read_topic_ids_learnt_after_the_key_function_was_built() -> None:
    ids: dict[str, str] = {}
    keys = key_function("coordinates", ids, key_format=ORDERED)
    ids["orders"] = "id-orders-2"
    found = keys.stretches([message(5)])
    assert found is not None and stretch_keys(found) == [keys(message(5))]
