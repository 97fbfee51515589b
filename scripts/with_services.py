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
from contextlib import ExitStack

import kafka_local
import mariadb_local
import postgres_local
import registry_local
from localproc import LocalServiceError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", action="store_true", help="start a local Kafka broker")
    parser.add_argument("--postgres", action="store_true", help="start a local PostgreSQL")
    parser.add_argument("--mariadb", action="store_true", help="start a local MariaDB")
    parser.add_argument("--registry", action="store_true",
                        help="start a local schema registry (Apicurio, Confluent API)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")

    env = dict(os.environ)
    with ExitStack() as stack:
        try:
            if args.kafka and not env.get("KAFKA_BOOTSTRAP_SERVERS"):
                started_here = kafka_local.running_bootstrap() is None
                env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_local.start()
                if started_here:
                    stack.callback(kafka_local.stop)
            if args.postgres and not env.get("CONSUMER_TEST_POSTGRES_DSN"):
                started_here = postgres_local.running_dsn() is None
                env["CONSUMER_TEST_POSTGRES_DSN"] = postgres_local.start()
                if started_here:
                    stack.callback(postgres_local.stop)
            if args.mariadb and not env.get("CONSUMER_TEST_MARIADB_URL"):
                started_here = mariadb_local.running_url() is None
                env["CONSUMER_TEST_MARIADB_URL"] = mariadb_local.start()
                if started_here:
                    stack.callback(mariadb_local.stop)
            if args.registry and not env.get("CONSUMER_TEST_SCHEMA_REGISTRY_URL"):
                started_here = registry_local.running_url() is None
                env["CONSUMER_TEST_SCHEMA_REGISTRY_URL"] = registry_local.start()
                if started_here:
                    stack.callback(registry_local.stop)
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
