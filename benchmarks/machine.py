"""The machine and the versions a result was measured with, written beside the results."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import confluent_kafka

from benchmarks.environments import REPO_ROOT

POM = REPO_ROOT / "scripts" / "kafka" / "pom.xml"


def describe(bootstrap: str) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "kafka": _kafka_version(),
        "bootstrap": bootstrap,
        "confluent_kafka": version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "checkout": _checkout(),
        "postgres": postgres_settings(),
        "mariadb": mariadb_settings(),
    }


#: What a server's settings text says when its commits are not durable.
NOT_DURABLE = ("fsync=off", "synchronous_commit=off", "innodb_flush_log_at_trx_commit=0",
               "innodb_flush_log_at_trx_commit=2")


def not_durable(described: dict[str, Any]) -> list[str]:
    """A warning per database server of the run whose commits are not durable: the project's
    launchers start test servers that way, and reuse a running one as it is."""
    return [f"{name}: {described[name]}: commits are not durable, so store figures flatter; "
            "stop it (`make services-down`) and run again to have a durable one started"
            for name in ("postgres", "mariadb")
            if any(marker in str(described.get(name, "")) for marker in NOT_DURABLE)]


def postgres_settings() -> str:
    """The benchmark's PostgreSQL: whether its commits are durable, and what it caches."""
    dsn = os.environ.get("CONSUMER_TEST_POSTGRES_DSN")
    if not dsn:
        return "none"
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            settings = {name: conn.execute(f"SHOW {name}").fetchone()
                        for name in ("fsync", "synchronous_commit", "full_page_writes",
                                     "wal_compression", "shared_buffers", "max_wal_size")}
    except Exception as error:  # the report says so rather than failing the run
        return f"unreadable ({type(error).__name__})"
    durable = ", ".join(f"{name}={row[0] if row else '?'}" for name, row in settings.items())
    return f"{version[0] if version else '?'} on this machine ({durable})"


def mariadb_settings() -> str:
    """The benchmark's MariaDB: whether its commits are durable, and what it caches."""
    url = os.environ.get("CONSUMER_TEST_MARIADB_URL")
    if not url:
        return "none"
    try:
        import pymysql

        from consumer.store.mariadb_session import parameters

        params, _ = parameters(url, connect_timeout=5)
        conn = pymysql.connect(**{**params, "cursorclass": pymysql.cursors.Cursor})
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT VERSION(), @@innodb_flush_log_at_trx_commit, "
                               "@@innodb_doublewrite, @@innodb_buffer_pool_size")
                version, flush, doublewrite, pool = cursor.fetchone()
        finally:
            conn.close()
    except Exception as error:  # the report says so rather than failing the run
        return f"unreadable ({type(error).__name__})"
    return (f"{version} on this machine (innodb_flush_log_at_trx_commit={flush}, "
            f"innodb_doublewrite={doublewrite}, "
            f"innodb_buffer_pool_size={int(pool) // 2**20} MB)")


def _cpu_model() -> str:
    for line in _lines("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    for line in _lines("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []


def _kafka_version() -> str:
    """The broker the local launcher runs (scripts/kafka/pom.xml); a broker given by
    KAFKA_BOOTSTRAP_SERVERS may be another."""
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    return f"{match.group(1)} (scripts/kafka/pom.xml)" if match else "unknown"


def _checkout() -> str:
    """The commit measured, and whether the framework had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "consumer")
    return f"{head} (consumer/ with uncommitted changes)" if dirty else head
