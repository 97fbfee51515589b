"""consumer dlq redrive: a redriven copy is its original event (same dedup key), and letters
of one message are republished once."""

from __future__ import annotations

import random

from consumer.clock import ManualClock
from consumer.commands.redrive import redrive
from consumer.dedup import HONOURED_KEY_HEADER, key_function
from consumer.events import Observer
from consumer.failures.dead_letters import DeadLetter
from consumer.failures.retries import FailurePolicy, Failures
from consumer.message import Message
from consumer.testing import InMemoryDeadLetterSink

KEYS = key_function("coordinates", {"orders": "id-orders-1"})


def _letters(*originals: Message) -> list[Message]:
    """Dead letters of ``originals`` as the consumer writes them, at offsets 0, 1, … of the
    dead-letter topic."""
    policy = FailurePolicy(attempts=1, initial_backoff=1.0, max_backoff=1.0, multiplier=1.0,
                           jitter=0.0, never_retry=(), stop_on=(),
                           dead_letter_topic="orders.dlq", format="bytes")
    clock, sink = ManualClock(), InMemoryDeadLetterSink()
    failures = Failures({"orders": policy}, sink=sink, group="g", observer=Observer(),
                        monotonic=clock.monotonic, wall=clock.wall, rng=random.Random(1))
    for original in originals:
        failures.failed(original, ValueError("boom"), key=KEYS(original))
    return [Message(topic, 0, offset, m.value, key=m.key,
                    headers=[*m.headers, *provenance.items()])
            for offset, (topic, m, provenance) in enumerate(sink.sent)]


def _original(offset: int, headers: list[tuple[str, bytes | None]] | None = None) -> Message:
    return Message("orders", 0, offset, b"v%d" % offset, key=b"k",
                   headers=headers or [("trace", b"t")], timestamp=1.0)


def _redrive(letters: list[Message], *, execute: bool = True
             ) -> tuple[InMemoryDeadLetterSink, list[str], list[str]]:
    sink, out, warnings = InMemoryDeadLetterSink(), [], []
    redrive([DeadLetter.parse(m) for m in letters], sink, execute=execute, out=out.append,
            warn=warnings.append)
    return sink, out, warnings


def _as_consumed(topic: str, message: Message, added: dict[str, bytes], offset: int) -> Message:
    return Message(topic, 0, offset, message.value, key=message.key,
                   headers=[*message.headers, *added.items()])


def test_a_redriven_copy_claims_its_original_s_key_and_keeps_its_own_headers() -> None:
    original = _original(5, [("trace", b"t"), (HONOURED_KEY_HEADER, b"stale")])
    sink, out, warnings = _redrive(_letters(original))
    [(topic, message, added)] = sink.sent
    copy = _as_consumed(topic, message, added, 900)
    assert topic == "orders" and copy.value == original.value and copy.key == b"k"
    assert KEYS(copy) == KEYS(original) != KEYS(_original(900))
    assert [k for k, _ in copy.headers] == ["trace", "dlq.redriven.from", HONOURED_KEY_HEADER]
    assert out[-1] == "redrove 1 dead letter(s)" and not warnings


def test_letters_with_one_id_are_republished_once_and_listed_as_duplicates() -> None:
    first, other = _letters(_original(5), _original(6))
    again = Message("orders.dlq", 0, 2, first.value, key=first.key, headers=first.headers)
    for execute in (False, True):
        sink, out, _ = _redrive([first, other, again], execute=execute)
        assert len(sink.sent) == (2 if execute else 0)
        assert "duplicate of orders.dlq[0]@0" in out[3] and out[3].startswith("orders.dlq[0]@2")
        assert out[-1].endswith("2 dead letter(s); 1 duplicate letter(s) skipped (same dlq.id)")


def test_older_letters_without_identity_are_redriven_as_before_with_a_warning() -> None:
    [letter] = _letters(_original(5))
    old = Message(letter.topic, 0, 0, letter.value, key=letter.key,
                  headers=[(k, v) for k, v in letter.headers
                           if k not in ("dlq.id", "dlq.original.dedup-key")])
    sink, out, warnings = _redrive([old, old])
    assert len(sink.sent) == 2
    assert [k for k, _ in sink.sent[0][2].items()] == ["dlq.redriven.from"]
    assert out[-1] == "redrove 2 dead letter(s)"
    [warning] = warnings
    assert "2 dead letter(s) carry no dlq.original.dedup-key" in warning
