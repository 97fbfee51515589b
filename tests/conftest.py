"""Session-wide real servers (broker, database, schema registry) for the integration tests
(see tests/support/servers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import (
    kafka_server,
    mariadb_server,
    postgres_server,
    schema_registry_server,
)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real Apache Kafka broker."""
    with kafka_server() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a real PostgreSQL server with an empty database the tests may use."""
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    """``mysql://`` URL of a real MariaDB server whose user may create databases."""
    with mariadb_server() as url:
        yield url


@pytest.fixture(scope="session")
def schema_registry_url() -> Iterator[str]:
    """Confluent API URL of a real schema registry (Apicurio Registry by default)."""
    with schema_registry_server() as url:
        yield url
