"""A dead letter's ``dlq.*`` headers: what the producer of letters writes, redrive reads back
the same; a redriven copy is the original without provenance; one message's letters pair up."""

from __future__ import annotations

from consumer.dedup import HONOURED_KEY_HEADER
from consumer.failures.dead_letters import (
    PROVENANCE,
    DeadLetter,
    Filters,
    letter_id,
    provenance,
    with_first_letters,
)
from consumer.message import Message

KEY = bytes(range(16))


def _original(offset: int = 7) -> Message:
    return Message("orders", 2, offset, b"v", key=b"k",
                   headers=[("trace", b"t"), (HONOURED_KEY_HEADER, b"stale")], timestamp=5.0)


def _letter(original: Message, *, key: bytes | None = KEY, at: int = 0,
            failed_at: float = 1_700_000_000.25) -> DeadLetter:
    """The letter the consumer writes for ``original``, as read from offset ``at`` of
    orders.dlq."""
    added = provenance(original, ValueError("boom"), group="g", topic_id="id-1",
                       reason="handler_error", attempts=3, failed_at=failed_at, key=key)
    return DeadLetter.parse(Message("orders.dlq", 0, at, original.value, key=original.key,
                                    headers=[*original.headers, *added]))


def test_a_letter_reads_back_what_its_producer_wrote() -> None:
    original = _original()
    letter = _letter(original)
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == \
        ("orders", 2, 7)
    assert (letter.reason, letter.exception_type, letter.failed_at) == \
        ("handler_error", "ValueError", 1_700_000_000.25)
    assert letter.id == letter_id("g", original, "id-1") and len(letter.id) == 32
    assert letter.dedup_key == KEY
    assert letter.where == "orders.dlq[0]@0"
    assert _letter(original, key=None).dedup_key is None


def test_every_provenance_header_is_dropped_from_the_redriven_copy() -> None:
    """Each header the producer adds starts with ``dlq.``, so none reaches the copy; the stale
    honoured key goes too when the letter carries the original's key, which comes back."""
    added = provenance(_original(), ValueError("boom"), group="g", topic_id="", reason="r",
                       attempts=1, failed_at=0.0, key=KEY)
    assert all(name.startswith(PROVENANCE) for name, _ in added)

    letter = _letter(_original())
    copy = letter.original()
    assert (copy.topic, copy.value, copy.key, copy.headers) == \
        ("orders", b"v", b"k", [("trace", b"t")])
    assert letter.redrive_headers() == [("dlq.redriven.from", b"orders.dlq/0/0"),
                                        (HONOURED_KEY_HEADER, KEY.hex().encode())]


def test_a_letter_without_the_original_key_keeps_the_message_s_own_headers() -> None:
    letter = _letter(_original(), key=None)
    assert letter.original().headers == [("trace", b"t"), (HONOURED_KEY_HEADER, b"stale")]
    assert letter.redrive_headers() == [("dlq.redriven.from", b"orders.dlq/0/0")]


def test_filters_keep_failures_from_since_up_to_before_until() -> None:
    letter = _letter(_original(), failed_at=100.0)
    assert Filters().keep(letter)
    assert Filters(since=100.0, until=100.5).keep(letter)
    assert not Filters(until=100.0).keep(letter)
    assert not Filters(since=100.5).keep(letter)
    assert Filters(exception_type="ValueError", partition=2).keep(letter)
    assert not Filters(exception_type="KeyError").keep(letter)
    assert not Filters(partition=0).keep(letter)


def test_each_letter_is_paired_with_the_first_letter_of_its_message() -> None:
    first, other = _letter(_original(7), at=0), _letter(_original(8), at=1)
    again = _letter(_original(7), at=2)
    old = DeadLetter.parse(Message("orders.dlq", 0, 3, b"v"))  # an older letter: no id
    pairs = list(with_first_letters([first, other, again, old, old]))
    assert pairs == [(first, None), (other, None), (again, first), (old, None), (old, None)]


def test_a_redriven_copy_carries_the_letters_trace_context() -> None:
    """The letter's ``traceparent`` (the failed handler call's span, with tracing on) is an
    ordinary header, so the redriven copy's consumer span continues that trace."""
    traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    original = Message("orders", 2, 7, b"v", headers=[("traceparent", traceparent),
                                                      ("tracestate", b"vendor=1")])
    assert _letter(original).original().headers == [("traceparent", traceparent),
                                                    ("tracestate", b"vendor=1")]
