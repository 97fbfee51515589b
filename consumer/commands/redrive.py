"""`consumer dlq redrive`: put dead letters back on their original topics.

Dry run by default: it lists what would move. Filters: time of failure, exception type,
original partition. A redriven message keeps its key, value and headers (its idempotency key
included), loses the ``dlq.*`` provenance headers and gains ``dlq.redriven.from`` and
``checkpoint-consumer.dedup-key``: the original event's dedup key, which the consumer honours on
every route, so the copy at its new offset is the same event. A dead letter's key was never
recorded as processed, so the fixed handler applies it once; redriving the same letters again
applies nothing twice where the store dedups. Letters with one ``dlq.id`` (one message
dead-lettered twice, e.g. by a crash after the produce) are republished once per run.

Letters from older versions (without ``dlq.original.dedup-key``) are redriven as before, with
a warning: their copies get new keys wherever the key came from the coordinates.

This module is the command's half: arguments, reading the topics, the listing. What a letter
says and what its copy carries is :mod:`consumer.failures.dead_letters`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from consumer.errors import EXIT_OK, ConsumerError, exit_code
from consumer.failures.dead_letters import DeadLetter, Filters, with_first_letters
from consumer.kafka.protocol import DeadLetterSink
from consumer.message import Message


def redrive(letters: Sequence[DeadLetter], sink: DeadLetterSink, *, execute: bool,
            out: Callable[[str], None], warn: Callable[[str], None] | None = None) -> int:
    """List (and with ``execute`` republish) the letters, each message once; returns how many
    were (would be) moved. Each is acknowledged by the broker before the next."""
    warn = warn or out
    out(f"{'DEAD LETTER':<40} {'TO':<30} {'FAILED AT':<20} {'EXCEPTION':<24} REASON")
    moved = duplicates = without_key = 0
    for letter, first in with_first_letters(letters):
        to = f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset}"
        when = datetime.fromtimestamp(letter.failed_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        reason = letter.reason if first is None else f"duplicate of {first.where}: skipped"
        out(f"{letter.where:<40} {to:<30} {when:<20} {letter.exception_type:<24} {reason}")
        if first is not None:
            duplicates += 1
            continue
        if letter.dedup_key is None:
            without_key += 1
        moved += 1
        if execute:
            sink.send(letter.original_topic, letter.original(), letter.redrive_headers())
    if without_key:
        warn(f"warning: {without_key} dead letter(s) carry no dlq.original.dedup-key (written "
             "by an older version): their redriven copies get new dedup keys, so on a route "
             "whose key comes from the coordinates (dedup_key: coordinates, or a message "
             "without its key header) redriving them again applies them again")
    verb = "redrove" if execute else "would redrive (dry run; add --execute)"
    skipped = f"; {duplicates} duplicate letter(s) skipped (same dlq.id)" if duplicates else ""
    out(f"{verb} {moved} dead letter(s){skipped}")
    return moved


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
        redrive(letters, sink, execute=args.execute, out=print,
                warn=lambda line: print(line, file=sys.stderr))
    except ConsumerError as error:
        print(f"consumer: {error}", file=sys.stderr)
        return exit_code(error)
    finally:
        sink.close()
    return EXIT_OK


def _timestamp(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
