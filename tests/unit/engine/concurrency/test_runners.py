"""consumer.engine.concurrency.runners: the event loop's workers outlive their calls, report
every outcome, and end with the loop."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import queue
import threading
from collections.abc import Callable

import pytest

from consumer.engine.concurrency.runners import (
    NOT_STARTED,
    AsyncRunner,
    Completion,
    Job,
    ThreadRunner,
    new_event_loop,
)
from consumer.message import Context, Message, Scope


def jobs(count: int) -> list[Job]:
    found = []
    for offset in range(count):
        message = Message("t", 0, offset, b"v", timestamp=0.0)
        found.append(Job(message, Context(Scope("g"), message), format=None, owner=None,
                         started=0.0))
    return found


#: Both loops a runner may get: asyncio's always, uvloop's where the extra is installed.
LOOPS = [asyncio.new_event_loop] + (
    [new_event_loop] if importlib.util.find_spec("uvloop") is not None else [])


@pytest.mark.parametrize("loop_factory", LOOPS, ids=lambda factory: factory.__module__)
def test_async_workers_run_each_job_once_and_keep_going_after_a_failure(
        loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
    runner = AsyncRunner(completions=completions, clock=None, loop_factory=loop_factory)
    seen: list[int] = []

    async def handler(message: Message, _context: Context) -> None:
        await asyncio.sleep(0.001)
        seen.append(message.offset)
        if message.offset % 2:
            raise ValueError("odd")

    batch = jobs(6)
    runner.submit(handler, batch[:3])
    first = [completions.get(timeout=5) for _ in range(3)]
    runner.submit(handler, batch[3:])  # the idle workers take these
    second = [completions.get(timeout=5) for _ in range(3)]
    outcomes = {job.message.offset: error for job, error, _ in first + second}
    assert sorted(seen) == [0, 1, 2, 3, 4, 5]
    assert {offset for offset, error in outcomes.items() if error is not None} == {1, 3, 5}
    assert all(isinstance(outcomes[o], ValueError) for o in (1, 3, 5))
    assert len(runner._tasks) == 3  # the second batch reused the three workers
    runner.close()
    runner._thread.join(5)
    assert not runner._thread.is_alive()
    assert all(task.done() for task in runner._tasks)  # the idle workers ended with the loop
    assert runner._loop.is_closed()  # else an "unclosed event loop" warning when collected


def test_the_loop_is_uvloops_when_uvloop_is_installed() -> None:
    loop = new_event_loop()
    try:
        expected = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
        assert type(loop).__module__.split(".")[0] == expected
    finally:
        loop.close()


def test_thread_workers_run_jobs_on_at_most_concurrency_threads_and_stop_on_close() -> None:
    completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
    gate = threading.Event()
    names: set[str] = set()

    def handler(message: Message, _context: Context) -> None:
        names.add(threading.current_thread().name)
        gate.wait(5)
        if message.offset == 1:
            raise ValueError("boom")

    runner = ThreadRunner(handler, concurrency=2, name="t", completions=completions,
                          clock=None)
    batch = jobs(5)
    runner.submit(batch[:2])
    runner.submit(batch[2:4])  # queued behind the two running: no third thread
    gate.set()
    outcomes = {job.message.offset: error for job, error, _ in
                (completions.get(timeout=5) for _ in range(4))}
    assert sorted(outcomes) == [0, 1, 2, 3]
    assert isinstance(outcomes[1], ValueError)
    assert len(names) == 2
    runner.close()
    for thread in runner._threads:
        thread.join(5)
        assert not thread.is_alive()
    runner.submit(batch[4:])  # after close: never runs
    with pytest.raises(queue.Empty):
        completions.get(timeout=0.2)


def test_a_workers_coroutine_closed_during_its_call_ends_without_carrying_on() -> None:
    """A call abandoned with the loop (a shutdown whose time ran out) has its coroutine
    closed when collected: the worker must let the close through, not take it for the call's
    outcome and wait for a next job."""
    completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
    runner = AsyncRunner(completions=completions, clock=None)
    never: asyncio.Future[None] = asyncio.Future(loop=runner._loop)

    async def handler(_message: Message, _context: Context) -> None:
        await never

    worker = runner._work(handler, jobs(1)[0], [])
    worker.send(None)  # up to the handler's wait, stepped here rather than on the loop
    worker.close()  # RuntimeError("coroutine ignored GeneratorExit") when it carried on
    assert completions.empty()
    runner.close()
    runner._thread.join(5)


def chained(count: int) -> Job:
    """``count`` jobs, each chained behind the one before: the first is handed over."""
    chain = jobs(count)
    for job, following in itertools.pairwise(chain):
        job.next = following
    return chain[0]


def run_chain(kind: str, head: Job, expected: int
              ) -> tuple[list[int], list[tuple[int, BaseException | None]]]:
    """Hand ``head`` to a runner (``thread`` or ``async``) whose handler raises at offset 1;
    the offsets it ran, and the ``expected`` completions."""
    completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
    ran: list[int] = []

    def handler(message: Message, _context: Context) -> None:
        ran.append(message.offset)
        if message.offset == 1:
            raise ValueError("one")

    async def async_handler(message: Message, context: Context) -> None:
        handler(message, context)

    runner: AsyncRunner | ThreadRunner
    if kind == "async":
        runner = AsyncRunner(completions=completions, clock=None)
        runner.submit(async_handler, [head])
    else:
        runner = ThreadRunner(handler, concurrency=2, name="t", completions=completions,
                              clock=None)
        runner.submit([head])
    outcomes = [completions.get(timeout=5) for _ in range(expected)]
    runner.close()
    with pytest.raises(queue.Empty):
        completions.get(timeout=0.1)  # nothing more: the chain ended there
    return ran, [(job.message.offset, error) for job, error, _ in outcomes]


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_a_worker_runs_the_chain_behind_its_job_and_stops_where_one_raises(kind: str) -> None:
    ran, outcomes = run_chain(kind, chained(4), expected=2)
    assert ran == [0, 1]  # 2 and 3 wait for the poll thread to give them back to the lane
    assert outcomes[0] == (0, None) and outcomes[1][0] == 1
    assert isinstance(outcomes[1][1], ValueError)


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_a_cut_job_is_not_started_and_reported_for_the_rest_of_its_chain(kind: str) -> None:
    head = chained(4)
    assert head.next is not None
    head.next.cut = True  # the poll thread cut 1 (its partition is being revoked)
    ran, outcomes = run_chain(kind, head, expected=2)
    assert ran == [0]
    assert outcomes == [(0, None), (1, NOT_STARTED)]
