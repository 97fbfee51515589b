"""Schema version 4 of the SQLite, PostgreSQL and MariaDB stores, exactly as released, to build
old stores the migration tests upgrade. Never edit: it is history."""

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

_MARIADB_TABLE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
MARIADB = [
    f"""CREATE TABLE IF NOT EXISTS consumer_schema (version integer NOT NULL,
        coordinates_keys varchar(16) NOT NULL DEFAULT 'digest') {_MARIADB_TABLE}""",
    f"""CREATE TABLE IF NOT EXISTS consumer_checkpoints (
        group_id varchar(255) NOT NULL, topic varchar(255) NOT NULL,
        "partition" integer NOT NULL, next_offset bigint, epoch bigint NOT NULL,
        updated_at double NOT NULL, topic_id varchar(64),
        PRIMARY KEY (group_id, topic, "partition")) {_MARIADB_TABLE}""",
    f"""CREATE TABLE IF NOT EXISTS consumer_processed_keys (
        group_id varchar(255) NOT NULL, "key" varbinary(64) NOT NULL,
        topic varchar(255) NOT NULL, "partition" integer NOT NULL, "offset" bigint NOT NULL,
        processed_at double NOT NULL,
        PRIMARY KEY (group_id, "key"),
        KEY consumer_processed_keys_group_age (group_id, processed_at)) {_MARIADB_TABLE}""",
    "CREATE TABLE IF NOT EXISTS consumer_keys_to_scope (group_id varchar(255) PRIMARY KEY) "
    f"{_MARIADB_TABLE}",
    f"""CREATE TABLE IF NOT EXISTS consumer_processed_runs (
        group_id varchar(255) NOT NULL, key_head varbinary(10) NOT NULL,
        key_first bigint NOT NULL, key_last bigint NOT NULL,
        topic varchar(255) NOT NULL, "partition" integer NOT NULL,
        first_offset bigint NOT NULL, last_offset bigint NOT NULL, processed_at double NOT NULL,
        PRIMARY KEY (group_id, key_head, key_first),
        KEY consumer_processed_runs_group_age (group_id, processed_at)) {_MARIADB_TABLE}""",
    f"""CREATE TABLE IF NOT EXISTS consumer_processed_run_heads (
        group_id varchar(255) NOT NULL, key_head varbinary(10) NOT NULL,
        PRIMARY KEY (group_id, key_head)) {_MARIADB_TABLE}""",
    "INSERT INTO consumer_schema (version, coordinates_keys) VALUES (4, 'runs')",
]
