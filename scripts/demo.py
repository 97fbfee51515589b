"""make demo: a job crashes at record 87,000 of 100,000 and resumes from its last checkpoint.

1. produce 100,000 records to a 3-partition topic
2. `consumer run` handles them, checkpointing every 1,000 records or 5 s into a SQLite store
   (checkpoint rows and processed keys); SIGKILL near 87,000
3. restart it: it resumes from the committed offsets, and handles again only what came after
   the last checkpoint
4. for contrast, the same crash when nothing is committed until the end (no store, no
   commits): everything again

Needs KAFKA_BOOTSTRAP_SERVERS (``make demo`` starts a local broker and sets it).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from consumer_process import ConsumerProcess, duplicates, wait_for

from consumer.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK

TOTAL = 100_000
CRASH_AT = 87_000
PARTITIONS = 3
EVERY_MESSAGES = 1_000
EVERY_SECONDS = 5.0
#: Each record takes 40 µs of "work", so the story plays out over seconds, not a blink.
SLOW = {"RECORD_SLEEP_SECONDS": "0.00004"}


@dataclass
class Outcome:
    resumed_from: dict[int, int]
    handled_before_crash: int
    handled_twice: int
    handled_total: int
    distinct: int
    seconds: float


def main() -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("demo: set KAFKA_BOOTSTRAP_SERVERS, or run `make demo`", file=sys.stderr)
        return EXIT_CONFIG
    topic = f"demo-payments-{uuid.uuid4().hex[:6]}"
    _create_topic(bootstrap, topic)
    _produce(bootstrap, topic)
    print(f"1. produced {TOTAL:,} records to {topic} ({PARTITIONS} partitions) on {bootstrap}\n")

    workdir = Path(tempfile.mkdtemp(prefix="checkpoint-demo-"))
    print(f"2. consumer run, checkpoint every {EVERY_MESSAGES:,} records or "
          f"{EVERY_SECONDS:.0f} s into a SQLite store; SIGKILL near record {CRASH_AT:,}")
    with_checkpoints = _crash_and_resume(bootstrap, topic, workdir, "checkpointed",
                                         every_messages=EVERY_MESSAGES,
                                         every_seconds=EVERY_SECONDS,
                                         store=f"sqlite:///{workdir / 'checkpoints.db'}")
    _report(with_checkpoints)

    print("\n4. the same crash when nothing is committed until the end")
    without = _crash_and_resume(bootstrap, topic, workdir, "uncommitted",
                                every_messages=None, every_seconds=86_400.0, store="none")
    _report(without)

    print(f"\nWith checkpoints the crash cost {with_checkpoints.handled_twice:,} records "
          f"handled twice; without, {without.handled_twice:,}.")
    print(f"(logs and record files in {workdir})")
    ok = (with_checkpoints.distinct == TOTAL and without.distinct == TOTAL
          and with_checkpoints.handled_twice <= EVERY_MESSAGES)
    return EXIT_OK if ok else EXIT_FAILED


def _crash_and_resume(bootstrap: str, topic: str, workdir: Path, name: str, *,
                      every_messages: int | None, every_seconds: float,
                      store: str) -> Outcome:
    group = f"demo-{name}-{uuid.uuid4().hex[:6]}"
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            # Static membership: the restarted process takes its partitions back at once
            # instead of waiting for the killed one's session to time out.
            "librdkafka": {"group.instance.id": f"demo-{name}"},
            "session_timeout_ms": 10_000,
        },
        "routes": {topic: "handlers.record:handle"},
        "checkpoint": {"every_messages": every_messages, "every_seconds": every_seconds},
        "store": {"url": store},
        "metrics": {"port": 0},
        "log_level": "WARNING",
    }
    began = time.monotonic()
    first = ConsumerProcess(workdir, name, config, env=SLOW).start()
    _progress(first, until=CRASH_AT, label="run 1")
    first.kill()
    before = len(first.records())
    print(f"\n   SIGKILL after {before:,} records")

    resumed_from = _group_offsets(bootstrap, group, topic)
    remaining = TOTAL - sum(o or 0 for o in resumed_from.values())
    second = ConsumerProcess(workdir, name, config, env=SLOW).start()
    _progress(second, until=remaining, label="run 2", skip=before)
    second.signal(signal.SIGTERM)
    second.wait()
    records = second.records()
    print()
    return Outcome(
        resumed_from=resumed_from,
        handled_before_crash=before,
        handled_twice=duplicates(records),
        handled_total=len(records),
        distinct=len({(p, o) for p, o, _ in records}),
        seconds=time.monotonic() - began,
    )


def _progress(process: ConsumerProcess, *, until: int, label: str, skip: int = 0) -> None:
    """Draw a progress bar from the record file until this run handled ``until`` records
    (the first ``skip`` lines of the file belong to the run before)."""
    def draw() -> bool:
        done = len(process.records()) - skip
        width = 40
        filled = min(width, done * width // max(until, 1))
        print(f"\r   {label} [{'#' * filled}{'.' * (width - filled)}] {done:>7,}/{until:,}",
              end="", flush=True)
        if not process.alive():
            raise SystemExit(f"\ndemo: the consumer exited early:\n{process.log_tail()}")
        return done >= until

    wait_for(draw, timeout=300, what=f"{label} to reach {until:,} records", interval=0.02)


def _report(outcome: Outcome) -> None:
    resumed = ", ".join(f"p{p}@{o:,}" if o is not None else f"p{p}@start"
                        for p, o in sorted(outcome.resumed_from.items()))
    print(f"   resumed from offsets: {resumed}")
    print(f"   handled twice:        {outcome.handled_twice:,}")
    print(f"   handled in total:     {outcome.handled_total:,} "
          f"({outcome.distinct:,} distinct of {TOTAL:,})")
    print(f"   time taken:           {outcome.seconds:.1f} s")


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS,
                                  replication_factor=1)])[topic].result(30)


def _produce(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "log_level": 4})
    for i in range(TOTAL):
        while True:
            try:
                producer.produce(topic, value=str(i).encode(), key=str(i).encode())
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(60):
        raise SystemExit("demo: could not deliver every record to Kafka")


def _group_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    from consumer.kafka.admin import group_offsets
    from consumer.settings import KafkaSettings

    found = group_offsets(KafkaSettings(bootstrap_servers=bootstrap, group_id=group), group,
                          [(topic, p) for p in range(PARTITIONS)], timeout=30.0)
    return {partition: offset for (_, partition), (offset, _) in found.items()}


if __name__ == "__main__":
    sys.exit(main())
