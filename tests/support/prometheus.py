"""A real Prometheus server on loopback, scraping given targets, asked through its HTTP API.

The binary is Debian's (scripts/ensure_promtool.sh prometheus unpacks it into .local/bin).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from consumer_process import wait_for

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def prometheus_binary() -> str:
    found = subprocess.run([str(REPO / "scripts" / "ensure_promtool.sh"), "prometheus"],
                           capture_output=True, text=True, timeout=600)
    if found.returncode != 0:
        raise AssertionError(f"a Prometheus server is needed: {found.stderr.strip()}")
    return found.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Prometheus:
    url: str
    log: Path

    def query(self, expression: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's samples; empty while Prometheus has none (or is not up yet)."""
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        try:
            with urllib.request.urlopen(address, timeout=5) as response:
                body = json.load(response)
        except (urllib.error.URLError, ConnectionError):
            return []
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus refused {expression!r}: {body}")
        return [(sample["metric"], float(sample["value"][1]))
                for sample in body["data"]["result"]]

    def wait_for_value(self, expression: str, *, timeout: float, what: str
                       ) -> list[tuple[dict[str, str], float]]:
        found: list[tuple[dict[str, str], float]] = []

        def answered() -> bool:
            found[:] = self.query(expression)
            return bool(found)

        wait_for(answered, timeout=timeout, interval=0.25,
                 what=f"Prometheus to answer {expression!r} ({what}); its log: "
                      f"{self.log.read_text(errors='replace')[-1500:]}")
        return found


@contextlib.contextmanager
def prometheus_server(workdir: Path, job: str, targets: list[str]) -> Iterator[Prometheus]:
    """Start ``prometheus`` scraping ``targets`` every second; stop it afterwards."""
    binary = prometheus_binary()
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
    }))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
