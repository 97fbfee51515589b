"""librdkafka's repeated lines are held back (consumer/kafka/client_log.py)."""

from __future__ import annotations

import logging

import pytest

from consumer.kafka.client_log import REMEMBERED_LINES, RepeatedLines, librdkafka_logger

REFUSED = "FAIL [paced#consumer-1] [thrd:k1:9092/bootstrap]: Connect to k1:9092 failed: refused"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("consumer.librdkafka", logging.ERROR, __file__, 1, message, args,
                             None)


def test_a_line_repeated_through_an_outage_is_let_through_once_per_window() -> None:
    clock = _Clock()
    lines = RepeatedLines(window=30.0, clock=clock)
    passed = []
    for _ in range(600):  # 30 s of refusals, one every 50 ms
        record = _record("%s [%s] %s", "FAIL", "paced#consumer-1", REFUSED)
        if lines.filter(record):
            passed.append(record.getMessage())
        clock.now += 0.05
    assert passed == [f"FAIL [paced#consumer-1] {REFUSED}"]

    clock.now += 1.0
    record = _record("%s [%s] %s", "FAIL", "paced#consumer-1", REFUSED)
    assert lines.filter(record)
    assert record.getMessage() == (
        f"FAIL [paced#consumer-1] {REFUSED} (599 lines like it held back in the last 31 s)")


def test_lines_differing_only_in_the_attempts_time_and_suppressed_count_are_one_line() -> None:
    """librdkafka's refusals through an outage, as a slow machine logs them: each names how
    long the attempt took, and some how many repeats librdkafka suppressed itself."""
    clock = _Clock()
    lines = RepeatedLines(window=30.0, clock=clock)
    refused = "FAIL [c#consumer-1] [thrd:k1:9092/1]: k1:9092/1: Connect to k1:9092 failed: " \
              "Connection refused"
    details = ["(after 0ms in state CONNECT)", "(after 14ms in state CONNECT)",
               "(after 3ms in state CONNECT, 1 identical error(s) suppressed)",
               "(after 120ms in state APIVERSION_QUERY)"]
    passed = [record.getMessage() for record in
              (_record(f"{refused} {detail}") for detail in details * 50)
              if lines.filter(record)]
    assert passed == [f"{refused} (after 0ms in state CONNECT)"]
    other_thread = _record(f"{refused.replace('/1]', '/bootstrap]')} (after 2ms in state CONNECT)")
    assert lines.filter(other_thread)
    clock.now += 31.0
    record = _record(f"{refused} (after 5ms in state CONNECT)")
    assert lines.filter(record)
    assert record.getMessage() == (
        f"{refused} (after 5ms in state CONNECT) (199 lines like it held back in the last 31 s)")


def test_different_lines_each_pass_and_a_line_seen_once_keeps_its_text() -> None:
    clock = _Clock()
    lines = RepeatedLines(window=30.0, clock=clock)
    first, second = _record("broker 1 down"), _record("broker 2 down")
    assert lines.filter(first) and lines.filter(second)
    clock.now += 31.0
    again = _record("broker 1 down")
    assert lines.filter(again)
    assert again.getMessage() == "broker 1 down"


def test_lines_whose_window_ended_are_forgotten_past_the_limit() -> None:
    clock = _Clock()
    lines = RepeatedLines(window=30.0, clock=clock)
    for n in range(REMEMBERED_LINES):
        lines.filter(_record(f"line {n}"))
    clock.now += 31.0
    lines.filter(_record("one more"))
    assert len(lines._seen) == 1


@pytest.mark.parametrize("calls", [1, 3])
def test_the_client_logger_carries_one_filter_however_often_it_is_asked_for(calls: int) -> None:
    for _ in range(calls):
        logger = librdkafka_logger()
    assert logger is logging.getLogger("consumer.librdkafka")
    assert sum(isinstance(f, RepeatedLines) for f in logger.filters) == 1
