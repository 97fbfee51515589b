"""`consumer run` on a real broker, observed only through its HTTP endpoint: lag falls to 0,
committed offsets match Kafka's, commits count by trigger, histograms count what happened, a
stuck handler shows in lag seconds, checkpoint age and its start time, a partition moved away
takes its series along, a paused partition's end keeps moving, and transactional input
leaves no lag of 1."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from consumer_process import ConsumerProcess, consumer_config

from tests.support.kafka import create_topic, group_offsets, produce, unique_name, wait_for
from tests.support.scrape import PER_PARTITION, Scrape, endpoint, health, scrape

pytestmark = pytest.mark.integration



def caught_up(s: Scrape, topic: str, partitions: int) -> bool:
    lag = s.by_partition("consumer_partition_lag_messages", topic)
    committed_lag = s.by_partition("consumer_partition_committed_lag_messages", topic)
    return (len(lag) == partitions and not any(lag.values())
            and len(committed_lag) == partitions and not any(committed_lag.values()))


def test_fifty_thousand_messages_lag_falls_to_zero_and_commits_match_kafka(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """3 partitions, 50,000 messages, a checkpoint every 1,000 (synchronous commits, so no
    checkpoint waits for the previous one): once caught up, processed and committed lag are 0
    everywhere, committed_offset equals the group's offsets in Kafka, and
    commits_total{trigger="count"} is 50."""
    topic = create_topic(kafka_bootstrap, 3, prefix="metrics-run")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(50_000)))
    group = unique_name("metrics-run")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=1000,
                             synchronous_commits=True)
    run = ConsumerProcess(tmp_path, "run", config).start()
    try:
        base = endpoint(run)
        wait_for(lambda: caught_up(scrape(base), topic, 3), timeout=120,
                 what=f"lag to fall to 0 ({run.log_tail()})")
        s = scrape(base)
        kafka = group_offsets(kafka_bootstrap, group, topic, 3)
        assert s.by_partition("consumer_committed_offset", topic) == {
            p: float(o) for p, o in kafka.items() if o is not None}
        assert sum(kafka.values()) == 50_000  # type: ignore[arg-type]
        assert s.by_partition("consumer_partition_end_offset", topic) == {
            p: float(o) for p, o in kafka.items() if o is not None}
        assert s.value("consumer_commits_total", trigger="count", result="success") == 50
        assert s.value("consumer_commits_total", trigger="count", result="error") == 0
        assert s.value("consumer_messages_processed_total", topic=topic,
                       outcome="success") == 50_000
        assert sum(s.by_partition("consumer_messages_consumed_total", topic).values()) == 50_000
        # Bytes as fetched (record batches may be fetched more than once): at least the payload.
        assert (s.value("consumer_consumed_bytes_total", topic=topic) or 0) >= 2 * sum(
            len(str(i)) for i in range(50_000))
        assert set(s.by_partition("consumer_partition_lag_seconds", topic).values()) == {0.0}
        assert s.value("consumer_assigned_partitions", topic=topic) == 3
        assert s.value("consumer_state", state="running") == 1
        # Histograms: every handler call, every done message's age, every commit, the join.
        assert s.value("consumer_handler_duration_seconds_count", topic=topic,
                       outcome="success") == 50_000
        assert s.value("consumer_handler_duration_seconds_count", topic=topic,
                       outcome="error") == 0
        assert s.value("consumer_message_age_seconds_count", topic=topic) == 50_000
        assert (s.value("consumer_message_age_seconds_sum", topic=topic) or 0) > 0
        commits = s.value("consumer_commit_duration_seconds_count") or 0
        assert commits >= 50  # every checkpoint's commit (a confirming re-commit counts too)
        assert (s.value("consumer_rebalance_duration_seconds_count") or 0) >= 1
        assert s.value("consumer_handler_oldest_start_timestamp_seconds") == 0
        assert s.value("consumer_paused_partitions", topic=topic) == 0
    finally:
        run.signal(signal.SIGTERM)
        assert run.wait() == 0


def test_a_blocked_handler_grows_lag_seconds_and_checkpoint_age_which_fall_back_after(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Message 5 of 10 blocks its handler for 10 s: lag seconds and checkpoint age grow while
    it blocks (liveness holds), return to 0 after the next interval commit, and stay 0 while
    the caught-up consumer idles, however old the last message gets."""
    topic = create_topic(kafka_bootstrap, 1, prefix="metrics-blocked")
    group = unique_name("metrics-blocked")
    config = consumer_config(kafka_bootstrap, group, topic, handler="handlers.block:handle",
                             every_messages=None, every_seconds=1)
    run = ConsumerProcess(tmp_path, "run", config,
                          env={"BLOCK_ON_VALUE": "5", "BLOCK_SECONDS": "10"}).start()
    try:
        base = endpoint(run)
        wait_for(lambda: health(base, "/readyz")[0] == 200, timeout=30, what="ready")
        # One record batch, so the poll that brings 5 brings 6..9 too: the handler blocks the
        # polling thread, and the client's statistics (the log's end) wait for its next poll.
        # With the client's 5 ms linger, ten values once went out in two batches under load
        # and came in two fetches: lag read 1 (two produce calls 0.3 s apart reproduce it).
        produce(kafka_bootstrap, topic, (str(i).encode() for i in range(10)), linger_ms=10_000)
        wait_for(lambda: "blocking for" in run.log_file.read_text(), timeout=30,
                 what="the handler to block")

        def blocked_values() -> tuple[float, float, float]:
            s = scrape(base)
            return (s.value("consumer_partition_lag_seconds", topic=topic) or 0.0,
                    s.value("consumer_checkpoint_age_seconds", topic=topic) or 0.0,
                    s.value("consumer_partition_lag_messages", topic=topic) or 0.0)

        lag1, age1, messages = blocked_values()
        assert messages == 5  # 5..9 are not done
        assert lag1 > 0 and age1 > 0
        started = scrape(base).value("consumer_handler_oldest_start_timestamp_seconds") or 0
        assert time.time() - 12 < started <= time.time()
        wait_for(lambda: blocked_values()[0] >= lag1 + 2, timeout=8,
                 what=f"lag seconds to grow past {lag1 + 2:.1f} while blocked")
        _, age2, _ = blocked_values()
        assert age2 >= age1 + 2
        assert health(base, "/livez")[0] == 200  # 10 s is far from max.poll.interval.ms

        def recovered() -> bool:
            s = scrape(base)
            return (s.value("consumer_partition_lag_seconds", topic=topic) == 0
                    and s.value("consumer_partition_lag_messages", topic=topic) == 0
                    and s.value("consumer_checkpoint_age_seconds", topic=topic) == 0)

        wait_for(recovered, timeout=20, what=f"lag and checkpoint age back to 0 "
                                             f"({run.log_tail()})")
        assert run.records()[-1][2] == "9"
        s = scrape(base)
        assert s.value("consumer_handler_oldest_start_timestamp_seconds") == 0
        # The 10 s call is in the histogram, the nine others well under a second.
        wait_for(lambda: scrape(base).value("consumer_handler_duration_seconds_count",
                                            topic=topic, outcome="success") == 10,
                 timeout=5, what="all ten calls in the handler histogram")
        s = scrape(base)
        assert s.value("consumer_handler_duration_seconds_bucket", topic=topic,
                       outcome="success", le="1.0") == 9
        assert s.value("consumer_handler_duration_seconds_bucket", topic=topic,
                       outcome="success", le="5.0") == 9
        assert s.value("consumer_handler_duration_seconds_bucket", topic=topic,
                       outcome="success", le="30.0") == 10
        # Idle and caught up: 0 lag seconds, not the time since the last message.
        idle_until = time.monotonic() + 4
        while time.monotonic() < idle_until:
            s = scrape(base)
            assert s.value("consumer_partition_lag_seconds", topic=topic) == 0
            assert s.value("consumer_checkpoint_age_seconds", topic=topic) == 0
            time.sleep(0.5)  # pacing the observation, not synchronising with anything
        assert group_offsets(kafka_bootstrap, group, topic, 1) == {0: 10}
    finally:
        run.signal(signal.SIGTERM)
        assert run.wait() == 0


