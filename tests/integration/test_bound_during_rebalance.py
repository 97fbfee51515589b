"""The unconfirmed bound holds across a rebalance: a member dropped by the group while at its
bound is refused its confirming commit and rejoins inside the confirming poll; what that poll
brings counts against the bound too, so a crash still repeats at most
``max_unconfirmed_messages``."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient, NewPartitions
from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.kafka import create_topic, group_offsets, produce, unique_name

pytestmark = pytest.mark.integration


def _stopped(process: ConsumerProcess) -> bool:
    """Whether the child is stopped by a signal (state T in /proc)."""
    assert process.process is not None
    stat = Path(f"/proc/{process.process.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def _group_empty(admin: AdminClient, group: str) -> bool:
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return description.state == ConsumerGroupState.EMPTY and not description.members


def _add_partition(admin: AdminClient, topic: str) -> None:
    admin.create_partitions([NewPartitions(topic, 2)])[topic].result(timeout=30)

    def ready() -> bool:
        found = admin.list_topics(topic=topic, timeout=5).topics[topic].partitions
        return len(found) == 2 and all(p.leader >= 0 for p in found.values())

    wait_for(ready, timeout=30, what=f"partition 1 of {topic} to have a leader")


def test_crash_after_rejoining_at_the_bound_repeats_at_most_the_bound(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Asynchronous commits, every_messages = max_unconfirmed_messages = 10, batches of 100.

    The handler freezes the process (SIGSTOP) on the 10th message of partition 0, the one that
    brings it to its bound; meanwhile the group drops the member (session timeout) and the
    topic grows a partition 1 holding 200 messages. Resumed, the loop confirms synchronously,
    the broker refuses (unknown member), and the loop polls with partition 0 paused while it
    rejoins and is given partitions 0 and 1. Partition 1's messages count against the bound
    too: a SIGKILL on partition 1's offset 50 leaves at most 10 of the messages handled since
    the rejoin uncommitted, so the restarted consumer handles at most 10 of them again (before
    the fix: partition 1's first 100 messages were handled at once, and 51 came again)."""
    total, bound, kill_at = 200, 10, 50
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 4})
    topic = create_topic(kafka_bootstrap, 1, prefix="bound-rejoin")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(total)))
    group = unique_name("bound-rejoin")
    config = consumer_config(kafka_bootstrap, group, topic,
                             handler="tests.support.freezing_handler:handle",
                             every_messages=bound, poll_batch_size=100,
                             max_poll_interval_ms=7000,
                             # Long enough for the rejoin to complete inside the poll that
                             # waits for it; batches fill at once, so nothing else waits.
                             poll_timeout_seconds=10)
    config["checkpoint"]["max_unconfirmed_messages"] = bound
    flag = tmp_path / "frozen"
    first = ConsumerProcess(tmp_path, "first", config, env={
        "FREEZE_FLAG": str(flag), "FREEZE_ON_VALUE": str(bound - 1),
        "KILL_ON_VALUE": str(1000 + kill_at)}).start()
    second: ConsumerProcess | None = None
    everything = {(p, o) for p in (0, 1) for o in range(total)}
    try:
        wait_for(lambda: flag.exists() and _stopped(first), timeout=30,
                 what=f"the first consumer to freeze at its bound ({first.log_tail()})")
        _add_partition(admin, topic)
        produce(kafka_bootstrap, topic, (str(1000 + i).encode() for i in range(total)),
                partition=lambda _: 1)
        wait_for(lambda: _group_empty(admin, group), timeout=30,
                 what=f"group {group} to drop the frozen member")
        first.signal(signal.SIGCONT)
        assert first.wait(timeout=30) == -signal.SIGKILL, first.log_tail()
        # The case under test happened: the confirming commit was refused, the member rejoined.
        log = first.log_file.read_text(errors="replace")
        assert "offset commit failed (count): Kafka error UNKNOWN_MEMBER_ID" in log, log
        assert any("consumer.engine: assigned" in line and f"{topic}[1]" in line
                   for line in log.splitlines()), log
        committed = group_offsets(kafka_bootstrap, group, topic, 2)
        records = first.records()
        frozen_at = records.index((0, bound - 1, str(bound - 1)))
        # What the frozen member had handled was lost with its partitions (a rebalance repeats
        # its unconfirmed work, within the bound); the crash is measured from the rejoin on.
        handled_first = {(p, o) for p, o, _ in records[frozen_at + 1:]}

        restart = dict(config, routes={topic: "handlers.record:handle"},
                       kafka=dict(config["kafka"], poll_timeout_seconds=0.5))
        second = ConsumerProcess(tmp_path, "second", restart).start()
        wait_for(lambda: {(p, o) for p, o, _ in records + second.records()} >= everything,
                 timeout=30, what=f"every record handled after the restart ({second.log_tail()})")
        second.signal(signal.SIGTERM)
        assert second.wait() == 0, second.log_tail()
    finally:
        first.stop_if_running()
        if second is not None:
            second.stop_if_running()
    repeated = sorted(handled_first & {(p, o) for p, o, _ in second.records()})
    assert (1, kill_at) in handled_first
    assert len(repeated) <= bound, (
        f"killed on partition 1 offset {kill_at} with Kafka's committed offsets at "
        f"{committed}: the restart handled {len(repeated)} messages again "
        f"({repeated[0]}..{repeated[-1]}), more than max_unconfirmed_messages={bound}"
    )
