"""The local broker launcher fails loudly and cleanly on bad input, and recovers stale state."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import kafka_local
import pytest

pytestmark = pytest.mark.integration

LAUNCHER = Path(__file__).resolve().parents[2] / "scripts" / "kafka_local.py"


def _launch(
    command: str, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCHER), command],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _java_processes_under(state: Path) -> list[str]:
    result = subprocess.run(["pgrep", "-af", str(state)], capture_output=True, text=True,
                            check=False)
    return [line for line in result.stdout.splitlines() if "kafka.Kafka" in line]


def test_without_maven_or_java_says_which_is_missing(tmp_path: Path) -> None:
    """No mvn with an empty jar cache: exit 1 and a message naming mvn."""
    result = _launch("start", {"PATH": str(tmp_path / "nothing-here"),
                               "CONSUMER_KAFKA_CACHE": str(tmp_path / "cache"),
                               "CONSUMER_LOCAL_STATE": str(tmp_path / "state")})
    assert result.returncode == 1
    assert "'mvn' is not on PATH" in result.stderr
    assert result.stdout == ""


def test_without_java_says_so(tmp_path: Path, kafka_bootstrap: str) -> None:
    """Jars cached (the session broker resolved them) but no java: exit 1 naming java."""
    result = _launch("start", {"PATH": str(tmp_path / "nothing-here"),
                               "CONSUMER_LOCAL_STATE": str(tmp_path / "state")})
    assert result.returncode == 1
    assert "'java' is not on PATH" in result.stderr


def test_taken_port_fails_with_log_tail_and_leaves_nothing_running(tmp_path: Path) -> None:
    """A broker that dies at start (its port is taken) is reported with its log, exit 1."""
    state = tmp_path / "state"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = _launch("start", {"CONSUMER_LOCAL_STATE": str(state),
                                   "CONSUMER_KAFKA_PORT": str(port)})
    assert result.returncode == 1, result.stderr
    assert "Address already in use" in result.stderr
    assert f"port {port}" in result.stderr
    assert _java_processes_under(state) == []
    assert _launch("status", {"CONSUMER_LOCAL_STATE": str(state)}).returncode == 3


def test_stale_pid_and_data_are_replaced(tmp_path: Path) -> None:
    """Left-overs of a crashed run (dead pid, old data dir) do not stop a fresh start."""
    state = tmp_path / "state"
    kafka_state = state / "kafka"
    (kafka_state / "data" / "junk-0").mkdir(parents=True)
    (kafka_state / "broker.pid").write_text("999999")
    (kafka_state / "bootstrap").write_text("127.0.0.1:1")
    env = {"CONSUMER_LOCAL_STATE": str(state)}
    try:
        started = _launch("start", env)
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip()
        assert bootstrap.startswith("127.0.0.1:") and bootstrap != "127.0.0.1:1"
        assert not (kafka_state / "data" / "junk-0").exists()
        assert _launch("status", env).stdout.strip() == f"running {bootstrap}"
    finally:
        assert _launch("stop", env).returncode == 0
    assert _launch("status", env).returncode == 3
    assert _java_processes_under(state) == []


def test_a_cluster_id_beginning_with_a_dash_formats(tmp_path: Path, kafka_bootstrap: str) -> None:
    """Cluster ids are base64url, so one in 64 begins with '-': the storage tool must take it.

    A fresh-clone CI run failed once with "argument --cluster-id/-t: expected one argument".
    """
    data = tmp_path / "data"
    props = tmp_path / "server.properties"
    props.write_text(kafka_local._server_properties(1, 2, data))
    cluster_id = "-" + kafka_local._cluster_id()[1:]

    kafka_local.format_storage(kafka_local.ensure_jars(), cluster_id, props, tmp_path / "logs", [])

    assert f"cluster.id={cluster_id}" in (data / "meta.properties").read_text()
