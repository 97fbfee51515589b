"""`consumer replay` against a real broker and store: the store's checkpoint rows and Kafka's
offsets move together; forgotten keys re-apply effects, kept keys skip them; a running group
is refused; the dry run changes nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from consumer_process import REPO_ROOT, ConsumerProcess, consumer_config

from tests.support.kafka import create_topic, group_offsets, produce, unique_name, wait_for
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration

EVENTS = 40  # 20 per partition, each adding 1 to account "acc"


def replay(config: dict[str, object], tmp_path: Path, *args: str
           ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "replay.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "consumer", "replay", "--config", str(path),
                           *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def consume_everything(config: dict[str, object], tmp_path: Path, name: str,
                       store: StoreUnderTest, entries: int) -> None:
    run = ConsumerProcess(tmp_path, name, config).start()
    try:
        wait_for(lambda: _entries(store) == entries, timeout=60,
                 what=f"{entries} ledger entries ({run.log_tail()})")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()


def consume_to(config: dict[str, Any], tmp_path: Path, name: str, kafka_bootstrap: str,
               offsets: dict[int, int]) -> ConsumerProcess:
    """Run a consumer until the group's committed offsets on its topic are ``offsets``, then
    stop it (SIGTERM, exit 0); the stopped process, for its log and records."""
    group, (topic,) = config["kafka"]["group_id"], config["routes"]
    run = ConsumerProcess(tmp_path, name, config).start()
    try:
        wait_for(lambda: group_offsets(kafka_bootstrap, group, topic, len(offsets)) == offsets,
                 timeout=60, what=f"the group to reach {offsets} ({run.log_tail()})")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()
    return run


def _entries(store: StoreUnderTest) -> int:
    try:
        return int(store.scalar("SELECT count(*) FROM ledger_entries"))
    except Exception:  # the table appears with the first batch
        return 0


def test_replay_moves_store_and_kafka_together_and_keys_decide_the_effects(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    entries, balance = replay_story(kafka_bootstrap, store, tmp_path)
    # The 5 events whose keys were forgotten applied twice; the kept-keys replay added none.
    assert (entries, balance) == (EVENTS + 5, EVENTS + 5)


def replay_story(kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path, *,
                 handler: str = "handlers.ledger:apply") -> tuple[int, int]:
    """A running group is refused, an undecided replay asks about keys, a dry run changes
    nothing, forgotten keys re-apply their effects, kept keys skip them. Returns the ledger's
    entries and the account's balance at the end, for the test to judge."""
    topic = create_topic(kafka_bootstrap, 2, prefix="replay")
    produce(kafka_bootstrap, topic,
            [json.dumps({"event": f"e{i}", "account": "acc", "amount": 1}).encode()
             for i in range(EVENTS)],
            partition=lambda i: i % 2,
            headers=lambda i: [("idempotency-key", f"e{i}".encode())])
    group = unique_name("replay")
    config = consumer_config(kafka_bootstrap, group, topic, handler=handler,
                             every_messages=10, every_seconds=1.0, store=store.url)
    consume_everything(config, tmp_path, "first", store, EVENTS)

    # A running member is refused, and nothing moves.
    running = ConsumerProcess(tmp_path, "running", config).start()
    try:
        wait_for(lambda: "assigned" in running.log_file.read_text(), timeout=30,
                 what=f"the running member's assignment ({running.log_tail()})")
        refused = replay(config, tmp_path, "--topic", topic, "--to-earliest", "--keep-keys",
                         "--execute")
        assert refused.returncode == 1, refused.stderr
        assert "running member" in refused.stderr
    finally:
        running.signal(signal.SIGTERM)
        assert running.wait() == 0

    # The store needs an explicit choice about processed keys.
    undecided = replay(config, tmp_path, "--topic", topic, "--to-offset", "5")
    assert undecided.returncode == 2
    assert "--keep-keys" in undecided.stderr

    # Dry run: the plan names both partitions and the keys to forget; nothing changes.
    dry = replay(config, tmp_path, "--topic", topic, "--to-offset", "15", "--forget-keys")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing changed" in dry.stdout
    assert "keys forgotten" in dry.stdout
    assert group_offsets(kafka_bootstrap, group, topic, 2) == {0: 20, 1: 20}
    assert store.processed_key_count() == EVENTS

    # Forget keys from offset 15 of partition 0: its last 5 events apply again.
    done = replay(config, tmp_path, "--topic", topic, "--partition", "0", "--to-offset", "15",
                  "--forget-keys", "--execute")
    assert done.returncode == 0, done.stderr
    rows = dict(((t, p), o) for t, p, o in store.query(
        'SELECT topic, "partition", next_offset FROM consumer_checkpoints'))
    assert rows == {(topic, 0): 15, (topic, 1): 20}
    assert group_offsets(kafka_bootstrap, group, topic, 2) == {0: 15, 1: 20}
    assert store.processed_key_count() == EVENTS - 5
    consume_everything(config, tmp_path, "after-forget", store, EVENTS + 5)
    assert store.scalar("SELECT balance FROM accounts WHERE id = 'acc'") == EVENTS + 5

    # Keep keys, back to the start of both partitions: everything is a duplicate.
    kept = replay(config, tmp_path, "--topic", topic, "--to-earliest", "--keep-keys",
                  "--execute")
    assert kept.returncode == 0, kept.stderr
    assert group_offsets(kafka_bootstrap, group, topic, 2) == {0: 0, 1: 0}
    run = consume_to(config, tmp_path, "after-keep", kafka_bootstrap, {0: 20, 1: 20})
    assert "carries no checkpoint-consumer marker" not in run.log_file.read_text()
    return _entries(store), int(store.scalar("SELECT balance FROM accounts WHERE id = 'acc'"))


