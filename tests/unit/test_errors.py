"""The errors a tired operator reads: what happened, what was done about it, what to do."""

from __future__ import annotations

from consumer.errors import MessageTransactionEnded


def test_a_message_transaction_ended_by_a_statement_says_what_was_forgotten() -> None:
    nothing = str(MessageTransactionEnded("orders", 0, 3, forgotten=0))
    assert "orders[0] at offset 3" in nothing and "no key was left to forget" in nothing
    forgotten = str(MessageTransactionEnded("orders", 0, 3, forgotten=2))
    assert "the 2 keys" in forgotten and "forgotten again" in forgotten
    assert "Remove the statement" in forgotten


def test_a_message_transaction_whose_keys_could_not_be_forgotten_names_the_replay() -> None:
    failed = str(MessageTransactionEnded("orders", 0, 3, forgotten=2,
                                         unforgotten=OSError("server gone")))
    assert "OSError: server gone" in failed
    assert "consumer replay --forget-keys` from orders[0] offset 3" in failed
