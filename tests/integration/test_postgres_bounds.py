"""PostgreSQL session bounds: a previous owner frozen inside a transaction (keys claimed, a
checkpoint row written, no COMMIT) costs the new owner a bounded wait, never a stall: its claim
times out after ``lock_timeout`` and is retried (a transient store error), and the server ends
the frozen session after ``idle_in_transaction_session_timeout``, freeing its locks."""

from __future__ import annotations

import time

import pytest

from consumer.errors import StoreUnavailable
from consumer.settings import StoreSettings
from consumer.store import CheckpointRow, Claim, PostgresSession, open_configured
from consumer.store.postgres import PostgresStore
from tests.support.stores import StoreUnderTest

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("store", ["postgresql"], indirect=True)]

LOCK = 1.0
IDLE = 3.0
MARGIN = 2.0  # scheduling on a shared two-core machine
GROUP = "g"
TP0 = ("orders", 0)
CLAIMS = [Claim(bytes([i]) * 16, "orders", 0, i) for i in range(5)]



def _open(url: str) -> PostgresStore:
    store = PostgresStore(url, session=PostgresSession(lock_timeout=LOCK,
                                                       idle_in_transaction_timeout=IDLE))
    store.ensure_schema()
    return store


def test_settings_reach_the_session_beside_the_dsns_own_options(store: StoreUnderTest) -> None:
    opened = open_configured(StoreSettings(
        url=store.url, postgres_lock_timeout_seconds=2.5,
        postgres_idle_in_transaction_timeout_seconds=7, postgres_keepalives_idle_seconds=11))
    try:
        assert opened.execute("SHOW lock_timeout").fetchone()[0] == "2500ms"
        assert opened.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] == "7s"
        assert opened.execute("SHOW search_path").fetchone()[0].startswith("t_")
        assert opened.connection.info.get_parameters()["keepalives_idle"] == "11"
    finally:
        opened.close()


def test_frozen_owner_holding_claimed_keys_delays_the_new_owner_at_most_the_bounds(
    store: StoreUnderTest,
) -> None:
    """The zombie claimed five keys and froze. The new owner's claim of the same keys fails
    after lock_timeout as StoreUnavailable (the loop's transient error: roll back, retry);
    retried with backoff, it succeeds once the server ended the zombie's session, within
    idle_in_transaction_timeout + lock_timeout + margin, and gets every key as new."""
    zombie, owner = _open(store.url), _open(store.url)
    try:
        zombie.begin()
        assert zombie.claim(GROUP, CLAIMS, 1.0) == {c.key for c in CLAIMS}
        frozen_at = time.monotonic()  # the zombie is idle in its transaction from here

        owner.begin()
        with pytest.raises(StoreUnavailable, match="postgres_lock_timeout_seconds"):
            owner.claim(GROUP, CLAIMS, 2.0)
        assert time.monotonic() - frozen_at <= LOCK + MARGIN
        owner.rollback()

        new: set[bytes] = set()
        while not new:
            owner.begin()
            try:
                new = owner.claim(GROUP, CLAIMS, 2.0)
            except StoreUnavailable:
                owner.rollback()
                time.sleep(0.2)  # the loop's backoff
        owner.commit()
        waited = time.monotonic() - frozen_at
        assert new == {c.key for c in CLAIMS}
        assert IDLE - 0.5 <= waited <= IDLE + LOCK + MARGIN, waited

        with pytest.raises(StoreUnavailable):  # the zombie's session is gone
            zombie.write_checkpoints(GROUP, [CheckpointRow("orders", 0, 5, 1)], 3.0)
        zombie.rollback()
    finally:
        zombie.close()
        owner.close()


def test_frozen_owner_holding_the_checkpoint_row_delays_assignment_without_failing_it(
    store: StoreUnderTest,
) -> None:
    """The zombie wrote its checkpoint row and froze before COMMIT: the new owner's
    assignment waits for the server to end that session (not lock_timeout, which would fail
    the assignment), then bumps the epoch past the zombie's."""
    zombie, owner = _open(store.url), _open(store.url)
    try:
        epoch = zombie.assign(GROUP, [TP0], 1.0)[TP0].epoch
        zombie.begin()
        assert zombie.write_checkpoints(GROUP, [CheckpointRow(*TP0, 5, epoch)], 1.0) == []
        frozen_at = time.monotonic()
        position = owner.assign(GROUP, [TP0], 2.0)[TP0]
        waited = time.monotonic() - frozen_at
        assert position.epoch == epoch + 1 and position.next_offset is None
        assert IDLE - 0.5 <= waited <= IDLE + MARGIN, waited
    finally:
        zombie.close()
        owner.close()


def test_starting_beside_an_owner_inside_its_batch_does_not_wait_for_it(
    store: StoreUnderTest,
) -> None:
    """A member starting (its schema check) while another is inside a batch (keys claimed, no
    COMMIT yet; or frozen there) is not held up: the check of a current schema takes no
    table lock. Before, CREATE INDEX IF NOT EXISTS waited for the batch's locks, so a new
    member could not start until the other committed (or the server ended its session)."""
    owner = _open(store.url)
    try:
        owner.begin()
        owner.claim(GROUP, CLAIMS, 1.0)
        starting = PostgresStore(store.url, session=PostgresSession(lock_timeout=LOCK * 5,
                                                                    idle_in_transaction_timeout=IDLE))
        try:
            began = time.monotonic()
            starting.ensure_schema(GROUP)
            assert time.monotonic() - began < LOCK
        finally:
            starting.close()
        owner.rollback()
    finally:
        owner.close()
