"""Fixtures shared by the unit tests: no broker, no network, no leaking environment."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_consumer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read ``CONSUMER_*`` variables; the developer's shell must not change a test."""
    for name in list(os.environ):
        if name.upper().startswith("CONSUMER_"):
            monkeypatch.delenv(name)
