"""Fixtures shared by the integration tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from consumer_process import REPO_ROOT

from tests.support.secured_kafka import SecuredKafka, secured_kafka_server
from tests.support.stores import StoreUnderTest, fresh_store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    """A fresh store on each backend: a SQLite file, and an empty PostgreSQL schema."""
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgresql" else None
    with fresh_store(request.param, tmp_path, dsn) as under_test:
        yield under_test


#: The secured broker's SCRAM password: recognisable, so a test can grep outputs for it.
SASL_PASSWORD = "Sasl-Pa55-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def secured_kafka() -> Iterator[SecuredKafka]:
    """A broker of its own with a SASL_SSL (SCRAM-SHA-512 over TLS) listener, started once
    per session beside the shared broker and stopped at the end. Its state folder is fixed
    (``.local/secured/``), so a broker left by a session that crashed is taken over and
    stopped by the next one rather than left running."""
    with secured_kafka_server(REPO_ROOT / ".local" / "secured",
                              password=SASL_PASSWORD) as kafka:
        yield kafka
