"""The mark a transaction of the consumer's sets (``default_transaction_read_only``, flipped
locally): the opening, and how the transaction's end is told from libpq's state. Against a
real server: the integration tests of the pools and the store (a handler's ``COMMIT;
BEGIN``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from consumer.store.postgres_mark import IDLE, IN_TRANSACTION, OPENING, SETTING, ended, marked

INERROR = 3


@dataclass
class LibpqState:
    """What libpq holds: its transaction status and the settings the server reported."""

    transaction_status: int = IDLE
    reported: dict[bytes, bytes] = field(default_factory=dict)

    def parameter_status(self, name: bytes) -> bytes | None:
        return self.reported.get(name)


def test_the_opening_flips_the_setting_locally() -> None:
    assert OPENING == "BEGIN; SET LOCAL default_transaction_read_only = on"


@pytest.mark.parametrize(("state", "is_ended"), [
    (LibpqState(IDLE, {SETTING: b"off"}), True),  # COMMIT
    (LibpqState(IN_TRANSACTION, {SETTING: b"off"}), True),  # COMMIT; BEGIN
    (LibpqState(IN_TRANSACTION, {SETTING: b"on"}), False),  # ours, still open
    # a failed transaction: the server reverted the setting before the ROLLBACK
    (LibpqState(INERROR, {SETTING: b"off"}), False),
], ids=["idle", "another-transaction", "ours", "failed"])
def test_the_end_is_no_transaction_or_one_under_the_sessions_own_value(
        state: LibpqState, is_ended: bool) -> None:
    assert ended(state, True) is is_ended


def test_a_server_reporting_no_setting_is_told_by_the_status_alone() -> None:
    assert marked(LibpqState(IN_TRANSACTION)) is False
    assert ended(LibpqState(IN_TRANSACTION), False) is False
    assert ended(LibpqState(IDLE), False) is True


def test_a_mark_that_does_not_show_leaves_the_status_alone_to_tell() -> None:
    """A proxy that swallows the server's reports: libpq still holds the session's value
    inside the transaction. Compared with it, every transaction would look ended."""
    unreported = LibpqState(IN_TRANSACTION, {SETTING: b"off"})
    assert marked(unreported) is False
    assert ended(unreported, marked(unreported)) is False
    assert marked(LibpqState(IN_TRANSACTION, {SETTING: b"on"})) is True