def test_kept_keys_of_plain_messages_run_no_handler_again(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """Plain messages (keyed by their coordinates, no headers), handled by a handler whose
    every call leaves a line outside the store. After a replay back to offset 10 keeping the
    keys, the consumer calls no handler for offsets 10 to 19 again, and calls it once for
    each message produced since. (A PostgreSQL store reads at assignment from which offset
    it holds no key, and answers a batch's claim later only for keys above that: here above
    the kept keys, not above the rewound rows.)"""
    topic = create_topic(kafka_bootstrap, 2, prefix="replay-plain")
    produce(kafka_bootstrap, topic, [f"v{i}".encode() for i in range(EVENTS)],
            partition=lambda i: i % 2)
    group = unique_name("replay-plain")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=5,
                             every_seconds=1.0, store=store.url)
    first = consume_to(config, tmp_path, "first", kafka_bootstrap,
                       {0: EVENTS // 2, 1: EVENTS // 2})
    assert sorted((p, o) for p, o, _ in first.records()) == \
        [(p, o) for p in (0, 1) for o in range(EVENTS // 2)]

    kept = replay(config, tmp_path, "--topic", topic, "--to-offset", "10", "--keep-keys",
                  "--execute")
    assert kept.returncode == 0, kept.stderr
    produce(kafka_bootstrap, topic, [f"w{i}".encode() for i in range(10)],
            partition=lambda i: i % 2)
    second = consume_to(config, tmp_path, "second", kafka_bootstrap, {0: 25, 1: 25})
    assert sorted((p, o) for p, o, _ in second.records()) == \
        [(p, o) for p in (0, 1) for o in range(20, 25)]
    assert "processed keys were found" not in second.log_file.read_text()


def aged_topic(kafka_bootstrap: str, prefix: str) -> str:
    """A new one-partition topic holding two events from 3 hours ago, then one from now."""
    from confluent_kafka import Producer

    topic = create_topic(kafka_bootstrap, 1, prefix=prefix)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    now_ms = int(time.time() * 1000)
    for i, age_hours in enumerate((3, 3, 0)):
        producer.produce(topic, f"e{i}".encode(), partition=0,
                         timestamp=now_ms - age_hours * 3_600_000)
    assert producer.flush(30) == 0
    return topic


def test_keep_keys_dry_run_warns_when_the_target_is_older_than_the_key_retention(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Processed keys are purged after `store.processed_keys_retention_seconds`, so keeping
    them does not skip events older than that: a `--keep-keys` dry run to a target older than
    the retention says, per partition, which offsets will be applied again."""
    topic = aged_topic(kafka_bootstrap, "retention")
    group = unique_name("retention")
    with fresh_store("sqlite", tmp_path, None) as store:
        config = consumer_config(kafka_bootstrap, group, topic, store=store.url)
        config["store"]["processed_keys_retention_seconds"] = 3600  # type: ignore[index]
        path = tmp_path / "replay.yaml"
        path.write_text(yaml.safe_dump(config))
        subprocess.run([sys.executable, "-m", "consumer", "store", "init", "--config",
                        str(path)], cwd=REPO_ROOT, check=True, timeout=60)
        planned = replay(config, tmp_path, "--topic", topic, "--to-earliest", "--keep-keys")
        assert planned.returncode == 0, planned.stderr
        assert f"{topic}[0]: offsets 0 to 1 are older than" in planned.stdout, planned.stdout
        assert "applied again" in planned.stdout, planned.stdout

        recent = replay(config, tmp_path, "--topic", topic, "--to-offset", "2", "--keep-keys")
        assert recent.returncode == 0, recent.stderr
        assert "older than" not in recent.stdout, recent.stdout


def test_duration_shift_and_latest_targets_resolve_on_the_real_log(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The targets Kafka's reset tool also has, on a log of two events from 3 hours ago and
    one now: `--by-duration PT2H` resumes at the recent one, `--shift-by` moves from the
    group's checkpoint within the log, `--to-latest` at the end; each executed replay moves
    the store's row and Kafka's commit together."""
    topic = aged_topic(kafka_bootstrap, "targets")
    group = unique_name("targets")
    with fresh_store("sqlite", tmp_path, None) as store:
        config = consumer_config(kafka_bootstrap, group, topic, store=store.url)
        path = tmp_path / "replay.yaml"
        path.write_text(yaml.safe_dump(config))
        subprocess.run([sys.executable, "-m", "consumer", "store", "init", "--config",
                        str(path)], cwd=REPO_ROOT, check=True, timeout=60)

        def resume_at(*target: str) -> int:
            planned = replay(config, tmp_path, "--topic", topic, *target, "--keep-keys")
            assert planned.returncode == 0, planned.stderr
            row = next(line for line in planned.stdout.splitlines()
                       if line.split()[:2] == [topic, "0"])
            return int(row.split()[-1])

        assert resume_at("--by-duration", "PT2H") == 2
        assert resume_at("--by-duration", "PT4H") == 0
        assert resume_at("--to-latest") == 3
        refused = replay(config, tmp_path, "--topic", topic, "--shift-by", "-1", "--keep-keys")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "no checkpoint on partition 0 to shift from" in refused.stderr

        moved = replay(config, tmp_path, "--topic", topic, "--by-duration", "PT2H",
                       "--keep-keys", "--execute")
        assert moved.returncode == 0, moved.stderr
        assert store.checkpoints() == {topic: 2}
        assert group_offsets(kafka_bootstrap, group, topic, 1) == {0: 2}
        assert resume_at("--shift-by", "-1") == 1
        assert resume_at("--shift-by", "-5") == 0  # within the log
        shifted = replay(config, tmp_path, "--topic", topic, "--shift-by", "5", "--keep-keys",
                         "--execute")
        assert shifted.returncode == 0, shifted.stderr
        assert store.checkpoints() == {topic: 3}
        assert group_offsets(kafka_bootstrap, group, topic, 1) == {0: 3}
