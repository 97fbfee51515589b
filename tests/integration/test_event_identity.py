"""An event keeps one identity, on SQLite and PostgreSQL against a real broker: an empty
idempotency key is no key, a redriven dead letter claims its original event's dedup key on
every `dedup_key` kind, and two letters for one message are redriven once."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.chaos import Ledger, check, make_ledger
from tests.support.kafka import (
    create_named_topic,
    create_topic,
    group_offsets,
    produce,
    read_topic,
    unique_name,
)
from tests.support.stores import StoreUnderTest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
BROKEN = "acc-3"


def _entries(store: StoreUnderTest) -> int:
    try:
        return int(store.scalar("SELECT count(*) FROM ledger_entries"))
    except Exception:  # the table appears with the first applied change
        return 0


def _consumed(bootstrap: str, group: str, topic: str) -> int:
    return group_offsets(bootstrap, group, topic, 1)[0] or 0


@dataclass
class DeadLettered:
    """A consumer that has dead-lettered every change to BROKEN and applied the rest; the bug
    is fixed (its flag deleted) in the still-running process."""

    bootstrap: str
    topic: str
    group: str
    ledger: Ledger
    rejected: int
    consumer: ConsumerProcess
    config_path: Path

    def redrive(self, *extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "consumer", "dlq", "redrive", "--config",
             str(self.config_path), *extra], capture_output=True, text=True, timeout=120,
            check=False, cwd=REPO_ROOT)
        assert done.returncode == 0, done.stderr
        return done

    def letters(self) -> list[Any]:
        return read_topic(self.bootstrap, f"{self.topic}.dlq")

    def wait_consumed(self, count: int) -> None:
        wait_for(lambda: _consumed(self.bootstrap, self.group, self.topic) >= count,
                 timeout=60, what=f"{count} messages consumed ({self.consumer.log_tail()})")

    def stop(self) -> None:
        self.consumer.signal(signal.SIGTERM)
        assert self.consumer.wait() == 0, self.consumer.log_tail()


@pytest.fixture
def dead_lettered(kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path,
                  request: pytest.FixtureRequest) -> Iterator[DeadLettered]:
    """Parametrised indirectly with (dedup_key, whether messages carry the header)."""
    dedup_key, with_header = request.param
    with dead_letters(kafka_bootstrap, store, tmp_path, dedup_key, with_header) as run:
        yield run


@contextlib.contextmanager
def dead_letters(kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path, dedup_key: str,
                 with_header: bool, *,
                 handler: str = "tests.support.failing_handlers:ledger_while_flagged",
                 ) -> Iterator[DeadLettered]:
    """A consumer that dead-lettered every change to BROKEN (``handler`` rejects them while
    its flag file exists) and applied the rest; then the flag is deleted."""
    ledger = make_ledger(30, accounts=6, resend_every=10**9)
    topic = create_topic(kafka_bootstrap, 1, prefix="identity")
    create_named_topic(kafka_bootstrap, f"{topic}.dlq")
    produce(kafka_bootstrap, topic, (json.dumps(e).encode() for e in ledger.events),
            key=lambda i: ledger.events[i]["account"].encode(),
            headers=lambda i: [("idempotency-key", ledger.events[i]["event"].encode())]
            if with_header else [])
    group = unique_name("identity")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=100,
                             every_seconds=0.2, store=store.url)
    config["routes"] = {topic: {
        "handler": handler, "format": "json",
        "dedup_key": dedup_key, "retry": {"attempts": 1}}}
    flag = tmp_path / "broken.flag"
    flag.touch()
    consumer = ConsumerProcess(tmp_path, "consumer", config, env={
        "LEDGER_REJECT_ACCOUNT": BROKEN, "LEDGER_REJECT_FLAG": str(flag)}).start()
    config_path = tmp_path / "redrive.yaml"
    config_path.write_text(yaml.safe_dump(config))
    rejected = sum(1 for e in ledger.events if e["account"] == BROKEN)
    assert rejected >= 2
    run = DeadLettered(kafka_bootstrap, topic, group, ledger, rejected, consumer, config_path)
    try:
        wait_for(lambda: len(run.letters()) == rejected
                 and _entries(store) == len(ledger.events) - rejected, timeout=120,
                 what=f"{rejected} dead letters and the rest applied ({consumer.log_tail()})")
        flag.unlink()
        yield run
    finally:
        consumer.stop_if_running()


@pytest.mark.parametrize("dead_lettered", [("coordinates", True),
                                           ("header:idempotency-key", True),
                                           ("header:idempotency-key", False)],
                         ids=["coordinates", "header", "header-absent"], indirect=True)
def test_redriving_twice_applies_each_dead_letter_once(
    dead_lettered: DeadLettered, store: StoreUnderTest
) -> None:
    """After the fix, `consumer dlq redrive --execute` run twice: the first applies every dead
    letter, the second applies none again, whatever made the original event's dedup key."""
    run, total = dead_lettered, len(dead_lettered.ledger.events)
    assert f"redrove {run.rejected} dead letter(s)" in run.redrive("--execute").stdout
    run.wait_consumed(total + run.rejected)
    run.redrive("--execute")
    run.wait_consumed(total + 2 * run.rejected)
    run.stop()
    verdict = check(store, run.ledger, run.group)
    assert verdict.exact, verdict


