"""consumer.engine.concurrency.batches: workers take micro-batches of queued jobs (an even
share among the idle ones, at most ``batch``), report every message's outcome, keep poison
messages out of the batch, and stop on close."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence

from consumer.engine.concurrency.batches import BatchRunner, BatchWork
from consumer.engine.concurrency.runners import Completion, Job
from consumer.failures.retries import PoisonMessage
from consumer.message import Context, Message, Scope


def jobs(count: int, *, fmt: str | None = None) -> list[Job]:
    found = []
    for offset in range(count):
        message = Message("t", 0, offset, b"{}", timestamp=0.0)
        found.append(Job(message, Context(Scope("g"), message), format=fmt, owner=None,
                         started=0.0))
    return found


class Recording:
    """A batch work that records its batches; odd offsets fail; waits for ``gate``."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, message: Message, context: Context) -> None:  # pragma: no cover
        raise AssertionError("a batch runner calls apply_batch")

    def apply_batch(self, messages: Sequence[Message]) -> list[BaseException | None]:
        self.gate.wait(5)
        self.batches.append([m.offset for m in messages])
        return [ValueError("odd") if m.offset % 2 else None for m in messages]


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
    runner.submit(first[:2])  # two idle workers: one message each
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
    bad = Job(message, Context(Scope("g"), message), format="json", owner=None, started=0.0)
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
