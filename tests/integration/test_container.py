"""The image, built and run by a real container engine against the real broker and PostgreSQL.

scripts/container_engine.py finds the engine (podman with runc, installed from Debian's
packages when missing and root; else a Docker engine) and, on podman, builds the stand-in for
``python:3.11-slim`` that the Dockerfile starts from (no registry is reachable here). The
container gets docker-compose.yml's consumer service command and environment, with the
compose hostnames replaced by the test's broker and store, and a mounted config that routes a
fresh topic to ``handlers.ledger:apply`` (in the image), whose rows count every effect.

The second test plays deploy/kubernetes's own ConfigMap, Secret and Deployment with ``podman
kube play`` (tests/support/kube_play.py says what it changes and why).

Where no engine can be had the test is skipped, saying so; with
``CONSUMER_TEST_REQUIRE_CONTAINER=1`` (CI sets it) that is a failure instead.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import container_engine
import pytest
import yaml
from consumer_process import wait_for

from tests.support.kafka import create_topic, end_offsets, group_offsets, produce, unique_name
from tests.support.kube_play import KubePlay, kit_manifests, playable
from tests.support.prometheus import free_port, prometheus_server
from tests.support.stores import StoreUnderTest, fresh_store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GRACE_SECONDS = 10
PARTITIONS = 2


def compose_consumer() -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load(
        (REPO / "docker-compose.yml").read_text())["services"]["consumer"]
    return service


@pytest.fixture(scope="module")
def engine() -> container_engine.Engine:
    try:
        return container_engine.find_engine()
    except container_engine.EngineUnavailable as error:
        message = (f"NO CONTAINER ENGINE: the image was NOT built or run ({error}). "
                   "Install podman and runc (apt-get install podman runc debootstrap).")
        if os.environ.get("CONSUMER_TEST_REQUIRE_CONTAINER"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def image(engine: container_engine.Engine) -> str:
    """The image compose names for the consumer, built from the Dockerfile."""
    tag: str = compose_consumer()["image"]
    started = time.monotonic()
    container_engine.build_image(engine, tag)
    print(f"\n[container] base image and build ready in {time.monotonic() - started:.1f} s")
    return tag


@pytest.fixture
def store(postgres_dsn: str, tmp_path: Path) -> Iterator[StoreUnderTest]:
    with fresh_store("postgresql", tmp_path, postgres_dsn) as under_test:
        yield under_test


def compose_environment(bootstrap: str, store_url: str) -> dict[str, str]:
    """docker-compose.yml's consumer environment, its compose hostnames replaced by ours."""
    here = {"CONSUMER_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "CONSUMER_STORE__URL": store_url}
    environment = {str(k): str(v) for k, v in compose_consumer()["environment"].items()}
    unknown = set(environment) - set(here)
    assert not unknown, f"docker-compose.yml's consumer sets {unknown}: say here what it means"
    return {name: here[name] for name in environment}


class Container:
    """One named container of the image, driven through the engine's command line."""

    def __init__(self, engine: container_engine.Engine, name: str) -> None:
        self.engine, self.name = engine, name

    def state(self, field: str) -> str:
        return self.engine.run("inspect", "--format", f"{{{{.State.{field}}}}}",
                               self.name).stdout.strip()

    def logs(self) -> str:
        done = self.engine.run("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-3000:]


def assert_healthy(container: Container) -> None:
    """The image's HEALTHCHECK passes (podman: run now; docker: its own timer, within 60 s)."""
    if container.engine.kind == "podman":
        health = container.engine.run("healthcheck", "run", container.name, check=False)
        assert health.returncode == 0, f"image healthcheck: {health.stdout}{health.stderr}"
        return
    wait_for(lambda: container.state("Health.Status") == "healthy", timeout=60,
             what=f"the image's healthcheck ({container.logs()})")


def ledger(store: StoreUnderTest, topic: str) -> tuple[int, int]:
    """(effects applied, distinct messages applied) for ``topic``."""
    if not store.query("SELECT 1 FROM pg_tables WHERE tablename = 'ledger_entries' "
                       "AND schemaname = current_schema()"):
        return 0, 0
    total, distinct = store.query(
        "SELECT count(*), count(DISTINCT (partition, \"offset\")) FROM ledger_entries "
        "WHERE topic = %s", (topic,))[0]
    return int(total), int(distinct)


def produce_events(bootstrap: str, topic: str, start: int, count: int) -> None:
    """Ledger events, each with its id as the ``idempotency-key`` header (the route's default
    dedup key), so the store keeps one processed-key row per event."""
    produce(bootstrap, topic,
            [json.dumps({"event": f"{topic}-{i}", "account": f"{topic}-acc-{i % 5}",
                         "amount": 1}).encode() for i in range(start, start + count)],
            headers=lambda i: [("idempotency-key", f"{topic}-{start + i}".encode())])


def processed_keys(store: StoreUnderTest, group: str) -> int:
    return store.processed_key_count(group)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status)
    except OSError:
        return 0


class Logged(Protocol):
    """A running consumer whose log a failed wait shows (a container, a played pod)."""

    def logs(self) -> str: ...


def wait_all_committed(bootstrap: str, store: StoreUnderTest, group: str, topic: str,
                       count: int, container: Logged) -> None:
    ends = end_offsets(bootstrap, topic)
    wait_for(lambda: ledger(store, topic)[0] >= count, timeout=60,
             what=f"{count} ledger rows for {topic} ({container.logs()})")
    wait_for(lambda: group_offsets(bootstrap, group, topic, PARTITIONS) == ends, timeout=30,
             what=f"Kafka commits at {ends} ({container.logs()})")
    rows = dict(store.query("SELECT partition, next_offset FROM consumer_checkpoints "
                            "WHERE group_id = %s AND topic = %s", (group, topic)))
    assert rows == ends, f"store checkpoints {rows}, log ends {ends}"


def test_the_image_consumes_commits_is_scraped_and_stops_cleanly(
    engine: container_engine.Engine, image: str, kafka_bootstrap: str,
    store: StoreUnderTest, tmp_path: Path,
) -> None:
    """Run as compose runs it: events handled once each and committed (store and Kafka),
    /readyz 200 and the image's healthcheck healthy, the process uid 10001, Prometheus
    scraping consumer_commits_total; SIGTERM (engine stop) drains and exits 0 within the
    grace, and a restart applies nothing twice."""
    started = time.monotonic()
    topic = create_topic(kafka_bootstrap, PARTITIONS, prefix="container")
    group = unique_name("container")
    port = free_port()
    config = tmp_path / "consumer.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"group_id": group, "session_timeout_ms": 6000,
                  "librdkafka": {"heartbeat.interval.ms": 500}},
        "routes": {topic: "handlers.ledger:apply"},
        "checkpoint": {"every_messages": 100, "every_seconds": 1},
        "shutdown": {"grace_seconds": GRACE_SECONDS},
    }))
    config.chmod(0o644)
    service = compose_consumer()
    mounted = service["command"][service["command"].index("--config") + 1]
    environment = {**compose_environment(kafka_bootstrap, store.url),
                   "CONSUMER_METRICS__PORT": str(port)}
    name = unique_name("consumer")
    container = Container(engine, name)
    produce_events(kafka_bootstrap, topic, 0, 200)

    with prometheus_server(tmp_path, "consumer", [f"127.0.0.1:{port}"]) as prometheus:
        # podman: no systemd for its healthcheck timers here, so the check is run by hand.
        timers = ["--health-interval", "disable"] if engine.kind == "podman" else []
        engine.run(*engine.with_flags(
            "run", "--detach", "--name", name, "--stop-timeout", str(GRACE_SECONDS + 10),
            *timers, "--volume", f"{config}:{mounted}:ro",
            *[f"--env={k}={v}" for k, v in environment.items()],
            image, *service["command"]))
        try:
            wait_all_committed(kafka_bootstrap, store, group, topic, 200, container)
            assert ledger(store, topic) == (200, 200)
            assert processed_keys(store, group) == 200
            wait_for(lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200,
                     timeout=30, what=f"/readyz 200 ({container.logs()})")
            assert_healthy(container)
            status = engine.run("exec", name, "cat", "/proc/1/status").stdout
            uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uids.split()[1:] == ["10001"] * 4, uids
            assert engine.run("exec", name, "id", "-u").stdout.strip() == "10001"
            commits = prometheus.wait_for_value(
                f'sum(consumer_commits_total{{group="{group}",result="success"}}) > 0',
                timeout=30, what="the container's successful checkpoints")
            assert commits[0][1] > 0

            stopping = time.monotonic()
            engine.run("stop", name, timeout=GRACE_SECONDS + 30)
            stopped_in = time.monotonic() - stopping
            assert container.state("ExitCode") == "0", container.logs()
            assert stopped_in < GRACE_SECONDS, f"stop took {stopped_in:.1f} s"

            produce_events(kafka_bootstrap, topic, 200, 100)
            engine.run("start", name)
            wait_all_committed(kafka_bootstrap, store, group, topic, 300, container)
            assert ledger(store, topic) == (300, 300), "an event was applied twice"
            assert processed_keys(store, group) == 300
            engine.run("stop", name, timeout=GRACE_SECONDS + 30)
            assert container.state("ExitCode") == "0", container.logs()
        finally:
            engine.run("rm", "--force", "--time", "0", name, check=False)
    print(f"\n[container] run, scrape, stop and restart took {time.monotonic() - started:.1f} s"
          f" (stop: {stopped_in:.1f} s)")


