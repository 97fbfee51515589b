"""``consumer replay``: move a stopped group on one topic to an offset or a time, the store's
checkpoint rows and Kafka's committed offsets together, keeping or forgetting processed keys.
Targets as Kafka's own reset tool names them: an offset, a time, a duration back from now,
a shift from where the group resumes now, the log's start or its end.

Dry run by default: it prints, per partition, where the store and Kafka are, where the group
will resume, and how many processed keys would be forgotten; ``--execute`` does it. It refuses
while the group has members (they would commit over it). The store moves first, in one
transaction (epochs bumped, so a process still holding a partition is fenced); then Kafka's
offsets, with our marker. Kafka's own reset tool moves Kafka only, and the consumer refuses
such a reset by default (``store.on_external_reset``). Errors are printed, exit 1 or 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from consumer.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    ConfigError,
    ConsumerError,
    exit_code,
)
from consumer.kafka.admin import (
    group_member_count,
    offsets_at,
    read_group_positions,
    set_group_offsets,
)
from consumer.kafka.protocol import GroupPosition
from consumer.message import TP
from consumer.settings import Settings, load_settings
from consumer.store import open_store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or TOML config file (default: $CONSUMER_CONFIG)")
    parser.add_argument("--topic", required=True, help="the topic to replay")
    parser.add_argument("--partition", type=int, action="append", dest="partitions",
                        metavar="N", help="only this partition (repeatable; default: all)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-offset", type=int, metavar="OFFSET",
                        help="resume every chosen partition at this offset")
    target.add_argument("--to-datetime", metavar="ISO8601",
                        help="resume at the first message at or after this time "
                             "(e.g. 2026-11-27T09:00:00Z; no zone means UTC)")
    target.add_argument("--by-duration", metavar="DURATION",
                        help="resume at the first message at or after this long ago (ISO 8601: "
                             "PT30M, PT6H, P1D, P1DT12H)")
    target.add_argument("--shift-by", type=int, metavar="N",
                        help="resume N offsets after where the group resumes now (negative: "
                             "before; the store's row, else Kafka's commit), within the log")
    target.add_argument("--to-earliest", action="store_true",
                        help="resume at the first offset still in the log")
    target.add_argument("--to-latest", action="store_true",
                        help="resume at the end of the log: skip every message not yet handled")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--forget-keys", action="store_true",
                      help="delete the processed keys from the target on: replayed events "
                           "apply their effects again")
    keys.add_argument("--keep-keys", action="store_true",
                      help="keep the processed keys: replayed events already applied are "
                           "skipped as duplicates")
    parser.add_argument("--execute", action="store_true",
                        help="do it (default: print the plan and change nothing)")


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        targets_for = _target_rule(args)
    except ConfigError as error:
        for problem in error.problems:
            print(f"config: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    store_url = settings.store.url.get_secret_value() if settings.store.enabled else None
    if store_url is not None and not (args.forget_keys or args.keep_keys):
        print("consumer replay: the store holds processed keys; say what happens to them: "
              "--keep-keys (replayed events already applied are skipped) or --forget-keys "
              "(their effects apply again)", file=sys.stderr)
        return EXIT_CONFIG
    group = settings.kafka.group_id
    try:
        members = group_member_count(settings.kafka, group)
        if members:
            print(f"consumer replay: group {group} has {members} running member(s); stop "
                  "them first (a running member would commit over the replay)",
                  file=sys.stderr)
            return EXIT_FAILED
        positions = _chosen(read_group_positions(settings.kafka, group, [args.topic]),
                            args.partitions)
        return _plan_and_apply(settings, group, store_url, positions, targets_for, args)
    except ConfigError as error:
        for problem in error.problems:
            print(f"consumer replay: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except ConsumerError as error:
        print(f"consumer replay: {error}", file=sys.stderr)
        return exit_code(error)


def _chosen(positions: Sequence[GroupPosition], partitions: list[int] | None
            ) -> list[GroupPosition]:
    if not partitions:
        return list(positions)
    known = {p.partition for p in positions}
    unknown = sorted(set(partitions) - known)
    if unknown:
        raise ConfigError([f"--partition: no partition {', '.join(map(str, unknown))} "
                           f"(the topic has {', '.join(map(str, sorted(known)))})"])
    return [p for p in positions if p.partition in partitions]


#: (settings, positions, the store's rows) -> the offset each partition resumes at.
TargetRule = Callable[[Settings, Sequence[GroupPosition], Mapping[TP, int | None]],
                      dict[TP, int]]


def _target_rule(args: argparse.Namespace) -> TargetRule:
    """The rule for the chosen target flag (parsed now, so a bad time fails before Kafka)."""
    if args.to_offset is not None:
        offset = args.to_offset

        def to_offset(_settings: Settings, positions: Sequence[GroupPosition],
                      _rows: Mapping[TP, int | None]) -> dict[TP, int]:
            outside = [f"{p.partition} keeps {p.start}..{p.end}" for p in positions
                       if not p.start <= offset <= p.end]
            if outside:
                raise ConfigError([f"--to-offset {offset} is outside the log of partition "
                                   + "; ".join(outside)])
            return {(p.topic, p.partition): offset for p in positions}

        return to_offset
    if args.to_datetime is not None or args.by_duration is not None:
        stamp_ms = (_parse_datetime(args.to_datetime) if args.to_datetime is not None
                    else int((time.time() - _parse_duration(args.by_duration)) * 1000))

        def to_time(settings: Settings, positions: Sequence[GroupPosition],
                    _rows: Mapping[TP, int | None]) -> dict[TP, int]:
            return offsets_at(settings.kafka, [(p.topic, p.partition) for p in positions],
                              timestamp_ms=stamp_ms)

        return to_time
    if args.shift_by is not None:
        return _shifted_by(args.shift_by)
    if args.to_latest:
        def to_latest(_settings: Settings, positions: Sequence[GroupPosition],
                      _rows: Mapping[TP, int | None]) -> dict[TP, int]:
            return {(p.topic, p.partition): p.end for p in positions}

        return to_latest

    def to_earliest(_settings: Settings, positions: Sequence[GroupPosition],
                    _rows: Mapping[TP, int | None]) -> dict[TP, int]:
        return {(p.topic, p.partition): p.start for p in positions}

    return to_earliest


def _shifted_by(shift: int) -> TargetRule:
    """N offsets from where each partition resumes now: the store's row when it has one
    (the store's row wins at assignment), else Kafka's commit; kept within the log, as
    Kafka's tool keeps it."""

    def shifted(_settings: Settings, positions: Sequence[GroupPosition],
                rows: Mapping[TP, int | None]) -> dict[TP, int]:
        targets, unknown = {}, []
        for p in positions:
            tp = (p.topic, p.partition)
            now = rows.get(tp)
            if now is None:
                now = p.committed
            if now is None:
                unknown.append(str(p.partition))
                continue
            targets[tp] = min(max(now + shift, p.start), p.end)
        if unknown:
            raise ConfigError([f"--shift-by: the group has no checkpoint on partition "
                               f"{', '.join(unknown)} to shift from; choose --partition, or "
                               "a target of its own (--to-offset, --to-earliest, ...)"])
        return targets

    return shifted


def _parse_datetime(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError([f"--to-datetime {text!r} is not an ISO 8601 time "
                           "(e.g. 2026-11-27T09:00:00Z)"]) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


#: An ISO 8601 duration of days, hours, minutes and seconds.
_DURATION = re.compile(r"P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?"
                       r"(?:(\d+(?:\.\d+)?)S)?)?")


def _parse_duration(text: str) -> float:
    """Seconds in an ISO 8601 duration of days, hours, minutes and seconds (``PT30M``,
    ``P1DT12H``, ``PT1.5S``), as Kafka's reset tool takes it for ``--by-duration``."""
    found = _DURATION.fullmatch(text.strip().upper())
    if found is None or not any(found.groups()) or text.strip().upper().endswith("T"):
        raise ConfigError([f"--by-duration {text!r} is not an ISO 8601 duration (e.g. PT30M, "
                           "PT6H, P1D, P1DT12H)"])
    days, hours, minutes, seconds = (float(part or 0) for part in found.groups())
    return days * 86_400 + hours * 3_600 + minutes * 60 + seconds


def _plan_and_apply(settings: Settings, group: str, store_url: str | None,
                    positions: Sequence[GroupPosition], targets_for: TargetRule,
                    args: argparse.Namespace) -> int:
    store = open_store(store_url) if store_url is not None else None
    try:
        rows = store.checkpoints(group) if store is not None else {}
        targets = targets_for(settings, positions, rows)
        forgetting = (store.keys_from(group, targets)
                      if store is not None and args.forget_keys else {})
        print(render_plan(group, positions, targets, rows, forgetting,
                          with_store=store is not None))
        retention = settings.store.processed_keys_retention_seconds
        if store is not None and args.keep_keys and retention is not None:
            for warning in _beyond_retention(settings, targets, rows, retention):
                print(warning)
        if not args.execute:
            print("dry run: nothing changed; add --execute to replay")
            return EXIT_OK
        if store is not None:
            store.replay(group, targets, forget_keys=args.forget_keys, now=time.time())
        set_group_offsets(settings.kafka, group, targets)
    finally:
        if store is not None:
            store.close()
    print(f"replayed: group {group} resumes {args.topic} at the target offsets"
          + (" with the processed keys from there on forgotten" if forgetting else ""))
    return EXIT_OK


def _beyond_retention(settings: Settings, targets: Mapping[TP, int],
                      rows: Mapping[TP, int | None], retention: float) -> list[str]:
    """Keys are purged once older than the retention, so keeping them skips nothing older:
    per partition, the offsets from the target on that are that old (and were processed)."""
    cutoff_ms = int((time.time() - retention) * 1000)
    retained_from = offsets_at(settings.kafka, list(targets), timestamp_ms=cutoff_ms)
    warnings = []
    for tp, target in sorted(targets.items()):
        row = rows.get(tp)
        upper = retained_from[tp] if row is None else min(retained_from[tp], row)
        if target < upper:
            warnings.append(
                f"warning: {tp[0]}[{tp[1]}]: offsets {target} to {upper - 1} are older than "
                f"the processed-key retention ({retention:.0f} s, "
                "store.processed_keys_retention_seconds): their keys may already be purged, "
                "so --keep-keys does not skip them and those events are applied again")
    return warnings


def render_plan(group: str, positions: Sequence[GroupPosition], targets: Mapping[TP, int],
                store_rows: Mapping[TP, int | None], forgetting: Mapping[TP, int], *,
                with_store: bool) -> str:
    """The table the dry run prints: one line per partition."""
    header = ["topic", "partition", "kafka committed"]
    if with_store:
        header.append("store checkpoint")
    header.append("resume at")
    if forgetting:
        header.append("keys forgotten")
    lines = [header]
    for p in positions:
        tp = (p.topic, p.partition)
        line = [p.topic, str(p.partition), _or_dash(p.committed)]
        if with_store:
            line.append(_or_dash(store_rows.get(tp)))
        line.append(str(targets[tp]))
        if forgetting:
            line.append(str(forgetting.get(tp, 0)))
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    body = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in lines)
    return f"group {group}\n{body}"


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)
