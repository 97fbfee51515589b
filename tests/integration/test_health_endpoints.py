"""/readyz and /livez of a real `consumer run`: not ready before the first assignment, ready
with zero partitions, not ready as soon as SIGTERM arrives; live throughout."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config

from tests.support.kafka import create_topic, produce, unique_name, wait_for
from tests.support.scrape import endpoint, health, scrape

pytestmark = pytest.mark.integration


def test_not_ready_before_the_first_assignment_yet_live(tmp_path: Path) -> None:
    """No broker answers: the process waits for one, serving /readyz 503 naming the missing
    subscription and assignment, and /livez 200 (a restart would not bring the broker)."""
    config = consumer_config("127.0.0.1:1", unique_name("unready"), "nowhere")
    run = ConsumerProcess(tmp_path, "run", config).start()
    try:
        base = endpoint(run)
        status, body = health(base, "/readyz")
        assert status == 503
        assert body["failing"] == ["assignment", "subscribed"]
        assert health(base, "/livez")[0] == 200
        assert scrape(base).value("consumer_state", state="starting") == 1
    finally:
        run.signal(signal.SIGTERM)
        assert run.wait() == 0


def test_ready_with_zero_partitions(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Two members, one partition: the member left with nothing is ready all the same."""
    topic = create_topic(kafka_bootstrap, 1, prefix="zero")
    config = consumer_config(kafka_bootstrap, unique_name("zero"), topic)
    first = ConsumerProcess(tmp_path, "a", config).start()
    second = ConsumerProcess(tmp_path, "b", config)
    try:
        a = endpoint(first)
        wait_for(lambda: health(a, "/readyz")[0] == 200, timeout=30,
                 what=f"A ready ({first.log_tail()})")
        second.start()
        b = endpoint(second)
        wait_for(lambda: health(b, "/readyz")[0] == 200, timeout=30,
                 what=f"B ready with no partition ({second.log_tail()})")
        s = scrape(b)
        assert s.value("consumer_assigned_partitions", topic=topic) == 0
        assert s.value("consumer_ready") == 1
        assert not s.partitions("consumer_partition_lag_messages")
        assert scrape(a).value("consumer_assigned_partitions", topic=topic) == 1
    finally:
        for member in (second, first):
            if member.alive():
                member.signal(signal.SIGTERM)
                assert member.wait() == 0


def blocked_consumer(kafka_bootstrap: str, tmp_path: Path, values: list[bytes], *,
                     block_on: str, seconds: int) -> tuple[ConsumerProcess, str]:
    """A ready `consumer run` whose handler now blocks ``seconds`` on value ``block_on`` of
    ``values`` (produced to a topic of its own); returns it and its endpoints' address."""
    topic = create_topic(kafka_bootstrap, 1, prefix="blocked")
    config = consumer_config(kafka_bootstrap, unique_name("blocked"), topic,
                             handler="handlers.block:handle", every_messages=None,
                             every_seconds=1)
    run = ConsumerProcess(tmp_path, "run", config,
                          env={"BLOCK_ON_VALUE": block_on, "BLOCK_SECONDS": str(seconds)}).start()
    try:
        base = endpoint(run)
        wait_for(lambda: health(base, "/readyz")[0] == 200, timeout=30, what="ready")
        produce(kafka_bootstrap, topic, values)
        wait_for(lambda: "blocking for" in run.log_file.read_text(), timeout=30,
                 what="the handler to block")
    except BaseException:
        run.stop_if_running()
        raise
    return run, base


def test_sigterm_turns_ready_false_while_draining_and_live_stays_true(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGTERM while a handler is blocked: the process finishes that message before leaving;
    meanwhile /readyz is 503 naming the shutdown and /livez stays 200. It exits 0."""
    run, base = blocked_consumer(kafka_bootstrap, tmp_path, [b"0", b"1", b"2"],
                                 block_on="1", seconds=6)
    try:
        run.signal(signal.SIGTERM)
        wait_for(lambda: health(base, "/readyz")[0] == 503, timeout=5,
                 what="/readyz to turn false after SIGTERM")
        assert run.alive(), "the process should still be finishing the message in hand"
        assert health(base, "/readyz")[1]["failing"] == ["shutdown"]
        assert health(base, "/livez")[0] == 200
        assert run.wait() == 0
        assert [value for _, _, value in run.records()] == ["0", "1"]
    finally:
        run.stop_if_running()


def test_a_second_sigterm_while_draining_exits_at_once(kafka_bootstrap: str,
                                                        tmp_path: Path) -> None:
    """The first SIGTERM drains (the handler blocked for 60 s keeps the process up); the
    second ends it at once, exit 143, saying there was no final commit."""
    run, _ = blocked_consumer(kafka_bootstrap, tmp_path, [b"0"], block_on="0", seconds=60)
    try:
        run.signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM received" in run.log_file.read_text(), timeout=5,
                 what="the first SIGTERM to be taken")
        run.signal(signal.SIGTERM)
        assert run.wait(timeout=10) == 128 + signal.SIGTERM
        assert "second SIGTERM: exiting now without a final commit" in run.log_file.read_text()
    finally:
        run.stop_if_running()
