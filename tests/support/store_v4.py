"""Schema version 4 of the SQLite and PostgreSQL stores, exactly as released, to build old stores
the migration tests upgrade. Never edit: it is history."""

from __future__ import annotations

SQLITE = [
    """CREATE TABLE IF NOT EXISTS consumer_schema (version INTEGER NOT NULL,
        coordinates_keys TEXT NOT NULL DEFAULT 'digest')""",
    """CREATE TABLE IF NOT EXISTS consumer_checkpoints (
        group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
        next_offset INTEGER, epoch INTEGER NOT NULL, updated_at REAL NOT NULL, topic_id TEXT,
        PRIMARY KEY (group_id, topic, partition))""",
    """CREATE TABLE IF NOT EXISTS consumer_processed_keys (
        group_id TEXT NOT NULL, key BLOB NOT NULL, topic TEXT NOT NULL,
        partition INTEGER NOT NULL, "offset" INTEGER NOT NULL, processed_at REAL NOT NULL,
        PRIMARY KEY (group_id, key))""",
    """CREATE INDEX IF NOT EXISTS consumer_processed_keys_group_age
        ON consumer_processed_keys (group_id, processed_at)""",
    "CREATE TABLE IF NOT EXISTS consumer_keys_to_scope (group_id TEXT PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS consumer_processed_runs (
    group_id TEXT NOT NULL, first_key BLOB NOT NULL, last_key BLOB NOT NULL,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, first_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL, processed_at REAL NOT NULL,
    PRIMARY KEY (group_id, first_key)) WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS consumer_processed_runs_group_age
    ON consumer_processed_runs (group_id, processed_at)""",
    "INSERT INTO consumer_schema (version, coordinates_keys) VALUES (4, 'ordered')",
]

POSTGRESQL = [
    """CREATE TABLE IF NOT EXISTS consumer_schema (version integer NOT NULL,
        coordinates_keys text NOT NULL DEFAULT 'digest')""",
    """CREATE TABLE IF NOT EXISTS consumer_checkpoints (
        group_id text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
        next_offset bigint, epoch bigint NOT NULL, updated_at double precision NOT NULL,
        topic_id text,
        PRIMARY KEY (group_id, topic, partition))""",
    """CREATE TABLE IF NOT EXISTS consumer_processed_keys (
        group_id text NOT NULL, key bytea NOT NULL, topic text NOT NULL,
        partition integer NOT NULL, "offset" bigint NOT NULL,
        processed_at double precision NOT NULL,
        PRIMARY KEY (group_id, key))""",
    """CREATE INDEX IF NOT EXISTS consumer_processed_keys_group_age
        ON consumer_processed_keys (group_id, processed_at)""",
    "CREATE TABLE IF NOT EXISTS consumer_keys_to_scope (group_id text PRIMARY KEY)",
    "CREATE EXTENSION IF NOT EXISTS btree_gist",
    """CREATE TABLE IF NOT EXISTS consumer_processed_runs (
    group_id text NOT NULL, key_head bytea NOT NULL, key_offsets int8range NOT NULL,
    topic text NOT NULL, partition integer NOT NULL, first_offset bigint NOT NULL,
    last_offset bigint NOT NULL, processed_at double precision NOT NULL,
    CONSTRAINT consumer_processed_runs_disjoint EXCLUDE USING gist
        (group_id WITH =, key_head WITH =, key_offsets WITH &&))""",
    """CREATE INDEX IF NOT EXISTS consumer_processed_runs_group_age
    ON consumer_processed_runs (group_id, processed_at)""",
    "INSERT INTO consumer_schema (version, coordinates_keys) VALUES (4, 'runs')",
]
