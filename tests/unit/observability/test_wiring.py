"""config/alerts.yml and config/grafana-dashboard.json query only metrics that exist.

(promtool checks and unit-tests the rules themselves: tests/integration/test_alert_rules.py.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from consumer.testing import InMemorySource
from tests.unit.engine_support import values
from tests.unit.metrics_support import metered

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "config"
METRIC = re.compile(r"\bconsumer_[a-z_]+")


def exported_sample_names() -> set[str]:
    """Every sample name the registry can expose, empty labelled counters included."""
    m = metered(InMemorySource({"t": [values(2)]}), every_messages=1)
    names = set()
    for family in m.registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads((CONFIG / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return queries


def alert_queries() -> list[str]:
    rules = yaml.safe_load((CONFIG / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_dashboard_queries_use_only_exported_metrics() -> None:
    used = {name for query in dashboard_queries() for name in METRIC.findall(query)}
    assert used, "no consumer_ metric found in the dashboard"
    assert used <= exported_sample_names(), used - exported_sample_names()


def test_alert_rules_use_only_exported_metrics() -> None:
    used = {name for query in alert_queries() for name in METRIC.findall(query)}
    assert used <= exported_sample_names(), used - exported_sample_names()


def test_the_dashboard_shows_lag_in_seconds_and_checkpoint_age() -> None:
    text = " ".join(dashboard_queries())
    for name in ("consumer_partition_lag_seconds", "consumer_checkpoint_age_seconds",
                 "consumer_commits_total", "consumer_partition_lag_messages"):
        assert name in text


def test_the_compose_stack_wires_consumer_prometheus_and_grafana_to_files_that_exist() -> None:
    """The compose stack as a whole needs a Docker engine; here its wiring is checked. Every
    file it mounts exists, Prometheus scrapes the consumer's metrics port, and Grafana
    provisions the dashboard from config/."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "postgres", "consumer", "prometheus", "grafana"} <= set(services)
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
    assert "9400:9400" in services["consumer"]["ports"][0]
    scrape = yaml.safe_load((REPO / "config" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["consumer:9400"]
    provider = yaml.safe_load(
        (REPO / "config/grafana/provisioning/dashboards/checkpoint-consumer.yml").read_text())
    mounted = [v for v in services["grafana"]["volumes"] if "grafana-dashboard.json" in v]
    dashboards = provider["providers"][0]["options"]["path"]
    assert mounted and mounted[0].split(":")[1].startswith(dashboards)


def test_the_readme_metrics_reference_lists_every_exported_name_and_no_other() -> None:
    from consumer.observability.metrics import METRICS

    readme = (REPO / "README.md").read_text()
    listed = set(re.findall(r"^\| `(consumer_[a-z_]+)` \|", readme, re.MULTILINE))
    assert {name.removesuffix("_total") for name in listed} == set(METRICS)
