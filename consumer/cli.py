"""``consumer``: the command line.

    consumer run   [--config FILE]   consume until SIGTERM/SIGINT
    consumer check [--config FILE]   validate config and import handlers, print the config

Exit codes: 0 stopped cleanly, 1 failed while running, 2 invalid configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from consumer import __version__
from consumer.app import ShutdownSignals, build_loop, build_router, configure_logging
from consumer.errors import ConfigError, ConsumerError
from consumer.routing import Router
from consumer.settings import Settings, load_settings

log = logging.getLogger("consumer.cli")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        settings = load_settings(args.config)
        router = build_router(settings)
    except ConfigError as error:
        for problem in error.problems:
            print(f"config: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(json.dumps(settings.masked(), indent=2))
        return EXIT_OK
    return _run(settings, router)


def _run(settings: Settings, router: Router) -> int:
    configure_logging(settings.log_level)
    log.info("checkpoint-consumer %s starting with %s", __version__,
             json.dumps(settings.masked(), sort_keys=True))
    loop = build_loop(settings, router)
    signals = ShutdownSignals(loop, grace_seconds=settings.shutdown.grace_seconds)
    signals.install()
    try:
        loop.run()
    except ConsumerError as error:
        print(f"consumer: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signals.cancel()
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consumer", description="checkpoint-consumer")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")
    for name, text in (("run", "consume until SIGTERM or SIGINT"),
                       ("check", "validate the config and handlers, print the effective config")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", help="YAML or TOML config file (default: $CONSUMER_CONFIG)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
