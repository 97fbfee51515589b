"""Failure handling against a real broker: retries with backoff while other partitions flow,
dead letters with provenance, poison messages, and `on_failure: stop`."""

from __future__ import annotations

import itertools
import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.failing_handlers import records
from tests.support.kafka import (
    create_named_topic,
    create_topic,
    group_offsets,
    produce,
    read_topic,
    unique_name,
)

pytestmark = pytest.mark.integration

HANDLER = "tests.support.failing_handlers:apply"


def _route(topic: str, **retry: Any) -> dict[str, Any]:
    return {"handler": HANDLER, "format": "json",
            "retry": {"attempts": 3, "initial_backoff_seconds": 0.05,
                      "max_backoff_seconds": 0.2, **retry}}


def test_bad_messages_are_dead_lettered_and_good_ones_handled_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """10,000 messages over 3 partitions, 1% not JSON and 1% whose handler always raises:
    every good message is handled exactly once, every bad one lands in <topic>.dlq with its
    provenance headers, the consumer never exits, and the group's offsets end at the end."""
    total = 10_000
    topic = create_topic(kafka_bootstrap, 3, prefix="dlq")
    create_named_topic(kafka_bootstrap, f"{topic}.dlq", 1)

    def value(i: int) -> bytes:
        if i % 100 == 37:
            return b"{not json " + str(i).encode()
        return json.dumps({"n": i, "kind": "fail" if i % 100 == 71 else "good"}).encode()

    produce(kafka_bootstrap, topic, (value(i) for i in range(total)),
            partition=lambda i: i % 3,
            headers=lambda i: [("trace", f"t{i}".encode())])
    group = unique_name("dlq")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=500,
                             every_seconds=1.0)
    config["routes"] = {topic: _route(topic)}
    run = ConsumerProcess(tmp_path, "run", config).start()
    try:
        wait_for(lambda: sum(o or 0 for o in group_offsets(kafka_bootstrap, group, topic,
                                                           3).values()) == total,
                 timeout=120, what=f"offsets at the end of {topic} ({run.log_tail()})")
        assert run.alive(), "the consumer exited"
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()

    handled = Counter(n for _, _, n, kind, outcome, _ in records(str(run.record_file))
                      if outcome == "handled")
    good = {i for i in range(total) if i % 100 not in (37, 71)}
    assert set(handled) == good
    assert max(handled.values()) == 1

    letters = read_topic(kafka_bootstrap, f"{topic}.dlq")
    by_reason: Counter[str] = Counter()
    for letter in letters:
        headers = dict(letter.headers())  # type: ignore[attr-defined]
        reason = headers["dlq.reason"].decode()
        by_reason[reason] += 1
        original = int(headers["dlq.original.offset"])
        partition = int(headers["dlq.original.partition"])
        i = original * 3 + partition
        assert letter.value() == value(i)  # type: ignore[attr-defined]
        assert headers["trace"] == f"t{i}".encode()
        assert headers["dlq.original.topic"].decode() == topic
        assert headers["dlq.group"].decode() == group
        assert float(headers["dlq.failed.at"]) > 0
        assert float(headers["dlq.original.timestamp"]) > 0
        if reason == "deserialization":
            assert i % 100 == 37
            assert headers["dlq.exception.type"] == b"PoisonMessage"
            assert headers["dlq.attempts"] == b"1"
        else:
            assert reason == "handler_error" and i % 100 == 71
            assert headers["dlq.exception.type"] == b"AlwaysFails"
            assert headers["dlq.exception.message"] == f"event {i} always fails".encode()
            assert b"Traceback" in headers["dlq.exception.traceback"]
            assert headers["dlq.attempts"] == b"3"
    assert by_reason == {"deserialization": 100, "handler_error": 100}


