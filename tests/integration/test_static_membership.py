"""Static group membership (``kafka.group_instance_id``) on the real broker.

A static member that stops does not leave the group (librdkafka sends no LeaveGroup for it), so
its partitions stay assigned to it until ``session_timeout_ms``; back within that, it gets the
same partitions and the other members see no rebalance. Without instance ids the same restart
moves partitions twice (to the survivor and back).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config

from tests.support.kafka import create_topic, unique_name, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4
#: Small, so the test is quick, and large enough for a loaded machine to restart a process
#: (interpreter, imports, group join) well within it.
SESSION_TIMEOUT_MS = 10_000
REBALANCE_MARKERS = ("consumer.engine: assigned ", "consumer.engine: revoked ",
                     "consumer.engine: lost ")


def rebalance_lines(member: ConsumerProcess) -> list[str]:
    """The member's assignment changes, in order, from its own log."""
    if not member.log_file.exists():
        return []
    return [line for line in member.log_file.read_text(errors="replace").splitlines()
            if any(marker in line for marker in REBALANCE_MARKERS)]


def start_pair(kafka_bootstrap: str, tmp_path: Path, *, static: bool
               ) -> tuple[dict[str, object], ConsumerProcess, ConsumerProcess]:
    """Two members of a fresh group splitting a fresh topic, both owning some partitions."""
    topic = create_topic(kafka_bootstrap, PARTITIONS, prefix="static")
    config = consumer_config(kafka_bootstrap, unique_name("static"), topic,
                             session_timeout_ms=SESSION_TIMEOUT_MS)

    def member(name: str) -> ConsumerProcess:
        kafka = dict(config["kafka"])
        if static:
            kafka["group_instance_id"] = f"{name}-instance"
        return ConsumerProcess(tmp_path, name, {**config, "kafka": kafka})

    a, b = member("a").start(), member("b").start()

    def split() -> bool:
        mine_a, mine_b = a.owned_partitions(), b.owned_partitions()
        return (bool(mine_a) and bool(mine_b) and not mine_a & mine_b
                and mine_a | mine_b == set(range(PARTITIONS)))

    wait_for(split, timeout=60, what=f"a and b to split the partitions ({b.log_tail()})")
    return config, a, b


def restart(member: ConsumerProcess, name: str) -> ConsumerProcess:
    """SIGTERM the member, wait for its clean exit, start the same config again (new log)."""
    member.signal(signal.SIGTERM)
    assert member.wait() == 0, member.log_tail()
    return ConsumerProcess(member.workdir, name, member.config).start()


def test_static_member_restarted_within_the_session_gets_its_partitions_back_without_rebalance(
    kafka_bootstrap: str, tmp_path: Path,
) -> None:
    _config, a, b = start_pair(kafka_bootstrap, tmp_path, static=True)
    again = None
    try:
        a_partitions, b_partitions = a.owned_partitions(), b.owned_partitions()
        b_before = rebalance_lines(b)
        stopped_at = time.monotonic()
        again = restart(a, "a-again")
        wait_for(lambda: again.owned_partitions() == a_partitions, timeout=30,
                 what=f"the restarted member to get {a_partitions} back ({again.log_tail()})")
        # A rebalance could still come when the broker expires the old instance: watch b until
        # a whole session timeout (and two heartbeats) has passed since a stopped.
        window_ends = stopped_at + SESSION_TIMEOUT_MS / 1000 + 1.0
        wait_for(lambda: rebalance_lines(b) != b_before or time.monotonic() > window_ends,
                 timeout=SESSION_TIMEOUT_MS / 1000 + 30, what="the observation window")
        assert rebalance_lines(b) == b_before, "b saw a rebalance: " + "\n".join(
            rebalance_lines(b)[len(b_before):])
        assert b.owned_partitions() == b_partitions
        assert again.owned_partitions() == a_partitions
        assert b.alive() and again.alive()
    finally:
        for member in (a, b, again):
            if member is not None:
                member.stop_if_running()


def test_dynamic_members_rebalance_on_the_same_restart(
    kafka_bootstrap: str, tmp_path: Path,
) -> None:
    """The contrast: without instance ids a stopping member leaves the group at once and the
    survivor goes through a rebalance (it takes the partitions, or, when the restarted member
    joins within the same rebalance, is at least told the new assignment), where the static
    member's survivor above logs no assignment change at all."""
    _config, a, b = start_pair(kafka_bootstrap, tmp_path, static=False)
    again = None
    try:
        b_before = rebalance_lines(b)
        again = restart(a, "a-again")
        wait_for(lambda: bool(again.owned_partitions()), timeout=60,
                 what=f"the restarted member to get partitions ({again.log_tail()})")
        moved = rebalance_lines(b)[len(b_before):]
        # Whether b takes a's partitions or the restarted member joins first and gets them
        # back, b logs the rebalance (seen both ways); the static survivor logs none.
        assert moved, "b saw no rebalance"
    finally:
        for member in (a, b, again):
            if member is not None:
                member.stop_if_running()
