"""``python -m benchmarks.dispatch``: the polling thread's cost per message with concurrency,
without a broker or a handler.

What the loop's thread does for a route with ``concurrency``: queue each polled message in its
lane, start what may start (chains included), take in completions and move the watermarks. The
handlers are replaced by a runner that finishes, on each tick, one job of every chain running
(as handlers that all take the same time would), and the loop's thread takes in as many messages
as the buffer has room for between ticks, as the real one does while a full buffer drains. The
messages are confluent-kafka records, ``--keys`` keys drawn at random (seeded) and placed by key
over 6 partitions, as the IO-bound benchmark's topic.

Each round runs every ordering once, in turn; the figure is the median over rounds of the
process CPU per message (one thread: the runner runs on it too, a small part). It shows what
the ordering's bookkeeping costs, and how that cost grows with the buffer (``--buffer``):
compare orderings within one run, not across machines.

    python -m benchmarks.dispatch [--messages 300000] [--rounds 5] [--buffer 40000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message as Record

from consumer.app import build_loop, collecting_garbage_less
from consumer.clock import ManualClock
from consumer.engine.concurrency.dispatcher import ConcurrentDispatcher
from consumer.engine.concurrency.runners import Completions, Job
from consumer.engine.stopping import StopRequest
from consumer.message import Context, Message, RecordMessage
from consumer.routing import Route, Router
from consumer.settings import Settings
from consumer.testing import InMemoryDeadLetterSink, InMemorySource

TOPIC = "t"
PARTITIONS = 6
ORDERINGS = ("key", "partition", "none")


async def _handler(message: Message, context: Context) -> None:
    """Never called: the tick runner stands in for the event loop."""


class TickRunner:
    """Stands in for the async runner: each :meth:`tick` finishes one job of every chain
    running, and reports it as its worker would."""

    def __init__(self, completions: Completions) -> None:
        self._put = completions.put
        self._running: list[Job] = []

    def submit(self, _handler: Callable[..., Any], jobs: list[Job]) -> None:
        self._running.extend(jobs)

    def tick(self) -> None:
        put = self._put
        going_on: list[Job] = []
        for job in self._running:
            put((job, None, 0.0))
            if job.next is not None:
                going_on.append(job.next)
        self._running = going_on

    def close(self) -> None:
        pass


def messages(count: int, keys: int, seed: int) -> list[Message]:
    """``count`` keyed records, in runs of up to 500 of one partition, as a poll hands them."""
    rng = random.Random(seed)
    by_partition: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
    for _ in range(count):
        number = rng.randrange(keys)
        by_partition[number % PARTITIONS].append(b"key-%06d" % number)
    next_offset = [0] * PARTITIONS
    polled: list[Message] = []
    while len(polled) < count:
        partition = rng.randrange(PARTITIONS)
        run, by_partition[partition] = by_partition[partition][:500], by_partition[partition][500:]
        for key in run:
            offset = next_offset[partition]
            next_offset[partition] += 1
            record = Record(topic=TOPIC, partition=partition, offset=offset, key=key,
                            value=b"x" * 100)
            polled.append(RecordMessage(record, TOPIC, partition, offset))
    return polled


def one_run(ordering: str, polled: list[Message], *, concurrency: int, buffer: int) -> float:
    """Process CPU seconds per message to dispatch ``polled`` with this ordering."""
    settings = Settings.model_validate({
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "group_id": "bench-dispatch",
                  "poll_batch_size": 500, "max_buffered_messages": buffer},
        "routes": {TOPIC: {"handler": "benchmarks.dispatch:_handler",
                           "concurrency": concurrency, "ordering": ordering}},
        "checkpoint": {"every_seconds": 1e12},
        "store": {"url": "none"},
    })
    source = InMemorySource({TOPIC: [[] for _ in range(PARTITIONS)]})
    loop = build_loop(settings, Router([Route(TOPIC, _handler, "benchmarks.dispatch:_handler")]),
                      source=source, clock=ManualClock(), dead_letters=InMemoryDeadLetterSink())
    loop.start()
    loop.run_once()  # the in-memory group assigns every partition
    dispatcher = loop.mode._dispatcher  # type: ignore[attr-defined]
    assert isinstance(dispatcher, ConcurrentDispatcher)
    runner = TickRunner(dispatcher._completions)
    if dispatcher._async is not None:
        dispatcher._async.close()
    dispatcher._async = runner  # type: ignore[assignment]
    partitions = loop._partitions
    stop = StopRequest()
    total = len(polled)
    taken = done = 0
    with collecting_garbage_less():  # as around the loop's run
        began = time.process_time()
        while done < total:
            runner.tick()
            while True:  # take in what the buffer has room for, as the loop does between ticks
                batch = polled[taken:taken + min(dispatcher.room(), 500)]
                taken += len(batch)
                done += dispatcher.run(batch, partitions, 0.0, stop)
                if not batch:
                    break
        spent = time.process_time() - began
    dispatcher.close()
    return spent / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dispatch")
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=1_000)
    parser.add_argument("--buffer", type=int, default=40_000,
                        help="kafka.max_buffered_messages (40,000, the default)")
    parser.add_argument("--orderings", default=",".join(ORDERINGS))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    orderings = [name.strip() for name in args.orderings.split(",")]
    polled = messages(args.messages, args.keys, args.seed)
    spent: dict[str, list[float]] = {name: [] for name in orderings}
    for _ in range(args.rounds):
        for name in orderings:
            spent[name].append(one_run(name, polled, concurrency=args.concurrency,
                                       buffer=args.buffer))
    print(f"dispatch: {args.messages:,} messages, {args.keys:,} keys, concurrency "
          f"{args.concurrency:,}, buffer {args.buffer:,}; CPU per message over "
          f"{args.rounds} rounds")
    for name in orderings:
        figures = sorted(seconds * 1e6 for seconds in spent[name])
        print(f"  {name:9s} median {statistics.median(figures):5.2f} us "
              f"(min {figures[0]:.2f}, max {figures[-1]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
