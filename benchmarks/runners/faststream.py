"""FastStream, on its confluent-kafka backend and on its aiokafka backend.

Configured for throughput as its docs describe: a batch subscriber (``batch=True``,
``max_records=500``) whose handler receives a list of bodies, and the default acknowledgement
policy (``AckPolicy.ACK_FIRST``): the client's auto-commit (``enable.auto.commit``), here every
1 s (``auto_commit_interval_ms=1000``). FastStream cannot commit every N messages in that mode.
Its per-message access log is switched off (``logger=None``), as no other contender logs per
message. Stopping the broker commits synchronously before closing the client.

Option ``backend``: ``confluent`` or ``aiokafka``.

Options ``handler`` (``sleep``: a plain ``def`` calling ``time.sleep(0.01)``, which FastStream
runs in anyio's thread pool; ``sleep_async``: ``async def`` awaiting ``asyncio.sleep(0.01)``) and
``max_workers``: the IO-bound group. FastStream's concurrency is ``max_workers`` on a
non-batch subscriber (``ConcurrentDefaultSubscriber``: messages handed to up to N tasks; it
refuses a batch subscriber and any acknowledgement policy but ``ACK_FIRST``), so these runs
subscribe one message at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from benchmarks.runners.tally import RunSpec, Tally

SLEEP_SECONDS = 0.01  # contenders.SLEEP_SECONDS (standard library only here)


def run(spec: RunSpec, tally: Tally) -> dict[str, Any]:
    return asyncio.run(_consume(spec, tally))


async def _consume(spec: RunSpec, tally: Tally) -> dict[str, Any]:
    from importlib.metadata import version

    backend = spec.options.get("backend", "confluent")
    if backend == "confluent":
        import confluent_kafka
        from faststream.confluent import KafkaBroker

        client = f"confluent-kafka {version('confluent-kafka')}"
        librdkafka: str | None = confluent_kafka.libversion()[0]
    elif backend == "aiokafka":
        from faststream.kafka import KafkaBroker

        client, librdkafka = f"aiokafka {version('aiokafka')}", None
    else:
        raise ValueError(f"unknown faststream backend {backend!r}")

    finished = asyncio.Event()
    broker = KafkaBroker(spec.bootstrap, logger=None)
    if "handler" in spec.options:
        _io_subscriber(broker, spec, tally, finished)
    else:
        _batch_subscriber(broker, spec, tally, finished)

    tally.subscribing()  # broker.start subscribes
    await broker.start()
    try:
        await finished.wait()
    finally:
        await broker.stop()
    return {"client": f"faststream {version('faststream')} ({client})",
            "librdkafka": librdkafka}


def _batch_subscriber(broker: Any, spec: RunSpec, tally: Tally, finished: asyncio.Event) -> None:
    @broker.subscriber(
        spec.topic,
        group_id=spec.group,
        auto_offset_reset="earliest",
        batch=True,
        max_records=int(spec.options.get("max_records", 500)),
        auto_commit_interval_ms=1000,
    )
    async def handle(bodies: list[bytes]) -> None:  # the no-op handler
        if tally.add(len(bodies)):
            finished.set()


def _io_subscriber(broker: Any, spec: RunSpec, tally: Tally, finished: asyncio.Event) -> None:
    """``max_workers`` concurrent handlers that wait 10 ms each, then count."""
    loop = asyncio.get_running_loop()
    lock = threading.Lock()  # the sync handler runs on anyio's worker threads

    def count() -> None:
        with lock:
            stop = tally.add()
        if stop:
            loop.call_soon_threadsafe(finished.set)

    subscribe = broker.subscriber(
        spec.topic, group_id=spec.group, auto_offset_reset="earliest",
        auto_commit_interval_ms=1000, max_workers=int(spec.options["max_workers"]),
    )
    if spec.options["handler"] == "sleep_async":
        @subscribe
        async def handle_async(body: bytes) -> None:
            await asyncio.sleep(SLEEP_SECONDS)
            count()
    else:
        @subscribe
        def handle_sync(body: bytes) -> None:
            time.sleep(SLEEP_SECONDS)
            count()
