"""``python -m benchmarks.loop_in_memory``: the no-store loop's Python a message, beside the raw
loop's, over records held in memory: no broker, no client, no commits.

What the poll thread does with a poll's records once the client handed them over, timed with
the thread's CPU clock:

- ``raw``: the raw contender's loop body (``benchmarks.runners.raw``): the error check, the
  no-op handler, the next offset per partition, the count, the tally.
- ``making``: the Kafka source making the poll's messages (``RecordMessage.of_records``).
- ``framework``: making them, then direct mode's dispatcher running them through a no-op
  handler of the message alone that counts in the tally, as the ``framework`` contender's.
- ``framework-context``: the same with a handler taking ``(message, context)``: a context is
  made per message.

The records are confluent-kafka's own ``Message`` objects of 100 bytes over 6 partitions, in
polls of 500 holding runs of 100 messages of one partition. Each round runs every variant
once, in turn; the figures are the median and the lowest over rounds, in ns a message. The
client's ``consume`` (the same for both loops) and librdkafka's threads are outside: compare
variants within one run, not across machines.

    python -m benchmarks.loop_in_memory [--messages 200000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message as Record

from benchmarks.runners.tally import Tally
from consumer.checkpoint.progress import PartitionProgress
from consumer.engine.dispatch import Dispatcher
from consumer.engine.stopping import StopRequest
from consumer.message import RecordMessage
from consumer.routing import Route, Router
from consumer.testing import InMemorySource

TOPIC = "t"
PARTITIONS = 6
POLL = 500
RUN = 100
VALUE = b"x" * 100


def polls(messages: int) -> list[list[Any]]:
    """``messages`` records in polls of :data:`POLL`, each a few runs of one partition."""
    offsets = [0] * PARTITIONS
    made: list[list[Any]] = []
    for index in range(max(1, messages // POLL)):
        records = []
        for position in range(POLL):
            partition = (position // RUN + index) % PARTITIONS
            records.append(Record(topic=TOPIC, partition=partition,
                                  offset=offsets[partition], value=VALUE))
            offsets[partition] += 1
        made.append(records)
    return made


def raw(records: list[list[Any]]) -> int:
    tally = Tally(10**12)

    def handle(message: Any) -> None:  # the no-op handler
        pass

    next_offsets: dict[int, int] = {}
    since_commit = 0
    for poll in records:
        for message in poll:
            if message.error() is not None:
                continue
            handle(message)
            next_offsets[message.partition()] = message.offset() + 1
            since_commit += 1
            if tally.add():
                break
            if since_commit >= 1000:
                since_commit = 0
    return tally.count


def making(records: list[list[Any]]) -> int:
    of_records = RecordMessage.of_records
    made = 0
    for poll in records:
        made += len(of_records(poll, TOPIC))
    return made


def framework(with_context: bool) -> Callable[[list[list[Any]]], int]:
    def run(records: list[list[Any]]) -> int:
        tally = Tally(10**12)

        def handle(message: Any) -> None:
            tally.add()

        def handle_with_context(message: Any, context: Any) -> None:
            tally.add()

        router = Router([Route.of(TOPIC, handle_with_context if with_context else handle,
                                  "benchmarks:handle")])
        dispatcher = Dispatcher(router, group="g", keys={}, failures=None,
                                source=InMemorySource({TOPIC: [[]] * PARTITIONS}))
        partitions = {(TOPIC, p): PartitionProgress(TOPIC, p) for p in range(PARTITIONS)}
        stop = StopRequest()
        of_records = RecordMessage.of_records
        for poll in records:
            dispatcher.run(of_records(poll, TOPIC), partitions, 0.0, stop)
        return tally.count

    return run


#: Each variant returns how many messages it handled (made, for ``making``).
VARIANTS: dict[str, Callable[[list[list[Any]]], int]] = {
    "raw": raw, "making": making, "framework": framework(False),
    "framework-context": framework(True),
}


def timed(variant: Callable[[list[list[Any]]], int], records: list[list[Any]]) -> float:
    """ns a message of one pass of ``variant`` over ``records``, on this thread's CPU clock."""
    start = time.thread_time()
    variant(records)
    return (time.thread_time() - start) / sum(map(len, records)) * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loop_in_memory")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    records = polls(args.messages)
    for variant in VARIANTS.values():  # warm up
        timed(variant, records)
    figures: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, variant in VARIANTS.items():
            figures[name].append(timed(variant, records))
    print(f"loop in memory: {sum(map(len, records)):,} records, polls of {POLL}, "
          f"{args.rounds} rounds; ns a message of the poll thread's CPU")
    for name, values in figures.items():
        print(f"  {name:18s} median {statistics.median(values):6.0f}   lowest {min(values):6.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
