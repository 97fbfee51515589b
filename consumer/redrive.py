"""`consumer dlq redrive`: put dead letters back on their original topics.

Dry run by default: it lists what would move. Filters: time of failure, exception type,
original partition. A redriven message keeps its key, value and headers (its idempotency key
included), loses the ``dlq.*`` provenance headers and gains ``dlq.redriven.from``. A dead
letter's key was never recorded as processed, so the fixed handler applies it once; redriving
the same letters twice is harmless where the store dedups.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from consumer.errors import ConsumerError
from consumer.message import Message
from consumer.transport import DeadLetterSink

PROVENANCE = "dlq."


@dataclass(frozen=True)
class DeadLetter:
    message: Message
    original_topic: str
    original_partition: int
    original_offset: int
    failed_at: float
    exception_type: str
    reason: str

    @classmethod
    def parse(cls, message: Message) -> DeadLetter:
        def header(name: str, default: str = "") -> str:
            value = message.header(name)
            return value.decode(errors="replace") if value is not None else default

        return cls(message, header("dlq.original.topic"),
                   int(header("dlq.original.partition", "-1")),
                   int(header("dlq.original.offset", "-1")),
                   float(header("dlq.failed.at", "0") or 0), header("dlq.exception.type"),
                   header("dlq.reason"))


@dataclass(frozen=True)
class Filters:
    since: float | None = None
    until: float | None = None
    exception_type: str | None = None
    partition: int | None = None

    def keep(self, letter: DeadLetter) -> bool:
        return ((self.since is None or letter.failed_at >= self.since)
                and (self.until is None or letter.failed_at < self.until)
                and (self.exception_type is None or letter.exception_type == self.exception_type)
                and (self.partition is None or letter.original_partition == self.partition))


def redrive(letters: Sequence[DeadLetter], sink: DeadLetterSink, *, execute: bool,
            out: Callable[[str], None]) -> int:
    """List (and with ``execute`` republish) the letters; returns how many were (would be)
    moved. Each is acknowledged by the broker before the next."""
    out(f"{'DEAD LETTER':<40} {'TO':<30} {'FAILED AT':<20} {'EXCEPTION':<24} REASON")
    for letter in letters:
        m = letter.message
        where = f"{m.topic}[{m.partition}]@{m.offset}"
        to = f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset}"
        when = datetime.fromtimestamp(letter.failed_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        out(f"{where:<40} {to:<30} {when:<20} {letter.exception_type:<24} {letter.reason}")
        if execute:
            original = Message(letter.original_topic, -1, -1, m.value, key=m.key,
                               headers=[(k, v) for k, v in m.headers
                                        if not k.startswith(PROVENANCE)])
            sink.send(letter.original_topic, original,
                      [("dlq.redriven.from", f"{m.topic}/{m.partition}/{m.offset}".encode())])
    verb = "redrove" if execute else "would redrive (dry run; add --execute)"
    out(f"{verb} {len(letters)} dead letter(s)")
    return len(letters)


def add_arguments(dlq: argparse.ArgumentParser) -> None:
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    parser = actions.add_parser(
        "redrive", help="put dead letters back on their original topics (dry run by default)",
        description="Put dead letters back on their original topics; a dry run unless "
                    "--execute is given.")
    parser.add_argument("--config", help="YAML or TOML config file (default: $CONSUMER_CONFIG)")
    parser.add_argument("--topic", action="append",
                        help="dead-letter topic (default: every route's)")
    parser.add_argument("--since", type=_timestamp, help="failed at or after (ISO 8601)")
    parser.add_argument("--until", type=_timestamp, help="failed before (ISO 8601)")
    parser.add_argument("--exception-type", help="exception class name, e.g. ValueError")
    parser.add_argument("--partition", type=int, help="original partition")
    parser.add_argument("--execute", action="store_true", help="republish (default: dry run)")


def run(args: argparse.Namespace, topics: Sequence[str],
        read: Callable[[str], list[Message]], sink: DeadLetterSink) -> int:
    filters = Filters(args.since, args.until, args.exception_type, args.partition)
    try:
        letters = [letter for topic in topics for letter in map(DeadLetter.parse, read(topic))
                   if filters.keep(letter)]
        redrive(letters, sink, execute=args.execute, out=print)
    except ConsumerError as error:
        print(f"consumer: {error}", file=sys.stderr)
        return 1
    finally:
        sink.close()
    return 0


def _timestamp(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
