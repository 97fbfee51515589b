"""Run a command with a real Kafka broker, PostgreSQL server, MariaDB server and schema
registry around it, then stop them.

    python scripts/with_services.py [--kafka] [--postgres] [--mariadb] [--registry] -- COMMAND

A server already named in the environment (``KAFKA_BOOTSTRAP_SERVERS``,
``CONSUMER_TEST_POSTGRES_DSN``, ``CONSUMER_TEST_MARIADB_URL``,
``CONSUMER_TEST_SCHEMA_REGISTRY_URL``) is used as it is.
Otherwise the local launchers start one and the command sees its address in that variable.
Servers this script started are stopped when the command ends, however it ends; the command's
exit code is returned.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import kafka_local
import mariadb_local
import postgres_local
import registry_local
from localproc import LocalServiceError


@dataclass(frozen=True)
class Service:
    """A server a launcher can start, and the variable that names its address."""

    help: str
    variable: str
    running: Callable[[], str | None]
    start: Callable[[], str]
    stop: Callable[[], None]


#: By command-line flag, in the order they start.
SERVICES = {
    "kafka": Service("start a local Kafka broker", "KAFKA_BOOTSTRAP_SERVERS",
                     kafka_local.running_bootstrap, kafka_local.start, kafka_local.stop),
    "postgres": Service("start a local PostgreSQL", "CONSUMER_TEST_POSTGRES_DSN",
                        postgres_local.running_dsn, postgres_local.start, postgres_local.stop),
    "mariadb": Service("start a local MariaDB", "CONSUMER_TEST_MARIADB_URL",
                       mariadb_local.running_url, mariadb_local.start, mariadb_local.stop),
    "registry": Service("start a local schema registry (Apicurio, Confluent API)",
                        "CONSUMER_TEST_SCHEMA_REGISTRY_URL", registry_local.running_url,
                        registry_local.start, registry_local.stop),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, service in SERVICES.items():
        parser.add_argument(f"--{flag}", action="store_true", help=service.help)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")

    env = dict(os.environ)
    with ExitStack() as stack:
        try:
            for flag, service in SERVICES.items():
                if not getattr(args, flag) or env.get(service.variable):
                    continue
                started_here = service.running() is None
                env[service.variable] = service.start()
                if started_here:
                    stack.callback(service.stop)
        except LocalServiceError as error:
            print(f"with_services: could not start a server: {error}", file=sys.stderr)
            return 1
        process = subprocess.Popen(command, env=env)
        # Forward a Ctrl-C or SIGTERM to the command, then still stop the servers.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda sig, _frame: process.send_signal(sig))
        return process.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
