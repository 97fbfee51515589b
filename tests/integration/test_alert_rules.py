"""config/alerts.yml passes `promtool check rules` and its unit tests (config/alerts_test.yml).

promtool comes from scripts/ensure_promtool.sh (PATH, .local/bin, or unpacked from Debian's
prometheus package); when it cannot be had, these tests fail saying so, never skip.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def promtool() -> str:
    found = subprocess.run([str(REPO / "scripts" / "ensure_promtool.sh")], capture_output=True,
                           text=True, timeout=600)
    if found.returncode != 0:
        pytest.fail(f"promtool is needed to check config/alerts.yml: {found.stderr.strip()}")
    return found.stdout.strip().splitlines()[-1]


def run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=REPO / "config", capture_output=True,
                          text=True, timeout=120)


def test_alert_rules_are_valid(promtool: str) -> None:
    result = run(promtool, "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_stacks_prometheus_config_is_valid_and_loads_the_rules(
    promtool: str
) -> None:
    result = run(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in result.stdout
