"""Micro-batches: a route's workers each run several ready messages in one call, so that a
store commits them in one transaction (one claim statement, one commit) instead of one each.

The poll thread submits started jobs (each the head of its own lane, so a batch never holds two
messages that must run in order); ``concurrency`` worker threads take them from one queue, each
up to ``batch`` at a time, but no more than an even share of what is queued among the idle
workers (a few messages spread over idle workers rather than waiting behind each other). The
work returns each message's outcome; every job then goes on the completion queue as
:class:`~.runners.ThreadRunner`'s do, with the batch's duration shared evenly. The poll thread
lets ``concurrency`` x ``batch`` messages of the route start, so a worker finds its next batch
queued when it finishes one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from consumer.engine.concurrency.runners import NOT_STARTED, Completions, Job
from consumer.failures.retries import check_format
from consumer.message import Context, Message


@runtime_checkable
class BatchWork(Protocol):
    """A handler that can also run a micro-batch (the store's transactions)."""

    def __call__(self, message: Message, context: Context) -> None: ...

    def apply_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        """Each message's outcome, in order: None (done) or what it raised."""
        ...


def _zero() -> float:
    return 0.0


class BatchRunner:
    """Runs one route's :class:`BatchWork` on ``concurrency`` threads, ``batch`` at a time."""

    def __init__(self, work: BatchWork, *, concurrency: int, batch: int, name: str,
                 completions: Completions, clock: Callable[[], float] | None) -> None:
        self._work = work
        self._batch = batch
        self._completions = completions
        self._clock = clock or _zero
        self._queue: deque[Job] = deque()
        self._ready = threading.Condition(threading.Lock())
        #: Workers waiting for jobs (the share each takes is counted among them).
        self._idle = 0
        self._closed = False
        self._threads = [threading.Thread(target=self._serve, name=f"consumer-{name}-{index}",
                                          daemon=True)
                         for index in range(concurrency)]
        for thread in self._threads:
            thread.start()

    def submit(self, jobs: list[Job]) -> None:
        with self._ready:
            self._queue.extend(jobs)
            self._ready.notify(len(jobs))

    def _serve(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            self._run(taken)

    def _take(self) -> list[Job] | None:
        """The next jobs of this worker (waits for one); None once closed."""
        queue = self._queue
        with self._ready:
            self._idle += 1
            while not queue and not self._closed:
                self._ready.wait()
            share = -(-len(queue) // self._idle)  # rounded up
            self._idle -= 1
            if self._closed:
                return None
            return [queue.popleft() for _ in range(min(self._batch, share))]

    def _run(self, jobs: list[Job]) -> None:
        clock = self._clock
        completions = self._completions
        start = clock()
        runnable: list[Job] = []
        for job in jobs:
            if job.owner.gone:  # revoked or lost while queued: its next owner handles it
                completions.put((job, NOT_STARTED, 0.0))
                continue
            if job.format is not None:
                try:
                    check_format(job.message, job.format)
                except BaseException as error:  # a poison message: never in the batch
                    completions.put((job, error, 0.0))
                    continue
            runnable.append(job)
        if not runnable:
            return
        try:
            outcomes = self._work.apply_batch([job.message for job in runnable])
        except BaseException as error:  # every outcome goes back to the poll thread
            outcomes = [error] * len(runnable)
        seconds = (clock() - start) / len(runnable)
        for job, outcome in zip(runnable, outcomes, strict=True):
            completions.put((job, outcome, seconds))

    def close(self) -> None:
        """Stop taking jobs; running batches finish on their own (their results are
        ignored), queued ones never start."""
        with self._ready:
            self._closed = True
            self._queue.clear()
            self._ready.notify_all()
