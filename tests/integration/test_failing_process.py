"""A process that knows it is fenced or failing runs no handler again on its way out (real broker,
real PostgreSQL)."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.kafka import create_topic, produce, unique_name
from tests.support.stores import StoreUnderTest

# PostgreSQL: a SQLite writer frozen inside its batch holds the whole file, so the new
# owner could not even take the partition over while it is frozen.
pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("store", ["postgresql"], indirect=True)]


def _checkpoint_row(store: StoreUnderTest) -> object:
    try:
        rows = store.query("SELECT next_offset FROM consumer_checkpoints")
    except Exception:  # The table appears with the first assignment.
        return None
    return rows[0][0] if rows else None


def _freeze_first_member_inside_its_batch(kafka_bootstrap: str, topic: str,
                                          zombie: ConsumerProcess,
                                          owner: ConsumerProcess) -> None:
    """Start the first member, let the second join idle (set up, schema checked, by the time it
    takes the partition over), produce two messages, and SIGSTOP the first inside its second
    handler call: its batch's keys are claimed and uncommitted."""
    zombie.start()
    wait_for(lambda: zombie.owned_partitions() == {0}, timeout=60,
             what=f"the first member to take the partition ({zombie.log_tail()})")
    owner.start()
    wait_for(lambda: "subscribed to" in owner.log_file.read_text(errors="replace"),
             timeout=60, what=f"the second member to join ({owner.log_tail()})")
    produce(kafka_bootstrap, topic, [b"a", b"b"])
    zombie.wait_records(1, timeout=60)  # in the second handler's sleep now
    zombie.signal(signal.SIGSTOP)


def test_fenced_zombie_runs_no_handler_again_on_its_way_out(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """A member frozen (SIGSTOP) in the middle of its batch past max.poll.interval.ms; a second
    member takes the partition (bumping its epoch); the first resumes, finishes the handler in
    hand and is fenced at its checkpoint row, and the new owner applies both messages. The
    first exits 1 with the fence in its log, no KeyError, and each message's handler ran in it
    exactly once: the close and the revoke that follow the fence run none again."""
    topic = create_topic(kafka_bootstrap, 1, prefix="zombie")
    group = unique_name("zombie")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=2, store=store.url,
                             max_poll_interval_ms=7000)
    zombie = ConsumerProcess(tmp_path, "zombie", config, env={"RECORD_SLEEP_SECONDS": "2"})
    owner = ConsumerProcess(tmp_path, "owner", config)
    try:
        _freeze_first_member_inside_its_batch(kafka_bootstrap, topic, zombie, owner)
        try:
            wait_for(lambda: owner.owned_partitions() == {0}, timeout=90,
                     what="the new owner to take the partition")
        finally:
            zombie.signal(signal.SIGCONT)
        code = zombie.wait(timeout=60)
        wait_for(lambda: _checkpoint_row(store) == 2, timeout=60,
                 what=f"the new owner to apply both messages ({owner.log_tail()})")
        log = zombie.log_file.read_text(errors="replace")
        assert code == 1, zombie.log_tail(40)
        assert "fenced on" in log, zombie.log_tail(40)
        assert "KeyError" not in log, zombie.log_tail(40)
        calls = Counter(offset for _, offset, _ in zombie.records())
        assert calls == {0: 1, 1: 1}, (calls, zombie.log_tail(40))
    finally:
        zombie.stop_if_running()
        owner.signal(signal.SIGTERM)
        owner.wait()


@pytest.mark.parametrize("metrics", [True, False], ids=["metrics", "no-metrics"])
def test_frozen_zombie_costs_the_new_owner_at_most_the_idle_bound(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path, metrics: bool
) -> None:
    """A member frozen (SIGSTOP) inside its batch, its keys claimed and uncommitted, STAYS
    frozen. The new owner takes the partition over and applies both messages while the zombie
    is still stopped: the server ends the zombie's session after
    store.postgres_idle_in_transaction_timeout_seconds, which frees its claimed keys, and the
    new owner's claim waits at most store.postgres_lock_timeout_seconds per try. (With the
    idle bound set to an hour, the new owner stalls until the zombie is resumed.) With metrics
    on and off: the timed store behind metrics once ran a batch's steps itself, which hid that
    the PostgreSQL store's own opening (BEGIN and the claim in one pipeline) kept a frozen
    zombie's transaction past the idle bound."""
    idle_bound = 4.0
    topic = create_topic(kafka_bootstrap, 1, prefix="frozen")
    group = unique_name("frozen")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=2, store=store.url,
                             max_poll_interval_ms=7000)
    config["store"].update({  # type: ignore[union-attr]
        "postgres_idle_in_transaction_timeout_seconds": idle_bound,
        "postgres_lock_timeout_seconds": 1.0, "max_backoff_seconds": 1.0})
    config["metrics"] = {**config["metrics"], "enabled": metrics}  # type: ignore[dict-item]
    zombie = ConsumerProcess(tmp_path, "zombie", config, env={"RECORD_SLEEP_SECONDS": "2"})
    owner = ConsumerProcess(tmp_path, "owner", config)
    try:
        _freeze_first_member_inside_its_batch(kafka_bootstrap, topic, zombie, owner)
        try:
            wait_for(lambda: owner.owned_partitions() == {0}, timeout=90,
                     what="the new owner to take the partition")
            # Taking over needs max.poll.interval.ms (7 s), longer than the idle bound: the
            # owner's claim should find the keys free at once, and at worst wait one idle
            # bound plus a lock timeout and a backoff.
            wait_for(lambda: _checkpoint_row(store) == 2, timeout=idle_bound + 2 + 10,
                     what=f"the new owner to apply both messages while the zombie is "
                     f"still frozen ({owner.log_tail()})")
            assert sorted(offset for _, offset, _ in owner.records()) == [0, 1]
        finally:
            zombie.signal(signal.SIGCONT)
        # Resumed, the zombie finds its session ended (the batch rolled back) and its
        # partition gone; it stays an idle member until stopped.
        zombie.signal(signal.SIGTERM)
        zombie.wait(timeout=60)
    finally:
        zombie.stop_if_running()
        owner.signal(signal.SIGTERM)
        owner.wait()
    assert store.processed_key_count() == 2
