"""What each message of a message pool's micro-batch comes to once the batch's transaction
broke (:meth:`consumer.store.base.MessageTransactions.apply_batch`): shared by the PostgreSQL
and MariaDB pools. Knows neither database."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from consumer.errors import StoreUnavailable
from consumer.store.base import Claim

log = logging.getLogger("consumer.store")

#: The message that broke the batch (None: not one in particular) and its error (None: a work
#: left the transaction unusable without raising).
Broken = tuple[int | None, BaseException | None]


def settled(claims: Sequence[Claim], broken: Broken, alone: Callable[[int], bool | BaseException],
            transient: Callable[[BaseException], bool]) -> list[bool | BaseException]:
    """Each message's outcome after the batch rolled back: the one whose work raised its own
    error keeps that error, and the others run again one transaction each (``alone``); when
    that error stops the process (not an Exception), the others are retried instead, not run;
    a store's error, transient or not one message's, runs every message again alone."""
    failed, cause = broken
    every = range(len(claims))
    if failed is not None and cause is not None and not isinstance(cause, Exception):
        # KeyboardInterrupt, a refused transaction statement: the process stops; its
        # neighbours run nowhere (they are retried, not failed: they did nothing wrong)
        at = claims[failed]
        held = StoreUnavailable(f"not applied: {at.topic}[{at.partition}]@{at.offset} in the "
                                "same transaction stopped the process")
        return [cause if index == failed else held for index in every]
    if failed is not None and cause is not None and not transient(cause):
        at = claims[failed]
        log.info("%s[%d]@%d failed inside a micro-batch of %d: the batch rolled back, its "
                 "other messages run again one transaction each", at.topic, at.partition,
                 at.offset, len(claims))
        return [cause if index == failed else alone(index) for index in every]
    # a store error (ours, or transient in a work), or a work that left the transaction
    # unusable: nobody's fault in particular, every message runs again alone
    return [alone(index) for index in every]
