"""A broker of the tests' own with a SASL_SSL (SCRAM-SHA-512 over TLS) listener, started by
``scripts/kafka_local.py start --sasl-ssl`` in a state folder of its own, beside (never
instead of) the shared broker."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LAUNCHER = Path(__file__).resolve().parents[2] / "scripts" / "kafka_local.py"


@dataclass(frozen=True)
class SecuredKafka:
    #: The PLAINTEXT listener: for the tests' own setup (topics, producing, reading back).
    plaintext_bootstrap: str
    #: The SASL_SSL listener: the only one the consumer under test is given.
    bootstrap: str
    mechanism: str
    username: str
    password: str
    ca_location: str
    #: Seconds the broker took to start.
    started_in: float

    def librdkafka(self) -> dict[str, str]:
        """What a client needs for the listener, all but the password."""
        return {"security.protocol": "SASL_SSL", "sasl.mechanism": self.mechanism,
                "sasl.username": self.username, "ssl.ca.location": self.ca_location}


@contextlib.contextmanager
def secured_kafka_server(state: Path, *, password: str) -> Iterator[SecuredKafka]:
    """Start the secured broker in ``state`` (or take over the one already running there);
    stop it, and delete its data, afterwards. Clients use the password the broker was
    started with (``sasl_ssl.json``), ``password`` when this call starts it."""
    env = {k: v for k, v in os.environ.items() if k != "CONSUMER_KAFKA_PORT"}
    env.update(CONSUMER_LOCAL_STATE=str(state), CONSUMER_KAFKA_SASL_PASSWORD=password)
    began = time.monotonic()
    started = subprocess.run([sys.executable, str(LAUNCHER), "start", "--sasl-ssl"], env=env,
                             capture_output=True, text=True, timeout=180, check=False)
    took = time.monotonic() - began
    try:
        if started.returncode != 0:
            raise AssertionError(f"the secured broker did not start: {started.stderr}")
        info = json.loads((state / "kafka" / "sasl_ssl.json").read_text())
        yield SecuredKafka(started.stdout.strip(), info["bootstrap"], info["mechanism"],
                           info["username"], info["password"], info["ca_location"], took)
    finally:
        subprocess.run([sys.executable, str(LAUNCHER), "stop"], env=env, capture_output=True,
                       timeout=60, check=False)
