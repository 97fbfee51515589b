"""One route's polled messages (as jobs) that have not started yet, in lanes that keep its ordering.

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
from typing import TYPE_CHECKING, Literal

from consumer.message import TP, Message

if TYPE_CHECKING:
    from consumer.engine.concurrency.runners import Job

Ordering = Literal["key", "partition", "none"]


class Lanes:
    """Queued jobs of one route, and which of them may start now.

    A job's lane is computed once, when it is queued (:attr:`Job.lane`: the message's key is
    read there and only there), and the job carries it to :meth:`finished` and :meth:`hold`.
    The per-partition counts live on the job's :class:`~.tracker.PartitionWork`
    (``queued``), which the dispatcher reads for snapshots."""

    def __init__(self, ordering: Ordering, concurrency: int) -> None:
        self.ordering: Ordering = ordering
        self.concurrency = concurrency
        self._keyed = ordering == "key"
        self._free_order = ordering == "none"
        #: Messages of the route running now.
        self.in_flight = 0
        #: Messages queued (polled, not started), all partitions.
        self.queued = 0
        #: lane -> its queued jobs, in offset order (key and partition ordering).
        self._lanes: dict[Hashable, deque[Job]] = {}
        #: Lanes with a message running or held for a retry: none of theirs may start.
        self._busy: set[Hashable] = set()
        #: Lanes that may start their head message, oldest first (may hold stale entries).
        self._ready: deque[Hashable] = deque()
        #: ``none`` ordering: the queued jobs themselves.
        self._free: deque[Job] = deque()
        #: (retry time, sequence, job) of messages held for a retry.
        self._held: list[tuple[float, int, Job]] = []
        self._sequence = 0

    def lane_of(self, message: Message) -> Hashable:
        if self._keyed:
            return (message.topic, message.partition, message.key)
        if self._free_order:
            return None
        return (message.topic, message.partition)

    def push(self, job: Job) -> None:
        """A polled message joins the queue (its lane is computed here, once)."""
        self.queued += 1
        job.owner.queued += 1
        if self._free_order:
            self._free.append(job)
            return
        message = job.message
        if self._keyed:
            lane: Hashable = (message.topic, message.partition, message.key)
        else:
            lane = (message.topic, message.partition)
        job.lane = lane
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = deque()
        if not queue and lane not in self._busy:
            self._ready.append(lane)
        queue.append(job)

    def start(self) -> Job | None:
        """The next job that may start now (counted in flight), or None."""
        if self.in_flight >= self.concurrency:
            return None
        job: Job | None = None
        if self._free_order:
            if self._free:
                job = self._free.popleft()
        else:
            ready, lanes, busy = self._ready, self._lanes, self._busy
            while ready:
                lane = ready.popleft()
                queue = lanes.get(lane)
                if not queue or lane in busy:
                    continue  # stale: dropped, or already started
                busy.add(lane)
                job = queue.popleft()
                break
        if job is None:
            return None
        self.in_flight += 1
        self.queued -= 1
        job.owner.queued -= 1
        return job

    def finished(self, job: Job) -> None:
        """A running job finished (done, dead-lettered, or abandoned): its lane moves on."""
        self.in_flight -= 1
        lane = job.lane
        if lane is None:
            return
        self._busy.discard(lane)
        queue = self._lanes.get(lane)
        if queue:
            self._ready.append(lane)
        elif queue is not None:
            del self._lanes[lane]

    def hold(self, job: Job, until: float) -> None:
        """A running job failed and is retried at ``until``: it goes back to the head of
        its lane, which stays busy until then."""
        self.in_flight -= 1
        self.queued += 1
        job.owner.queued += 1
        self._sequence += 1
        heapq.heappush(self._held, (until, self._sequence, job))

    def release(self, now: float) -> None:
        """Jobs whose retry time has come may start again (first in their lane)."""
        held = self._held
        while held and held[0][0] <= now:
            job = heapq.heappop(held)[2]
            lane = job.lane
            if lane is None:
                self._free.appendleft(job)
                continue
            queue = self._lanes.get(lane)
            if queue is None:
                queue = self._lanes[lane] = deque()
            queue.appendleft(job)
            self._busy.discard(lane)
            self._ready.appendleft(lane)

    @property
    def next_retry_at(self) -> float | None:
        return self._held[0][0] if self._held else None

    def drop(self, partitions: Collection[TP]) -> int:
        """Forget the queued and held jobs of ``partitions`` (revoked, lost, or the process
        is stopping); returns how many. Their running jobs keep their lanes busy until they
        finish, so a key never runs twice at once even across a reassignment."""
        dropped: list[Job] = []
        if self._free_order:
            kept: deque[Job] = deque()
            for job in self._free:
                (dropped if _tp(job) in partitions else kept).append(job)
            self._free = kept
        else:
            for lane in [lane for lane in self._lanes if lane[:2] in partitions]:  # type: ignore[index]
                dropped.extend(self._lanes.pop(lane))
        kept_held: list[tuple[float, int, Job]] = []
        for entry in self._held:
            job = entry[2]
            if _tp(job) in partitions:
                dropped.append(job)
                if job.lane is not None:
                    self._busy.discard(job.lane)  # held, not running: nothing keeps it busy
            else:
                kept_held.append(entry)
        self._held = kept_held
        heapq.heapify(self._held)
        for job in dropped:
            job.owner.queued -= 1
        self.queued -= len(dropped)
        return len(dropped)


def _tp(job: Job) -> TP:
    message = job.message
    return (message.topic, message.partition)