def test_flaky_handler_is_retried_with_backoff_while_other_partitions_flow(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A message whose handler fails twice is retried 1 s apart and then succeeds; meanwhile
    the other partition keeps being handled (its partition alone was paused)."""
    topic = create_topic(kafka_bootstrap, 2, prefix="flaky")
    produce(kafka_bootstrap, topic, [json.dumps({"n": 0, "kind": "flaky"}).encode()],
            partition=lambda i: 0)
    group = unique_name("flaky")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=100,
                             every_seconds=1.0)
    config["routes"] = {topic: _route(topic, initial_backoff_seconds=1.0, multiplier=1.0,
                                      jitter=0.0, max_backoff_seconds=1.0)}
    run = ConsumerProcess(tmp_path, "run", config,
                          env={"GOOD_SLEEP_SECONDS": "0.002"}).start()
    try:
        wait_for(lambda: any(n == 0 for _, _, n, _, _, _ in records(str(run.record_file))),
                 timeout=60, what=f"the first attempt ({run.log_tail()})")
        # Work for partition 1 arrives while partition 0 waits for its next attempt.
        produce(kafka_bootstrap, topic,
                (json.dumps({"n": i, "kind": "good"}).encode() for i in range(1, 3000)),
                partition=lambda i: 1)
        wait_for(lambda: any(n == 0 and outcome == "handled"
                             for _, _, n, _, outcome, _ in records(str(run.record_file))),
                 timeout=60, what=f"the flaky message to succeed ({run.log_tail()})")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0
    finally:
        run.stop_if_running()
    rows = records(str(run.record_file))
    flaky = [(outcome, at) for p, _, n, _, outcome, at in rows if n == 0]
    assert [o for o, _ in flaky] == ["raised", "raised", "handled"]
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(flaky)]
    assert all(gap >= 0.95 for gap in gaps), gaps
    first_failure, success = flaky[0][1], flaky[-1][1]
    others_meanwhile = [n for p, _, n, _, o, at in rows
                        if p == 1 and o == "handled" and first_failure < at < success]
    assert others_meanwhile, "partition 1 stood still while partition 0 waited"


def test_on_failure_stop_commits_nothing_past_the_message(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """on_failure: stop after two attempts: exit 1 naming the message; the committed offset is
    that message's; nothing is dead-lettered."""
    topic = create_topic(kafka_bootstrap, 1, prefix="stop")
    bodies = [{"n": i, "kind": "fail" if i == 50 else "good"} for i in range(100)]
    produce(kafka_bootstrap, topic, (json.dumps(b).encode() for b in bodies))
    group = unique_name("stop")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=10)
    config["routes"] = {topic: {**_route(topic, attempts=2), "on_failure": "stop"}}
    run = ConsumerProcess(tmp_path, "run", config).start()
    assert run.wait(timeout=60) == 1
    assert f"handler failed on {topic}[0]@50" in run.log_file.read_text()
    assert group_offsets(kafka_bootstrap, group, topic, 1) == {0: 50}
    attempts = [n for _, _, n, _, o, _ in records(str(run.record_file)) if o == "raised"]
    assert attempts == [50, 50]


def test_redrive_after_the_fix_applies_dead_letters_exactly_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Changes to one account fail and are dead-lettered; after the fix (a restart without the
    bug), `consumer dlq redrive` lists them on a dry run, republishes them with --execute, and
    the ledger ends exact; a second redrive applies nothing twice."""
    import subprocess
    import sys

    import yaml

    from tests.support.chaos import check, make_ledger, produce_ledger
    from tests.support.stores import fresh_store

    with fresh_store("sqlite", tmp_path, None) as store:
        ledger = make_ledger(300, accounts=6, resend_every=10**9)
        broken = "acc-3"
        topic = create_topic(kafka_bootstrap, 3, prefix="redrive")
        create_named_topic(kafka_bootstrap, f"{topic}.dlq", 1)
        produce_ledger(kafka_bootstrap, topic, ledger)
        group = unique_name("redrive")
        # With a store, a retried message waits for the next checkpoint batch: keep it short.
        config = consumer_config(kafka_bootstrap, group, topic, every_messages=100,
                                 every_seconds=0.2, store=store.url)
        config["routes"] = {topic: {
            "handler": "tests.support.failing_handlers:ledger_unless_rejected", "format": "json",
            "retry": {"attempts": 2, "initial_backoff_seconds": 0.05}}}
        rejected = sum(1 for e in ledger.events if e["account"] == broken)
        first = ConsumerProcess(tmp_path, "buggy", config,
                                env={"LEDGER_REJECT_ACCOUNT": broken}).start()
        try:
            wait_for(lambda: len(read_topic(kafka_bootstrap, f"{topic}.dlq")) == rejected
                     and _entries(store) == len(ledger.events) - rejected, timeout=120,
                     what=f"{rejected} dead letters and the rest applied ({first.log_tail()})")
            first.signal(signal.SIGTERM)
            assert first.wait() == 0
        finally:
            first.stop_if_running()

        fixed = ConsumerProcess(tmp_path, "fixed", config).start()
        config_path = tmp_path / "redrive.yaml"
        config_path.write_text(yaml.safe_dump(config))

        def redrive(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "consumer", "dlq", "redrive", "--config",
                 str(config_path), *extra], capture_output=True, text=True, timeout=120,
                check=False, cwd=Path(__file__).resolve().parents[2])

        try:
            dry = redrive("--exception-type", "AlwaysFails")
            assert dry.returncode == 0, dry.stderr
            assert f"would redrive (dry run; add --execute) {rejected} dead letter" in dry.stdout
            assert _entries(store) == len(ledger.events) - rejected
            done = redrive("--execute")
            assert done.returncode == 0, done.stderr
            assert f"redrove {rejected} dead letter(s)" in done.stdout
            wait_for(lambda: _entries(store) == len(ledger.events), timeout=60,
                     what=f"the redriven changes to be applied ({fixed.log_tail()})")
            again = redrive("--execute")
            assert again.returncode == 0, again.stderr
            produced = len(ledger.events) + len(ledger.resent)
            wait_for(lambda: sum(o or 0 for o in group_offsets(
                kafka_bootstrap, group, topic, 3).values()) == produced + 2 * rejected,
                timeout=60, what=f"the second redrive to be consumed ({again.stdout[-300:]}, "
                f"{group_offsets(kafka_bootstrap, group, topic, 3)}, {fixed.log_tail()})")
            fixed.signal(signal.SIGTERM)
            assert fixed.wait() == 0
        finally:
            fixed.stop_if_running()
        verdict = check(store, ledger, group)
        assert verdict.exact, verdict


def _entries(store: Any) -> int:
    try:
        return int(store.scalar("SELECT count(*) FROM ledger_entries"))
    except Exception:
        return 0
