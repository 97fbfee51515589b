"""Read a running consumer's /metrics, /livez and /readyz over HTTP, as Prometheus would."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from consumer_process import ConsumerProcess, wait_for
from prometheus_client.parser import text_string_to_metric_families

#: The per-partition series a scrape shows while the partition is assigned (written out here,
#: not read from consumer/, so a metric dropped by mistake fails the tests).
PER_PARTITION = (
    "consumer_messages_consumed_total", "consumer_uncommitted_messages",
    "consumer_checkpoint_age_seconds", "consumer_committed_offset",
    "consumer_last_commit_timestamp_seconds", "consumer_partition_processed_offset",
    "consumer_partition_end_offset", "consumer_partition_start_offset",
    "consumer_partition_lag_messages", "consumer_partition_committed_lag_messages",
    "consumer_partition_lag_seconds",
)

SERVING = re.compile(r"serving /metrics, /livez and /readyz on (http://[\d.]+:\d+)")


def endpoint(process: ConsumerProcess, timeout: float = 30) -> str:
    """The base URL the process logged when it started serving."""
    found: list[str] = []

    def logged() -> bool:
        text = process.log_file.read_text(errors="replace") if process.log_file.exists() else ""
        found.extend(SERVING.findall(text)[:1])
        return bool(found)

    wait_for(logged, timeout=timeout, what=f"{process.name} to serve metrics "
                                            f"({process.log_tail()})")
    return found[0]


@dataclass(frozen=True)
class Scrape:
    """One /metrics response: sample name -> [(labels, value)]."""

    samples: Mapping[str, list[tuple[dict[str, str], float]]]

    def value(self, name: str, **labels: str) -> float | None:
        for found, value in self.samples.get(name, []):
            if all(found.get(k) == v for k, v in labels.items()):
                return value
        return None

    def by_partition(self, name: str, topic: str) -> dict[int, float]:
        return {int(found["partition"]): value for found, value in self.samples.get(name, [])
                if found.get("topic") == topic}

    def partitions(self, name: str) -> set[int]:
        return {int(found["partition"]) for found, _ in self.samples.get(name, [])}


def scrape(base: str) -> Scrape:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return Scrape(samples)


def health(base: str, path: str) -> tuple[int, dict[str, object]]:
    """(HTTP status, JSON body) of /livez or /readyz."""
    try:
        with urllib.request.urlopen(base + path, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
