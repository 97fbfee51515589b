"""The deployment files say what the container test (tests/integration/test_container.py) and
the README promise: docker-compose.yml is valid under the compose specification's schema and
wires readiness, topics, grace and restarts; the Dockerfile runs as a number with a stop grace
that fits; constraints.txt pins every runtime dependency; scripts/container_engine.py reads the
host's apt mirror, pip index and limits."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import container_engine
import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from runtime_constraints import canonical

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "tests/support/compose-spec.json").read_text())


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def seconds(duration: str) -> float:
    """A compose duration such as ``1m30s`` or ``40s``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise AssertionError(f"{duration!r} is not a compose duration")
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split()[0].upper(), line.split(maxsplit=1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_compose_file_is_valid_under_the_compose_specification() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_check_refuses_an_invalid_compose_file() -> None:
    """The check can fail: a misspelt dependency condition and a numeric grace are refused."""
    broken = copy.deepcopy(compose())
    broken["services"]["consumer"]["depends_on"]["kafka"]["condition"] = "service_ready"
    broken["services"]["consumer"]["stop_grace_period"] = 40
    errors = schema_errors(broken)
    assert any("depends_on" in e for e in errors), errors
    assert any("stop_grace_period" in e for e in errors), errors


def test_the_consumer_starts_after_a_healthy_broker_and_the_topics_exist() -> None:
    services = compose()["services"]
    consumer = services["consumer"]
    assert consumer["depends_on"]["kafka"] == {"condition": "service_healthy"}
    assert consumer["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert consumer["depends_on"]["topics"] == {"condition": "service_completed_successfully"}
    assert "kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])
    creates = " ".join(services["topics"]["command"])
    routes = yaml.safe_load((REPO / "config/consumer.yaml").read_text())["routes"]
    for topic in [*routes, "events.dlq"]:
        assert f"--topic {topic} " in creates, f"the topics service does not create {topic}"
    assert services["topics"]["depends_on"]["kafka"] == {"condition": "service_healthy"}


def test_compose_gives_the_consumer_more_time_to_stop_than_its_grace() -> None:
    grace = yaml.safe_load((REPO / "config/consumer.yaml").read_text())["shutdown"]
    assert seconds(compose()["services"]["consumer"]["stop_grace_period"]) > grace[
        "grace_seconds"]


def test_a_config_error_does_not_restart_the_consumer_in_a_loop() -> None:
    """Exit 2 (bad config) under plain ``on-failure`` or ``always`` restarts forever."""
    restart = compose()["services"]["consumer"]["restart"]
    assert restart == "no" or re.fullmatch(r"on-failure:[1-5]", restart), restart


def test_every_image_is_pinned_to_a_tag() -> None:
    for name, service in compose()["services"].items():
        image = service.get("image")
        if image is None:
            continue
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest", f"{name}: {image} is not pinned to a tag"
        assert re.search(r"\d", tag), f"{name}: {image} names no version"


def test_the_image_runs_as_a_numeric_user_and_stops_on_sigterm() -> None:
    instructions = dockerfile_instructions()
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1].strip()), users
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    healthcheck = " ".join(arg for op, arg in instructions if op == "HEALTHCHECK")
    assert "/livez" in healthcheck and "curl" not in healthcheck
    labels = " ".join(arg for op, arg in instructions if op == "LABEL")
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels


def test_the_dependency_layer_comes_before_the_code() -> None:
    steps = [f"{op} {arg}" for op, arg in dockerfile_instructions()]
    constraints = steps.index("RUN pip install -r constraints.txt")
    code = next(i for i, step in enumerate(steps) if step.startswith("COPY consumer"))
    assert constraints < code


def test_constraints_pin_every_runtime_dependency_within_pyproject_ranges() -> None:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonical(name)] = Version(version)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonical(requirement.name)
        assert name in pins, f"constraints.txt lacks {name}: run scripts/runtime_constraints.py"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} vs {text}"


def test_the_mirror_is_read_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\n")
    assert container_engine.apt_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n")
    assert container_engine.apt_mirror(tmp_path) == "http://other.example/debian"
    assert container_engine.apt_mirror(tmp_path / "none") == "http://deb.debian.org/debian"


def test_pip_index_settings_come_from_config_files_and_the_environment(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://pypi.example/simple\ncert = /x.crt\n")
    found = container_engine.pip_build_args({}, [conf])
    assert found == {"PIP_INDEX_URL": "https://pypi.example/simple"}
    found = container_engine.pip_build_args({"PIP_INDEX_URL": "https://env.example/simple",
                                             "PIP_TRUSTED_HOST": "env.example"}, [conf])
    assert found == {"PIP_INDEX_URL": "https://env.example/simple",
                     "PIP_TRUSTED_HOST": "env.example"}


def test_ulimits_follow_the_given_hard_limits() -> None:
    import resource

    assert container_engine.host_ulimit_args({"nofile": 20000, "nproc": resource.RLIM_INFINITY}
                                             ) == ["--ulimit", "nofile=20000:20000"]
    here = container_engine.host_ulimit_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        assert f"nofile={hard}:{hard}" in here


def test_the_base_image_is_the_one_the_dockerfile_names() -> None:
    assert container_engine.base_image_name(REPO / "Dockerfile") == "python:3.11-slim"


@pytest.mark.parametrize("duration, expected", [("40s", 40), ("1m30s", 90), ("500ms", 0.5)])
def test_compose_durations_parse(duration: str, expected: float) -> None:
    assert seconds(duration) == expected


def test_without_podman_or_docker_the_engine_is_unavailable_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The container test turns this into its loud skip (or, in CI, a failure)."""
    monkeypatch.setattr(container_engine.shutil, "which", lambda name: None)
    with pytest.raises(container_engine.EngineUnavailable,
                       match=r"podman is not installed.*docker"):
        container_engine.find_engine(install=False)
