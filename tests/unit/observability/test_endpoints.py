"""consumer.observability.endpoints: /metrics, /livez and /readyz over real HTTP on a loopback
port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from consumer.observability.endpoints import ObservabilityServer
from consumer.testing import InMemorySource
from tests.unit.engine_support import values
from tests.unit.metrics_support import Metered, metered


@pytest.fixture
def served() -> Iterator[tuple[Metered, str]]:
    m = metered(InMemorySource({"t": [values(3)]}))
    server = ObservabilityServer(host="127.0.0.1", port=0, registry=m.registry, health=m.health)
    host, port = server.start()
    try:
        yield m, f"http://{host}:{port}"
    finally:
        server.close()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_metrics_are_served_in_prometheus_text_format(served: tuple[Metered, str]) -> None:
    m, base = served
    m.loop.start()
    m.loop.run_once()
    status, content_type, body = get(base + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    text = body.decode()
    assert 'consumer_state{group="g",state="running"} 1.0' in text
    assert 'consumer_messages_consumed_total{group="g",partition="0",topic="t"} 3.0' in text


def test_readyz_is_503_naming_the_failing_checks_then_200(served: tuple[Metered, str]) -> None:
    m, base = served
    status, content_type, body = get(base + "/readyz")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body)["failing"] == ["assignment", "subscribed"]
    m.loop.start()
    m.loop.run_once()
    status, _, body = get(base + "/readyz")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "failing": [], "checks": {
        "assignment": "ok", "kafka": "ok", "shutdown": "ok", "store": "ok", "subscribed": "ok"}}


def test_livez_answers_200_with_its_checks(served: tuple[Metered, str]) -> None:
    status, _, body = get(served[1] + "/livez")
    assert status == 200
    assert json.loads(body)["checks"] == {"kafka": "ok", "loop": "ok", "poll": "ok"}


def test_other_paths_are_404(served: tuple[Metered, str]) -> None:
    assert get(served[1] + "/")[0] == 404


def test_a_taken_port_raises_oserror(served: tuple[Metered, str]) -> None:
    m, base = served
    port = int(base.rsplit(":", 1)[1])
    other = ObservabilityServer(host="127.0.0.1", port=port, registry=m.registry,
                                health=m.health)
    with pytest.raises(OSError):
        other.start()
