"""One route's polled messages that have not started yet, in lanes that keep its ordering.

A lane is what runs one message at a time, in offset order: with ``key`` ordering one Kafka key
of one partition (a None key is one lane per partition), with ``partition`` one partition; with
``none`` there are no lanes and any queued message may start. At most ``concurrency`` messages
of the route run at once. A failing message waiting for its retry stays at the head of its lane
(its key's or partition's later messages wait behind it; other lanes go on); with ``none`` it
waits alone.

Poll thread only; pure bookkeeping (time is passed in, nothing blocks or does I/O).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Collection, Hashable
from typing import Literal

from consumer.message import TP, Message

Ordering = Literal["key", "partition", "none"]


class Lanes:
    """Queued messages of one route, and which of them may start now."""

    def __init__(self, ordering: Ordering, concurrency: int) -> None:
        self.ordering: Ordering = ordering
        self.concurrency = concurrency
        #: Messages of the route running now.
        self.in_flight = 0
        #: Messages queued (polled, not started), all partitions.
        self.queued = 0
        #: Queued messages per partition.
        self.queued_per_partition: dict[TP, int] = {}
        #: lane -> its queued messages, in offset order (key and partition ordering).
        self._lanes: dict[Hashable, deque[Message]] = {}
        #: Lanes with a message running or held for a retry: none of theirs may start.
        self._busy: set[Hashable] = set()
        #: Lanes that may start their head message, oldest first (may hold stale entries).
        self._ready: deque[Hashable] = deque()
        #: ``none`` ordering: the queued messages themselves.
        self._free: deque[Message] = deque()
        #: (retry time, sequence, lane or None, message) of messages held for a retry.
        self._held: list[tuple[float, int, Hashable, Message]] = []
        self._sequence = 0

    def lane_of(self, message: Message) -> Hashable:
        if self.ordering == "key":
            return (message.topic, message.partition, message.key)
        return (message.topic, message.partition)

    def push(self, message: Message) -> None:
        """A polled message joins the queue."""
        self.queued += 1
        tp = (message.topic, message.partition)
        self.queued_per_partition[tp] = self.queued_per_partition.get(tp, 0) + 1
        if self.ordering == "none":
            self._free.append(message)
            return
        lane = self.lane_of(message)
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = deque()
        if not queue and lane not in self._busy:
            self._ready.append(lane)
        queue.append(message)

    def start(self) -> Message | None:
        """The next message that may start now (counted in flight), or None."""
        if self.in_flight >= self.concurrency:
            return None
        message: Message | None
        if self.ordering == "none":
            message = self._free.popleft() if self._free else None
        else:
            message = self._next_of_a_ready_lane()
        if message is None:
            return None
        self.in_flight += 1
        self.queued -= 1
        tp = (message.topic, message.partition)
        self.queued_per_partition[tp] -= 1
        return message

    def _next_of_a_ready_lane(self) -> Message | None:
        ready, lanes, busy = self._ready, self._lanes, self._busy
        while ready:
            lane = ready.popleft()
            queue = lanes.get(lane)
            if not queue or lane in busy:
                continue  # stale: dropped, or already started
            busy.add(lane)
            return queue.popleft()
        return None

    def finished(self, message: Message) -> None:
        """A running message finished (done, dead-lettered, or abandoned): its lane moves on."""
        self.in_flight -= 1
        if self.ordering != "none":
            self._free_lane(self.lane_of(message))

    def _free_lane(self, lane: Hashable) -> None:
        self._busy.discard(lane)
        queue = self._lanes.get(lane)
        if queue:
            self._ready.append(lane)
        elif queue is not None:
            del self._lanes[lane]

    def hold(self, message: Message, until: float) -> None:
        """A running message failed and is retried at ``until``: it goes back to the head of
        its lane, which stays busy until then."""
        self.in_flight -= 1
        self.queued += 1
        tp = (message.topic, message.partition)
        self.queued_per_partition[tp] = self.queued_per_partition.get(tp, 0) + 1
        lane = None if self.ordering == "none" else self.lane_of(message)
        self._sequence += 1
        heapq.heappush(self._held, (until, self._sequence, lane, message))

    def release(self, now: float) -> None:
        """Messages whose retry time has come may start again (first in their lane)."""
        held = self._held
        while held and held[0][0] <= now:
            _, _, lane, message = heapq.heappop(held)
            if lane is None:
                self._free.appendleft(message)
                continue
            queue = self._lanes.get(lane)
            if queue is None:
                queue = self._lanes[lane] = deque()
            queue.appendleft(message)
            self._busy.discard(lane)
            self._ready.appendleft(lane)

    @property
    def next_retry_at(self) -> float | None:
        return self._held[0][0] if self._held else None

    def drop(self, partitions: Collection[TP]) -> int:
        """Forget the queued and held messages of ``partitions`` (revoked, lost, or the
        process is stopping); returns how many. Their running messages keep their lanes busy
        until they finish, so a key never runs twice at once even across a reassignment."""
        dropped = 0
        if self.ordering == "none":
            kept = deque(m for m in self._free if (m.topic, m.partition) not in partitions)
            dropped += len(self._free) - len(kept)
            self._free = kept
        else:
            for lane in [lane for lane in self._lanes if lane[:2] in partitions]:  # type: ignore[index]
                dropped += len(self._lanes.pop(lane))
        kept_held = [entry for entry in self._held
                     if (entry[3].topic, entry[3].partition) not in partitions]
        for _, _, lane, _ in self._held:
            if lane is not None and lane[:2] in partitions:  # type: ignore[index]
                self._busy.discard(lane)  # held, not running: nothing keeps it busy
        dropped += len(self._held) - len(kept_held)
        self._held = kept_held
        heapq.heapify(self._held)
        for tp in partitions:
            self.queued -= self.queued_per_partition.pop(tp, 0)
        return dropped