@pytest.mark.parametrize("dead_lettered", [("coordinates", True)], ids=["coordinates"],
                         indirect=True)
def test_two_letters_for_one_message_are_redriven_once(
    dead_lettered: DeadLettered, store: StoreUnderTest
) -> None:
    """A second letter with the same headers (what a SIGKILL right after the produce leaves):
    the dry run lists it as a duplicate, --execute republishes the message once, and its change
    is applied once; a second redrive applies nothing again."""
    from confluent_kafka import Producer

    run, total = dead_lettered, len(dead_lettered.ledger.events)
    first = run.letters()[0]
    producer = Producer({"bootstrap.servers": run.bootstrap, "acks": "all"})
    producer.produce(f"{run.topic}.dlq", value=first.value(), key=first.key(),
                     headers=first.headers())
    assert producer.flush(30) == 0
    wait_for(lambda: len(run.letters()) == run.rejected + 1, timeout=30,
             what="the duplicate letter")

    dry = run.redrive()
    done = run.redrive("--execute")
    run.wait_consumed(total + run.rejected)
    republished = len(read_topic(run.bootstrap, run.topic)) - total
    run.redrive("--execute")
    wait_for(lambda: _consumed(run.bootstrap, run.group, run.topic)
             == len(read_topic(run.bootstrap, run.topic)), timeout=60,
             what=f"the second redrive consumed ({run.consumer.log_tail()})")
    run.stop()
    verdict = check(store, run.ledger, run.group)
    assert verdict.exact, verdict
    assert republished == run.rejected, done.stdout
    assert f"redrove {run.rejected} dead letter(s)" in done.stdout
    assert "1 duplicate letter(s) skipped" in done.stdout
    duplicate = f"{run.topic}.dlq[0]@{run.rejected}"
    assert any(line.startswith(duplicate) and "duplicate of" in line
               for line in dry.stdout.splitlines()), dry.stdout


def test_events_with_an_empty_idempotency_key_are_all_applied(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """`idempotency-key: ""` is no key: each such event falls back to its coordinates, so two
    different events with an empty header are both applied (and so is one without it)."""
    ledger = make_ledger(5, accounts=2, resend_every=10**9)
    keys: list[bytes | None] = [b"", b"", None, b"e3", b""]
    topic = create_topic(kafka_bootstrap, 1, prefix="empty-key")
    produce(kafka_bootstrap, topic, (json.dumps(e).encode() for e in ledger.events),
            headers=lambda i: [("idempotency-key", k) for k in [keys[i]] if k is not None])
    group = unique_name("empty-key")
    config = consumer_config(kafka_bootstrap, group, topic, handler="handlers.ledger:apply",
                             every_messages=100, every_seconds=0.2, store=store.url)
    consumer = ConsumerProcess(tmp_path, "consumer", config).start()
    try:
        wait_for(lambda: _consumed(kafka_bootstrap, group, topic) == len(keys), timeout=60,
                 what=f"every message consumed ({consumer.log_tail()})")
        consumer.signal(signal.SIGTERM)
        assert consumer.wait() == 0, consumer.log_tail()
    finally:
        consumer.stop_if_running()
    verdict = check(store, ledger, group)
    assert verdict.exact, verdict
