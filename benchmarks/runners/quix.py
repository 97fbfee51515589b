"""Quix Streams: ``Application`` -> ``app.dataframe(topic).update(no-op)``.

Configured for this benchmark through its documented knobs: ``commit_every=1000``,
``commit_interval=1.0``, ``processing_guarantee="at-least-once"`` (its default), values read as
raw bytes (``value_deserializer="bytes"``: the default is JSON). Quix polls one message at a
time and commits its checkpoint synchronously; ``app.stop()`` ends the run with a forced
checkpoint commit.
"""

from __future__ import annotations

from typing import Any

from benchmarks.runners.tally import RunSpec, Tally


def run(spec: RunSpec, tally: Tally) -> dict[str, Any]:
    from importlib.metadata import version

    import confluent_kafka
    from quixstreams import Application

    app = Application(
        broker_address=spec.bootstrap,
        consumer_group=spec.group,
        auto_offset_reset="earliest",
        commit_every=int(spec.options.get("every_messages", 1000)),
        commit_interval=float(spec.options.get("every_seconds", 1.0)),
        processing_guarantee="at-least-once",
        loglevel="WARNING",
        state_dir="quix-state",  # relative to the child's scratch folder
    )
    topic = app.topic(spec.topic, value_deserializer="bytes")

    def handle(value: bytes) -> None:  # the no-op handler
        if tally.add():
            app.stop()

    app.dataframe(topic).update(handle)
    tally.subscribing()  # Application.run subscribes
    app.run()
    return {"client": f"quixstreams {version('quixstreams')}",
            "librdkafka": confluent_kafka.libversion()[0]}
