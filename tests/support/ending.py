"""Real-consumer runs of a handler that ends the store's transaction, and of the fixed handler
after it: one partition of 8 messages with header keys, a ``handled`` table of offsets."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from consumer_process import ConsumerProcess, consumer_config, wait_for

from tests.support.kafka import create_topic, group_offsets, produce, unique_name
from tests.support.stores import StoreUnderTest

#: Handlers on workers, a transaction per message (PostgreSQL only).
ENDING_ROUTE = {"concurrency": 4, "ordering": "none", "on_failure": "dead_letter"}
#: The sequential store's route: one batch transaction for the messages, no pool.
SEQUENTIAL_ROUTE = {"on_failure": "dead_letter"}
#: The fixed handler: records its offset.
FIXED = "tests.support.ledger_concurrent:record_offset"


def run_until_it_stops(kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path, name: str,
                       handler: str, route: dict[str, Any] | None = None,
                       ) -> tuple[str, str, dict[str, Any], str]:
    """8 messages, a ``handled`` table, and `consumer run` with ``handler`` on ``route``
    (:data:`ENDING_ROUTE` by default), which must exit 1; the topic, the group, the config and
    the log."""
    topic = create_topic(kafka_bootstrap, 1, prefix=name)
    produce(kafka_bootstrap, topic, [b"{}"] * 8, in_order=True,
            headers=lambda i: [("idempotency-key", f"event-{i}".encode())])
    store.execute('CREATE TABLE handled ("offset" bigint NOT NULL)')
    group = unique_name(name)
    config = consumer_config(kafka_bootstrap, group, topic, store=store.url,
                             every_messages=500, every_seconds=1.0)
    config["routes"] = {topic: {**(route or ENDING_ROUTE), "handler": handler}}
    run = ConsumerProcess(tmp_path, "run", config).start()
    try:
        assert run.wait(timeout=60) == 1, run.log_tail()
    finally:
        run.stop_if_running()
    return topic, group, config, run.log_file.read_text()


def run_fixed(kafka_bootstrap: str, store: StoreUnderTest, tmp_path: Path, topic: str,
              group: str, config: dict[str, Any]) -> None:
    """`consumer run` again with :data:`FIXED` on the same route, until its checkpoint passes
    the last message; every offset must then be handled exactly once."""
    route = config["routes"][topic]
    config["routes"] = {topic: {**route, "handler": FIXED}}
    fixed = ConsumerProcess(tmp_path, "fixed", config).start()
    try:
        wait_for(lambda: group_offsets(kafka_bootstrap, group, topic, 1)[0] == 8, timeout=60,
                 what="the fixed consumer's checkpoint past the last message")
        fixed.signal(signal.SIGTERM)
        assert fixed.wait(timeout=60) == 0, fixed.log_tail()
    finally:
        fixed.stop_if_running()
    assert sorted(store.query('SELECT "offset" FROM handled')) == [(n,) for n in range(8)]
