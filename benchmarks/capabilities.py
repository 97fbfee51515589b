"""What this checkout of the framework can do, so modes join the benchmark when they land."""

from __future__ import annotations

import os
from collections.abc import Callable

from consumer.settings import RouteSettings, Settings

#: Prefix of a reason that this checkout lacks a feature (the contender is *unsupported*, not
#: broken): the report shows it apart from an environment that could not be built.
UNSUPPORTED = "unsupported by this checkout"


def _section(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if name in Settings.model_fields:
            return None
        return f"this checkout's settings have no '{name}' section yet"

    return check


def _concurrency() -> str | None:
    if "concurrency" in RouteSettings.model_fields:
        return None
    return f"{UNSUPPORTED}: its routes have no 'concurrency' setting yet"


def _postgres() -> str | None:
    if os.environ.get("CONSUMER_TEST_POSTGRES_DSN"):
        return None
    return "CONSUMER_TEST_POSTGRES_DSN is not set (make bench starts a local PostgreSQL)"


def _mariadb() -> str | None:
    if not os.environ.get("CONSUMER_TEST_MARIADB_URL"):
        return "CONSUMER_TEST_MARIADB_URL is not set (make bench starts a local MariaDB)"
    try:
        from consumer.store import mariadb  # noqa: F401  (a checkout before the MariaDB store)
    except ImportError:
        return f"{UNSUPPORTED}: it has no MariaDB store yet"
    return None


CHECKS: dict[str, Callable[[], str | None]] = {
    "store": _section("store"),
    "metrics": _section("metrics"),
    "postgres": _postgres,
    "mariadb": _mariadb,
    "concurrency": _concurrency,
}


def settings_sections() -> set[str]:
    """The top-level sections this checkout's settings have."""
    return set(Settings.model_fields)


def missing(needs: tuple[str, ...]) -> str | None:
    """Why a contender needing ``needs`` cannot run here, or None when it can."""
    for need in needs:
        reason = CHECKS[need]()
        if reason is not None:
            return reason
    return None
