"""Direct mode's handler runs with concurrency: many messages in flight, checkpoints that never
pass an unfinished one.

The poll thread hands each polled message to its route's :class:`~.lanes.Lanes` (its ordering),
starts what may start on the route's runner (:mod:`.runners`), and drains the completion queue:
a finished message is marked in its partition's :class:`~.tracker.FinishedOffsets`, and the
partition's watermark moves (:meth:`PartitionProgress.advance`) when the lowest unfinished
offset does. A failure becomes a retry held at the head of its lane, a dead letter (produced
here, on the poll thread), or a stop: :class:`HandlerFailed` is raised once the work already
running has finished, so the checkpoint after it covers everything before the failing message.

Only the poll thread calls this object; workers only put completions on the queue.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from consumer.checkpoint.progress import PartitionProgress
from consumer.clock import Clock
from consumer.dedup import KeyFunction
from consumer.engine.concurrency.batches import BatchRunner, BatchWork
from consumer.engine.concurrency.lanes import JobFactory, Lane, Lanes, Ordering, above, partition_of
from consumer.engine.concurrency.runners import (
    NOT_STARTED,
    AsyncRunner,
    Completions,
    Job,
    ThreadRunner,
)
from consumer.engine.concurrency.tracker import PartitionWork
from consumer.engine.stopping import StopRequest
from consumer.errors import HandlerFailed
from consumer.events import HandlerTimings
from consumer.failures.formats import Decode
from consumer.failures.retries import Failures, Verdict
from consumer.handler_call import WorkerCalls
from consumer.kafka.protocol import Source
from consumer.message import TP, Context, Message, Scope
from consumer.routing import Handler, Router, is_async

log = logging.getLogger("consumer.engine")

#: Jobs of one lane a worker is handed at once (the first and the next ones queued behind it):
#: it runs them one after the other without waiting for the poll thread to start each, which
#: spares a hand-over per message. A chain ends early when a job raises (the rest go back to
#: the lane) or the partition is revoked (the rest are not started). Micro-batches
#: (:class:`~.batches.BatchRunner`) take no chains.
CHAIN_JOBS = 16


@dataclass(frozen=True)
class RouteWork:
    """How one route runs: at most ``concurrency`` in flight, in ``ordering``."""

    concurrency: int
    ordering: Ordering
    #: Messages a worker takes at once when the handler runs micro-batches (a store's
    #: transactions: :class:`~.batches.BatchWork`); 1: one at a time.
    batch: int = 1


class _Route:
    __slots__ = ("chain", "handler", "lanes", "runner", "scope")

    def __init__(self, handler: Handler, lanes: Lanes, scope: Scope,
                 runner: ThreadRunner | BatchRunner | None) -> None:
        self.handler = handler
        self.lanes = lanes
        self.scope = scope
        #: Jobs a worker takes at once from a lane (:data:`CHAIN_JOBS`; 1 for micro-batches).
        self.chain = 1 if isinstance(runner, BatchRunner) else CHAIN_JOBS
        #: None: an async handler, run on the shared event loop.
        self.runner = runner


class ConcurrentDispatcher:
    """Runs polled messages on workers, route by route; the poll thread keeps all state."""

    def __init__(self, router: Router, work: Mapping[str, RouteWork], *, group: str,
                 keys: Mapping[str, KeyFunction], failures: Failures, source: Source,
                 clock: Clock, max_buffered: int, stop_wait: float,
                 instruments: HandlerTimings | None = None,
                 held_back: Callable[[BaseException], float | None] | None = None) -> None:
        self._failures = failures
        #: With a store: when to retry a message whose error is the store's (transient), not
        #: its own; None for the message's own failure, which its policy decides.
        self._held_back = held_back
        self._source = source
        self._clock = clock
        self._max_buffered = max_buffered
        #: Seconds a failure that stops the consumer waits for the work running beside it.
        self._stop_wait = stop_wait
        self._calls = WorkerCalls(instruments)
        self._completions: Completions = queue.SimpleQueue()
        self._routes: dict[str, _Route] = {}
        self._async: AsyncRunner | None = None
        for topic in router.topics:
            handler = router.route_for(topic).handler
            settings = work.get(topic, RouteWork(1, "key"))
            runner: ThreadRunner | BatchRunner | None = None
            in_flight = settings.concurrency
            if is_async(handler):
                if self._async is None:
                    self._async = AsyncRunner(completions=self._completions,
                                              clock=self._calls.clock)
            elif settings.batch > 1 and isinstance(handler, BatchWork):
                # each worker finds its next micro-batch started when it finishes one
                in_flight = settings.concurrency * settings.batch
                runner = BatchRunner(handler, concurrency=settings.concurrency,
                                     batch=settings.batch, name=topic,
                                     completions=self._completions, clock=self._calls.clock)
            else:
                runner = ThreadRunner(handler, concurrency=settings.concurrency, name=topic,
                                      completions=self._completions, clock=self._calls.clock)
            scope = Scope(group, key_function=keys.get(topic))
            # the value's declared format: its jobs check it on the worker, before the handler
            make_job = job_factory(scope, failures.format_of(topic))
            self._routes[topic] = _Route(handler, Lanes(settings.ordering, in_flight, make_job),
                                         scope, runner)
        #: Per assigned partition with work taken in: its finished offsets and counts (a job
        #: carries its partition's, so a completion looks nothing up).
        self._trackers: dict[TP, PartitionWork] = {}
        #: Partitions whose watermark moved in the drain under way (progress moved at its end).
        self._moved: list[PartitionWork] = []
        #: Jobs running now, in the order they started: the oldest start is the first.
        self._running: dict[Job, None] = {}
        #: Messages done by completions drained outside :meth:`run` (reported by the next).
        self._done = 0
        #: A handler failure that stops the consumer, raised once running work finished.
        self._stopping: HandlerFailed | None = None
        #: The process failed or is stopping: no handler starts again.
        self._closed = False
        #: Partitions paused because their route's buffer share is full.
        self._full: set[TP] = set()
        #: Per partition: (the offset committed, the offsets above it that its commit says
        #: finished): polled again, they are done without running (:meth:`skip_finished`).
        self._finished_before: dict[TP, tuple[int, set[int]]] = {}
        #: The buffer stayed full for a whole :meth:`wait`: its handlers do not drain it.
        self._stalled = False

    # --- the loop's turn -----------------------------------------------------------------------

    def run(self, messages: list[Message], partitions: Mapping[TP, PartitionProgress],
            now: float, stop: StopRequest) -> int:
        """Queue ``messages``, start what may start, take in what finished; returns how many
        messages became done (their partition's watermark moved past them). Raises
        HandlerFailed when a failure stops the consumer."""
        if self._stopping is not None:
            self._fail(partitions)
        trackers = self._trackers
        routes = self._routes
        finished_before = self._finished_before
        work: PartitionWork | None = None
        skip: set[int] | None = None
        for message in messages:
            if stop.requested:
                break  # not taken: the next owner reads it again
            topic, partition = message.topic, message.partition
            if work is None or partition != work.partition or topic != work.topic:
                # A poll hands over runs of one partition: look it up once per run.
                tp = (topic, partition)
                work = trackers.get(tp)
                route = routes[topic]
                if work is None:
                    progress = partitions.get(tp)
                    if progress is None:
                        continue  # revoked meanwhile
                    work = trackers[tp] = PartitionWork(topic, partition, progress=progress,
                                                        lanes=route.lanes)
                push = route.lanes.push
                before = finished_before.get(tp) if finished_before else None
                skip = None if before is None else before[1]
            offset = message.offset
            work.polled(offset)
            if skip is not None and offset in skip:
                self._skip(work, offset, skip)
                continue
            push(message, work)
        self._drain(partitions, block=0.0)
        if not stop.requested:
            self._start(partitions)
        self._hold_back_full_routes(partitions)
        if self._stopping is not None:
            self._fail(partitions)
        done, self._done = self._done, 0
        return done

    def room(self) -> int:
        """Messages the buffer has room for. It holds what is polled and not started, and what
        finished above a partition's watermark (the gap): so a message stuck in a handler
        stops the intake once the gap behind it fills the buffer, which bounds what a crash
        repeats."""
        gap = sum(tracker.gap for tracker in self._trackers.values())
        return max(0, self._max_buffered - self.buffered - gap)

    @property
    def room_total(self) -> int:
        """The buffer's size: messages polled and not started, at most."""
        return self._max_buffered

    @property
    def buffered(self) -> int:
        return sum(route.lanes.queued for route in self._routes.values())

    @property
    def running(self) -> int:
        """Messages on workers now (all routes)."""
        return len(self._running)

    def skip_finished(self, tp: TP, committed: int, finished: set[int]) -> None:
        """``tp`` was assigned at ``committed``, and its commit says the messages at
        ``finished`` (above it) finished before: polled again, they are done without running
        (a restart or a new owner does not handle them twice)."""
        if finished:
            self._finished_before[tp] = (committed, set(finished))

    def finished_above(self, tp: TP) -> tuple[int, Collection[int]] | None:
        """``tp``'s lowest unfinished offset and the offsets finished above it (those a
        previous owner finished and not polled again yet included), for the commit's
        metadata; None when nothing finished above it."""
        work = self._trackers.get(tp)
        finished: Collection[int] = () if work is None else work.finished
        lowest = None if work is None else work.watermark
        before = self._finished_before.get(tp)
        if before is not None:
            committed, left = before
            passed = None if work is None else work.progress.watermark
            reached = committed if passed is None else passed
            gone = [offset for offset in left if offset < reached]
            if gone:  # passed without being polled: compacted or deleted since
                left.difference_update(gone)
                if not left:
                    del self._finished_before[tp]
            if left:
                finished = left.union(finished) if finished else left
            if lowest is None:  # nothing polled and unfinished: where the partition is
                lowest = reached
        if not finished or lowest is None:
            return None
        return lowest, finished

    def await_completion(self, partitions: Mapping[TP, PartitionProgress],
                         timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a handler to finish, and take in every
        completion waiting then (what finished is reported by the next :meth:`run`)."""
        if self._running:
            self._drain(partitions, block=timeout)

    def wait(self, partitions: Mapping[TP, PartitionProgress], timeout: float,
             room: int = 1) -> None:
        """The buffer is full: wait up to ``timeout`` seconds for handlers to finish, until
        the buffer has room for ``room`` messages (what finished is reported by the next
        :meth:`run`)."""
        deadline = self._clock.monotonic() + timeout
        while self.room() < room and self._running:
            left = deadline - self._clock.monotonic()
            if left <= 0 or not self._drain(partitions, block=left):
                break
            if not self._closed and self._stopping is None:
                self._start(partitions)
        self._stalled = self.room() < room

    @property
    def busy(self) -> bool:
        """Whether handlers are running now."""
        return bool(self._running)

    def wait_any(self, partitions: Mapping[TP, PartitionProgress], timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the first handler to finish, take in what
        finished and start what may start: a loop turn that polled nothing new waits here
        instead of in the poll, so a key's next message starts as soon as its previous one
        finished (what finished is reported by the next :meth:`run`)."""
        if self._running and self._drain(partitions, block=timeout) and not self._closed \
                and self._stopping is None:
            self._start(partitions)

    def settle(self, partitions: Mapping[TP, PartitionProgress], only: Collection[TP] | None,
               timeout: float) -> None:
        """Before the shutdown's or a revoke's checkpoint, for up to ``timeout`` seconds.

        Shutdown (``only`` None): run the queued messages below the highest message of their
        partition that started, so the checkpoint covers every message that finished and a
        planned restart repeats none (a queued message left behind would hold its partition's
        watermark below every message finished above it). The queued messages above it are
        dropped: nothing finished above them, so the restart reads them and repeats nothing,
        and the shutdown does not spend its grace period on a full buffer. What has not
        started when the time is up, or waits for a retry beyond it, is dropped too.
        Revoke: drop what of ``only`` has not started (the rebalance waits for no new work) and
        wait for what runs; not at all once the workers were closed (the shutdown's settle
        spent the time there was: the revoke that leaving the group runs next must not wait a
        second time, or the shutdown outlasts its grace)."""
        if only is not None and self._closed:
            timeout = 0.0
        deadline = self._clock.monotonic() + timeout
        unstarted = 0
        if only is None:
            highest = self._highest_started()
            left_over = sum(route.lanes.drop_above(highest) for route in self._routes.values())
            self._cut_chains(above(highest))
            self._finish_queued(partitions, deadline)
            self._closed = True
            unstarted = self.buffered
            if left_over:
                log.info("stopping: %d queued messages above every started one are left for "
                         "the next run", left_over)
        chosen = set(partitions if only is None else only)
        self._drop(chosen)
        works = [work for tp in chosen if (work := self._trackers.get(tp)) is not None]
        if only is not None:  # chained jobs not started yet are left for the next owner
            self._cut_chains(lambda message: partition_of(message) in chosen)
        while any(work.running for work in works):
            left = deadline - self._clock.monotonic()
            if left <= 0 or not self._drain(partitions, block=left, starting=False):
                break
        if only is None and (unstarted or self._running):
            log.warning(
                "stopping: the %.1f s to finish work ran out (not started or waiting for a "
                "retry: %d; still running: %d): the next run handles them again, but not the "
                "%d messages that finished above them (the commit lists them; the store's "
                "keys skip them). A longer shutdown.grace_seconds avoids it.",
                timeout, unstarted, len(self._running),
                sum(work.gap for work in self._trackers.values()))

    def _finish_queued(self, partitions: Mapping[TP, PartitionProgress],
                       deadline: float) -> None:
        """Start queued messages as lanes free up, until none is queued or the deadline."""
        while self.buffered:
            self._start(partitions)
            if not self._running:
                break  # what is left waits for a retry: the time would pass idle
            left = deadline - self._clock.monotonic()
            if left <= 0 or not self._drain(partitions, block=left):
                break

    def _highest_started(self) -> dict[TP, int]:
        """Per partition, the highest offset that runs or finished above the watermark."""
        highest: dict[TP, int] = {}
        for tp, work in self._trackers.items():
            finished = work.highest_finished
            if finished is not None:
                highest[tp] = finished
        for job in self._running:
            message = job.message
            tp = (message.topic, message.partition)
            if message.offset > highest.get(tp, -1):
                highest[tp] = message.offset
        return highest

    def forget(self, partitions: Collection[TP]) -> None:
        """Partitions revoked or lost: drop their queued work; results of their running work
        are ignored when they come."""
        chosen = set(partitions)
        self._drop(chosen)
        self._cut_chains(lambda message: partition_of(message) in chosen)
        for tp in chosen:
            work = self._trackers.pop(tp, None)
            if work is not None:
                work.gone = True
            self._full.discard(tp)
            self._finished_before.pop(tp, None)
        self._failures.forget_messages(list(chosen))

    def drop_pending(self) -> None:
        """The process failed: no handler starts again; queued work is dropped."""
        self._closed = True
        self._cut_chains()
        self._drop(set(self._trackers))

    def close(self) -> None:
        """Stop the workers (the loop closed): nothing starts any more."""
        self._closed = True
        for route in self._routes.values():
            if route.runner is not None:
                route.runner.close()
        if self._async is not None:
            self._async.close()

    # --- snapshots ------------------------------------------------------------------------------

    def in_flight(self) -> dict[str, int]:
        return {topic: route.lanes.in_flight for topic, route in self._routes.items()}

    def queued(self) -> dict[TP, int]:
        return {tp: work.queued for tp, work in list(self._trackers.items())}

    def gaps(self) -> dict[TP, int]:
        return {tp: tracker.gap for tp, tracker in list(self._trackers.items())}

    def held(self) -> frozenset[TP]:
        """Partitions with messages polled and not done (queued, running, or finished above
        the watermark)."""
        return frozenset(tp for tp, work in list(self._trackers.items())
                         if work.watermark is not None)

    @property
    def paused(self) -> frozenset[TP]:
        """Partitions paused because their route's buffer share is full."""
        return frozenset(self._full)

    # --- inside ----------------------------------------------------------------------------------

    def _start(self, partitions: Mapping[TP, PartitionProgress]) -> None:
        if self._closed or self._stopping is not None:
            return
        now = self._clock.monotonic()
        exhausted_of = self._failures.message_exhausted
        failing = self._failures.messages_failing  # nothing below makes a message fail
        running = self._running
        clock = self._calls.clock
        started = clock() if clock is not None else 0.0
        for route in self._routes.values():
            lanes = route.lanes
            if lanes.next_retry_at is not None:
                lanes.release(now)
            jobs: list[Job] = []
            start = lanes.start
            chain = route.chain
            while (job := start(chain)) is not None:
                job.started = started
                running[job] = None
                job.owner.running += 1
                exhausted = exhausted_of(job.message) if failing else None
                if exhausted is not None:  # only its dead letter is missing: no handler call
                    # (reported as raised: its chain goes back to the lane, as after a raise)
                    self._completions.put((job, exhausted, 0.0))
                else:
                    jobs.append(job)
            if jobs:
                if route.runner is not None:
                    route.runner.submit(jobs)
                elif self._async is not None:
                    self._async.submit(route.handler, jobs)  # type: ignore[arg-type]
        self._report_oldest()

    def _drain(self, partitions: Mapping[TP, PartitionProgress], *, block: float,
               starting: bool = True) -> int:
        """Take in every completion waiting (blocking up to ``block`` seconds for the first);
        returns how many. A message that returned, of a partition still assigned, is taken in
        here; every other outcome in :meth:`_completed`."""
        completions = self._completions
        running = self._running
        failures = self._failures
        succeeded = failures.message_succeeded
        failing = failures.messages_failing
        record = self._calls.record
        clock = self._calls.clock
        moved = self._moved
        taken = 0
        try:
            item = completions.get(timeout=block) if block > 0 else completions.get_nowait()
            now = clock() if clock is not None else 0.0
            while True:
                taken += 1
                job, error, seconds = item
                del running[job]
                work = job.owner
                work.running -= 1
                following = job.next
                if following is not None and error is None:  # its worker went on with it
                    following.started = now
                    running[following] = None
                    work.running += 1
                if seconds:
                    record(job.topic, seconds, failed=error is not None)
                if error is not None or work.gone:
                    self._completed(job, error)
                    failing = failures.messages_failing
                else:
                    offset = job.message.offset
                    if failing:
                        succeeded(job.message)
                    work.lanes.finished(job)
                    watermark, count = work.finish(offset)
                    if watermark is not None:
                        if not work.moved:
                            moved.append(work)
                        work.moved += count
                        work.moved_to = watermark
                item = completions.get_nowait()
        except queue.Empty:
            pass
        if moved:
            self._advance()
        if taken:
            self._report_oldest()
        return taken

    def _skip(self, work: PartitionWork, offset: int, skip: set[int]) -> None:
        """A polled message its partition's commit says finished: done without running."""
        skip.discard(offset)
        if not skip:
            del self._finished_before[(work.topic, work.partition)]
        watermark, count = work.finish(offset)
        if watermark is not None:
            if not work.moved:
                self._moved.append(work)
            work.moved += count
            work.moved_to = watermark

    def _advance(self) -> None:
        """Move the progress of every partition whose watermark moved in this drain."""
        now = self._clock.monotonic()
        moved, self._moved = self._moved, []
        for work in moved:
            count, work.moved = work.moved, 0
            work.progress.advance(work.moved_to, count, now)
            self._done += count

    def _completed(self, job: Job, error: BaseException | None) -> None:
        """A completion other than a returned message of an assigned partition."""
        message = job.message
        work = job.owner
        lanes = work.lanes
        if error is NOT_STARTED:
            lanes.not_started(job)  # revoked: the next owner handles it and its chain
            return
        if error is not None:
            lanes.give_back(job)  # its worker did not go on with the jobs chained behind it
        if work.gone:
            lanes.finished(job)  # lost or revoked meanwhile: abandoned
            return
        if error is None:
            self._failures.message_succeeded(message)
        elif not isinstance(error, Exception):
            lanes.finished(job)
            self._stop_with(message, error)
            return
        elif self._held_back is not None and (held := self._held_back(error)) is not None:
            lanes.hold(job, held)  # the store's error: never an attempt, nor a dead letter
            return
        else:
            verdict, retry_at = self._failures.message_failed(
                message, error, key=_key_or_none(self._routes[job.topic].scope, message))
            if verdict is Verdict.RETRY:
                lanes.hold(job, retry_at)
                return
            if verdict is Verdict.STOP:
                lanes.finished(job)
                self._stop_with(message, error)
                return
        lanes.finished(job)
        watermark, count = work.finish(message.offset)
        if watermark is not None:
            if not work.moved:
                self._moved.append(work)
            work.moved += count
            work.moved_to = watermark

    def _stop_with(self, message: Message, error: BaseException) -> None:
        if self._stopping is None:
            self._stopping = HandlerFailed(message.topic, message.partition, message.offset,
                                           error)
            self._stopping.__cause__ = error

    def _fail(self, partitions: Mapping[TP, PartitionProgress]) -> None:
        """Raise the stopping failure once what runs beside it has finished (for
        ``stop_wait`` seconds at most), so the checkpoint after it covers that work."""
        self._closed = True
        self._cut_chains()
        deadline = self._clock.monotonic() + self._stop_wait
        while self._running:
            left = deadline - self._clock.monotonic()
            if left <= 0 or not self._drain(partitions, block=left, starting=False):
                break
        self.raise_failure()

    def raise_failure(self) -> None:
        """Raise the failure that stops the consumer, once, if one came."""
        failure, self._stopping = self._stopping, None
        if failure is not None:
            raise failure

    def _report_oldest(self) -> None:
        running = self._running
        self._calls.oldest_running(next(iter(running)).started if running else 0.0)

    def _cut_chains(self, cuts: Callable[[Message], bool] | None = None) -> None:
        """Workers start none of the chained jobs whose message ``cuts`` picks (every one:
        None), nor those chained behind them; they come back :data:`NOT_STARTED`. What
        ``cuts`` picks must be a chain's tail: a partition's messages, or those above an
        offset."""
        for job in self._running:
            following = job.next
            while following is not None:
                if cuts is None or cuts(following.message):
                    following.cut = True
                following = following.next

    def _drop(self, partitions: set[TP]) -> None:
        for route in self._routes.values():
            route.lanes.drop(partitions)

    def _hold_back_full_routes(self, partitions: Mapping[TP, PartitionProgress]) -> None:
        """Pause the partitions of a route whose buffer share is full; resume them once it is
        half empty. The loop keeps polling meanwhile, so the group never times out.

        A lone route is paused only when its buffer stayed full for a whole wait: while its
        handlers drain it, the loop's room already stops the intake, and a pause would cost
        the client's prefetched messages (a resumed partition delivers nothing for up to a
        second: the client fetches it again)."""
        share = max(1, self._max_buffered // len(self._routes))
        pause: list[TP] = []
        resume: list[TP] = []
        hold = self._stalled or len(self._routes) > 1
        for topic, route in self._routes.items():
            queued = route.lanes.queued
            if queued >= share and hold:
                pause.extend(tp for tp in partitions if tp[0] == topic and tp not in self._full)
            elif queued <= share // 2:
                resume.extend(tp for tp in self._full if tp[0] == topic)
        if pause:
            self._full.update(pause)
        if resume:
            self._full.difference_update(resume)
            self._source.resume(resume)
            self._stalled = False
        if self._full:
            self._source.pause([tp for tp in self._full if tp in partitions])


def job_factory(scope: Scope, format: Decode | None) -> JobFactory:
    """Makes a route's jobs as their messages start (:class:`~.lanes.Lanes`)."""

    def make_job(message: Message, work: PartitionWork, lane: Lane | None) -> Job:
        return Job(message, Context.of(scope, message), format, work, lane)

    return make_job


def _key_or_none(scope: Scope, message: Message) -> bytes | None:
    """The message's dedup key for its dead letter; None when it cannot be made."""
    key_function = scope.key_function
    if key_function is None:
        return None
    try:
        return key_function(message)
    except Exception:
        return None