def test_the_kubernetes_kit_plays_under_podman(
    engine: container_engine.Engine, image: str, kafka_bootstrap: str,
    store: StoreUnderTest, tmp_path: Path,
) -> None:
    """The kit's Deployment, ConfigMap and Secret under ``podman kube play``: the store DSN
    reaches the consumer only through the mounted Secret file (CONSUMER_STORE__URL_FILE), and
    it consumes into PostgreSQL; events are handled once and committed; the readiness probe's
    path answers 200; the process is uid 10001 on a read-only root filesystem (/tmp, the
    emptyDir, writable); ``podman kube down`` drains it to exit 0."""
    if engine.kind != "podman":
        pytest.skip(f"NO KUBE PLAY: {engine.kind} cannot play Kubernetes YAML; the kit was "
                    "NOT run (tests/unit/deploy validates it)")
    started = time.monotonic()
    topic = create_topic(kafka_bootstrap, PARTITIONS, prefix="kube")
    group = unique_name("kube")
    port = free_port()
    kit = kit_manifests()
    manifests = playable(kit, name=group.replace("_", "-").lower(), image=image,
                         bootstrap=kafka_bootstrap, topic=topic,
                         handler="handlers.ledger:apply", group=group, metrics_port=port,
                         store_url=store.url)
    (spec,) = manifests["deployment"]["spec"]["template"]["spec"]["containers"]
    play = KubePlay(engine, manifests, tmp_path / "kube")
    produce_events(kafka_bootstrap, topic, 0, 200)
    try:
        play.up()
        try:
            wait_all_committed(kafka_bootstrap, store, group, topic, 200,
                               play)
        except AssertionError as error:
            raise AssertionError(f"{error}\nconsumer log:\n{play.logs()}") from error
        assert ledger(store, topic) == (200, 200)
        assert processed_keys(store, group) == 200
        ready = f"http://127.0.0.1:{port}{spec['readinessProbe']['httpGet']['path']}"
        wait_for(lambda: http_status(ready) == 200, timeout=30, what=f"{ready} 200 ({play.logs()})")

        environment = play.podman("inspect", "--format", "{{json .Config.Env}}",
                                  play.container).stdout
        assert store.url not in environment, "the store DSN is in the environment"
        assert "CONSUMER_STORE__URL_FILE=" in environment
        status = play.podman("exec", play.container, "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uids.split()[1:] == ["10001"] * 4, uids
        write = "import sys; open(sys.argv[1], 'w').write('x')"
        refused = play.podman("exec", play.container, "python", "-c", write, "/app/probe",
                              check=False)
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused
        play.podman("exec", play.container, "python", "-c", write, "/tmp/probe")

        # podman before 5.1 SIGKILLs a pod's containers on `kube down` (containers/podman
        # #22397), and maps no terminationGracePeriodSeconds: stop the pod first, with the
        # manifest's grace as the stop timeout, as a kubelet would.
        grace = manifests["deployment"]["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"]
        exit_code = play.wait_exit()
        stopping = time.monotonic()
        play.podman("pod", "stop", "--time", str(grace), play.pod, timeout=grace + 30)
        stopped_in = time.monotonic() - stopping
        out, err = exit_code.communicate(timeout=30)
        assert out.strip() == "0", f"exit {out!r} {err!r}"
        assert stopped_in < GRACE_SECONDS, f"the pod's stop took {stopped_in:.1f} s"
        assert play.down().returncode == 0
    finally:
        play.clean()
    print(f"\n[kube play] play, consume, checks and down took "
          f"{time.monotonic() - started:.1f} s (down: {stopped_in:.1f} s)")
