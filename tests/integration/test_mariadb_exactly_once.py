"""Exactly once on the MariaDB store against a real broker: the chaos run with SIGKILLs and a
zombie (with event-id keys, with coordinates keys kept as runs, and in small generations of
processed keys), events re-sent after their generation was sealed, replay, and a redrive.
The same stories as on SQLite and PostgreSQL
(test_exactly_once.py, test_replay.py, test_event_identity.py), with the ledger written in
MariaDB's SQL (tests/support/ledger_mariadb.py; its tables made before any consumer starts,
since DDL inside a batch would commit it). Kept to one of each to hold CI's time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_event_identity import dead_letters
from tests.integration.test_exactly_once import (
    SMALL_GENERATION,
    VARIANT_MESSAGES,
    healthy_chaos,
    sealed_generations,
)
from tests.integration.test_key_generations import (
    EVERY_EVENT,
    SEALS_AT_LEAST,
    resent_after_the_seal,
)
from tests.integration.test_replay import EVENTS as REPLAYED_EVENTS
from tests.integration.test_replay import replay_story
from tests.support.chaos import (
    Ledger,
    assert_exact_after_chaos,
    check,
    make_ledger,
)
from tests.support.ledger_mariadb import create_tables
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration

#: Smaller than the other stores' chaos run (CONSUMER_CHAOS_MESSAGES): CI's time.
CHAOS_MESSAGES = int(os.environ.get("CONSUMER_CHAOS_MESSAGES_MARIADB", "20000"))
LEDGER = "tests.support.ledger_mariadb"


@pytest.fixture
def maria_store(mariadb_url: str, tmp_path: Path) -> Iterator[StoreUnderTest]:
    """A fresh MariaDB database with the ledger's tables."""
    with fresh_store("mariadb", tmp_path, mariadb_url) as store:
        create_tables(store)
        yield store


def test_mariadb_chaos_kills_and_a_zombie_apply_every_change_exactly_once(
    kafka_bootstrap: str, maria_store: StoreUnderTest, tmp_path: Path
) -> None:
    """Three members on 6 partitions, 20,000 balance changes (1% re-sent at later offsets),
    at least 10 SIGKILLs at random moments and one zombie whose late checkpoint is fenced:
    every balance exact, no event applied twice or lost, no checkpoint row moved back."""
    ledger = make_ledger(CHAOS_MESSAGES)
    group, chaos = healthy_chaos(kafka_bootstrap, maria_store, tmp_path, ledger,
                                 prefix="chaos", kills=10, handler=f"{LEDGER}:apply",
                                 timeout=max(300, CHAOS_MESSAGES / 500))
    assert_exact_after_chaos(maria_store, ledger, group, chaos, kills=10)


def test_mariadb_chaos_with_coordinates_keys_applies_every_change_exactly_once(
    kafka_bootstrap: str, maria_store: StoreUnderTest, tmp_path: Path
) -> None:
    """The chaos with the route keyed by coordinates (no event re-sent), so a new MariaDB
    store claims nearly every key inside a run, taking turns per partition with the zombie
    and the members killed mid-batch: still exact, and no key went in as a row of its own."""
    ledger = Ledger(make_ledger(CHAOS_MESSAGES).events, resent=[])
    group, chaos = healthy_chaos(
        kafka_bootstrap, maria_store, tmp_path, ledger, prefix="chaos-coords", kills=8,
        route={"handler": f"{LEDGER}:apply", "dedup_key": "coordinates"},
        timeout=max(300, CHAOS_MESSAGES / 500))
    assert_exact_after_chaos(maria_store, ledger, group, chaos, kills=8)
    assert maria_store.scalar("SELECT count(*) FROM consumer_processed_keys") == 0


def test_mariadb_chaos_in_small_generations_applies_every_change_exactly_once(
    kafka_bootstrap: str, maria_store: StoreUnderTest, tmp_path: Path
) -> None:
    """The chaos in generations of 300 keys, as on the other stores."""
    ledger = make_ledger(VARIANT_MESSAGES)
    group, chaos = healthy_chaos(kafka_bootstrap, maria_store, tmp_path, ledger,
                                 prefix="chaos-generations", kills=8, handler=f"{LEDGER}:apply",
                                 generation_keys=SMALL_GENERATION)
    assert_exact_after_chaos(maria_store, ledger, group, chaos, kills=8)
    assert (sealed := sealed_generations(maria_store)) >= 3, f"only {sealed} generations sealed"


@pytest.mark.parametrize("dedup_key", ["header:idempotency-key", "coordinates"],
                         ids=["event-ids", "coordinates"])
