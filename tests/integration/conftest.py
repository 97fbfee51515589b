"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stores import StoreUnderTest, fresh_store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    """A fresh store on each backend: a SQLite file, and an empty PostgreSQL schema."""
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgresql" else None
    with fresh_store(request.param, tmp_path, dsn) as under_test:
        yield under_test
