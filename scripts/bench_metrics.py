"""Throughput with metrics on versus off: a no-op handler, one topic, the same process.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python scripts/bench_metrics.py [--messages N]

Each run consumes the whole topic from the start with a fresh group; runs alternate off/on so
drift (page cache, broker warm-up) hits both alike. "On" has the observers, librdkafka
statistics every second and a scrape of /metrics' text every second from another thread (more
often than Prometheus usually scrapes). The goal: at most 5 % slower.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

from prometheus_client import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consumer.app import build_loop
from consumer.message import Context, Message
from consumer.observability import build_observability
from consumer.routing import Route, Router
from consumer.settings import Settings
from tests.support.kafka import create_topic, produce


def noop(_message: Message, _context: Context) -> None:
    return None


def one_run(bootstrap: str, topic: str, total: int, *, metrics: bool) -> float:
    """Messages per second from the first message to the last."""
    settings = Settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": f"bench-{uuid.uuid4().hex[:8]}",
               "poll_timeout_seconds": 0.1},
        routes={topic: "handlers.echo:handle"},
        checkpoint={"every_messages": 1000, "every_seconds": 5},
        store={"url": "none"},
        metrics={"enabled": metrics, "port": 0},
    )
    observability = build_observability(settings)
    loop = build_loop(settings, Router([Route(topic, noop, "bench:noop")]),
                      *observability.observers, on_statistics=observability.on_statistics)
    stop = threading.Event()
    scraper = None
    if metrics:
        observability.attach(loop.snapshot)

        def scrape() -> None:
            while not stop.wait(1.0):
                generate_latest(observability.registry)

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
    loop.start()
    done = 0
    while done == 0:
        done += loop.run_once()
    began = time.perf_counter()
    while done < total:
        done += loop.run_once()
    elapsed = time.perf_counter() - began
    stop.set()
    loop.close()
    return (total - 1) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("set KAFKA_BOOTSTRAP_SERVERS (scripts/kafka_local.py start prints one)",
              file=sys.stderr)
        return 2
    topic = create_topic(bootstrap, 3, prefix="bench-metrics")
    produce(bootstrap, topic, (b"x" * 100 for _ in range(args.messages)))
    results: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for metrics in (False, True):
            rate = one_run(bootstrap, topic, args.messages, metrics=metrics)
            results[metrics].append(rate)
            print(f"metrics {'on ' if metrics else 'off'}: {rate:,.0f} msg/s", flush=True)
    off, on = statistics.median(results[False]), statistics.median(results[True])
    print(f"median off {off:,.0f} msg/s, on {on:,.0f} msg/s: "
          f"cost {100 * (off - on) / off:+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