def test_mariadb_concurrency_16_with_kills_and_a_zombie_applies_every_change_exactly_once(
    kafka_bootstrap: str, maria_store: StoreUnderTest, tmp_path: Path, dedup_key: str
) -> None:
    """The chaos with ``concurrency: 16``: each member applies each change in a transaction
    of its own on a pool of connections, claims of one key waiting for each other across
    members. The zombie freezes while its workers hold transactions open (keys claimed, no
    COMMIT); its partitions' new owner waits for those keys until the server ends the frozen
    sessions (the idle transaction timeout), then applies them: still exact. Keyed by event
    id (rows of the current generation; 1% of the events re-sent) and by coordinates (runs of
    one key, a partition's turn taken shared; none re-sent: at another offset it would be
    another event)."""
    ledger = make_ledger(VARIANT_MESSAGES)
    if dedup_key == "coordinates":
        ledger = Ledger(ledger.events, resent=[])
    group, chaos = healthy_chaos(
        kafka_bootstrap, maria_store, tmp_path, ledger, prefix="chaos-concurrent", kills=8,
        route={"handler": f"{LEDGER}:apply_noting_session", "concurrency": 16,
               "ordering": "key", "dedup_key": dedup_key},
        store_settings={"mariadb_lock_wait_timeout_seconds": 2,
                        "mariadb_idle_transaction_timeout_seconds": 5})
    assert_exact_after_chaos(maria_store, ledger, group, chaos, kills=8)
    assert maria_store.scalar("SELECT count(*) FROM handler_sessions") > 3, \
        "transactions ran side by side"


def test_mariadb_async_and_threaded_members_apply_every_change_exactly_once(
    kafka_bootstrap: str, maria_store: StoreUnderTest, tmp_path: Path
) -> None:
    """The chaos with ``concurrency: 16`` where two of the three member slots run the ledger
    as an ``async def`` handler awaiting its statements (each on a thread, off the event
    loop), as in a group half-way through a rolling change from one to the other: both claim
    the same keys, and the zombie is whichever member the gate catches. Still exact."""
    ledger = make_ledger(VARIANT_MESSAGES)
    route = {"handler": f"{LEDGER}:apply_noting_session", "concurrency": 16, "ordering": "key"}
    awaiting = {**route, "handler": f"{LEDGER}:apply_async_noting_session"}
    group, chaos = healthy_chaos(
        kafka_bootstrap, maria_store, tmp_path, ledger, prefix="chaos-async", kills=8,
        route=route, slot_routes={1: awaiting, 2: awaiting},
        store_settings={"mariadb_lock_wait_timeout_seconds": 2,
                        "mariadb_idle_transaction_timeout_seconds": 5})
    assert_exact_after_chaos(maria_store, ledger, group, chaos, kills=8)
    assert {kind for (kind,) in maria_store.query("SELECT DISTINCT kind FROM handler_sessions")} \
        == {"def", "async def"}, "both kinds of member applied changes"


def test_mariadb_events_resent_after_their_generation_was_sealed_apply_once(
    kafka_bootstrap: str, maria_store: StoreUnderTest, tmp_path: Path
) -> None:
    applied, sealed = resent_after_the_seal(kafka_bootstrap, tmp_path, maria_store,
                                            f"{LEDGER}:apply")
    assert sorted(applied) == EVERY_EVENT
    assert sealed >= SEALS_AT_LEAST, sealed


def test_mariadb_replay_moves_store_and_kafka_together_and_keys_decide_the_effects(
    kafka_bootstrap: str, maria_store: StoreUnderTest, tmp_path: Path
) -> None:
    entries, balance = replay_story(kafka_bootstrap, maria_store, tmp_path,
                                    handler=f"{LEDGER}:apply")
    assert (entries, balance) == (REPLAYED_EVENTS + 5, REPLAYED_EVENTS + 5)


def test_mariadb_redriving_twice_applies_each_dead_letter_once(
    kafka_bootstrap: str, maria_store: StoreUnderTest, tmp_path: Path
) -> None:
    """Dead letters keyed by their coordinates: the first redrive applies each, the second
    none again."""
    with dead_letters(kafka_bootstrap, maria_store, tmp_path, "coordinates", True,
                      handler=f"{LEDGER}:ledger_while_flagged") as run:
        total = len(run.ledger.events)
        assert f"redrove {run.rejected} dead letter(s)" in run.redrive("--execute").stdout
        run.wait_consumed(total + run.rejected)
        run.redrive("--execute")
        run.wait_consumed(total + 2 * run.rejected)
        run.stop()
        verdict = check(maria_store, run.ledger, run.group)
        assert verdict.exact, verdict
