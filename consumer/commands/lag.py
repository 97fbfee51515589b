"""``consumer lag --group G [--topic T ...] [--json]``: a group's lag per partition, asked from
the brokers (and the store, when one is configured), while the group runs or is stopped.

    TOPIC   PARTITION  COMMITTED  END     LAG  STORE
    orders  0          41,000     41,250  250  41,000

Read-only: never joins the group, never writes to Kafka or the store. Errors are printed;
exit 1 when Kafka or the store fails, 2 for invalid configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from consumer.errors import (
    EXIT_CONFIG,
    EXIT_OK,
    ConfigError,
    ConsumerError,
    exit_code,
)
from consumer.kafka.admin import read_group_positions
from consumer.kafka.commit_metadata import is_ours
from consumer.kafka.protocol import GroupPosition
from consumer.message import TP
from consumer.observability.lag import lag_messages
from consumer.settings import KafkaSettings, Settings, load_settings


@dataclass(frozen=True)
class LagRow:
    topic: str
    partition: int
    #: Kafka's committed offset for the group (next to read); None: nothing committed.
    committed: int | None
    start: int
    end: int
    #: end - committed (from the log start when nothing is committed); never negative.
    lag: int
    #: False when the commit lacks checkpoint-consumer's marker (another tool moved it).
    ours: bool
    #: The store's checkpoint (next offset), when a store is configured.
    store: int | None = None


def lag_rows(positions: Sequence[GroupPosition],
             store: Mapping[TP, int | None] | None = None) -> list[LagRow]:
    return [
        LagRow(p.topic, p.partition, p.committed, p.start, p.end,
               lag_messages(p.end, p.committed, p.start),
               ours=p.committed is None or is_ours(p.metadata),
               store=None if store is None else store.get((p.topic, p.partition)))
        for p in positions
    ]


def render_table(rows: Sequence[LagRow], *, with_store: bool) -> str:
    head = ["TOPIC", "PARTITION", "COMMITTED", "END", "LAG"] + (["STORE"] if with_store else [])
    body = []
    for row in rows:
        committed = "-" if row.committed is None else f"{row.committed:,}" + (
            "" if row.ours else "*")
        cells = [row.topic, str(row.partition), committed, f"{row.end:,}", f"{row.lag:,}"]
        if with_store:
            cells.append("-" if row.store is None else f"{row.store:,}")
        body.append(cells)
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
             .rstrip() for line in [head, *body]]
    if any(not row.ours for row in rows):
        lines.append("* committed without checkpoint-consumer's marker: moved by another tool")
    return "\n".join(lines)


def render_json(group: str, rows: Sequence[LagRow]) -> str:
    return json.dumps({"group": group, "partitions": [asdict(row) for row in rows],
                       "total_lag": sum(row.lag for row in rows)}, indent=2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", help="consumer group (default: kafka.group_id of --config)")
    parser.add_argument("--topic", action="append", dest="topics", metavar="TOPIC",
                        help="only this topic (repeatable; default: every topic the group "
                             "has committed offsets for)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--config", help="YAML or TOML config file (default: $CONSUMER_CONFIG)")
    parser.add_argument("--bootstrap-servers", help="brokers, instead of a config file")


def run(args: argparse.Namespace) -> int:
    try:
        kafka, store_url = _connection(args)
    except ConfigError as error:
        for problem in error.problems:
            print(f"config: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    group = args.group or kafka.group_id
    try:
        positions = read_group_positions(kafka, group, args.topics)
        store = _store_checkpoints(store_url, group) if store_url else None
    except ConsumerError as error:
        print(f"consumer: {error}", file=sys.stderr)
        return exit_code(error)
    rows = lag_rows(positions, store)
    if args.json:
        print(render_json(group, rows))
    elif not rows:
        print(f"group {group} has no committed offsets"
              + ("" if args.topics else "; name topics with --topic to see their lag"))
    else:
        print(render_table(rows, with_store=store is not None))
    return EXIT_OK


def _connection(args: argparse.Namespace) -> tuple[KafkaSettings, str | None]:
    """Kafka settings (and the store URL) from --bootstrap-servers, or from the config."""
    if args.bootstrap_servers:
        if not args.group:
            raise ConfigError(["--group: required with --bootstrap-servers"])
        return KafkaSettings(bootstrap_servers=args.bootstrap_servers,
                             group_id=args.group), None
    settings: Settings = load_settings(args.config)
    url = settings.store.url.get_secret_value() if settings.store.enabled else None
    return settings.kafka, url


def _store_checkpoints(url: str, group: str) -> dict[TP, int | None]:
    from consumer.store import open_store

    store = open_store(url)
    try:
        return store.checkpoints(group)
    finally:
        store.close()
