"""Handlers that fail on purpose, for the failure-handling tests (routes name them by path).

Values are JSON ``{"n": 17, "kind": "good" | "fail" | "flaky"}``:
- ``good``: handled at once (after ``$GOOD_SLEEP_SECONDS``, when set).
- ``fail``: raises every time.
- ``flaky``: raises on its first two attempts, then succeeds.

Every call is appended to ``$RECORD_FILE`` as ``partition offset n kind outcome time``, one
unbuffered write each, so the test sees attempts, their times and what was handled.
"""

from __future__ import annotations

import os
import time
from collections import Counter

from consumer.message import Context, Message

_attempts: Counter[tuple[int, int]] = Counter()


class AlwaysFails(RuntimeError):
    pass


class NotYet(RuntimeError):
    pass


def _record(message: Message, body: dict[str, object], outcome: str) -> None:
    line = (f"{message.partition} {message.offset} {body.get('n')} {body.get('kind')} {outcome} "
            f"{time.time():.4f}\n")
    fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def apply(message: Message, context: Context) -> None:
    body = message.json()
    kind = body["kind"]
    key = (message.partition, message.offset)
    _attempts[key] += 1
    if kind == "fail":
        _record(message, body, "raised")
        raise AlwaysFails(f"event {body['n']} always fails")
    if kind == "flaky" and _attempts[key] <= 2:
        _record(message, body, "raised")
        raise NotYet(f"event {body['n']} fails on attempt {_attempts[key]}")
    if kind == "good" and os.environ.get("GOOD_SLEEP_SECONDS"):
        time.sleep(float(os.environ["GOOD_SLEEP_SECONDS"]))
    _record(message, body, "handled")


def records(path: str) -> list[tuple[int, int, int, str, str, float]]:
    rows: list[tuple[int, int, int, str, str, float]] = []
    if not os.path.exists(path):
        return rows
    with open(path) as handle:
        text = handle.read()
    for line in text[: text.rfind("\n") + 1].splitlines():
        p, o, n, kind, outcome, at = line.split()
        rows.append((int(p), int(o), int(n), kind, outcome, float(at)))
    return rows


def ledger_unless_rejected(message: Message, context: Context) -> None:
    """handlers.ledger.apply, except that changes to ``$LEDGER_REJECT_ACCOUNT`` raise: a bug
    that a later deploy fixes (by unsetting the variable)."""
    from handlers import ledger

    if message.json()["account"] == os.environ.get("LEDGER_REJECT_ACCOUNT"):
        raise AlwaysFails(f"account {os.environ['LEDGER_REJECT_ACCOUNT']} is rejected")
    ledger.apply(message, context)


def ledger_while_flagged(message: Message, context: Context) -> None:
    """handlers.ledger.apply, except that changes to ``$LEDGER_REJECT_ACCOUNT`` raise while the
    file ``$LEDGER_REJECT_FLAG`` exists: a bug fixed in the running process by deleting it."""
    from handlers import ledger

    account = os.environ["LEDGER_REJECT_ACCOUNT"]
    if message.json()["account"] == account and os.path.exists(
            os.environ["LEDGER_REJECT_FLAG"]):
        raise AlwaysFails(f"account {account} is rejected")
    ledger.apply(message, context)


def slow_ledger(message: Message, context: Context) -> None:
    """handlers.ledger.apply after ``$LEDGER_SLEEP_SECONDS``: long store transactions."""
    from handlers import ledger

    time.sleep(float(os.environ.get("LEDGER_SLEEP_SECONDS", "0")))
    ledger.apply(message, context)
