"""Where the tests' Kafka broker and PostgreSQL server come from, in order of preference
(MariaDB: ``CONSUMER_TEST_MARIADB_URL``, else ``scripts/mariadb_local.py``):

1. ``KAFKA_BOOTSTRAP_SERVERS`` / ``CONSUMER_TEST_POSTGRES_DSN`` in the environment: use them.
2. A Docker engine that answers: testcontainers starts throwaway containers.
3. Otherwise the project's own launchers in ``scripts/`` (Kafka from Maven Central jars,
   PostgreSQL from Debian's packages).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def docker_engine_answers() -> bool:
    """True when a Docker engine (not just the client binary) responds to a ping."""
    if os.environ.get("CONSUMER_TEST_NO_DOCKER"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


@contextlib.contextmanager
def kafka_server() -> Iterator[str]:
    """Yield a bootstrap address; stop the broker afterwards only if we started it."""
    from_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if from_env:
        yield from_env
        return
    if docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    import kafka_local

    already = kafka_local.running_bootstrap()
    bootstrap = kafka_local.start()
    try:
        yield bootstrap
    finally:
        if already is None:
            kafka_local.stop()


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a PostgreSQL DSN; stop the server afterwards only if we started it."""
    from_env = os.environ.get("CONSUMER_TEST_POSTGRES_DSN")
    if from_env:
        yield from_env
        return
    if docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    import postgres_local

    already = postgres_local.running_dsn()
    dsn = postgres_local.start()
    try:
        yield dsn
    finally:
        if already is None:
            postgres_local.stop()


@contextlib.contextmanager
def mariadb_server() -> Iterator[str]:
    """Yield a ``mysql://`` URL of a MariaDB server whose user may create databases
    (``CONSUMER_TEST_MARIADB_URL``, else one started by ``scripts/mariadb_local.py``); stop
    it afterwards only if we started it."""
    from_env = os.environ.get("CONSUMER_TEST_MARIADB_URL")
    if from_env:
        yield from_env
        return
    import mariadb_local

    already = mariadb_local.running_url()
    url = mariadb_local.start()
    try:
        yield url
    finally:
        if already is None:
            mariadb_local.stop()


@contextlib.contextmanager
def schema_registry_server() -> Iterator[str]:
    """Yield the Confluent API URL of a real schema registry
    (``CONSUMER_TEST_SCHEMA_REGISTRY_URL``, else Apicurio Registry started by
    ``scripts/registry_local.py``); stop it afterwards only if we started it."""
    from_env = os.environ.get("CONSUMER_TEST_SCHEMA_REGISTRY_URL")
    if from_env:
        yield from_env
        return
    import registry_local

    already = registry_local.running_url()
    url = registry_local.start()
    try:
        yield url
    finally:
        if already is None:
            registry_local.stop()
