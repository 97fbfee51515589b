"""Where handlers of routes with concurrency run: a bounded thread pool for plain ``def``
handlers, one asyncio event loop in its own daemon thread for ``async def`` ones.

The poll thread submits a :class:`Job` (it never submits more than the route's concurrency at
once, so a pool of that many threads starts each job at once); the worker calls the handler and
puts the job, its error (None: it returned) and its duration on the completion queue, which only
the poll thread reads. Workers touch nothing else: not the Kafka client, not partition state,
not the failure policy.

A job may come with the next queued jobs of its lane chained behind it (:attr:`Job.next`): when
it returns, its worker goes on with the next one at once instead of waiting for the poll thread
to start it (the lane stays busy meanwhile, so the key's order holds). A job that raised ends
its chain (the poll thread puts the rest back at the head of the lane); so does a job the poll
thread cut (:attr:`Job.cut`: its partition is being revoked, or the process is stopping), which
is reported :data:`NOT_STARTED` with the rest.
"""

from __future__ import annotations

import asyncio
import importlib
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from consumer.failures.formats import Decode
from consumer.failures.retries import check_format
from consumer.message import Context, Message
from consumer.routing import Handler

if TYPE_CHECKING:
    from consumer.engine.concurrency.lanes import Lane
    from consumer.engine.concurrency.tracker import PartitionWork


class Job:
    """One message handed to a worker, and what the poll thread needs back."""

    __slots__ = ("context", "cut", "format", "lane", "message", "next", "owner", "started",
                 "topic")

    def __init__(self, message: Message, context: Context, format: Decode | None,
                 owner: PartitionWork, lane: Lane | None = None, started: float = 0.0) -> None:
        self.message = message
        self.context = context
        self.topic = message.topic
        #: The route's decoder, run before the handler (None: nothing to decode).
        self.format = format
        #: The partition's work when the message was polled: gone when it finishes means the
        #: partition was lost or revoked meanwhile (the result is ignored).
        self.owner = owner
        #: The message's lane in its route's :class:`~.lanes.Lanes` (None: ``none``
        #: ordering).
        self.lane = lane
        #: The timer's clock when the poll thread submitted it (0.0: not timed).
        self.started = started
        #: The next job of its lane handed over with this one: its worker runs it when this
        #: one returns (None: the chain ends here).
        self.next: Job | None = None
        #: Set by the poll thread on a chained job that must not start (read by its worker).
        self.cut = False


class NotStarted(Exception):
    """A completion's outcome for a chained job its worker did not start because the poll
    thread cut it (:attr:`Job.cut`); nor did it start those chained after it."""


NOT_STARTED = NotStarted("not started: cut from its chain")


#: (job, the exception it raised or None, seconds the call took)
Completion = tuple[Job, BaseException | None, float]
Completions = queue.SimpleQueue[Completion]


def _zero() -> float:
    return 0.0


