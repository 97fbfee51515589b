"""What each message of a broken micro-batch comes to (consumer.store.micro_batch)."""

from __future__ import annotations

from consumer.errors import StoreError, StoreUnavailable, TransactionEndRefused
from consumer.store import Claim
from consumer.store.micro_batch import settled

CLAIMS = [Claim(bytes([n]) * 16, "t", 0, n) for n in range(3)]


def alone(index: int) -> bool:
    return True


def never_transient(error: BaseException) -> bool:
    return False


def test_a_message_that_raised_its_own_error_keeps_it_and_the_others_run_alone() -> None:
    failure = ValueError("bad message")
    assert settled(CLAIMS, (1, failure), alone, never_transient) == [True, failure, True]


def test_an_error_that_stops_the_process_leaves_the_others_to_be_retried_not_run() -> None:
    refused = TransactionEndRefused("a COMMIT statement")
    ran: list[int] = []
    outcomes = settled(CLAIMS, (2, refused), lambda i: bool(ran.append(i)), never_transient)
    assert outcomes[2] is refused and ran == []
    assert all(isinstance(o, StoreUnavailable) and "t[0]@2" in str(o) for o in outcomes[:2])


def test_a_transient_or_store_error_runs_every_message_again_alone() -> None:
    deadlock = RuntimeError("deadlock")
    assert settled(CLAIMS, (0, deadlock), alone, lambda e: e is deadlock) == [True] * 3
    assert settled(CLAIMS, (None, StoreError("gone")), alone, never_transient) == [True] * 3
    assert settled(CLAIMS, (None, None), alone, never_transient) == [True] * 3
