"""Routes with ``concurrency`` against a real broker: key and partition ordering hold under
100,000 messages with random handler delays (plain and ``async def`` handlers), SIGKILL repeats
stay within the stated bound, a failing key holds back only itself, and SIGTERM finishes what
runs and repeats nothing.

Every handler call is recorded by ``tests.support.concurrent_handlers``; the checkers in
``tests.support.concurrency_check`` read the records. ``CONSUMER_CONCURRENCY_MESSAGES`` sets
the size of the ordering runs (default 100,000).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from consumer_process import ConsumerProcess, consumer_config, wait_for

from consumer.kafka.commit_metadata import finished_in
from tests.support.concurrency_check import (
    BY_PARTITION,
    Call,
    CrashBound,
    OrderingViolation,
    RecordFile,
    by_assignment,
    check_all_handled,
    check_order,
    check_repeats,
    max_parallel,
    read_calls,
    read_starts,
    repeats_by_run,
    runs_in_order,
)
from tests.support.kafka import (
    create_named_topic,
    create_topic,
    end_offsets,
    group_commits,
    group_offsets,
    produce,
    read_topic,
    unique_name,
)

pytestmark = pytest.mark.integration

MESSAGES = int(os.environ.get("CONSUMER_CONCURRENCY_MESSAGES", "100000"))
KEYS, PARTITIONS = 1_000, 6
SYNC = "tests.support.concurrent_handlers:handle"
ASYNC = "tests.support.concurrent_handlers:handle_async"


class Plan:
    """Messages over ``keys`` keys in a random order, each key's values its sequence numbers.

    The order is random (seeded): in a window of a few dozen offsets of a partition a key
    often appears twice, so running two of its messages at once would show."""

    def __init__(self, count: int, keys: int = KEYS, *, seed: int = 11) -> None:
        rng = random.Random(seed)
        names = [f"k{i:04d}" for i in range(keys)]
        self.keys = [rng.choice(names) for _ in range(count)]
        seq: Counter[str] = Counter()
        self.seqs = []
        for key in self.keys:
            self.seqs.append(seq[key])
            seq[key] += 1
        #: Per key, its sequence numbers in the order produced.
        self.expected = {key: list(range(n)) for key, n in seq.items()}

    def produce(self, bootstrap: str, topic: str) -> None:
        produce(bootstrap, topic, (str(s).encode() for s in self.seqs),
                key=lambda i: self.keys[i].encode(), in_order=True)


def _config(bootstrap: str, topic: str, *, handler: str, concurrency: int, ordering: str,
            group: str | None = None, **options: Any) -> dict[str, Any]:
    config = consumer_config(bootstrap, group or unique_name("conc"), topic,
                             every_messages=options.pop("every_messages", 2_000),
                             every_seconds=options.pop("every_seconds", 1.0),
                             **options)
    config["routes"] = {topic: {"handler": handler, "concurrency": concurrency,
                                "ordering": ordering}}
    config["log_level"] = "INFO"  # a DEBUG line per checkpoint slows 100,000 messages down
    return config


def _offsets_at_end(bootstrap: str, group: str, topic: str) -> bool:
    ends = end_offsets(bootstrap, topic)
    return group_offsets(bootstrap, group, topic, len(ends)) == ends


def _run_to_end(bootstrap: str, tmp_path: Path, topic: str, config: dict[str, Any],
                env: dict[str, str] | None = None, *, expected: int,
                timeout: float = 180) -> list[Call]:
    """Run one consumer until ``expected`` messages (all runs together) were handled; SIGTERM;
    exit 0; the group's offsets are then at the log end. Returns every recorded call."""
    group = config["kafka"]["group_id"]
    records = RecordFile(tmp_path / "run.records")
    run = ConsumerProcess(tmp_path, "run", config, env=env or {}).start()
    try:
        wait_for(lambda: records.handled() >= expected
                 or not run.alive(), timeout=timeout, interval=0.5,
                 what=f"{expected} messages handled ({run.log_tail()})")
        assert run.alive(), f"the consumer exited: {run.log_tail()}"
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()
    assert _offsets_at_end(bootstrap, group, topic)
    return read_calls(run.record_file)


