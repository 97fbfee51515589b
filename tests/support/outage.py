"""Dedicated local servers a test may take down and bring back, and ways to watch a consumer
through the outage.

A :class:`LocalServer` runs one of the project's launchers (``scripts/kafka_local.py``,
``scripts/postgres_local.py`` or ``scripts/mariadb_local.py``) as a child process with its own
``CONSUMER_LOCAL_STATE``, so the session-wide servers other tests use are never touched.
``stop(keep_data=True)`` followed by ``start()`` is a real outage: the same server comes back
on the same address with its data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from consumer_process import ConsumerProcess

from tests.support.scrape import health

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
#: Launcher settings that belong to the session-wide servers, not to a dedicated one.
_SHARED_ONLY = ("CONSUMER_KAFKA_PORT",)


@dataclass
class LocalServer:
    """One dedicated server run by a launcher script in its own state folder."""

    script: str
    state: Path
    #: The address ``start`` printed first (bootstrap servers or DSN); None before that.
    address: str | None = None

    @classmethod
    def kafka(cls, state: Path) -> LocalServer:
        return cls("kafka_local.py", state)

    @classmethod
    def postgres(cls, state: Path) -> LocalServer:
        return cls("postgres_local.py", state)

    @classmethod
    def mariadb(cls, state: Path) -> LocalServer:
        return cls("mariadb_local.py", state)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SHARED_ONLY}
        return {**env, "CONSUMER_LOCAL_STATE": str(self.state)}

    def run(self, *args: str, timeout: float = 240) -> str:
        """Run the launcher with ``args``; its stdout, or AssertionError with its stderr."""
        result = subprocess.run(
            [sys.executable, str(SCRIPTS / self.script), *args], env=self._env(),
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"{self.script} {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}")
        return result.stdout.strip()

    def start(self) -> str:
        """Start the server (resuming kept data, if any); returns its address."""
        address = self.run("start")
        if self.address is None:
            self.address = address
        return address

    def stop(self, *, keep_data: bool = False) -> None:
        self.run("stop", *(["--keep-data"] if keep_data else []), timeout=120)


def limit_fetch_rate(bootstrap: str, client_id: str, bytes_per_second: int,
                     state: Path) -> None:
    """A broker-side quota on what clients with ``client_id`` may fetch per second (Kafka's own
    ``kafka-configs --entity-type clients``), stored in the cluster's metadata, so it holds
    across a broker restart. It paces a consumer without touching it."""
    _alter_client(bootstrap, client_id, state,
                  "--add-config", f"consumer_byte_rate={bytes_per_second}")


def lift_fetch_rate(bootstrap: str, client_id: str, state: Path) -> None:
    """Remove the quota :func:`limit_fetch_rate` set: the rest of the run goes at full pace."""
    _alter_client(bootstrap, client_id, state, "--delete-config", "consumer_byte_rate")


def _alter_client(bootstrap: str, client_id: str, state: Path, *change: str) -> None:
    LocalServer.kafka(state).run(
        "tool", "kafka.admin.ConfigCommand", "--bootstrap-server", bootstrap, "--alter",
        *change, "--entity-type", "clients", "--entity-name", client_id,
    )


@dataclass
class HealthWatch:
    """Samples a consumer's /livez and /readyz (and whether its process lives) over time."""

    process: ConsumerProcess
    base: str
    samples: list[tuple[float, bool, int, int]] = field(default_factory=list)

    def sample(self) -> tuple[bool, int, int]:
        """(process alive, /livez status, /readyz status) now; a failed request counts as 0."""
        alive = self.process.alive()
        statuses = []
        for path in ("/livez", "/readyz"):
            try:
                statuses.append(health(self.base, path)[0])
            except OSError:
                statuses.append(0)
        self.samples.append((time.monotonic(), alive, statuses[0], statuses[1]))
        return alive, statuses[0], statuses[1]

    def watch(self, seconds: float, interval: float = 0.5) -> None:
        """Sample for ``seconds`` (the length of an outage: a timed wait on purpose)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            time.sleep(min(interval, max(0.0, end - time.monotonic())))

    def not_live(self) -> list[tuple[float, bool, int, int]]:
        """Samples where the process was gone or /livez did not answer 200."""
        return [s for s in self.samples if not s[1] or s[2] != 200]

    def readiness(self) -> list[int]:
        return [s[3] for s in self.samples]