class ThreadRunner:
    """Runs one route's plain ``def`` handler on ``concurrency`` long-lived daemon threads.

    Each thread takes jobs from one queue: handing a job over is one put on a C queue (no
    future, no executor bookkeeping per message). Threads start as jobs come, up to the
    concurrency (the poll thread never has more than that many in flight)."""

    def __init__(self, handler: Handler, *, concurrency: int, name: str,
                 completions: Completions, clock: Callable[[], float] | None) -> None:
        self._handler = handler
        self._completions = completions
        self._clock = clock or _zero
        self._concurrency = concurrency
        self._name = name
        #: Jobs not taken by a thread yet; None tells a thread to end.
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, jobs: list[Job]) -> None:
        put = self._jobs.put
        for job in jobs:
            put(job)
        missing = min(len(jobs), self._concurrency - len(self._threads))
        for _ in range(missing):
            thread = threading.Thread(target=self._work,
                                      name=f"consumer-{self._name}_{len(self._threads)}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        take = self._jobs.get
        handler = self._handler
        clock = self._clock
        put = self._completions.put
        job = take()
        while job is not None and not self._closed:
            start = clock()
            error: BaseException | None = None
            try:
                if job.format is not None:
                    check_format(job.message, job.format)
                handler(job.message, job.context)
            except BaseException as raised:  # every outcome goes back to the poll thread
                error = raised
            put((job, error, clock() - start))
            job = chained_after(job, error, put) or take()

    def close(self) -> None:
        """Stop taking jobs; running ones finish on their own (their results are ignored),
        jobs not taken yet never start."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)


def chained_after(job: Job, error: BaseException | None,
                  put: Callable[[Completion], None]) -> Job | None:
    """The job a worker runs next without waiting, after reporting ``job``: the next of its
    chain, unless ``job`` raised (the poll thread puts the rest back in the lane) or the
    next one was cut (reported :data:`NOT_STARTED`, which stands for the rest too)."""
    following = job.next
    if following is None or error is not None:
        return None
    if following.cut:
        put((following, NOT_STARTED, 0.0))
        return None
    return following


AsyncHandler = Callable[[Message, Context], Coroutine[Any, Any, object]]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when uvloop is installed (the ``uvloop`` extra), else asyncio's.

    uvloop runs the loop's own work (timers, ready callbacks, the wake-ups from the poll
    thread) in C: with many handlers awaiting short waits, that work is most of what the
    loop's thread does, and the poll thread shares the interpreter with it."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class AsyncRunner:
    """Runs ``async def`` handlers on one event loop in a daemon thread, for every route
    (uvloop's when it is installed: :func:`new_event_loop`).

    Each route's calls run in long-lived worker coroutines, one per message in flight at most
    (the poll thread never submits more than the route's concurrency): a worker that finished
    waits for its next job instead of ending, so a message costs the loop one wake-up of a
    waiting worker rather than a new task and its done callback."""

    def __init__(self, *, completions: Completions, clock: Callable[[], float] | None,
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] = new_event_loop) -> None:
        self._completions = completions
        self._clock = clock or _zero
        self._loop = loop_factory()
        #: Worker tasks (the loop keeps only weak references to tasks).
        self._tasks: set[asyncio.Task[None]] = set()
        #: Per handler: its idle workers, each waiting on its future for the next job.
        self._idle: dict[AsyncHandler, list[asyncio.Future[Job]]] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="consumer-asyncio",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """The loop's thread: runs it until :meth:`close` stops it, then closes it."""
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def submit(self, handler: AsyncHandler, jobs: list[Job]) -> None:
        """Start ``jobs`` on the loop: one wake-up of the loop for the whole list."""
        self._loop.call_soon_threadsafe(self._start, handler, jobs)

    def _start(self, handler: AsyncHandler, jobs: list[Job]) -> None:
        idle = self._idle.get(handler)
        if idle is None:
            idle = self._idle[handler] = []
        for job in jobs:
            if idle:
                idle.pop().set_result(job)
            else:
                task = self._loop.create_task(self._work(handler, job, idle))
                self._tasks.add(task)

    async def _work(self, handler: AsyncHandler, job: Job,
                    idle: list[asyncio.Future[Job]]) -> None:
        """Run ``job``, then every job handed to this worker while it waits idle."""
        clock = self._clock
        put = self._completions.put
        new_future = self._loop.create_future
        while True:
            start = clock()
            error: BaseException | None = None
            try:
                if job.format is not None:
                    check_format(job.message, job.format)
                await handler(job.message, job.context)
            except GeneratorExit:
                raise  # the coroutine itself is being closed (an abandoned call collected)
            except BaseException as raised:  # cancellation included: it is an outcome too
                error = raised
            put((job, error, clock() - start))
            following = chained_after(job, error, put)
            if following is not None:
                job = following
                continue
            waiting = new_future()
            idle.append(waiting)
            job = await waiting

    def close(self) -> None:
        """Stop the loop (its thread then closes it); calls still awaiting are abandoned with
        it."""
        if self._loop.is_running() and not self._stopping:
            self._stopping = True  # once: the loop's thread closes the loop after it stops
            self._loop.call_soon_threadsafe(self._stop)

    def _stop(self) -> None:
        """Idle workers end (their wait is cancelled), then the loop stops."""
        for idle in self._idle.values():
            for waiting in idle:
                waiting.cancel()
            idle.clear()
        self._loop.call_soon(self._loop.stop)  # after the cancelled workers' last step
