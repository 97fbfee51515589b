"""FastStream, on its confluent-kafka backend and on its aiokafka backend.

Configured for throughput as its docs describe: a batch subscriber (``batch=True``,
``max_records=500``) whose handler receives a list of bodies, and the default acknowledgement
policy (``AckPolicy.ACK_FIRST``): the client's auto-commit (``enable.auto.commit``), here every
1 s (``auto_commit_interval_ms=1000``). FastStream cannot commit every N messages in that mode.
Its per-message access log is switched off (``logger=None``), as no other contender logs per
message. Stopping the broker commits synchronously before closing the client.

Option ``backend``: ``confluent`` or ``aiokafka``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks.runners.tally import RunSpec, Tally


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

    tally.subscribing()  # broker.start subscribes
    await broker.start()
    try:
        await finished.wait()
    finally:
        await broker.stop()
    return {"client": f"faststream {version('faststream')} ({client})",
            "librdkafka": librdkafka}
