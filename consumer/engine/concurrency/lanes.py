"""One route's polled messages (as jobs) that have not started yet, in lanes that keep its ordering.

A lane is what runs one message at a time, in offset order: with ``key`` ordering one Kafka key
of one partition (a None key is one lane per partition), with ``partition`` one partition; with
``none`` there are no lanes and any queued message may start. At most ``concurrency`` messages
of the route run at once. A failing message waiting for its retry stays at the head of its lane
(its key's or partition's later messages wait behind it; other lanes go on); with ``none`` it
waits alone.

A lane may hand its next queued jobs over with the one that starts, chained behind it
(:attr:`Job.next`): its worker runs them one after the other, the lane busy and one message in
flight until the chain ends; each counts as queued until it starts. Only while the route has
slots to spare: a chain would keep its slot from lanes waiting for one, and the lowest
waiting message holds its partition's watermark.

Poll thread only; pure bookkeeping (time is passed in, nothing blocks or does I/O).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Collection, Hashable, Mapping
from typing import TYPE_CHECKING, Literal

from consumer.message import TP

if TYPE_CHECKING:
    from consumer.engine.concurrency.runners import Job

Ordering = Literal["key", "partition", "none"]


class Lane(deque["Job"]):
    """One lane's queued jobs, in offset order; a job carries its lane from the queue to its
    completion, so starting and finishing it looks nothing up."""

    __slots__ = ("busy", "key")

    def __init__(self, key: Hashable) -> None:
        super().__init__()
        self.key = key
        #: A message of the lane runs or is held for a retry: none of its others may start.
        self.busy = False


class Lanes:
    """Queued jobs of one route, and which of them may start now.

    A job's lane is found once, when it is queued (the message's key is read there and only
    there), and the job carries it (:attr:`Job.lane`) to :meth:`finished` and :meth:`hold`.
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
        #: lane key -> the lane (key and partition ordering). A lane leaves when it is empty
        #: and not busy, so a running key stays busy even after its partition's queue is
        #: dropped.
        self._lanes: dict[Hashable, Lane] = {}
        #: Lanes that may start their head message, oldest first (may hold stale entries).
        self._ready: deque[Lane] = deque()
        #: ``none`` ordering: the queued jobs themselves.
        self._free: deque[Job] = deque()
        #: (retry time, sequence, job) of messages held for a retry.
        self._held: list[tuple[float, int, Job]] = []
        self._sequence = 0

    def push(self, job: Job) -> None:
        """A polled message joins the queue (its lane is found here, once)."""
        self.queued += 1
        job.owner.queued += 1
        if self._free_order:
            self._free.append(job)
            return
        message = job.message
        if self._keyed:
            key: Hashable = (message.topic, message.partition, message.key)
        else:
            key = (message.topic, message.partition)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Lane(key)
        job.lane = lane
        if not lane and not lane.busy:
            self._ready.append(lane)
        lane.append(job)

    def start(self, chain: int = 1) -> Job | None:
        """The next job that may start now (counted in flight), or None; with up to
        ``chain - 1`` more of its lane chained behind it (still counted queued) when the
        route has a slot for every other lane waiting to start. When slots run short, lanes
        take turns instead: a lane's next message queues behind the waiting lanes."""
        if self.in_flight >= self.concurrency:
            return None
        job: Job | None = None
        if self._free_order:
            if self._free:
                job = self._free.popleft()
        else:
            ready = self._ready
            while ready:
                lane = ready.popleft()
                if not lane or lane.busy:
                    continue  # stale: dropped, or already started
                lane.busy = True
                job = lane.popleft()
                if chain > 1 and lane and self.in_flight + 1 + len(ready) <= self.concurrency:
                    # a slot for every lane waiting to start: the chain keeps none waiting
                    last = job
                    for _ in range(min(chain - 1, len(lane))):
                        last.next = last = lane.popleft()
                break
        if job is None:
            return None
        self.in_flight += 1
        self.queued -= 1
        job.owner.queued -= 1
        return job

    def finished(self, job: Job) -> None:
        """A running job finished (done, dead-lettered, or abandoned): its lane moves on, or
        its worker went on with the next job chained behind it, which started."""
        following = job.next
        if following is not None:
            self.queued -= 1
            following.owner.queued -= 1
            return
        self.in_flight -= 1
        lane = job.lane
        if lane is None:
            return
        lane.busy = False
        if lane:
            self._ready.append(lane)
        else:
            del self._lanes[lane.key]  # a busy lane never leaves: it is there

    def give_back(self, job: Job) -> None:
        """``job`` raised, so its worker did not go on: the jobs chained behind it return to
        the head of its lane, in order (dropped when its partition is gone)."""
        chained = _unchain(job)
        if not chained:
            return
        lane = job.lane
        if job.owner.gone or lane is None:
            self._forget(chained)
        else:
            lane.extendleft(reversed(chained))  # busy with ``job``: no ready entry needed

    def not_started(self, job: Job) -> None:
        """``job``'s worker did not start it, nor those chained behind it (cut: revoked, or
        the process is stopping): they are dropped like queued ones. Its lane moves on."""
        self._forget(_unchain(job))
        self.finished(job)

    def _forget(self, jobs: list[Job]) -> None:
        self.queued -= len(jobs)
        for job in jobs:
            job.owner.queued -= 1

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
            lane.appendleft(job)  # busy while held: still the key's lane
            lane.busy = False
            self._ready.appendleft(lane)

    @property
    def next_retry_at(self) -> float | None:
        return self._held[0][0] if self._held else None

    def drop_above(self, highest: Mapping[TP, int]) -> int:
        """Forget the queued jobs whose offset is above ``highest`` of their partition (every
        queued job of a partition not in it); returns how many. Jobs held for a retry stay:
        they ran once, so they are below it."""
        return self._drop_queued(above(highest))

    def drop(self, partitions: Collection[TP]) -> int:
        """Forget the queued and held jobs of ``partitions`` (revoked, lost, or the process
        is stopping); returns how many. Their running jobs keep their lanes busy until they
        finish, so a key never runs twice at once even across a reassignment."""
        dropped = self._drop_queued(lambda job: partition_of(job) in partitions)
        kept_held: list[tuple[float, int, Job]] = []
        for entry in self._held:
            job = entry[2]
            if partition_of(job) in partitions:
                dropped += 1
                job.owner.queued -= 1
                self.queued -= 1
                held_lane = job.lane
                if held_lane is not None:  # held, not running: nothing keeps it busy
                    held_lane.busy = False
                    if not held_lane and self._lanes.get(held_lane.key) is held_lane:
                        del self._lanes[held_lane.key]
            else:
                kept_held.append(entry)
        self._held = kept_held
        heapq.heapify(self._held)
        return dropped

    def _drop_queued(self, drops: Callable[[Job], bool]) -> int:
        """Forget the queued jobs (not those held for a retry) that ``drops`` picks; returns
        how many. In a lane it must pick a tail: a lane is in offset order, and what it picks
        is a partition's whole queue or what lies above an offset."""
        dropped = 0
        if self._free_order:
            kept: deque[Job] = deque()
            for job in self._free:
                if drops(job):
                    job.owner.queued -= 1
                    dropped += 1
                else:
                    kept.append(job)
            self._free = kept
        else:
            lanes = self._lanes
            for key, lane in list(lanes.items()):
                while lane and drops(lane[-1]):
                    lane.pop().owner.queued -= 1
                    dropped += 1
                if not lane and not lane.busy:
                    del lanes[key]
        self.queued -= dropped
        return dropped


def _unchain(job: Job) -> list[Job]:
    """The jobs chained behind ``job``, in order, unlinked from it and from each other."""
    chained: list[Job] = []
    following, job.next = job.next, None
    while following is not None:
        chained.append(following)
        following.next, following = None, following.next
    return chained


def partition_of(job: Job) -> TP:
    message = job.message
    return (message.topic, message.partition)


def above(highest: Mapping[TP, int]) -> Callable[[Job], bool]:
    """Picks the jobs whose offset is above ``highest`` of their partition (every job of a
    partition not in it)."""
    return lambda job: job.message.offset > highest.get(partition_of(job), -1)
