"""``consumer``: the command line.

    consumer run        [--config FILE]   consume until SIGTERM/SIGINT
    consumer check      [--config FILE]   validate config and import handlers, print the config
    consumer store init [--config FILE]   create the store's tables (run also does it)
    consumer store migrate [--config FILE]   migrate an older store now (run also does it)
    consumer dlq redrive [--config FILE] [--execute] [filters]   dead letters back to their topics
    consumer lag --group G [--topic T] [--json] [--config FILE | --bootstrap-servers B]

Exit codes: 0 stopped cleanly, 1 failed while running, 2 invalid configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from consumer import __version__
from consumer.app import (
    ShutdownSignals,
    build_keys,
    build_loop,
    build_purger,
    build_router,
    collecting_garbage_less,
    configure_logging,
    group_scoped_topics,
)
from consumer.commands import lag as lag_command
from consumer.commands import redrive, replay
from consumer.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    ConfigError,
    ConsumerError,
    exit_code,
)
from consumer.failures.retries import build_policies
from consumer.kafka.admin import read_topic
from consumer.kafka.producer import KafkaDeadLetterSink
from consumer.observability.wiring import build_observability
from consumer.routing import Router
from consumer.settings import Settings, load_settings
from consumer.store import open_configured

log = logging.getLogger("consumer.cli")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    if args.command == "lag":  # needs no routes nor handlers: it reads another group's offsets
        return lag_command.run(args)
    if args.command == "replay":  # moves a stopped group: no handler runs
        return replay.run(args)
    try:
        settings = load_settings(args.config)
        router = build_router(settings)
        build_keys(settings, {})
        build_policies(settings)
    except ConfigError as error:
        for problem in error.problems:
            print(f"config: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        for renamed in settings.store.former_names():
            print(f"config: {renamed}", file=sys.stderr)
        print(json.dumps(settings.masked(), indent=2))
        return EXIT_OK
    if args.command == "store":
        return _store_init(settings, args.action)
    if args.command == "dlq":
        topics = args.topic or sorted({route.dead_letter_topic or f"{topic}.dlq"
                                       for topic, route in settings.routes.items()})
        return redrive.run(args, topics, lambda topic: read_topic(settings.kafka, topic),
                           KafkaDeadLetterSink(settings.kafka))
    return _run(settings, router)


def _store_init(settings: Settings, action: str) -> int:
    """init and migrate do the same: create the tables, or migrate them and this group's keys
    (with this config's dedup scopes) from an older version, in one transaction."""
    if not settings.store.enabled:
        print(f"consumer: store.url is none: there is no store to {action}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        store = open_configured(settings.store)
        upgrade = store.ensure_schema(settings.kafka.group_id,
                                      group_scoped_topics=group_scoped_topics(settings))
        version = store.schema_version
        store.close()
    except ConsumerError as error:
        return _failed(error)
    if upgrade is not None:
        print(upgrade.describe(settings.store.masked_url()))
    print(f"store ready: {settings.store.masked_url()} (schema version {version})")
    return EXIT_OK


def _run(settings: Settings, router: Router) -> int:
    configure_logging(settings.log_level, settings.logging.format, group=settings.kafka.group_id)
    log.info("checkpoint-consumer %s starting with %s", __version__,
             json.dumps(settings.masked(), sort_keys=True))
    for renamed in settings.store.former_names():
        log.warning("%s", renamed)
    try:
        observability = build_observability(settings)
        loop = build_loop(settings, router, *observability.observers,
                          on_statistics=observability.on_statistics,
                          instruments=observability.instruments,
                          offsets=observability.offset_tracker,
                          tracer=observability.tracer)
    except ConsumerError as error:
        return _failed(error)
    try:
        observability.serve(loop.snapshot)
    except OSError as error:
        print(f"consumer: cannot serve metrics on {settings.metrics.host}:"
              f"{settings.metrics.port}: {error.strerror}; set metrics.port (0: any free port) "
              "or metrics.enabled: false", file=sys.stderr)
        return EXIT_FAILED
    purger = build_purger(settings, *observability.observers)
    if purger is not None:
        purger.start()
    signals = ShutdownSignals(loop, grace_seconds=settings.shutdown.grace_seconds)
    signals.install()
    try:
        with collecting_garbage_less():
            loop.run()
    except ConsumerError as error:
        return _failed(error)
    finally:
        signals.cancel()
        if purger is not None:
            purger.stop()
        observability.close()
    return EXIT_OK


def _failed(error: ConsumerError) -> int:
    """Print the error for the operator; a store that can never work, or credentials the
    brokers refuse, are config problems."""
    print(f"consumer: {error}", file=sys.stderr)
    return exit_code(error)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consumer", description="checkpoint-consumer")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")
    for name, text in (("run", "consume until SIGTERM or SIGINT"),
                       ("check", "validate the config and handlers, print the effective config")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", help="YAML or TOML config file (default: $CONSUMER_CONFIG)")
    lag_command.add_arguments(commands.add_parser(
        "lag", help="a group's committed offset, end offset and lag per partition"))
    redrive.add_arguments(commands.add_parser(
        "dlq", help="dead letters: `consumer dlq redrive` puts them back on their topics"))
    replay.add_arguments(commands.add_parser(
        "replay", help="move a stopped group to an offset or a time, store and Kafka together"))
    store = commands.add_parser("store", help="manage the store")
    store.add_argument("action", choices=["init", "migrate"],
                       help="init: create the tables; migrate: bring an older store (and "
                            "this group's processed keys) to this version; both do both")
    store.add_argument("--config", help="YAML or TOML config file (default: $CONSUMER_CONFIG)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
