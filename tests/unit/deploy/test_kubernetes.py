"""deploy/kubernetes: every manifest against the Kubernetes schemas (kubernetes-validate, which
ships them, so this runs offline), the PodMonitor and KEDA objects against their CRDs' own
schemas (vendored in crds/), and the references between the manifests and the application:
probe paths and port, the shutdown grace, the config, the mounted secrets. Each check is also
fed a deliberately broken copy and must fail on it."""

from __future__ import annotations

import copy
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from consumer.observability.endpoints import ObservabilityServer
from consumer.settings import MetricsSettings, Settings, StoreSettings, load_settings
from consumer.testing import InMemorySource
from tests.unit.engine_support import values
from tests.unit.metrics_support import metered

REPO_ROOT = Path(__file__).resolve().parents[3]
DEPLOY = REPO_ROOT / "deploy" / "kubernetes"
CRDS = Path(__file__).with_name("crds")
#: The oldest Kubernetes release the kit is written for (PodDisruptionBudget's
#: unhealthyPodEvictionPolicy is GA from 1.27 on).
KUBERNETES_VERSION = "1.30"
REQUIRED = {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"}
OPTIONAL_FILES = {"podmonitor.yaml", "keda-scaledobject.yaml"}
#: The settings another part of the kit reads the secrets through (``*_file`` settings).
SECRET_FILE_ENV = {"CONSUMER_STORE__URL_FILE": "store-url",
                   "CONSUMER_KAFKA__SASL_PASSWORD_FILE": "sasl-password"}

Resource = dict[str, Any]


# --- loading -------------------------------------------------------------------------------

def documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(folder: Path) -> Resource:
    loaded: Resource = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return loaded


def patch_files() -> set[Path]:
    return {(folder.parent / patch["path"]).resolve()
            for folder in DEPLOY.rglob("kustomization.yaml")
            for patch in kustomization(folder.parent).get("patches", [])}


def manifest_files() -> list[Path]:
    """Every file of complete resources (kustomizations and their partial patches aside)."""
    return sorted(path for path in DEPLOY.rglob("*.yaml")
                  if path.name != "kustomization.yaml" and path.resolve() not in patch_files())


@dataclass
class Kit:
    """The resources of the kit by kind (one of each), as a check sees them."""

    by_kind: dict[str, Resource]

    def __getitem__(self, kind: str) -> Resource:
        return self.by_kind[kind]

    def copy(self) -> Kit:
        return Kit(copy.deepcopy(self.by_kind))

    @property
    def pod(self) -> Resource:
        spec: Resource = self["Deployment"]["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> Resource:
        container: Resource = self.pod["containers"][0]
        return container

    @property
    def config_text(self) -> str:
        text: str = self["ConfigMap"]["data"]["consumer.yaml"]
        return text


def load_kit(folder: Path = DEPLOY) -> Kit:
    by_kind: dict[str, Resource] = {}
    for name in [*kustomization(folder)["resources"], *sorted(OPTIONAL_FILES)]:
        for doc in documents(folder / name):
            if doc["kind"] in by_kind:
                raise AssertionError(f"two {doc['kind']} resources; the checks expect one")
            by_kind[doc["kind"]] = doc
    return Kit(by_kind)


def strategic_merge(base: Any, patch: Any) -> Any:
    """kustomize's patchesStrategicMerge for the shapes the overlays use: maps merge key by key,
    null deletes, lists of named objects (containers, volumes, mounts, env) merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(base.get(key), value)
        return merged
    if (isinstance(base, list) and isinstance(patch, list)
            and all(isinstance(item, dict) and "name" in item for item in base + patch)):
        by_name = {item["name"]: item for item in base}
        for item in patch:
            by_name[item["name"]] = strategic_merge(by_name.get(item["name"]), item)
        return list(by_name.values())
    return copy.deepcopy(patch)


def load_overlay(folder: Path) -> Kit:
    """An overlay's output: its base (``../..``) with its patches, plus its own resources."""
    spec = kustomization(folder)
    kit = Kit({})
    for name in spec["resources"]:
        target = (folder / name).resolve()
        if target.is_dir():
            kit.by_kind.update(load_kit(target).by_kind)
        else:
            kit.by_kind.update({doc["kind"]: doc for doc in documents(target)})
    for patch in spec.get("patches", []):
        for doc in documents(folder / patch["path"]):
            kit.by_kind[doc["kind"]] = strategic_merge(kit[doc["kind"]], doc)
    return kit


# --- schemas -------------------------------------------------------------------------------

def _strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as the API server's strict field validation
    does (a misspelt field would otherwise be pruned without a word)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        strict["additionalProperties"] = False
    return strict


def _crd_schemas() -> dict[tuple[str, str], Resource]:
    """(apiVersion, kind) -> the CRD's openAPIV3Schema, made strict."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            if version["served"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                schemas[key] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


CRD_SCHEMAS = _crd_schemas()


def validate(resource: Resource) -> None:
    """Raise jsonschema.ValidationError (kubernetes-validate's is one) when ``resource`` does
    not fit its kind's schema, unknown fields included."""
    custom = CRD_SCHEMAS.get((resource["apiVersion"], resource["kind"]))
    if custom is None:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        return
    jsonschema.Draft7Validator(custom).validate(resource)
    if not resource.get("metadata", {}).get("name"):
        raise jsonschema.ValidationError(f"{resource['kind']} without metadata.name")


def test_the_vendored_crds_cover_the_optional_kinds() -> None:
    assert ("monitoring.coreos.com/v1", "PodMonitor") in CRD_SCHEMAS
    assert ("keda.sh/v1alpha1", "ScaledObject") in CRD_SCHEMAS
    assert ("keda.sh/v1alpha1", "TriggerAuthentication") in CRD_SCHEMAS


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_fits_its_schema(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no resource"
    for doc in docs:
        validate(doc)


def test_the_sqlite_overlay_output_fits_the_schemas() -> None:
    """validate() raises on a resource that does not fit; the overlay must also still hold the
    kinds it changes and adds (an empty merge would validate nothing)."""
    resources = load_overlay(DEPLOY / "overlays" / "sqlite").by_kind
    assert {"ConfigMap", "Secret", "Deployment", "PersistentVolumeClaim"} <= set(resources)
    for resource in resources.values():
        validate(resource)


BROKEN: dict[str, tuple[str, Callable[[Resource], None]]] = {
    "misspelt field": ("Deployment", lambda d: d["spec"].__setitem__("replica", 3)),
    "wrong type": ("Deployment", lambda d: d["spec"].__setitem__("replicas", "three")),
    "missing required": ("Deployment", lambda d: d["spec"].pop("selector")),
    "misspelt in the container": (
        "Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]
        .__setitem__("readinesProbe", {})),
    "pdb misspelt": ("PodDisruptionBudget", lambda d: d["spec"].__setitem__("maxUnavaliable", 1)),
    "podmonitor misspelt": (
        "PodMonitor", lambda d: d["spec"].__setitem__("podMetricEndpoints",
                                                      d["spec"].pop("podMetricsEndpoints"))),
    "podmonitor wrong type": (
        "PodMonitor", lambda d: d["spec"]["podMetricsEndpoints"][0].__setitem__("path", 9400)),
    "scaledobject without target": ("ScaledObject", lambda d: d["spec"].pop("scaleTargetRef")),
    "scaledobject wrong type": (
        "ScaledObject", lambda d: d["spec"].__setitem__("maxReplicaCount", "six")),
    "triggerauthentication misspelt": (
        "TriggerAuthentication", lambda d: d["spec"].__setitem__("secretTargetRefs", [])),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_copy_fails_validation(case: str) -> None:
    kind, breaks = BROKEN[case]
    resource = copy.deepcopy(load_kit()[kind])
    validate(resource)
    breaks(resource)
    with pytest.raises(jsonschema.ValidationError):
        validate(resource)


# --- the kit as a whole ----------------------------------------------------------------------

def test_kustomization_lists_the_required_resources_and_only_those() -> None:
    names = kustomization(DEPLOY)["resources"]
    kinds = {doc["kind"] for name in names for doc in documents(DEPLOY / name)}
    assert kinds == REQUIRED
    assert not OPTIONAL_FILES & set(names)
    listed = {DEPLOY / name for name in names} | {DEPLOY / name for name in OPTIONAL_FILES}
    stray = [path for path in manifest_files() if path.parent == DEPLOY and path not in listed]
    assert not stray, f"not in kustomization.yaml nor known as optional: {stray}"


def test_selectors_pick_the_deployments_pods() -> None:
    check_selectors(load_kit())


def check_selectors(kit: Kit) -> None:
    labels = kit["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": kit["Deployment"]["spec"]["selector"]["matchLabels"],
        "Service": kit["Service"]["spec"]["selector"],
        "PodDisruptionBudget": kit["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        "PodMonitor": kit["PodMonitor"]["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector.items() <= labels.items(), f"{kind} selects {selector}, pods are {labels}"
    target = kit["ScaledObject"]["spec"]["scaleTargetRef"]["name"]
    assert target == kit["Deployment"]["metadata"]["name"]


# --- probes and the metrics port against the application -------------------------------------

@pytest.fixture(scope="module")
def app_base_url() -> Iterator[str]:
    """The application's real HTTP server, its loop started and polled once (ready, live)."""
    m = metered(InMemorySource({"t": [values(1)]}))
    server = ObservabilityServer(host="127.0.0.1", port=0, registry=m.registry, health=m.health)
    host, port = server.start()
    m.loop.start()
    m.loop.run_once()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.close()


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def check_probes(kit: Kit, base_url: str) -> None:
    """Probes name the container's metrics port, whose number is the config's metrics.port on
    all interfaces, and paths the application answers 200 on when healthy."""
    settings = settings_of(kit)
    ports = {port["name"]: port["containerPort"] for port in kit.container["ports"]}
    assert settings.metrics.enabled
    assert settings.metrics.host == "0.0.0.0", "probes cannot reach a loopback-only server"
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = kit.container[probe]["httpGet"]
        assert ports.get(get["port"], get["port"]) == settings.metrics.port, probe
        assert get["path"] == path, f"{probe} checks {get['path']}, not {path}"
        assert status_of(base_url + get["path"]) == 200, f"{probe}: the app has no {get['path']}"
    for name, monitored in (("Service", kit["Service"]["spec"]["ports"][0]["targetPort"]),
                            ("PodMonitor", kit["PodMonitor"]["spec"]["podMetricsEndpoints"][0]
                             ["port"])):
        assert ports.get(monitored) == settings.metrics.port, f"{name} scrapes {monitored}"
    path = kit["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["path"]
    assert status_of(base_url + path) == 200, f"PodMonitor scrapes {path}"


def test_probes_and_scrapes_reach_the_applications_endpoints(app_base_url: str) -> None:
    assert MetricsSettings().port == 9400  # the port the kit and the docs name
    check_probes(load_kit(), app_base_url)


def test_termination_grace_is_above_the_consumers_shutdown_grace() -> None:
    check_grace(load_kit())


def check_grace(kit: Kit) -> None:
    period = kit.pod["terminationGracePeriodSeconds"]
    grace = settings_of(kit).shutdown.grace_seconds
    assert period > grace, (f"terminationGracePeriodSeconds {period} is not above "
                            f"shutdown.grace_seconds {grace}: SIGKILL would cut the drain")


# --- config and secrets ----------------------------------------------------------------------

def plain_env(kit: Kit) -> dict[str, str]:
    """The container's literal environment, less the secret files' settings."""
    return {env["name"]: env["value"] for env in kit.container.get("env", [])
            if "value" in env and env["name"] not in SECRET_FILE_ENV}


def settings_of(kit: Kit) -> Settings:
    """The ConfigMap's consumer.yaml and the container's literal environment, through the
    project's own loader."""
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as folder:
        for name, value in plain_env(kit).items():
            patch.setenv(name, value)
        path = Path(folder) / "consumer.yaml"
        path.write_text(kit.config_text)
        return load_settings(path)


def test_the_configmaps_config_loads_with_the_settings_loader() -> None:
    kit = load_kit()
    settings = settings_of(kit)
    assert "url" not in yaml.safe_load(kit.config_text).get("store", {}), (
        "the store URL belongs in the Secret")
    args = kit.container["args"]
    mounted = {mount["name"]: mount["mountPath"] for mount in kit.container["volumeMounts"]}
    config_volume = next(v for v in kit.pod["volumes"] if "configMap" in v)
    item = config_volume["configMap"]["items"][0]
    assert args[args.index("--config") + 1] == f"{mounted[config_volume['name']]}/{item['path']}"
    assert item["key"] == "consumer.yaml"
    assert settings.kafka.librdkafka["security.protocol"].get_secret_value() == "SASL_SSL"
    assert "sasl.password" not in settings.kafka.librdkafka


def check_secret_files(kit: Kit) -> None:
    """Each ``*_FILE`` setting names a file the Secret volume mounts, from a key the Secret has,
    and the KEDA authentication reads keys that exist."""
    secret = kit["Secret"]
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    volume = next(v for v in kit.pod["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    items = {item["path"]: item["key"] for item in volume["secret"]["items"]}
    assert set(items.values()) <= keys, f"mounted keys {items.values()} not in the Secret {keys}"
    mount = next(m for m in kit.container["volumeMounts"] if m["name"] == volume["name"])
    env = {e["name"]: e.get("value") for e in kit.container["env"]}
    for name, key in SECRET_FILE_ENV.items():
        assert name in env, f"{name} is not set"
        folder, _, file = str(env[name]).rpartition("/")
        assert folder == mount["mountPath"], f"{name} points outside the Secret's mount"
        assert items.get(file) == key, f"{name} names {file}, the Secret mounts {items}"
    auth = kit["TriggerAuthentication"]["spec"]
    for ref in auth["secretTargetRef"]:
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys, ref
    configmap = kit["ConfigMap"]
    for ref in auth.get("configMapTargetRef", []):
        assert ref["name"] == configmap["metadata"]["name"], ref
        assert ref["key"] in configmap["data"], ref
    username = settings_of(kit).kafka.librdkafka["sasl.username"].get_secret_value()
    assert configmap["data"]["sasl-username"] == username


def test_secret_keys_match_the_mounted_files_and_settings() -> None:
    check_secret_files(load_kit())


def test_the_deployment_loads_its_secrets_from_the_mounted_files(tmp_path: Path) -> None:
    """The container's whole configuration: the ConfigMap, the environment, and the Secret's
    values as files at the paths the environment names (under tmp_path here)."""
    kit = load_kit()
    secret = kit["Secret"]["stringData"]
    config = tmp_path / "consumer.yaml"
    config.write_text(kit.config_text)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in plain_env(kit).items():
            patch.setenv(name, value)
        for name, key in SECRET_FILE_ENV.items():
            (tmp_path / key).write_text(secret[key])
            patch.setenv(name, str(tmp_path / key))
        settings = load_settings(config)
    assert settings.store.url.get_secret_value() == secret["store-url"]
    assert settings.store.enabled


# --- KEDA ------------------------------------------------------------------------------------

def check_scaling(kit: Kit) -> None:
    """KEDA watches the consumer's own group and topic on its brokers, and never asks for more
    replicas than the topic has partitions."""
    scaled = kit["ScaledObject"]
    settings = settings_of(kit)
    trigger = scaled["spec"]["triggers"][0]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
    assert meta["consumerGroup"] == settings.kafka.group_id
    assert meta["topic"] in settings.routes
    assert int(meta["lagThreshold"]) > 0
    partitions = int(scaled["metadata"]["annotations"]["checkpoint-consumer/topic-partitions"])
    maximum = scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["minReplicaCount"] <= maximum <= partitions, (
        f"maxReplicaCount {maximum} above the {partitions} partitions: idle replicas")
    assert meta.get("allowIdleConsumers", "false") == "false"
    assert trigger["authenticationRef"]["name"] == kit["TriggerAuthentication"]["metadata"]["name"]


def test_keda_scales_on_the_consumers_own_group_within_the_partitions() -> None:
    check_scaling(load_kit())


# --- security --------------------------------------------------------------------------------

def check_security(kit: Kit) -> None:
    pod, container = kit.pod["securityContext"], kit.container["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == pod["runAsGroup"] == 10001
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    assert container["readOnlyRootFilesystem"] is True
    assert kit.container["resources"]["requests"] and kit.container["resources"]["limits"]


def test_the_pod_runs_as_the_images_numeric_user_with_nothing_writable_but_tmp() -> None:
    kit = load_kit()
    check_security(kit)
    writable = [m["mountPath"] for m in kit.container["volumeMounts"] if not m.get("readOnly")]
    assert writable == ["/tmp"]
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "10001" in dockerfile, "the image's user is not 10001 any more"


def test_the_sqlite_overlay_puts_the_database_on_its_own_volume() -> None:
    kit = load_overlay(DEPLOY / "overlays" / "sqlite")
    deployment = kit["Deployment"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}
    check_security(kit)
    url = kit["Secret"]["stringData"]["store-url"]
    assert url.startswith("sqlite:////"), "an absolute path"
    database = Path(url.removeprefix("sqlite:///"))
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in kit.pod["volumes"]
              if "persistentVolumeClaim" in v}
    mounts = {m["name"]: Path(m["mountPath"]) for m in kit.container["volumeMounts"]}
    on_claim = [name for name in claims if database.parent == mounts[name]]
    assert on_claim, f"{database} is on no PersistentVolumeClaim's mount ({mounts})"
    assert claims[on_claim[0]] == kit["PersistentVolumeClaim"]["metadata"]["name"]
    assert StoreSettings(url=url).enabled


# --- the cross-reference checks fail on broken copies ----------------------------------------

def _probe_path(kit: Kit) -> None:
    kit.container["livenessProbe"]["httpGet"]["path"] = "/healthz"


def _probe_port(kit: Kit) -> None:
    kit.container["ports"][0]["containerPort"] = 8080


def _loopback(kit: Kit) -> None:
    kit["ConfigMap"]["data"]["consumer.yaml"] = kit.config_text.replace(
        "host: 0.0.0.0", "host: 127.0.0.1")


def _grace(kit: Kit) -> None:
    kit.pod["terminationGracePeriodSeconds"] = 30


def _secret_key(kit: Kit) -> None:
    data = kit["Secret"]["stringData"]
    data["store-dsn"] = data.pop("store-url")


def _file_env(kit: Kit) -> None:
    env = next(e for e in kit.container["env"] if e["name"] == "CONSUMER_STORE__URL_FILE")
    env["value"] = "/var/run/secrets/checkpoint-consumer/store-dsn"


def _too_many_replicas(kit: Kit) -> None:
    kit["ScaledObject"]["spec"]["maxReplicaCount"] = 12


def _other_group(kit: Kit) -> None:
    kit["ScaledObject"]["spec"]["triggers"][0]["metadata"]["consumerGroup"] = "other"


def _root(kit: Kit) -> None:
    kit.pod["securityContext"]["runAsUser"] = 0


def _selector(kit: Kit) -> None:
    kit["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] = {"app": "other"}


CROSS_BROKEN: dict[str, tuple[Callable[[Kit], None], Callable[[Kit, str], None]]] = {
    "liveness path the app does not serve": (_probe_path, check_probes),
    "container port not the metrics port": (_probe_port, check_probes),
    "metrics on loopback only": (_loopback, check_probes),
    "termination grace equal to the shutdown grace": (_grace, lambda kit, _: check_grace(kit)),
    "secret key renamed": (_secret_key, lambda kit, _: check_secret_files(kit)),
    "file setting names an unmounted file": (_file_env, lambda kit, _: check_secret_files(kit)),
    "more replicas than partitions": (_too_many_replicas, lambda kit, _: check_scaling(kit)),
    "keda watches another group": (_other_group, lambda kit, _: check_scaling(kit)),
    "root user": (_root, lambda kit, _: check_security(kit)),
    "pdb selects other pods": (_selector, lambda kit, _: check_selectors(kit)),
}


@pytest.mark.parametrize("case", sorted(CROSS_BROKEN))
def test_a_broken_cross_reference_is_caught(case: str, app_base_url: str) -> None:
    breaks, check = CROSS_BROKEN[case]
    kit = load_kit()
    check(kit, app_base_url)
    broken = kit.copy()
    breaks(broken)
    with pytest.raises(AssertionError):
        check(broken, app_base_url)
