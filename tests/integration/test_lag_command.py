"""`consumer lag` against a real broker: the group's committed offset, end offset and lag per
partition, while the group is stopped and while it runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from consumer_process import REPO_ROOT, ConsumerProcess, consumer_config

from tests.support.kafka import create_topic, group_offsets, produce, unique_name, wait_for
from tests.support.outage import LocalServer

pytestmark = pytest.mark.integration


def lag(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consumer", "lag", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_lag_of_a_stopped_and_of_a_running_group(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = create_topic(kafka_bootstrap, 2, prefix="lagcmd")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(100)),
            partition=lambda i: i % 2)
    group = unique_name("lagcmd")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=10)
    run = ConsumerProcess(tmp_path, "run", config).start()
    wait_for(lambda: group_offsets(kafka_bootstrap, group, topic, 2) == {0: 50, 1: 50},
             timeout=60, what=f"the group to commit everything ({run.log_tail()})")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    produce(kafka_bootstrap, topic, (b"late" for _ in range(10)), partition=lambda i: 0)

    # Stopped group, by brokers and group name, every topic it committed to.
    result = lag("--bootstrap-servers", kafka_bootstrap, "--group", group, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["total_lag"] == 10
    assert [(p["partition"], p["committed"], p["end"], p["lag"], p["ours"])
            for p in data["partitions"]] == [(0, 50, 60, 10, True), (1, 50, 50, 0, True)]

    # The same as a table, from the consumer's own config file.
    result = lag("--config", str(tmp_path / "run.yaml"), "--topic", topic)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        f"{topic}  0          50         60   10",
        f"{topic}  1          50         50   0",
    ]

    # Running group: it catches up, and the command sees it without joining the group.
    rerun = ConsumerProcess(tmp_path, "rerun", config).start()
    try:
        def total() -> int:
            out = lag("--bootstrap-servers", kafka_bootstrap, "--group", group, "--topic", topic,
                      "--json")
            assert out.returncode == 0, out.stderr
            return int(json.loads(out.stdout)["total_lag"])

        wait_for(lambda: total() == 0, timeout=60, what=f"lag 0 ({rerun.log_tail()})")
        assert rerun.alive()
    finally:
        rerun.signal(signal.SIGTERM)
        assert rerun.wait() == 0


def test_unknown_topic_is_reported_not_a_traceback(kafka_bootstrap: str) -> None:
    result = lag("--bootstrap-servers", kafka_bootstrap, "--group", "g", "--topic",
                 unique_name("missing"))
    assert result.returncode == 1
    assert "no such topic" in result.stderr
    assert "Traceback" not in result.stderr


def test_lag_on_a_broker_where_no_group_ever_committed(tmp_path: Path) -> None:
    """A new cluster has no ``__consumer_offsets`` until the first commit: nothing is
    committed, and ``consumer lag`` says so (asking there crashed it once, inside librdkafka's
    admin client). A broker of this test's own, since the shared one has that topic from the
    other tests."""
    server = LocalServer.kafka(tmp_path / "kafka-state")
    server.start()
    try:
        bootstrap = server.address
        assert bootstrap is not None
        topic = create_topic(bootstrap, 2, prefix="lagnew")
        produce(bootstrap, topic, (b"x" for _ in range(4)), partition=lambda i: i % 2)
        result = lag("--bootstrap-servers", bootstrap, "--group", unique_name("lagnew"),
                     "--topic", topic, "--json")
    finally:
        server.stop()
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    data = json.loads(result.stdout)
    assert [(p["partition"], p["committed"], p["end"]) for p in data["partitions"]] == [
        (0, None, 2), (1, None, 2)]