def _produced(bootstrap: str, plan: Plan, prefix: str) -> str:
    topic = create_topic(bootstrap, PARTITIONS, prefix=prefix)
    plan.produce(bootstrap, topic)
    return topic


def _partition_offsets(bootstrap: str, topic: str) -> dict[int, list[int]]:
    return {p: list(range(end)) for p, end in end_offsets(bootstrap, topic).items()}


@pytest.mark.parametrize(("handler", "concurrency"), [(SYNC, 50), (ASYNC, 200)],
                         ids=["sync-50", "async-200"])
def test_key_ordering_runs_each_key_alone_and_in_order(
    kafka_bootstrap: str, tmp_path: Path, handler: str, concurrency: int
) -> None:
    """100,000 messages over 1,000 keys and 6 partitions, random 0-5 ms handler delays,
    ordering: key: no key ever has two calls at once or a sequence number out of order; every
    message is handled once; the group's offsets end at the log end; and keys really ran in
    parallel, within partitions too (so the partition checker, given the same calls, fails)."""
    plan = Plan(MESSAGES)
    topic = _produced(kafka_bootstrap, plan, "conc-key")
    config = _config(kafka_bootstrap, topic, handler=handler, concurrency=concurrency,
                     ordering="key")
    calls = _run_to_end(kafka_bootstrap, tmp_path, topic, config, expected=MESSAGES)

    check_order(calls, lane="key", expected=plan.expected)
    check_all_handled(calls, plan.expected)
    assert len(calls) == MESSAGES, "a message was handled twice without a crash"
    assert max_parallel(calls) > concurrency // 4, "calls hardly ran at once"
    assert max_parallel(calls) <= concurrency
    assert max_parallel(calls, BY_PARTITION) > 1, "keys of one partition never ran at once"
    with pytest.raises(OrderingViolation):
        check_order(calls, lane="partition",
                    expected=_partition_offsets(kafka_bootstrap, topic))


