"""The PostgreSQL server under the tests is real: DDL, writes and reads round-trip."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.kafka import unique_name

pytestmark = pytest.mark.integration


def test_table_round_trip(postgres_dsn: str) -> None:
    """Create a table, insert rows in a transaction, read them back from a new connection."""
    table = unique_name("roundtrip").replace("-", "_")
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} (id, body) VALUES (%s, %s)",
                [(i, f"row {i}") for i in range(100)],
            )
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(f"SELECT id, body FROM {table} ORDER BY id").fetchall()
        server_version = conn.info.server_version
    assert rows == [(i, f"row {i}") for i in range(100)]
    assert server_version >= 120000
