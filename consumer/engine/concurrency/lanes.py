"""One route's polled messages that have not started yet, in lanes that keep its ordering.

A lane is what runs one message at a time, in offset order: with ``key`` ordering one Kafka key
of one partition (a None key is one lane per partition), with ``partition`` one partition; with
``none`` there are no lanes and any queued message may start. At most ``concurrency`` messages
of the route run at once. A failing message waiting for its retry stays at the head of its lane
(its key's or partition's later messages wait behind it; other lanes go on); with ``none`` it
waits alone.

A lane holds the messages themselves; the :class:`Job` that runs one is made when it starts
(:data:`JobFactory`), so the thousands a full buffer holds weigh a message each, and a job and
its context are made and used within a handler's time. (With ``none`` ordering, jobs are made
as messages are queued: they start in that order.)

A lane may hand its next queued messages over with the one that starts, as jobs chained behind it
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

from consumer.message import TP, Message

if TYPE_CHECKING:
    from consumer.engine.concurrency.runners import Job
    from consumer.engine.concurrency.tracker import PartitionWork

Ordering = Literal["key", "partition", "none"]


#: A partition's lanes by lane key: the message's Kafka key (``key`` ordering), or None (the
#: partition's one lane with ``partition`` ordering).
PartitionLanes = dict[Hashable, "Lane"]

#: Makes the job that runs ``message`` of ``work``'s partition, in ``lane`` (None: ``none``
#: ordering): the route's handler, scope and decoder are the factory's.
JobFactory = Callable[[Message, "PartitionWork", "Lane | None"], "Job"]


class Lane(deque[Message]):
    """One lane's queued messages, in offset order; a job carries its lane from its start to
    its completion, so finishing it looks nothing up."""

    __slots__ = ("busy", "key", "work")

    def __init__(self, key: Hashable, work: PartitionWork) -> None:
        super().__init__()
        self.key = key
        #: The work of the assignment its queued messages came in (a revoke empties the lane;
        #: the partition's next assignment brings its own). Every assignment of a partition
        #: shares the partition's lanes (``work.key_lanes``), which hold this one while it has
        #: queued messages or is busy.
        self.work = work
        #: A message of the lane runs or is held for a retry: none of its others may start.
        self.busy = False


class Lanes:
    """Queued messages of one route, and which of them may start now.

    A message's lane is found once, when it is queued (its key is read there and only there,
    among its partition's lanes); the job made when it starts carries the lane
    (:attr:`Job.lane`) to :meth:`finished` and :meth:`hold`. The per-partition counts live
    on the partition's :class:`~.tracker.PartitionWork` (``queued``), which the dispatcher
    reads for snapshots."""

    def __init__(self, ordering: Ordering, concurrency: int, make_job: JobFactory) -> None:
        self.ordering: Ordering = ordering
        self.concurrency = concurrency
        self._make_job = make_job
        self._keyed = ordering == "key"
        self._free_order = ordering == "none"
        #: Messages of the route running now.
        self.in_flight = 0
        #: Messages queued (polled, not started), all partitions.
        self.queued = 0
        #: Per partition, its lanes (key and partition ordering). A lane leaves when it is
        #: empty and not busy, so a running key stays busy even after its partition's queue
        #: is dropped, and a partition's lanes outlive its assignment for the same reason.
        self._lanes: dict[TP, PartitionLanes] = {}
        #: Lanes that may start their head message, oldest first (may hold stale entries).
        self._ready: deque[Lane] = deque()
        #: ``none`` ordering: the queued messages' jobs (made as they are queued).
        self._free: deque[Job] = deque()
        #: (retry time, sequence, job) of messages held for a retry.
        self._held: list[tuple[float, int, Job]] = []
        self._sequence = 0

    def of_partition(self, tp: TP) -> PartitionLanes:
        """``tp``'s lanes, where :meth:`push` finds a message's lane (its
        :class:`~.tracker.PartitionWork` keeps them at hand)."""
        lanes = self._lanes.get(tp)
        if lanes is None:
            lanes = self._lanes[tp] = {}
        return lanes

    def push(self, message: Message, work: PartitionWork) -> None:
        """A polled message of ``work``'s partition joins the queue (its lane is found here,
        once)."""
        self.queued += 1
        work.queued += 1
        if self._free_order:
            self._free.append(self._make_job(message, work, None))
            return
        lanes = work.key_lanes
        key = message.key if self._keyed else None
        lane = lanes.get(key)
        if lane is None:
            lane = lanes[key] = Lane(key, work)
            self._ready.append(lane)
        elif not lane:
            lane.work = work  # an empty lane may be a previous assignment's running key's
            if not lane.busy:
                self._ready.append(lane)
        lane.append(message)

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
                work = lane.work
                make_job = self._make_job
                job = make_job(lane.popleft(), work, lane)
                if chain > 1 and lane and self.in_flight + 1 + len(ready) <= self.concurrency:
                    # a slot for every lane waiting to start: the chain keeps none waiting
                    last = job
                    for _ in range(min(chain - 1, len(lane))):
                        last.next = last = make_job(lane.popleft(), work, lane)
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
            del lane.work.key_lanes[lane.key]  # a busy lane never leaves: it is there

    def give_back(self, job: Job) -> None:
        """``job`` raised, so its worker did not go on: the messages chained behind it return
        to the head of its lane, in order (dropped when its partition is gone)."""
        chained = _unchain(job)
        if not chained:
            return
        lane = job.lane
        if job.owner.gone or lane is None:
            self._forget(chained)
        else:  # busy with ``job``: no ready entry needed
            lane.extendleft([chained_job.message for chained_job in reversed(chained)])

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
            lane.appendleft(job.message)  # busy while held: still the key's lane
            lane.busy = False
            self._ready.appendleft(lane)

    @property
    def next_retry_at(self) -> float | None:
        return self._held[0][0] if self._held else None

    def drop_above(self, highest: Mapping[TP, int]) -> int:
        """Forget the queued messages whose offset is above ``highest`` of their partition
        (every queued message of a partition not in it); returns how many. Jobs held for a
        retry stay: they ran once, so they are below it."""
        return self._drop_queued(above(highest))

    def drop(self, partitions: Collection[TP]) -> int:
        """Forget the queued messages and held jobs of ``partitions`` (revoked, lost, or the process
        is stopping); returns how many. Their running jobs keep their lanes busy until they
        finish, so a key never runs twice at once even across a reassignment."""
        dropped = self._drop_queued(lambda message: partition_of(message) in partitions)
        kept_held: list[tuple[float, int, Job]] = []
        for entry in self._held:
            job = entry[2]
            if partition_of(job.message) in partitions:
                dropped += 1
                job.owner.queued -= 1
                self.queued -= 1
                held_lane = job.lane
                if held_lane is not None:  # held, not running: nothing keeps it busy
                    held_lane.busy = False
                    home = held_lane.work.key_lanes
                    if not held_lane and home.get(held_lane.key) is held_lane:
                        del home[held_lane.key]
            else:
                kept_held.append(entry)
        self._held = kept_held
        heapq.heapify(self._held)
        return dropped

    def _drop_queued(self, drops: Callable[[Message], bool]) -> int:
        """Forget the queued messages (not those held for a retry) that ``drops`` picks;
        returns how many. In a lane it must pick a tail: a lane is in offset order, and what
        it picks is a partition's whole queue or what lies above an offset."""
        dropped = 0
        if self._free_order:
            kept: deque[Job] = deque()
            for job in self._free:
                if drops(job.message):
                    job.owner.queued -= 1
                    dropped += 1
                else:
                    kept.append(job)
            self._free = kept
        else:
            for lanes in self._lanes.values():
                for key, lane in list(lanes.items()):
                    while lane and drops(lane[-1]):
                        lane.pop()
                        lane.work.queued -= 1
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


def partition_of(message: Message) -> TP:
    return (message.topic, message.partition)


def above(highest: Mapping[TP, int]) -> Callable[[Message], bool]:
    """Picks the messages whose offset is above ``highest`` of their partition (every
    message of a partition not in it)."""
    return lambda message: message.offset > highest.get(partition_of(message), -1)
