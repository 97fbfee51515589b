"""What this checkout of the framework can do, so modes join the benchmark when they land."""

from __future__ import annotations

import os
from collections.abc import Callable

from consumer.settings import Settings


def _section(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if name in Settings.model_fields:
            return None
        return f"this checkout's settings have no '{name}' section yet"

    return check


def _postgres() -> str | None:
    if os.environ.get("CONSUMER_TEST_POSTGRES_DSN"):
        return None
    return "CONSUMER_TEST_POSTGRES_DSN is not set (make bench starts a local PostgreSQL)"


CHECKS: dict[str, Callable[[], str | None]] = {
    "store": _section("store"),
    "metrics": _section("metrics"),
    "postgres": _postgres,
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
