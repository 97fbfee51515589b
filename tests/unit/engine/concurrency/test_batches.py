"""consumer.engine.concurrency.batches: workers take micro-batches of queued jobs (an even
share among the idle ones, at most ``batch``), report every message's outcome, keep poison
messages out of the batch, and stop on close."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence

from consumer.engine.concurrency.batches import BatchRunner, BatchWork
from consumer.engine.concurrency.runners import NOT_STARTED, Completion, Job
from consumer.failures.retries import PoisonMessage
from consumer.message import Context, Message, Scope


class Owner:
    """The partition's work a job carries: ``gone`` once revoked or lost."""

    gone = False


def jobs(count: int, *, fmt: str | None = None, owner: Owner | None = None) -> list[Job]:
    found = []
    for offset in range(count):
        message = Message("t", 0, offset, b"{}", timestamp=0.0)
        found.append(Job(message, Context(Scope("g"), message), format=fmt,
                         owner=owner or Owner(), started=0.0))  # type: ignore[arg-type]
    return found


class Recording:
    """A batch work that records its batches; odd offsets fail; waits for ``gate``."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        #: Released as each batch starts, before it waits for the gate.
        self.started = threading.Semaphore(0)

    def __call__(self, message: Message, context: Context) -> None:  # pragma: no cover
        raise AssertionError("a batch runner calls apply_batch")

    def apply_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        self.started.release()
        self.gate.wait(5)
        self.batches.append([m.offset for m in messages])
        return [ValueError("odd") if m.offset % 2 else None for m in messages]


def wait_idle(runner: BatchRunner, workers: int) -> None:
    """Until ``workers`` threads wait for jobs: the runner starts them, and each becomes idle
    a moment later (under load, after jobs were submitted, which changes their shares)."""
    deadline = time.monotonic() + 5
    while runner._idle < workers:
        assert time.monotonic() < deadline, f"{runner._idle} of {workers} workers idle"
        time.sleep(0.001)


def take(completions: queue.SimpleQueue[Completion], count: int) -> dict[int, object]:
    return {job.message.offset: error
            for job, error, _ in (completions.get(timeout=5) for _ in range(count))}


def test_a_store_work_is_a_batch_work() -> None:
    assert isinstance(Recording(), BatchWork)
    assert not isinstance(lambda message, context: None, BatchWork)


def test_busy_workers_find_micro_batches_of_at_most_batch_and_every_outcome_comes_back() -> None:
    completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
    work = Recording()
    work.gate.clear()
    runner = BatchRunner(work, concurrency=2, batch=4, name="t", completions=completions,
                         clock=None)
    first = jobs(12)
    wait_idle(runner, 2)
    runner.submit(first[:2])  # two idle workers: one message each
    for _ in range(2):
        assert work.started.acquire(timeout=5), "a worker never started its message"
    runner.submit(first[2:])  # queued while both are busy
    work.gate.set()
    outcomes = take(completions, 12)
    assert sorted(outcomes) == list(range(12))
    assert all((outcomes[o] is not None) == bool(o % 2) for o in outcomes)
    sizes = sorted(len(batch) for batch in work.batches)
    assert sizes[:2] == [1, 1] and max(sizes) <= 4 and sum(sizes) == 12
    runner.close()


def test_few_messages_spread_over_idle_workers() -> None:
    completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
    work = Recording()
    runner = BatchRunner(work, concurrency=4, batch=8, name="t", completions=completions,
                         clock=None)
    wait_idle(runner, 4)
    runner.submit(jobs(4))
    take(completions, 4)
    assert all(len(batch) <= 2 for batch in work.batches), work.batches
    runner.close()


def test_a_poison_message_stays_out_of_the_batch() -> None:
    completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
    work = Recording()
    runner = BatchRunner(work, concurrency=1, batch=8, name="t", completions=completions,
                         clock=None)
    message = Message("t", 0, 7, b"not json", timestamp=0.0)
    bad = Job(message, Context(Scope("g"), message), format="json",
              owner=Owner(), started=0.0)  # type: ignore[arg-type]
    runner.submit([*jobs(1, fmt="json"), bad])
    outcomes = take(completions, 2)
    assert outcomes[0] is None and isinstance(outcomes[7], PoisonMessage)
    assert work.batches == [[0]]
    runner.close()


def test_close_ends_the_workers_and_drops_what_is_queued() -> None:
    completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
    runner = BatchRunner(Recording(), concurrency=2, batch=2, name="t",
                         completions=completions, clock=None)
    runner.close()
    runner.submit(jobs(3))
    for thread in runner._threads:
        thread.join(5)
        assert not thread.is_alive()


def test_jobs_of_a_partition_gone_before_a_worker_took_them_never_start() -> None:
    """Revoked or lost while queued behind a running batch: the worker reports them not
    started (their next owner handles them) rather than running them for a partition this
    process no longer has."""
    completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
    work = Recording()
    work.gate.clear()
    runner = BatchRunner(work, concurrency=1, batch=2, name="t", completions=completions,
                         clock=None)
    owner = Owner()
    queued = jobs(6, owner=owner)
    runner.submit(queued[:2])
    deadline = time.monotonic() + 5
    while runner._queue:  # the worker took the first two and waits at the gate
        assert time.monotonic() < deadline, "the worker took nothing"
        time.sleep(0.001)
    runner.submit(queued[2:])
    owner.gone = True
    work.gate.set()
    outcomes = take(completions, 6)
    runner.close()
    assert work.batches == [[0, 1]]
    assert [outcomes[offset] for offset in range(2, 6)] == [NOT_STARTED] * 4
