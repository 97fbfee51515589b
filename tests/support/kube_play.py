"""deploy/kubernetes's real manifests, made playable by ``podman kube play`` on this machine.

The kit is loaded from its files and changed only where a test must: the image (the test's
build), the brokers, group and route (the test broker, a fresh topic into
``handlers.ledger:apply``), the metrics port (host networking: a free port), the Secret's store
URL (the test's PostgreSQL), one replica, and unique names (podman keeps a ConfigMap's and a
Secret's files in a named volume called after them, shared by every pod of the engine). The
rest (mounts, the ``*_FILE`` env, the security context, the probes) is played as written.

What Debian's podman (4.3) needs besides, all of it here and none in the kit:

- The Secret kind is not played from the YAML: it becomes a podman secret holding the
  Secret's YAML, which a ``secret`` volume reads (:func:`podman_secret`). Podman 4.3 reads
  only ``data`` there, and writes its values to the files as they stand, without base64
  decoding: the kit's ``stringData`` values go under ``data`` as they are.
- ``ports`` are dropped: podman refuses port mappings with host networking, and the process
  listens on the configured port anyway.
- The runtime (runc) and the ulimits (the host's hard limits) that ``podman run`` takes as
  flags go through a containers.conf named by ``CONTAINERS_CONF``: ``kube play`` has no
  such flags.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import container_engine
import yaml

KIT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def kit_manifests() -> dict[str, dict[str, Any]]:
    """configmap, secret and deployment as Kubernetes would get them."""
    return {name: yaml.safe_load((KIT / f"{name}.yaml").read_text())
            for name in ("configmap", "secret", "deployment")}


def playable(manifests: dict[str, dict[str, Any]], *, name: str, image: str, bootstrap: str,
             topic: str, handler: str, group: str, metrics_port: int, store_url: str
             ) -> dict[str, dict[str, Any]]:
    """The kit pointed at the test's broker, store and topic (see the module's docstring)."""
    configmap, secret, deployment = (manifests[k] for k in ("configmap", "secret", "deployment"))
    config = yaml.safe_load(configmap["data"]["consumer.yaml"])
    kafka = config["kafka"]
    kafka.update(bootstrap_servers=bootstrap, group_id=group)
    # The test broker is PLAINTEXT: the kit's SASL_SSL settings go (test_sasl_ssl.py covers
    # them); kafka.sasl_password_file still reads the Secret's file.
    for setting in ("security.protocol", "sasl.mechanism", "sasl.username"):
        kafka["librdkafka"].pop(setting)
    assert len(config["routes"]) == 1, f"the kit routes {config['routes']}: say which to replace"
    config["routes"] = {topic: handler}
    config["metrics"]["port"] = metrics_port
    configmap["data"]["consumer.yaml"] = yaml.safe_dump(config)
    configmap["metadata"]["name"] = f"{name}-config"
    secret["metadata"]["name"] = f"{name}-secret"
    secret["stringData"]["store-url"] = store_url

    deployment["metadata"]["name"] = name
    pod = deployment["spec"]["template"]["spec"]
    deployment["spec"]["replicas"] = 1
    (container,) = pod["containers"]
    container["image"] = image
    container.pop("ports")
    for volume in pod["volumes"]:
        if "configMap" in volume:
            volume["configMap"]["name"] = configmap["metadata"]["name"]
        if "secret" in volume:
            volume["secret"]["secretName"] = secret["metadata"]["name"]
    return {"configmap": configmap, "secret": secret, "deployment": deployment}


def podman_secret(secret: dict[str, Any]) -> dict[str, Any]:
    """The Secret as podman 4.3's secret volume reads it (see the module's docstring)."""
    return {**{k: v for k, v in secret.items() if k != "stringData"},
            "data": dict(secret["stringData"])}


def containers_conf(ulimit_args: list[str]) -> str:
    """runc and ``--ulimit`` flags (container_engine.host_ulimit_args) as containers.conf."""
    limits = [value for flag, value in zip(ulimit_args[::2], ulimit_args[1::2], strict=True)
              if flag == "--ulimit"]
    quoted = ", ".join(f'"{limit}"' for limit in limits)
    return f'[containers]\ndefault_ulimits = [{quoted}]\n\n[engine]\nruntime = "runc"\n'


@dataclass
class KubePlay:
    """One ``podman kube play`` of playable manifests, and its ``kube down``."""

    engine: container_engine.Engine
    manifests: dict[str, dict[str, Any]]
    folder: Path

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "containers.conf"
        conf.write_text(containers_conf(container_engine.host_ulimit_args()))
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.kube_file = self.folder / "kube.yaml"
        self.kube_file.write_text(yaml.safe_dump_all(
            [self.manifests["configmap"], self.manifests["deployment"]]))
        self.secret_file = self.folder / "secret.yaml"
        self.secret_file.write_text(yaml.safe_dump(podman_secret(self.manifests["secret"])))
        self.secret_file.chmod(0o600)
        name = self.manifests["deployment"]["metadata"]["name"]
        (container,) = self.manifests["deployment"]["spec"]["template"]["spec"]["containers"]
        self.pod = f"{name}-pod-0"
        self.container = f"{self.pod}-{container['name']}"

    def podman(self, *args: str, timeout: float = 120, check: bool = True
               ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.engine.command, *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if check and done.returncode != 0:
            raise container_engine.BuildFailed(
                f"podman {' '.join(args)} exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done

    def up(self) -> None:
        self.podman("secret", "create", self.manifests["secret"]["metadata"]["name"],
                    str(self.secret_file))
        self.podman("kube", "play", "--network", "host", str(self.kube_file))

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.podman("kube", "down", str(self.kube_file), timeout=90)

    def wait_exit(self) -> subprocess.Popen[str]:
        """``podman wait`` on the container, started now: its output is the exit code."""
        return subprocess.Popen([*self.engine.command, "wait", self.container],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env)

    def logs(self) -> str:
        done = self.podman("logs", self.container, check=False)
        return (done.stdout + done.stderr)[-3000:]

    def clean(self) -> None:
        """Remove what the play left: the pod, the secret, the config and secret volumes."""
        self.podman("kube", "down", str(self.kube_file), check=False)
        self.podman("secret", "rm", self.manifests["secret"]["metadata"]["name"], check=False)
        for kind in ("configmap", "secret"):
            self.podman("volume", "rm", "--force", self.manifests[kind]["metadata"]["name"],
                        check=False)
