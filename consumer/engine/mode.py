"""What the loop asks of a checkpoint mode: the one seam between polling and checkpointing.

Three modes implement it, chosen once by the wiring (``consumer.app.build_loop``):
:class:`consumer.engine.direct_mode.DirectMode` (handlers run as messages are polled, checkpoints
live in Kafka only), :class:`consumer.engine.store_mode.StoreMode` (messages are buffered and
applied with their checkpoint rows in one store transaction) and
:class:`consumer.engine.concurrent_store_mode.ConcurrentStoreMode` (a store with concurrency: a
transaction per message on workers, checkpoint rows at the watermarks). The loop keeps
polling, routing, pausing, rebalances and shutdown, and never asks which mode it has.

Every method is called on the loop's thread; ``pending`` and ``work`` may also be read by a
snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from consumer.checkpoint.progress import PartitionProgress
from consumer.engine.snapshot import WorkSnapshot
from consumer.engine.stopping import StopRequest
from consumer.errors import KafkaError
from consumer.events import Trigger
from consumer.message import TP, Message

Partitions = Mapping[TP, PartitionProgress]


class HandlerWait:
    """The wait a poll hands to the next take while handlers run on workers: the poll only
    takes what has arrived, and the take waits (as long as the poll would have) for a handler
    to finish, so its key's next message starts at once."""

    __slots__ = ("_seconds",)

    def __init__(self) -> None:
        self._seconds = 0.0

    def hand_over(self, timeout: float) -> float:
        """Keep ``timeout`` for the next take; what the poll waits (nothing)."""
        self._seconds = timeout
        return 0.0

    def take(self) -> float:
        """Seconds the take waits, once (0.0: no poll handed a wait over)."""
        seconds, self._seconds = self._seconds, 0.0
        return seconds


class CheckpointMode(Protocol):
    """How polled messages become done and how their checkpoints are saved."""

    def prepare(self, topics: Sequence[str], *, keep_trying: Callable[[], bool]) -> bool:
        """Get ready before subscribing (a store's schema, the topics' ids); may block while
        retrying. False when ``keep_trying`` turned false first."""
        ...

    def assign(self, partitions: Sequence[TP]) -> tuple[dict[TP, PartitionProgress],
                                                        dict[TP, int]]:
        """Progress for newly assigned partitions, and the offsets to start them at (a
        partition left out starts at Kafka's committed offset)."""
        ...

    def take(self, messages: list[Message], partitions: Partitions, stop: StopRequest) -> int:
        """Take a polled batch; returns how many messages count towards the next checkpoint.
        Raises HandlerFailed to stop the consumer."""
        ...

    def checkpoint(self, trigger: Trigger, partitions: Partitions, *,
                   only: Sequence[TP] | None = None) -> bool:
        """Save what is done (of ``only`` these partitions, when given: a revoke). True when
        the checkpoint covered all work so far, so the count and interval start again; False
        when it failed, waits for an earlier commit, or covered only some partitions."""
        ...

    def room(self, batch_size: int, until_checkpoint: int | None, partitions: Partitions) -> int:
        """How many messages the next poll may take: ``batch_size``, bounded by the messages
        left before the count trigger and by what the broker has not confirmed yet."""
        ...

    def poll_timeout(self, timeout: float) -> float:
        """Seconds the next poll may block, out of the ``timeout`` the loop may wait (the
        configured one, cut short by a due interval checkpoint or retry), unless the mode
        has something better to wait for: handlers running on workers, which its next
        :meth:`take` then waits for, ``timeout`` at most."""
        ...

    def confirm(self, partitions: Partitions) -> bool:
        """The poll has no room: confirm what waits for the broker. True when that saved new
        work too (a checkpoint: the count and interval start again). If the poll still has
        no room, the loop polls with every partition paused, taking nothing new."""
        ...

    def forget(self, partitions: Sequence[TP]) -> None:
        """Partitions were revoked or lost: drop what is held for them."""
        ...

    def drop_pending(self) -> None:
        """The process failed: forget polled work that is not done (no handler runs again)."""
        ...

    def commit_answered(self, offsets: Mapping[TP, int], error: KafkaError | None,
                        partitions: Partitions) -> None:
        """The broker answered an asynchronous commit."""
        ...

    @property
    def unavailable(self) -> bool:
        """Checkpoints cannot be saved now (the store is down): the loop pauses everything."""
        ...

    def retry_due(self) -> bool:
        """While unavailable: whether to try the pending checkpoint again now."""
        ...

    @property
    def pending(self) -> Sequence[Message]:
        """Messages polled and held, not done yet (for snapshots and the offset refresher)."""
        ...


    def work(self) -> WorkSnapshot:
        """Routes with concurrency: what runs and waits now (for snapshots; any thread)."""
        ...