def test_partition_ordering_runs_each_partition_alone_and_in_order(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The same 100,000 messages with ordering: partition and concurrency 50: no partition has
    two calls at once, offsets run in order, partitions run in parallel, all handled."""
    plan = Plan(MESSAGES)
    topic = _produced(kafka_bootstrap, plan, "conc-part")
    # Six lanes at most: shorter delays keep the run short, and a buffer as large as the
    # topic lets every partition's messages in at once (a smaller one holds two partitions'
    # backlogs, and only those run).
    config = _config(kafka_bootstrap, topic, handler=SYNC, concurrency=50,
                     ordering="partition", max_buffered_messages=MESSAGES)
    calls = _run_to_end(kafka_bootstrap, tmp_path, topic, config,
                        env={"CONC_DELAY_MAX_MS": "0.5"}, expected=MESSAGES)

    check_order(calls, lane="partition", expected=_partition_offsets(kafka_bootstrap, topic))
    check_order(calls, lane="key", expected=plan.expected)
    check_all_handled(calls, plan.expected)
    assert len(calls) == MESSAGES
    assert 1 < max_parallel(calls) <= PARTITIONS, "partitions did not run in parallel"


def test_ordering_none_is_caught_by_both_checkers(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The checkers can fail: the same run with ordering: none breaks key and partition order,
    and both checkers say so (every message is still handled)."""
    plan = Plan(MESSAGES)
    topic = _produced(kafka_bootstrap, plan, "conc-none")
    config = _config(kafka_bootstrap, topic, handler=SYNC, concurrency=50, ordering="none")
    calls = _run_to_end(kafka_bootstrap, tmp_path, topic, config, expected=MESSAGES)

    check_all_handled(calls, plan.expected)
    with pytest.raises(OrderingViolation, match="by key"):
        check_order(calls, lane="key", expected=plan.expected)
    with pytest.raises(OrderingViolation, match="by partition"):
        check_order(calls, lane="partition",
                    expected=_partition_offsets(kafka_bootstrap, topic))


CRASH_MESSAGES = int(os.environ.get("CONSUMER_CONCURRENCY_CRASH_MESSAGES",
                                    str(max(MESSAGES // 4, 5_000))))
KILLS = 3


#: Per run (its process id), per partition: an offset, or offsets.
PerRun = dict[int, dict[int, int]]
ListedPerRun = dict[int, dict[int, set[int]]]


def _kill_repeatedly(bootstrap: str, tmp_path: Path, topic: str, config: dict[str, Any],
                     *, kills: int, rng: random.Random,
                     ) -> tuple[list[Call], PerRun, ListedPerRun]:
    """SIGKILL the consumer ``kills`` times at random moments, restarting it each time, then
    let the last run finish. Returns the calls and, per run, the offsets it started at and
    the offsets above them that the commits' metadata listed as finished."""
    group = config["kafka"]["group_id"]
    records = RecordFile(tmp_path / "run.records")
    starts: PerRun = {}
    listed: ListedPerRun = {}
    between = max(500, CRASH_MESSAGES // (2 * (kills + 1)))
    for attempt in range(kills + 1):
        committed = group_commits(bootstrap, group, topic, PARTITIONS)
        run = ConsumerProcess(tmp_path, "run", config).start()
        assert run.process is not None
        starts[run.process.pid] = {p: o or 0 for p, (o, _) in committed.items()}
        listed[run.process.pid] = {p: finished_in(metadata, o or 0)
                                   for p, (o, metadata) in committed.items()}
        try:
            if attempt < kills:
                _kill_after(run, records, rng.randint(between // 2, between * 3 // 2))
                continue
            # B023: the condition is only called during this iteration.
            wait_for(lambda: records.handled() >= CRASH_MESSAGES or not run.alive(),  # noqa: B023
                     timeout=180, interval=0.5,
                     what=f"the last run to handle the rest ({run.log_tail()})")
            run.signal(signal.SIGTERM)
            assert run.wait() == 0, run.log_tail()
            assert _offsets_at_end(bootstrap, group, topic)
        finally:
            run.stop_if_running()
    return read_calls(records.path), starts, listed


def _kill_after(run: ConsumerProcess, records: RecordFile, handled: int) -> None:
    """SIGKILL ``run`` once it has handled ``handled`` messages itself."""
    assert run.process is not None
    pid = run.process.pid
    wait_for(lambda: sum(c.run == pid for c in records.calls()) >= handled or not run.alive(),
             timeout=60, interval=0.02,
             what=f"run {pid} to handle {handled} messages ({run.log_tail()})")
    assert run.alive(), f"run {pid} exited: {run.log_tail()}"
    run.kill()


@pytest.mark.parametrize(("handler", "concurrency"), [(SYNC, 50), (ASYNC, 200)],
                         ids=["sync-50", "async-200"])
def test_sigkill_repeats_stay_within_the_bound(
    kafka_bootstrap: str, tmp_path: Path, handler: str, concurrency: int
) -> None:
    """SIGKILL at random moments, three times, restarting each time: every message is handled
    at least once, keys stay in order (a crash re-runs whole suffixes of a key's messages),
    and each kill repeats at most every_messages + concurrency + max_buffered_messages
    (tests.support.concurrency_check.CrashBound), with synchronous commits."""
    bound = CrashBound(every_messages=500, concurrency=concurrency, max_buffered=1_000)
    plan = Plan(CRASH_MESSAGES)
    topic = _produced(kafka_bootstrap, plan, "conc-kill")
    group = unique_name("conc-kill")
    config = _config(kafka_bootstrap, topic, handler=handler, concurrency=concurrency,
                     ordering="key", group=group, every_messages=bound.every_messages,
                     every_seconds=None, synchronous_commits=True,
                     max_buffered_messages=bound.max_buffered)
    # A restarted member with the same instance id gets its partitions back at once, instead
    # of after the killed one's session times out.
    config["kafka"]["librdkafka"]["group.instance.id"] = unique_name("member")
    calls, starts, listed = _kill_repeatedly(kafka_bootstrap, tmp_path, topic, config,
                                             kills=KILLS, rng=random.Random())

    assert len(runs_in_order(calls)) == KILLS + 1
    check_all_handled(calls, plan.expected)
    check_order(calls, lane="key", expected=plan.expected)
    kills = check_repeats(calls, bound, starts, listed)
    print(f"bound {bound}; per kill (repeats, largest gap):",
          [(k.repeats, k.largest_gap) for k in kills])


def test_two_members_sigkill_and_rebalance_repeat_within_the_bound(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two members share 6 partitions; member b is SIGKILLed twice at random moments, a takes
    its partitions over, b is restarted and a rebalance hands some back (revoking them from a
    while its handlers run). Every message is handled; keys stay in order across members (a
    revoked partition's running work ends before the next owner starts it); each kill of b
    repeats at most b's CrashBound; a, never killed, repeats at most its buffer per revoke
    (running work finishes and is committed, but a revoke drops the queued messages; its
    commit lists what had finished above the first of them, which the next owner skips, and
    only a list too long for the commit's metadata leaves them to be repeated)."""
    total, concurrency = 60_000, 20
    bound = CrashBound(every_messages=500, concurrency=concurrency, max_buffered=1_000)
    plan = Plan(total, seed=17)
    topic = _produced(kafka_bootstrap, plan, "conc-two")
    config = _config(kafka_bootstrap, topic, handler=SYNC, concurrency=concurrency,
                     ordering="key", every_messages=bound.every_messages, every_seconds=None,
                     synchronous_commits=True, max_buffered_messages=bound.max_buffered)
    env = {"CONC_DELAY_MIN_MS": "5", "CONC_DELAY_MAX_MS": "15"}
    rng = random.Random()
    a = ConsumerProcess(tmp_path, "a", config, env=env).start()
    members = [a]
    b_runs: list[int] = []
    try:
        for attempt in range(2):
            # Each run of b has its own log: a killed run's partitions are never revoked in it.
            b = ConsumerProcess(tmp_path, f"b{attempt}", config, env=env).start()
            members.append(b)
            assert b.process is not None
            b_runs.append(b.process.pid)
            wait_for(lambda: bool(b.owned_partitions()) and not (  # noqa: B023
                a.owned_partitions() & b.owned_partitions()), timeout=60,  # noqa: B023
                what=f"a and b to split the partitions ({b.log_tail()})")
            _kill_after(b, RecordFile(b.record_file), rng.randint(500, 2_000))
            wait_for(lambda: a.owned_partitions() == set(range(PARTITIONS)), timeout=60,
                     what=f"a to take b's partitions over ({a.log_tail()})")
        b = ConsumerProcess(tmp_path, "b2", config, env=env).start()
        members.append(b)
        records = [RecordFile(tmp_path / f"{name}.records") for name in ("a", "b0", "b1", "b2")]
        wait_for(lambda: len(set().union(*(r.done() for r in records))) >= total,
                 timeout=180, interval=0.5, what=f"every message handled ({a.log_tail()})")
        for member in (a, b):
            member.signal(signal.SIGTERM)
        assert a.wait() == 0, a.log_tail()
        assert b.wait() == 0, b.log_tail()
    finally:
        a.stop_if_running()
        b.stop_if_running()
    assert _offsets_at_end(kafka_bootstrap, config["kafka"]["group_id"], topic)

    calls = [call for r in records for call in read_calls(r.path)]
    check_all_handled(calls, plan.expected)
    # a loses partitions and gets them back: each assignment is a hold of its own, whose
    # re-run starts where the commit stood (if b did not get that far, a repeats it itself).
    assigned = {m.process.pid: m.assignments() for m in members if m.process is not None}
    check_order(calls, lane="key", expected=plan.expected, holding=by_assignment(assigned))
    assert a.process is not None
    repeats = repeats_by_run(calls)
    print(f"bound {bound}; repeats by run: {repeats}")
    revokes = a.log_file.read_text().count("consumer.engine: revoked ")
    assert repeats.get(a.process.pid, 0) <= revokes * bound.max_buffered, (
        f"a repeated more than max_buffered_messages per revoke ({revokes} revokes)")
    over = {run: n for run, n in repeats.items() if run in b_runs and n > bound.total}
    assert not over, f"kills of b repeated more than {bound}: {over}"


def test_a_failing_key_holds_back_only_itself(kafka_bootstrap: str, tmp_path: Path) -> None:
    """One message of key k0003 always raises: it is retried (0.5 s, then 1 s later) and
    dead-lettered to <topic>.dlq; meanwhile other keys of its partition keep completing; the
    key's later messages start only after the dead letter was produced (documented: a
    dead-lettered message is done and its key moves on)."""
    total, failing = 4_000, ("k0003", 5)
    plan = Plan(total, keys=20, seed=5)
    topic = create_topic(kafka_bootstrap, 1, prefix="conc-fail")
    create_named_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    plan.produce(kafka_bootstrap, topic)
    config = _config(kafka_bootstrap, topic, handler=SYNC, concurrency=10, ordering="key")
    config["routes"][topic]["retry"] = {"attempts": 3, "initial_backoff_seconds": 0.5,
                                        "multiplier": 2.0, "max_backoff_seconds": 1.0,
                                        "jitter": 0.0}
    calls = _run_to_end(kafka_bootstrap, tmp_path, topic, config,
                        env={"CONC_FAIL": "{}:{}".format(*failing), "CONC_DELAY_MIN_MS": "2",
                             "CONC_DELAY_MAX_MS": "8"}, expected=total - 1)

    check_order(calls, lane="key", expected=plan.expected, dead_lettered={failing})
    check_all_handled(calls, plan.expected, dead_lettered={failing})
    attempts = sorted((c for c in calls if (c.key, c.seq) == failing), key=lambda c: c.start)
    assert [c.ok for c in attempts] == [False, False, False]

    letters = read_topic(kafka_bootstrap, f"{topic}.dlq")
    assert len(letters) == 1
    letter: Any = letters[0]
    assert (letter.key(), letter.value()) == (failing[0].encode(), str(failing[1]).encode())
    assert int(dict(letter.headers())["dlq.original.offset"]) == attempts[0].offset
    lettered_at = letter.timestamp()[1] * 1_000_000  # ms -> ns, rounded down

    waiting_from, waiting_to = attempts[0].end, attempts[-1].start
    others = [c for c in calls
              if c.key != failing[0] and waiting_from < c.start and c.end < waiting_to]
    assert len(others) >= 100, f"only {len(others)} other messages completed while it waited"
    later = [c for c in calls if c.key == failing[0] and c.seq > failing[1]]
    assert later, "the failing key had no later messages"
    assert min(c.start for c in later) >= max(lettered_at, attempts[-1].end), (
        "a later message of the failing key started before its dead letter was produced")


def test_a_keys_backlog_drains_at_handler_speed_once_the_topic_is_idle(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """40 messages of one key, 1 ms each, arrive at once and nothing follows: each starts as
    soon as the one before it finished, so they are all handled within a few seconds (not one
    per poll timeout: 40 x 0.5 s)."""
    total = 40
    topic = create_topic(kafka_bootstrap, 1, prefix="conc-idle")
    produce(kafka_bootstrap, topic, (str(i).encode() for i in range(total)),
            key=lambda i: b"k0000", in_order=True)
    config = _config(kafka_bootstrap, topic, handler=SYNC, concurrency=10, ordering="key",
                     poll_timeout_seconds=0.5)  # the default
    records = RecordFile(tmp_path / "run.records")
    run = ConsumerProcess(tmp_path, "run", config,
                          env={"CONC_DELAY_MIN_MS": "1", "CONC_DELAY_MAX_MS": "1"}).start()
    try:
        wait_for(lambda: records.handled() >= 1, timeout=60,
                 what=f"the first message handled ({run.log_tail()})")
        wait_for(lambda: records.handled() >= total, timeout=5,
                 what=f"all {total} messages of one key handled within 5 s of the first")
    finally:
        run.stop_if_running()
    calls = read_calls(records.path)
    check_order(calls, lane="key", expected={"k0000": list(range(total))})


def test_sigterm_finishes_in_flight_work_and_a_restart_repeats_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGTERM while 50 calls run: the consumer exits 0 within shutdown.grace_seconds; every
    call it began it finished; the next run handles the rest and no message is handled twice.
    The grace leaves 3 s to settle, less than running the full buffer (10,000 messages, about
    4.5 s): only the queued messages below a started one may run."""
    grace = 6
    plan = Plan(20_000, keys=200, seed=3)
    topic = _produced(kafka_bootstrap, plan, "conc-term")
    config = _config(kafka_bootstrap, topic, handler=SYNC, concurrency=50, ordering="key",
                     every_messages=1_000, every_seconds=None)
    config["shutdown"]["grace_seconds"] = grace
    env = {"CONC_RECORD_STARTS": "1", "CONC_DELAY_MIN_MS": "5", "CONC_DELAY_MAX_MS": "40"}
    records = RecordFile(tmp_path / "run.records")

    first = ConsumerProcess(tmp_path, "run", config, env=env).start()
    try:
        wait_for(lambda: len(records.calls()) >= 3_000, timeout=120,
                 what=f"3,000 messages handled ({first.log_tail()})")
        first.signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert first.wait(timeout=grace + 30) == 0, first.log_tail()
        took = time.monotonic() - signalled
    finally:
        first.stop_if_running()
    assert took <= grace, f"exit took {took:.1f} s, more than grace_seconds {grace}"
    assert first.process is not None
    pid = first.process.pid
    begun = {(s.partition, s.offset) for s in read_starts(records.path) if s.run == pid}
    ended = {(c.partition, c.offset) for c in read_calls(records.path) if c.run == pid}
    assert begun - ended == set(), f"calls begun and never finished: {sorted(begun - ended)[:5]}"
    assert len(ended) < len(plan.keys), "the first run handled everything; SIGTERM came late"

    calls = _run_to_end(kafka_bootstrap, tmp_path, topic, config, env=env,
                        expected=len(plan.keys))
    handled = Counter((c.partition, c.offset) for c in calls if c.ok)
    twice = [coordinates for coordinates, n in handled.items() if n > 1]
    assert twice == [], f"{len(twice)} messages handled twice, e.g. {twice[:5]}"
    check_all_handled(calls, plan.expected)
    check_order(calls, lane="key", expected=plan.expected)



def test_a_restart_skips_what_finished_above_the_killed_runs_commit(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """One message blocks and the 289 after it finish: the commits stay at the blocked one
    and list the finished ones in their metadata. SIGKILL, then a restart in which nothing
    blocks handles the blocked message and none of the 289 (without the list it handled all
    290 again)."""
    topic = create_topic(kafka_bootstrap, 1, prefix="conc-gap")
    produce(kafka_bootstrap, topic, (b"0" for _ in range(300)),
            key=lambda i: f"k{i:03d}".encode(), in_order=True)
    group = unique_name("conc-gap")
    config = _config(kafka_bootstrap, topic, handler=SYNC, concurrency=8, ordering="key",
                     group=group, every_messages=100, every_seconds=0.5)
    records = RecordFile(tmp_path / "run.records")
    quick = {"CONC_DELAY_MAX_MS": "0"}

    def listed() -> tuple[int | None, set[int]]:
        offset, metadata = group_commits(kafka_bootstrap, group, topic, 1)[0]
        return offset, set() if offset is None else finished_in(metadata, offset)

    first = ConsumerProcess(tmp_path, "run", config,
                            env={**quick, "CONC_BLOCK": "k010:0"}).start()
    try:
        wait_for(lambda: records.handled() == 299 or not first.alive(), timeout=60,
                 interval=0.2, what=f"299 messages handled ({first.log_tail()})")
        wait_for(lambda: listed() == (10, set(range(11, 300))), timeout=30, interval=0.2,
                 what="a commit at offset 10 listing 11-299 as finished")
        first.kill()
    finally:
        first.stop_if_running()
    second = ConsumerProcess(tmp_path, "run", config, env=quick).start()
    try:
        wait_for(lambda: _offsets_at_end(kafka_bootstrap, group, topic) or not second.alive(),
                 timeout=60, interval=0.2, what=f"offsets at the end ({second.log_tail()})")
        second.signal(signal.SIGTERM)
        assert second.wait() == 0, second.log_tail()
        assert second.process is not None
        pid = second.process.pid
    finally:
        second.stop_if_running()
    again = sorted(call.offset for call in read_calls(records.path) if call.run == pid)
    assert again == [10], f"the restart handled {len(again)} messages: {again[:20]}"
    log = second.log_file.read_text()
    assert "289 messages above the committed offset 10 finished before" in log


def test_a_revoked_partitions_new_owner_skips_what_finished_above_its_commit(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Member a handles two partitions; one message of each blocks and the 89 after it
    finish. Member b joins: the partition a gives up is committed at its blocked message
    (a's settle time runs out on it) with the 89 listed, and b handles the blocked message
    and none of the 89."""
    topic = create_topic(kafka_bootstrap, 2, prefix="conc-revoke")
    produce(kafka_bootstrap, topic, (b"0" for _ in range(200)),
            key=lambda i: f"k{i:03d}".encode(), partition=lambda i: i % 2, in_order=True)
    group = unique_name("conc-revoke")
    config = _config(kafka_bootstrap, topic, handler=SYNC, concurrency=8, ordering="key",
                     group=group, every_messages=100, every_seconds=0.5)
    config["shutdown"]["grace_seconds"] = 4  # 2 s for a revoked partition's running work
    quick = {"CONC_DELAY_MAX_MS": "0"}
    # offset 10 of each partition: k020 on partition 0, k021 on partition 1
    a = ConsumerProcess(tmp_path, "a", config,
                        env={**quick, "CONC_BLOCK": "k020:0,k021:0"}).start()
    b = ConsumerProcess(tmp_path, "b", config, env=quick)
    try:
        wait_for(lambda: RecordFile(a.record_file).handled() == 198 or not a.alive(),
                 timeout=60, interval=0.2, what=f"198 messages handled by a ({a.log_tail()})")
        wait_for(lambda: all(
            offset == 10 and finished_in(metadata, 10) == set(range(11, 100))
            for offset, metadata in group_commits(kafka_bootstrap, group, topic, 2).values()),
            timeout=30, interval=0.2, what="commits at offset 10 listing 11-99 as finished")
        b.start()
        wait_for(lambda: len(b.owned_partitions()) == 1, timeout=60,
                 what=f"b to be assigned a partition ({b.log_tail()})")
        (moved,) = b.owned_partitions()
        wait_for(lambda: group_offsets(kafka_bootstrap, group, topic, 2)[moved] == 100,
                 timeout=60, interval=0.2, what=f"b to finish partition {moved} ({b.log_tail()})")
        assert moved not in a.owned_partitions()  # (b's leaving below gives it back to a)
        b.signal(signal.SIGTERM)
        assert b.wait() == 0, b.log_tail()
    finally:
        a.stop_if_running()
        b.stop_if_running()
    handled_by_b = sorted(call.offset for call in read_calls(b.record_file))
    assert handled_by_b == [10], f"b handled {len(handled_by_b)}: {handled_by_b[:20]}"
    assert "89 messages above the committed offset 10 finished before" in b.log_file.read_text()
