"""Exactly-once database effects against a real broker, on SQLite and on PostgreSQL: crashes,
a zombie, duplicate deliveries, two groups and two topics in one database, redrives, COMMITs
cut off, a failing message, and Kafka offsets reset by Kafka's own tool; and the checker shown
to fail on consumers with one guarantee removed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from consumer_process import REPO_ROOT, ConsumerProcess, consumer_config, wait_for

from tests.support.audit import install_audit
from tests.support.chaos import (
    Chaos,
    Ledger,
    assert_exact_after_chaos,
    assert_fenced,
    check,
    make_ledger,
    produce_ledger,
    run_chaos,
    until_consumed,
)
from tests.support.kafka import create_topic, group_offsets, produce, read_topic, unique_name
from tests.support.pg_proxy import CommitCutProxy, proxied_url
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration

CHAOS_MESSAGES = int(os.environ.get("CONSUMER_CHAOS_MESSAGES", "100000"))
#: Smaller runs for the broken variants, the shared database (per topic) and the cut COMMITs.
VARIANT_MESSAGES = 10_000
SHARED_MESSAGES = 4_000
PROXY_MESSAGES = 10_000


def _ledger_config(bootstrap: str, group: str, topic: str, store: StoreUnderTest,
                   handler: str = "handlers.ledger:apply",
                   **checkpoint: object) -> dict[str, object]:
    config = consumer_config(bootstrap, group, topic, handler=handler,
                             every_messages=500, every_seconds=1.0, store=store.url,
                             max_poll_interval_ms=7000)
    config["checkpoint"].update(checkpoint)  # type: ignore[union-attr]
    return config


def healthy_chaos(bootstrap: str, store: StoreUnderTest, tmp_path: Path, ledger: Ledger, *,
                  prefix: str, kills: int, handler: str = "handlers.ledger:apply",
                  route: dict[str, Any] | None = None, generation_keys: int | None = None,
                  store_settings: dict[str, Any] | None = None,
                  slot_routes: dict[int, dict[str, Any]] | None = None,
                  timeout: float = 300) -> tuple[str, Chaos]:
    """The ledger on a new topic of 6 partitions, consumed by three members with at least
    ``kills`` SIGKILLs and a zombie until every partition is at its end (``route``: the
    topic's route instead of ``handler`` alone; ``generation_keys``: the store's generation
    size; ``store_settings``: more of the store's settings; ``slot_routes``: per member slot,
    the topic's route there instead). The group and the stopped chaos, for the caller's
    verdict."""
    topic = create_topic(bootstrap, 6, prefix=prefix)
    produce_ledger(bootstrap, topic, ledger)
    install_audit(store)
    group = unique_name(prefix)
    config = _ledger_config(bootstrap, group, topic, store, handler=handler)
    if route is not None:
        config["routes"] = {topic: route}
    if generation_keys is not None:
        config["store"][store.generation_keys_setting] = generation_keys  # type: ignore[index]
    config["store"].update(store_settings or {})  # type: ignore[union-attr]
    slot_configs = {slot: {**config, "routes": {topic: slot_route}}
                    for slot, slot_route in (slot_routes or {}).items()}
    chaos = Chaos(tmp_path, config, slot_configs=slot_configs)
    run_chaos([chaos], store, kills=kills)
    until_consumed(store, bootstrap, group, [topic], tend=chaos, timeout=timeout,
                   what=f"the end ({chaos.logs()})")
    chaos.stop()
    return group, chaos


def sealed_generations(store: StoreUnderTest) -> int:
    return int(store.scalar("SELECT count(*) FROM consumer_key_generations "
                            "WHERE newest_at IS NOT NULL"))


def test_chaos_kills_and_a_zombie_apply_every_change_exactly_once(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """Three members on 6 partitions, 100,000 balance changes (1% re-sent at later offsets),
    at least 20 SIGKILLs at random moments and one zombie that really attempts its commit
    after its partitions' new owner checkpointed past its batch: the zombie is fenced, every
    balance is exact, no event applied twice or lost, no checkpoint row ever moved backwards,
    and the processed keys number the distinct events."""
    ledger = make_ledger(CHAOS_MESSAGES)
    group, chaos = healthy_chaos(kafka_bootstrap, store, tmp_path, ledger, prefix="chaos",
                                 kills=20, timeout=max(300, CHAOS_MESSAGES / 500))
    assert_exact_after_chaos(store, ledger, group, chaos, kills=20)


def test_chaos_with_coordinates_keys_applies_every_change_exactly_once(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """The same chaos with the route keyed by coordinates (no event is re-sent: at another
    offset it would be another event), so a store keeping runs (SQLite, a new PostgreSQL
    store) claims nearly every key inside a run, against members killed mid-batch and a
    zombie: still exact, and the processed keys number the events."""
    produced = make_ledger(VARIANT_MESSAGES * 2)
    ledger = Ledger(produced.events, resent=[])
    group, chaos = healthy_chaos(
        kafka_bootstrap, store, tmp_path, ledger, prefix="chaos-coords", kills=8,
        route={"handler": "handlers.ledger:apply", "dedup_key": "coordinates"})
    assert_exact_after_chaos(store, ledger, group, chaos, kills=8)
    if store.backend in ("sqlite", "postgresql"):  # the keys went in as runs, not a row each
        assert store.scalar("SELECT count(*) FROM consumer_processed_keys") == 0


#: Keys a generation holds before it is sealed in the chaos below: a member seals one every
#: few of its batches.
SMALL_GENERATION = 300


def test_chaos_in_small_generations_applies_every_change_exactly_once(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """The chaos with a generation of processed keys sealed every 300 keys: members seal
    generations while others claim (a server's store defers a seal while any claim is open),
    the killed ones restart reading the sealed generations, and the re-sent events come after
    their originals' generations were sealed: still exact."""
    ledger = make_ledger(VARIANT_MESSAGES)
    group, chaos = healthy_chaos(kafka_bootstrap, store, tmp_path, ledger,
                                 prefix="chaos-generations", kills=8,
                                 generation_keys=SMALL_GENERATION)
    assert_exact_after_chaos(store, ledger, group, chaos, kills=8)
    assert (sealed := sealed_generations(store)) >= 3, f"only {sealed} generations sealed"


#: Each defect (tests/support/broken_consumer.py) and what the checker must report. The
#: healthy consumer on the same chaos (a superset: it always has the zombie) is the test above.
DEFECTS = {
    "kafka-before-store": "lost",
    "keys-apart": "lost",
    "no-fence": "regressions",
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_chaos_checker_catches_each_broken_guarantee(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path, defect: str
) -> None:
    """The chaos above and the same checker, against the consumer with one guarantee removed:
    the verdict is not exact, for the reason the defect predicts. Kafka committed before the
    store, or keys committed apart from their effects: a kill in between loses events. The
    epoch fence removed: the zombie's late commit succeeds; its keys keep its effects from
    repeating, but it moves a checkpoint row back, which the row audit sees.

    On PostgreSQL only: each defect breaks both store classes the same way and the checker
    reads either store alike, so a second run on SQLite proved nothing new (the healthy chaos
    runs on both; the keyless defects below run on SQLite)."""
    expected = DEFECTS[defect]
    with fresh_store("postgresql", tmp_path, postgres_dsn) as store:
        ledger, group, chaos = _variant_chaos(kafka_bootstrap, store, tmp_path, defect,
                                              zombie=expected == "regressions")
        verdict = check(store, ledger, group, audited=True)
    assert not verdict.exact, verdict
    if expected == "lost":
        assert verdict.lost_events > 0, verdict
    else:
        assert chaos.zombie is not None and chaos.zombie.outcome() == "committed"
        assert verdict.regressions, verdict


@pytest.mark.parametrize("defect", ["no-keys-checkpoint-outside", "no-keys-no-fence"])
def test_chaos_checker_catches_a_consumer_without_keys(
    kafka_bootstrap: str, tmp_path: Path, defect: str
) -> None:
    """The same chaos against a consumer without processed keys and one more guarantee
    removed (SQLite store): the checker reports events applied twice."""
    with fresh_store("sqlite", tmp_path, None) as sqlite_store:
        ledger, group, _ = _variant_chaos(kafka_bootstrap, sqlite_store, tmp_path, defect,
                                          zombie=defect == "no-keys-no-fence",
                                          resend_every=10**9)
        verdict = check(sqlite_store, ledger, group, audited=True)
    assert verdict.duplicated_events > 0, verdict


def _variant_chaos(bootstrap: str, store: StoreUnderTest, tmp_path: Path, defect: str, *,
                   zombie: bool, resend_every: int = 100) -> tuple[Ledger, str, Chaos]:
    """A smaller chaos: 6 partitions, 4 kills (aimed into the defect's crash window, where it
    has one), a zombie first if the defect needs one to show (10,000 messages go by in about a
    second without keys); run until every partition is consumed to its end."""
    ledger = make_ledger(VARIANT_MESSAGES, resend_every=resend_every)
    topic = create_topic(bootstrap, 6, prefix="broken")
    produce_ledger(bootstrap, topic, ledger)
    install_audit(store)
    group = unique_name("broken")
    chaos = Chaos(tmp_path, _ledger_config(bootstrap, group, topic, store), defect=defect,
                  aim_at_windows=defect in ("kafka-before-store", "keys-apart"))
    try:
        run_chaos([chaos], store, kills=4, zombie=zombie, zombie_first=True)
        until_consumed(store, bootstrap, group, [topic], timeout=180, tend=chaos,
                       what=f"the end ({chaos.logs()})")
    finally:
        chaos.stop()
    if zombie:
        assert chaos.zombie is not None, "the chaos made no zombie"
    return ledger, group, chaos


def test_chaos_two_groups_two_topics_share_one_database(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """Two groups each consume two topics into their own ledger tables in ONE database (the
    store's tables shared). Both topics carry the same idempotency-key values for different
    events; 1% of events are re-sent; 1% carry no key and fail until a gate opens, so they are
    dead-lettered during the run (kills and a zombie included). Then the gate opens and each
    group's dead letters are redriven twice: every event is applied exactly once per group,
    and no checkpoint row ever moved backwards."""
    ledgers = {name: make_ledger(SHARED_MESSAGES, prefix=f"{name}-", gate_every=100,
                                 seed=seed) for name, seed in (("orders", 11), ("payments", 12))}
    topics = {name: create_topic(kafka_bootstrap, 3, prefix=name) for name in ledgers}
    for name, ledger in ledgers.items():
        produce_ledger(kafka_bootstrap, topics[name], ledger)
    install_audit(store)
    gate = tmp_path / "gate-open"
    runs = [_shared_member_group(kafka_bootstrap, store, tmp_path / tables, tables,
                                 list(topics.values()), gate) for tables in ("g1_", "g2_")]
    try:
        run_chaos(runs, store, kills=6)
        for run in runs:
            until_consumed(store, kafka_bootstrap, run.group, list(topics.values()),
                           timeout=180, tend=run, what=f"the end ({run.logs()})")
        gate.touch()
        for run in runs:
            for _ in range(2):
                _redrive(run)
        for run in runs:
            until_consumed(store, kafka_bootstrap, run.group, list(topics.values()),
                           timeout=120, tend=run, what=f"the redriven letters ({run.logs()})")
    finally:
        for run in runs:
            run.stop()

    assert_fenced(runs[0])
    expected = ledgers["orders"] + ledgers["payments"]
    verdicts = {tables: check(store, expected, run.group, tables=tables, audited=True)
                for tables, run in zip(("g1_", "g2_"), runs, strict=True)}
    assert all(v.exact for v in verdicts.values()), verdicts


def _shared_member_group(bootstrap: str, store: StoreUnderTest, workdir: Path, tables: str,
                         topics: list[str], gate: Path) -> Chaos:
    group = unique_name(f"shared-{tables.strip('_')}")
    config = _ledger_config(bootstrap, group, topics[0], store)
    config["routes"] = {
        topic: {"handler": "tests.support.ledger_chaos:apply", "retry": {"attempts": 1},
                "dead_letter_topic": create_topic(bootstrap, 1, prefix=f"{tables}dlq")}
        for topic in topics}
    return Chaos(workdir, config, members=2,
                 env={"LEDGER_TABLES": tables, "LEDGER_GATE_FILE": str(gate)})


def _redrive(run: Chaos) -> None:
    """`consumer dlq redrive --execute` with the group's own config, as an operator would."""
    config = run.workdir / "redrive.yaml"
    config.write_text(yaml.safe_dump(run.config))
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "dlq", "redrive", "--config", str(config),
         "--execute"], capture_output=True, text=True, timeout=120, check=False,
        cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert "redrove" in done.stdout, done.stdout[-2000:]


@pytest.mark.parametrize("defect", [None, "no-keys"])
def test_postgres_connection_cut_as_commit_goes_out_applies_each_change_once(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path, defect: str | None
) -> None:
    """Two members reach PostgreSQL through a proxy that drops the connection as a batch's
    COMMIT goes out: three times after forwarding it (it landed), three times instead of
    forwarding it (it did not); the consumer cannot tell which. Each member takes the store
    outage path (or dies and restarts): every change is applied exactly once. Without
    processed keys ("no-keys"), a batch whose COMMIT landed is applied again: caught."""
    with fresh_store("postgresql", tmp_path, postgres_dsn) as store:
        ledger = make_ledger(PROXY_MESSAGES, resend_every=10**9 if defect else 100)
        topic = create_topic(kafka_bootstrap, 4, prefix="cut")
        produce_ledger(kafka_bootstrap, topic, ledger)
        install_audit(store)
        proxy = CommitCutProxy.for_url(store.url, cut_every=2, max_cuts=6).start()
        group = unique_name("cut")
        through_proxy = StoreUnderTest("postgresql", proxied_url(store.url, proxy.port))
        chaos = Chaos(tmp_path, _ledger_config(kafka_bootstrap, group, topic, through_proxy),
                      members=2, defect=defect)

        def six_cuts() -> bool:
            chaos.restart_dead()
            return proxy.cuts == 6

        try:
            chaos.start()
            wait_for(six_cuts, timeout=120, interval=0.2, what="six cuts through the proxy")
            until_consumed(store, kafka_bootstrap, group, [topic], timeout=120, tend=chaos,
                           what=f"the end ({chaos.logs()})")
        finally:
            chaos.stop()
            proxy.stop()
        verdict = check(store, ledger, group, audited=True)
        logs = "".join(chaos.log_of(p.name) for p in chaos.processes)
    assert (proxy.landed, proxy.withheld) == (3, 3)
    assert "the batch rolled back, consumption is paused" in logs, logs[-3000:]
    if defect is not None:
        assert verdict.duplicated_events > 0, verdict
        return
    assert verdict.exact, verdict
    assert verdict.processed_keys == len(ledger.events)


def test_same_event_at_two_offsets_is_applied_once(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """An event produced twice (same idempotency-key, different offsets) changes the balance
    once; both offsets are consumed and checkpointed."""
    topic = create_topic(kafka_bootstrap, 1, prefix="dup")
    event = {"event": "pay-1", "account": "alice", "amount": 250}
    other = {"event": "pay-2", "account": "alice", "amount": 5}
    produce(kafka_bootstrap, topic, [json.dumps(e).encode() for e in (event, other, event)],
            headers=lambda i: [("idempotency-key", [b"pay-1", b"pay-2", b"pay-1"][i])])
    group = unique_name("dup")
    run = ConsumerProcess(tmp_path, "dup", _ledger_config(kafka_bootstrap, group, topic, store))
    run.start()
    try:
        wait_for(lambda: _row(store, "SELECT next_offset FROM consumer_checkpoints") == 3,
                 timeout=60, what=f"the checkpoint row to reach offset 3 ({run.log_tail()})")
        run.signal(signal.SIGTERM)
        assert run.wait() == 0
    finally:
        run.stop_if_running()
    assert store.query("SELECT balance FROM accounts WHERE id = 'alice'") == [(255,)]
    assert store.scalar("SELECT count(*) FROM ledger_entries") == 2
    assert group_offsets(kafka_bootstrap, group, topic, 1) == {0: 3}


def test_failing_message_rolls_back_alone(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path
) -> None:
    """In one batch over two partitions, the message that raises leaves no write behind; the
    other partition's messages and the earlier ones of its own partition commit; the process
    exits 1 naming the message, and its partition's checkpoint stops exactly there."""
    topic = create_topic(kafka_bootstrap, 2, prefix="failing")
    events = [{"event": f"f{i}", "account": f"acc-{i % 2}", "amount": 1 if i != 7 else "bad"}
              for i in range(20)]
    produce(kafka_bootstrap, topic, [json.dumps(e).encode() for e in events],
            partition=lambda i: i % 2,
            headers=lambda i: [("idempotency-key", f"f{i}".encode())])
    group = unique_name("failing")
    config = _ledger_config(kafka_bootstrap, group, topic, store, every_messages=20,
                            every_seconds=30)
    config["routes"][topic] = {"handler": "handlers.ledger:apply", "on_failure": "stop",
                               "retry": {"attempts": 1}}
    run = ConsumerProcess(tmp_path, "failing", config).start()
    assert run.wait(timeout=60) == 1, run.log_tail()
    assert f"handler failed on {topic}[1]@3" in run.log_file.read_text()
    applied = {e for (e,) in store.query("SELECT event FROM ledger_entries")}
    # Partition 1 holds events 1, 3, 5, 7, ...: event 7 is offset 3 there.
    assert applied == {f"f{i}" for i in range(0, 20, 2)} | {"f1", "f3", "f5"}
    rows = dict(((t, p), o) for t, p, o in store.query(
        "SELECT topic, partition, next_offset FROM consumer_checkpoints"))
    assert rows == {(topic, 0): 10, (topic, 1): 3}
    keys = store.processed_key_count()
    assert keys == len(applied)


def _row(store: StoreUnderTest, sql: str) -> object:
    try:
        rows = store.query(sql)
    except Exception:
        return None
    return rows[0][0] if rows else None


@pytest.mark.parametrize("policy", ["fail", "follow", "ignore"])
def test_reset_with_kafkas_own_tool_is_detected(
    kafka_bootstrap: str, tmp_path: Path, policy: str
) -> None:
    """After a run, kafka-consumer-groups --reset-offsets --to-earliest moves the group's Kafka
    offset (without our marker). On restart: fail -> exit 1 naming both offsets; follow ->
    resume at Kafka's offset, every message a duplicate, no effect applied twice; ignore ->
    resume at the store's offset."""
    import kafka_local

    with fresh_store("sqlite", tmp_path, None) as store:
        topic = create_topic(kafka_bootstrap, 1, prefix="reset")
        events = [{"event": f"r{i}", "account": "acc", "amount": 1} for i in range(5)]
        produce(kafka_bootstrap, topic, [json.dumps(e).encode() for e in events],
                headers=lambda i: [("idempotency-key", f"r{i}".encode())])
        group = unique_name("reset")
        config = _ledger_config(kafka_bootstrap, group, topic, store)
        first = ConsumerProcess(tmp_path, "first", config).start()
        wait_for(lambda: _row(store, "SELECT next_offset FROM consumer_checkpoints") == 5,
                 timeout=60, what=f"the first run to checkpoint 5 ({first.log_tail()})")
        first.signal(signal.SIGTERM)
        assert first.wait() == 0

        tool = kafka_local.run_tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            ["--bootstrap-server", kafka_bootstrap, "--group", group, "--topic", topic,
             "--reset-offsets", "--to-earliest", "--execute"],
        )
        assert tool == 0
        assert group_offsets(kafka_bootstrap, group, topic, 1) == {0: 0}

        config["store"]["on_external_reset"] = policy  # type: ignore[index]
        # A checkpoint every 2 messages: following Kafka back, the first ones end below the
        # row the first run left at 5.
        config["checkpoint"]["every_messages"] = 2  # type: ignore[index]
        second = ConsumerProcess(tmp_path, "second", config).start()
        if policy == "fail":
            assert second.wait(timeout=60) == 1
            log = second.log_file.read_text()
            assert "Kafka's committed offset is 0 but the store's checkpoint is 5" in log
        else:
            wait_for(lambda: f"store.on_external_reset={policy}" in second.log_tail(200),
                     timeout=60, what=f"the reset to be reported ({second.log_tail()})")
            wait_for(lambda: group_offsets(kafka_bootstrap, group, topic, 1) == {0: 5},
                     timeout=60, what=f"Kafka's offset back at 5 ({second.log_tail()})")
            second.signal(signal.SIGTERM)
            assert second.wait() == 0
            assert f"resuming at {0 if policy == 'follow' else 5}" in second.log_file.read_text()
        assert store.scalar("SELECT count(*) FROM ledger_entries") == 5
        assert store.query("SELECT balance FROM accounts") == [(5,)]


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_deferred_constraint_failing_at_commit_fails_its_message_alone(
    kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path, concurrency: int
) -> None:
    """Message 3 of 8 names no parent; its table checks the foreign key only at COMMIT, so
    the whole batch's COMMIT fails. Rather than stopping on every restart, the batch runs
    again with constraints checked at each statement: message 3 fails alone and goes to the
    dead-letter topic, the other seven apply once, and the consumer goes on. With
    ``concurrency`` (a transaction per message or micro-batch), the micro-batch runs again
    one transaction each, and the message whose COMMIT fails has that error as its own."""
    from tests.support.deferred_handler import SCHEMA

    for statement in SCHEMA:
        store.execute(statement)
    topic = create_topic(kafka_bootstrap, 1, prefix="deferred")
    produce(kafka_bootstrap, topic, [b"2" if i == 3 else b"1" for i in range(8)],
            in_order=True, headers=lambda i: [("idempotency-key", f"child-{i}".encode())])
    dead_letters = create_topic(kafka_bootstrap, 1, prefix="deferred-dlq")
    group = unique_name("deferred")
    config = consumer_config(kafka_bootstrap, group, topic,
                             handler="tests.support.deferred_handler:apply",
                             every_messages=500, every_seconds=1.0, store=store.url)
    config["routes"] = {topic: {"handler": "tests.support.deferred_handler:apply",
                                "retry": {"attempts": 1}, "dead_letter_topic": dead_letters,
                                "concurrency": concurrency, "ordering": "none"}}
    run = ConsumerProcess(tmp_path, "run", config).start()
    try:
        wait_for(lambda: group_offsets(kafka_bootstrap, group, topic, 1) == {0: 8},
                 timeout=60, what=f"every message done ({run.log_tail()})")
        assert run.alive(), run.log_tail()
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log_tail()
    finally:
        run.stop_if_running()
    assert [offset for (offset,) in store.query(
        'SELECT "offset" FROM children ORDER BY "offset"')] == [0, 1, 2, 4, 5, 6, 7]
    letters = read_topic(kafka_bootstrap, dead_letters)
    assert [letter.value() for letter in letters] == [b"2"]  # type: ignore[attr-defined]
