"""Retry, dead-letter and stop decisions, with an in-memory dead-letter sink and a fake clock."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from consumer.cli import main
from consumer.clock import ManualClock
from consumer.errors import EXIT_CONFIG, ConfigError, DeadLetterFailed, DedupKeyFailed
from consumer.events import Observer
from consumer.failures.retries import (
    FailurePolicy,
    Failures,
    PoisonMessage,
    Verdict,
    check_format,
    resolve_exception,
)
from consumer.message import Message
from consumer.testing import InMemoryDeadLetterSink


def _policy(**overrides: object) -> FailurePolicy:
    values: dict[str, object] = dict(
        attempts=3, initial_backoff=1.0, max_backoff=4.0, multiplier=2.0, jitter=0.0,
        never_retry=(KeyError,), stop_on=(MemoryError,), dead_letter_topic="t.dlq",
        format="json")
    values.update(overrides)
    return FailurePolicy(**values)  # type: ignore[arg-type]


def _failures(policy: FailurePolicy, clock: ManualClock,
              sink: InMemoryDeadLetterSink) -> Failures:
    return Failures({"t": policy}, sink=sink, group="g", observer=Observer(),
                    monotonic=clock.monotonic, wall=clock.wall, rng=random.Random(1))


def _message(offset: int = 7, value: bytes = b'{"a": 1}') -> Message:
    return Message("t", 0, offset, value, key=b"k", headers=[("trace", b"x")], timestamp=5.0)


def test_retries_back_off_exponentially_then_dead_letter_with_provenance() -> None:
    """Attempts 1 and 2 pause the partition for 1 s then 2 s; attempt 3 dead-letters the
    message with its key, value, headers and every provenance header."""
    clock, sink = ManualClock(), InMemoryDeadLetterSink()
    failures = _failures(_policy(), clock, sink)
    message = _message()
    assert failures.failed(message, ValueError("boom")) is Verdict.RETRY
    assert failures.due() == []
    clock.advance(1.0)
    assert failures.due() == [("t", 0)]
    assert failures.failed(message, ValueError("boom")) is Verdict.RETRY
    clock.advance(1.9)
    assert failures.due() == []
    clock.advance(0.2)
    assert failures.due() == [("t", 0)]
    assert failures.failed(message, ValueError("boom")) is Verdict.DEAD_LETTERED
    [(topic, letter, headers)] = sink.sent
    assert topic == "t.dlq" and letter is message
    assert headers["dlq.attempts"] == b"3"
    assert headers["dlq.reason"] == b"handler_error"
    assert headers["dlq.exception.type"] == b"ValueError"
    assert headers["dlq.exception.message"] == b"boom"
    assert headers["dlq.original.offset"] == b"7"
    assert headers["dlq.group"] == b"g"
    assert not failures.waiting


def test_never_retry_types_and_poison_messages_go_straight_to_the_dead_letter_topic() -> None:
    clock, sink = ManualClock(), InMemoryDeadLetterSink()
    failures = _failures(_policy(), clock, sink)
    assert failures.failed(_message(1), KeyError("x")) is Verdict.DEAD_LETTERED
    with pytest.raises(PoisonMessage) as poison:
        check_format(_message(2, b"{not json"), "json")
    assert failures.failed(_message(2), poison.value) is Verdict.DEAD_LETTERED
    reasons = [headers["dlq.reason"] for _, _, headers in sink.sent]
    assert reasons == [b"non_retryable", b"deserialization"]


def test_a_raising_dedup_key_is_final_like_a_poison_message() -> None:
    """Dead-lettered at the first attempt with reason dedup_key; a stop without a dead-letter
    topic."""
    clock, sink = ManualClock(), InMemoryDeadLetterSink()
    failures = _failures(_policy(), clock, sink)
    error = DedupKeyFailed("m:f", "t", 0, 3, ValueError("not json"))
    assert failures.decide(_message(3), error) is Verdict.DEAD_LETTERED
    assert sink.sent == []  # deciding produces nothing
    assert failures.failed(_message(3), error) is Verdict.DEAD_LETTERED
    [(_, _, headers)] = sink.sent
    assert headers["dlq.reason"] == b"dedup_key" and headers["dlq.attempts"] == b"1"
    no_dlq = _failures(_policy(dead_letter_topic=None), clock, sink)
    assert no_dlq.decide(_message(3), error) is Verdict.STOP
    assert no_dlq.failed(_message(3), error) is Verdict.STOP


def test_decide_answers_like_failed_without_counting_an_attempt() -> None:
    clock, sink = ManualClock(), InMemoryDeadLetterSink()
    failures = _failures(_policy(attempts=2), clock, sink)
    message = _message()
    assert failures.decide(message, ValueError()) is Verdict.RETRY
    assert failures.decide(message, ValueError()) is Verdict.RETRY
    assert not failures.waiting
    assert failures.failed(message, ValueError()) is Verdict.RETRY
    assert failures.decide(message, ValueError()) is Verdict.DEAD_LETTERED
    assert sink.sent == []
    assert failures.decide(message, MemoryError()) is Verdict.STOP


def test_stop_on_types_and_on_failure_stop_stop_the_consumer() -> None:
    clock, sink = ManualClock(), InMemoryDeadLetterSink()
    assert _failures(_policy(), clock, sink).failed(_message(), MemoryError()) is Verdict.STOP
    no_dlq = _failures(_policy(attempts=1, dead_letter_topic=None), clock, sink)
    assert no_dlq.failed(_message(), ValueError()) is Verdict.STOP
    assert sink.sent == []


def test_unwritable_dead_letter_topic_keeps_retrying_without_calling_the_handler() -> None:
    """A retriable dead-letter failure pauses the partition again; when it resumes, the
    exhausted message goes to the dead-letter topic without another handler call."""
    clock, sink = ManualClock(), InMemoryDeadLetterSink()
    failures = _failures(_policy(attempts=1), clock, sink)
    message = _message()
    sink.fail_with = DeadLetterFailed("t", 0, 7, "t.dlq", "_TRANSPORT", retriable=True)
    assert failures.failed(message, ValueError("boom")) is Verdict.RETRY
    earlier = failures.exhausted_error(message)
    assert isinstance(earlier, ValueError)
    sink.fail_with = None
    assert failures.failed(message, earlier) is Verdict.DEAD_LETTERED
    assert len(sink.sent) == 1


def test_a_dead_letter_the_broker_refuses_for_good_stops_the_consumer() -> None:
    clock, sink = ManualClock(), InMemoryDeadLetterSink()
    failures = _failures(_policy(attempts=1), clock, sink)
    sink.fail_with = DeadLetterFailed("t", 0, 7, "t.dlq", "MSG_SIZE_TOO_LARGE: too big",
                                      retriable=False)
    with pytest.raises(DeadLetterFailed, match=r"t\[0\]@7.*MSG_SIZE_TOO_LARGE"):
        failures.failed(_message(), ValueError())


def test_exception_names_resolve_or_are_reported() -> None:
    assert resolve_exception("ValueError") is ValueError
    assert resolve_exception("json.JSONDecodeError") is json.JSONDecodeError
    with pytest.raises(ConfigError):
        resolve_exception("NoSuchError")
    with pytest.raises(ConfigError):
        resolve_exception("json.dumps")


def test_bad_failure_settings_exit_2_with_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown exception names, a dead-letter topic equal to its source, a zero backoff."""
    monkeypatch.chdir(Path(__file__).resolve().parents[3])
    config = tmp_path / "c.yaml"
    config.write_text(
        "kafka: {bootstrap_servers: '127.0.0.1:1', group_id: g}\n"
        "routes:\n"
        "  a: {handler: 'handlers.echo:handle', retry: {never_retry: [NoSuchError],"
        " stop_on: [nope.Missing]}}\n"
    )
    assert main(["check", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert "config: routes.a.retry.never_retry: 'NoSuchError' is not an exception type that " \
           "can be imported" in err
    assert any(line.startswith("config: routes.a.retry.stop_on: 'nope.Missing'") for line in err)

    config.write_text(
        "kafka: {bootstrap_servers: '127.0.0.1:1', group_id: g}\n"
        "routes:\n"
        "  a: {handler: 'handlers.echo:handle', dead_letter_topic: a}\n"
    )
    assert main(["check", "--config", str(config)]) == EXIT_CONFIG
    assert "dead_letter_topic is the route's own topic" in capsys.readouterr().err

    config.write_text(
        "kafka: {bootstrap_servers: '127.0.0.1:1', group_id: g}\n"
        "routes:\n"
        "  a: {handler: 'handlers.echo:handle', retry: {initial_backoff_seconds: 0}}\n"
    )
    assert main(["check", "--config", str(config)]) == EXIT_CONFIG
    assert "config: routes.a.retry.initial_backoff_seconds: Input should be greater than 0" \
        in capsys.readouterr().err


def test_a_dead_letter_carries_the_message_s_dedup_key_when_known() -> None:
    clock, sink = ManualClock(), InMemoryDeadLetterSink()
    failures = _failures(_policy(attempts=1), clock, sink)
    failures.failed(_message(7), ValueError("boom"), key=bytes(range(16)))
    failures.failed(_message(8), ValueError("boom"))
    [(_, _, with_key), (_, _, without)] = sink.sent
    assert with_key["dlq.original.dedup-key"] == bytes(range(16)).hex().encode()
    assert "dlq.original.dedup-key" not in without


def test_every_letter_of_one_message_has_the_same_id_and_other_messages_another() -> None:
    """The id is the group and the original coordinates (topic id and timestamp too): the
    same for a letter produced again after a restart, different for any other message."""
    def letter_id(message: Message, *, group: str = "g",
                  topic_ids: dict[str, str] | None = None) -> bytes:
        sink = InMemoryDeadLetterSink()
        clock = ManualClock()
        failures = Failures({"t": _policy(attempts=1)}, sink=sink, group=group,
                            observer=Observer(), monotonic=clock.monotonic, wall=clock.wall,
                            topic_ids=topic_ids)
        clock.advance(30.0)  # failing later changes nothing
        failures.failed(message, ValueError("boom"))
        [(_, _, headers)] = sink.sent
        return headers["dlq.id"]

    first = letter_id(_message(7))
    assert len(first) == 32 and first == letter_id(_message(7))
    others = {letter_id(_message(8)), letter_id(_message(7), group="other"),
              letter_id(_message(7), topic_ids={"t": "id-of-t"}),
              letter_id(Message("t", 0, 7, b"{}", timestamp=6.0)),
              letter_id(Message("t", 1, 7, b"{}", timestamp=5.0))}
    assert first not in others and len(others) == 5