def test_series_of_a_partition_moved_to_another_member_disappear(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A owns both partitions; B joins and takes one: A's scrape no longer has any series of
    the partition it gave up, and still has those of the one it kept."""
    topic = create_topic(kafka_bootstrap, 2, prefix="metrics-rebalance")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(100)),
            partition=lambda i: i % 2)
    group = unique_name("metrics-rebalance")
    config = consumer_config(kafka_bootstrap, group, topic)
    first = ConsumerProcess(tmp_path, "a", config).start()
    second = ConsumerProcess(tmp_path, "b", config)
    try:
        a = endpoint(first)
        wait_for(lambda: scrape(a).partitions("consumer_partition_lag_messages") == {0, 1},
                 timeout=30, what=f"A to own and measure both partitions ({first.log_tail()})")
        wait_for(lambda: scrape(a).value("consumer_state", state="running") == 1, timeout=10,
                 what="A to be running after joining")
        joined = scrape(a).value("consumer_rebalance_duration_seconds_count") or 0
        assert joined >= 1
        second.start()
        b = endpoint(second)
        wait_for(lambda: len(scrape(b).partitions("consumer_partition_processed_offset")) == 1,
                 timeout=30, what=f"B to take a partition ({second.log_tail()})")
        moved = scrape(b).partitions("consumer_partition_processed_offset")
        wait_for(lambda: scrape(a).partitions("consumer_messages_consumed_total") ==
                 {0, 1} - moved, timeout=30, what="A to drop the moved partition's series")
        s = scrape(a)
        for name in PER_PARTITION:
            assert not s.partitions(name) & moved, name
        assert s.value("consumer_assigned_partitions", topic=topic) == 1
        assert (s.value("consumer_rebalances_total", event="revoke") or 0) >= 1
        # The rebalance ends with the (empty, cooperative) assignment after the revoke.
        wait_for(lambda: (scrape(a).value("consumer_rebalance_duration_seconds_count") or 0)
                 > joined and scrape(a).value("consumer_state", state="running") == 1,
                 timeout=30, what=f"A's rebalance to be timed and over ({first.log_tail()})")
    finally:
        for member in (second, first):
            if member.alive():
                member.signal(signal.SIGTERM)
                assert member.wait() == 0


def test_a_partition_paused_for_a_retry_keeps_its_end_offset_moving(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Partition 0's first message fails and waits 60 s for its next attempt, its partition
    paused; 20 messages produced to it meanwhile show in its end offset and lag (the client
    fetches nothing for it, so only the loop's throttled broker query can tell)."""
    topic = create_topic(kafka_bootstrap, 2, prefix="metrics-paused")
    produce(kafka_bootstrap, topic, [json.dumps({"n": 0, "kind": "fail"}).encode()],
            partition=lambda i: 0)
    group = unique_name("metrics-paused")
    config = consumer_config(kafka_bootstrap, group, topic, every_seconds=1.0)
    config["routes"] = {topic: _failing_route(backoff=60.0)}
    run = ConsumerProcess(tmp_path, "run", config).start()
    try:
        base = endpoint(run)
        wait_for(lambda: scrape(base).value("consumer_paused_partitions", topic=topic) == 1,
                 timeout=60, what=f"partition 0 to be paused for its retry ({run.log_tail()})")
        assert scrape(base).by_partition("consumer_partition_end_offset", topic).get(0) in (
            None, 1.0)
        produce(kafka_bootstrap, topic,
                (json.dumps({"n": i, "kind": "good"}).encode() for i in range(1, 21)),
                partition=lambda i: 0)

        def paused_partition() -> tuple[float | None, float | None]:
            s = scrape(base)
            return (s.by_partition("consumer_partition_end_offset", topic).get(0),
                    s.by_partition("consumer_partition_lag_messages", topic).get(0))

        wait_for(lambda: paused_partition() == (21, 21), timeout=20,
                 what=f"the paused partition's end to reach 21 (now {paused_partition()})")
        assert scrape(base).value("consumer_paused_partitions", topic=topic) == 1
        assert (scrape(base).by_partition("consumer_partition_lag_seconds", topic)
                .get(0) or 0) > 0
    finally:
        run.signal(signal.SIGTERM)
        assert run.wait() == 0


def test_transactional_input_lag_reaches_zero_not_one(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two transactions of 10 messages: each commit marker takes an offset no handler sees
    (the end is 22). Processed and committed lag still fall to 0."""
    from confluent_kafka import Producer

    topic = create_topic(kafka_bootstrap, 1, prefix="metrics-txn")
    group = unique_name("metrics-txn")
    config = consumer_config(kafka_bootstrap, group, topic, every_messages=None,
                             every_seconds=1.0)
    run = ConsumerProcess(tmp_path, "run", config).start()
    producer = Producer({"bootstrap.servers": kafka_bootstrap,
                         "transactional.id": unique_name("metrics-txn")})
    try:
        base = endpoint(run)
        wait_for(lambda: health(base, "/readyz")[0] == 200, timeout=30, what="ready")
        producer.init_transactions(30)
        for batch in range(2):
            producer.begin_transaction()
            for i in range(10):
                producer.produce(topic, value=str(batch * 10 + i).encode())
            producer.commit_transaction(30)
        run.wait_records(20)

        def lags() -> dict[str, Any]:
            s = scrape(base)
            return {name: s.value(name, topic=topic) for name in (
                "consumer_partition_end_offset", "consumer_partition_processed_offset",
                "consumer_partition_lag_messages", "consumer_partition_committed_lag_messages",
                "consumer_partition_lag_seconds")}

        # The end offset comes from the client's statistics, a moment after the messages:
        # until it is known the lag reads 0 trivially, so wait for the end as well.
        wait_for(lambda: (now := lags())["consumer_partition_end_offset"] == 22
                 and now["consumer_partition_lag_messages"] == 0
                 and now["consumer_partition_committed_lag_messages"] == 0, timeout=20,
                 what=f"the end at 22 and lag at 0 (now {lags()})")
        assert lags()["consumer_partition_end_offset"] == 22
        assert lags()["consumer_partition_lag_seconds"] == 0
        # Kafka holds the watermark (after the last message), as the store would.
        assert group_offsets(kafka_bootstrap, group, topic, 1) == {0: 21}
    finally:
        run.signal(signal.SIGTERM)
        assert run.wait() == 0


def _failing_route(*, backoff: float) -> dict[str, Any]:
    return {"handler": "tests.support.failing_handlers:apply", "format": "json",
            "retry": {"attempts": 3, "initial_backoff_seconds": backoff,
                      "max_backoff_seconds": backoff, "multiplier": 1.0, "jitter": 0.0}}
