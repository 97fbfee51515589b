"""Schema version 1 of the store, exactly as released, to build old stores the migration
tests upgrade. Never edit: it is history."""

from __future__ import annotations

SQLITE = [
    "CREATE TABLE IF NOT EXISTS consumer_schema (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS consumer_checkpoints (
        group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
        next_offset INTEGER, epoch INTEGER NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (group_id, topic, partition))""",
    """CREATE TABLE IF NOT EXISTS consumer_processed_keys (
        group_id TEXT NOT NULL, key BLOB NOT NULL, topic TEXT NOT NULL,
        partition INTEGER NOT NULL, "offset" INTEGER NOT NULL, processed_at REAL NOT NULL,
        PRIMARY KEY (group_id, key))""",
    """CREATE INDEX IF NOT EXISTS consumer_processed_keys_age
        ON consumer_processed_keys (processed_at)""",
    "INSERT INTO consumer_schema VALUES (1)",
]

POSTGRESQL = [
    "CREATE TABLE IF NOT EXISTS consumer_schema (version integer NOT NULL)",
    """CREATE TABLE IF NOT EXISTS consumer_checkpoints (
        group_id text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
        next_offset bigint, epoch bigint NOT NULL, updated_at double precision NOT NULL,
        PRIMARY KEY (group_id, topic, partition))""",
    """CREATE TABLE IF NOT EXISTS consumer_processed_keys (
        group_id text NOT NULL, key bytea NOT NULL, topic text NOT NULL,
        partition integer NOT NULL, "offset" bigint NOT NULL,
        processed_at double precision NOT NULL,
        PRIMARY KEY (group_id, key))""",
    """CREATE INDEX IF NOT EXISTS consumer_processed_keys_age
        ON consumer_processed_keys (processed_at)""",
    "INSERT INTO consumer_schema VALUES (1)",
]

#: The statements per backend name ("sqlite", "postgresql").
SCHEMA_V1 = {"sqlite": SQLITE, "postgresql": POSTGRESQL}
