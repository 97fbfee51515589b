"""`consumer run` as a real process: SIGKILL costs at most one checkpoint interval of re-reads,
SIGTERM costs none, and a second group member takes over a killed one's partitions."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from consumer_process import ConsumerProcess, consumer_config, duplicates

from consumer.engine.direct_mode import UNCONFIRMED_INTERVALS
from tests.support.kafka import create_topic, group_offsets, produce, unique_name, wait_for

pytestmark = pytest.mark.integration


def _values(records: list[tuple[int, int, str]]) -> set[int]:
    return {int(value) for _, _, value in records}


@pytest.mark.parametrize(
    ("synchronous", "every", "max_unconfirmed", "bound"),
    [(True, 500, None, 1), (False, 100, None, UNCONFIRMED_INTERVALS), (False, 500, 1_000, 2)],
    ids=["synchronous-commits", "asynchronous-commits", "asynchronous-commits-bounded"],
)
def test_sigkill_rereads_at_most_the_unconfirmed_intervals(
    kafka_bootstrap: str, tmp_path: Path, synchronous: bool, every: int,
    max_unconfirmed: int | None, bound: int
) -> None:
    """Killed with SIGKILL at a random point, the restarted consumer handles again at most
    every_messages records with synchronous commits, at most max_unconfirmed_messages with
    asynchronous ones (fifty intervals by default: 5,000 of the 20,000 records here), and
    every record is handled at least once."""
    total = 20_000
    assert bound * every < total, "a bound above the topic could never be broken"
    topic = create_topic(kafka_bootstrap, 3, prefix="sigkill")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(total)))
    config = consumer_config(kafka_bootstrap, unique_name("sigkill"), topic,
                             every_messages=every, poll_batch_size=200,
                             synchronous_commits=synchronous)
    config["checkpoint"]["max_unconfirmed_messages"] = max_unconfirmed
    kill_at = random.Random().randint(2_000, total - 2_000)

    slow = {"RECORD_SLEEP_SECONDS": "0.0001"}
    first = ConsumerProcess(tmp_path, "run", config, env=slow).start()
    try:
        first.wait_records(kill_at)
        first.kill()
        handled_before = len(first.records())
        second = ConsumerProcess(tmp_path, "run", config).start()
        wait_for(lambda: _values(second.records()) == set(range(total)), timeout=120,
                 what=f"every record handled after the restart ({second.log_tail()})")
        second.signal(signal.SIGTERM)
        assert second.wait() == 0
    finally:
        first.stop_if_running()
    records = second.records()  # the same record file: both runs
    reread = duplicates(records)
    assert _values(records) == set(range(total))
    assert reread <= bound * every, (
        f"killed after {handled_before} records; {reread} handled twice, more than "
        f"{bound} x every_messages={every}"
    )


def test_sigterm_restart_rereads_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    """SIGTERM mid-stream: the consumer finishes the message in hand, commits, exits 0, and the
    next run starts exactly after it: zero records handled twice."""
    total = 10_000
    topic = create_topic(kafka_bootstrap, 3, prefix="sigterm")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(total)))
    config = consumer_config(kafka_bootstrap, unique_name("sigterm"), topic,
                             every_messages=1_000, every_seconds=None, poll_batch_size=100)

    first = ConsumerProcess(tmp_path, "run", config,
                            env={"RECORD_SLEEP_SECONDS": "0.0002"}).start()
    first.wait_records(3_000)
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.log_tail()
    stopped_at = len(first.records())
    assert stopped_at < total, "the first run handled everything; SIGTERM came too late"

    second = ConsumerProcess(tmp_path, "run", config).start()
    wait_for(lambda: len(second.records()) >= total, timeout=120,
             what=f"the restart to handle the rest ({second.log_tail()})")
    second.signal(signal.SIGTERM)
    assert second.wait() == 0, second.log_tail()
    records = second.records()
    assert duplicates(records) == 0
    assert _values(records) == set(range(total))


def test_second_member_takes_over_killed_members_partitions(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two consumers of one group split a 6-partition topic; when one is killed the other takes
    its partitions over, starting each exactly at the offset Kafka holds for the group."""
    partitions, total, every = 6, 12_000, 200
    topic = create_topic(kafka_bootstrap, partitions, prefix="takeover")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(total)),
            partition=lambda i: i % partitions)
    group = unique_name("takeover")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=every,
                             poll_batch_size=50)
    # The bound this test holds the consumer to: two intervals unconfirmed at most.
    config["checkpoint"]["max_unconfirmed_messages"] = 2 * every
    slow = {"RECORD_SLEEP_SECONDS": "0.001"}
    a = ConsumerProcess(tmp_path, "a", config, env=slow).start()
    b = ConsumerProcess(tmp_path, "b", config, env=slow).start()
    try:
        def split() -> bool:
            mine_a, mine_b = a.owned_partitions(), b.owned_partitions()
            return (bool(mine_a) and bool(mine_b) and not (mine_a & mine_b)
                    and mine_a | mine_b == set(range(partitions))
                    and any(p in mine_b for p, _, _ in b.records()))

        wait_for(split, timeout=60, what="both members to own partitions and b to handle some")
        b.kill()
        b_partitions = b.owned_partitions()
        committed = group_offsets(kafka_bootstrap, group, topic, partitions)
        handled_by_a_before = len(a.records())

        wait_for(lambda: _values(a.records()) | _values(b.records()) == set(range(total)),
                 timeout=120, what=f"a to finish b's partitions ({a.log_tail()})")
        a.signal(signal.SIGTERM)
        assert a.wait() == 0, a.log_tail()
    finally:
        a.stop_if_running()
        b.stop_if_running()

    taken_over = a.records()[handled_by_a_before:]
    for partition in b_partitions:
        offsets = [o for p, o, _ in taken_over if p == partition]
        assert offsets, f"a never handled partition {partition} after b died"
        assert min(offsets) == (committed[partition] or 0)
    # At most two intervals unconfirmed when b died (the configured bound).
    assert duplicates(a.records() + b.records()) <= 2 * every
