"""Lint for what operators install with: it parses, it loads, what it names exists."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

import yaml

from livecdn import metrics
from livecdn.cli import ROLES
from livecdn.config import load
from tests.cdn import ROOT

DEPLOY = ROOT / "deploy"


def manifests() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_every_manifest_has_kind_name_and_namespace() -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "StatefulSet", "Service", "DaemonSet"}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "livecdn", d["metadata"]["name"]


def test_the_configmap_topology_loads_and_names_every_pod_node(tmp_path: Path) -> None:
    docs = manifests()
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["cdn.toml"]
    path = tmp_path / "cdn.toml"
    path.write_text(config)
    topo = load(path)
    for d in docs:
        if d["kind"] in ("StatefulSet", "DaemonSet"):
            args = d["spec"]["template"]["spec"]["containers"][0]["args"]
            role, node = args[0], args[args.index("--node") + 1]
            assert topo.node(node)[0] == role
            probe_port = d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"]
            ports = {p["name"]: p["containerPort"] for p in d["spec"]["template"]["spec"]["containers"][0]["ports"]}
            assert ports[probe_port] == topo.node(node)[1].admin.port  # type: ignore[union-attr]


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(DEPLOY / "systemd" / "livecdn@.service")
    start = unit["Service"]["ExecStart"]
    assert re.search(r"livecdn \$\{ROLE\} --config \S+ --node %i$", start)
    assert unit["Service"]["KillSignal"] == "SIGTERM"
    assert "HUP" in unit["Service"]["ExecReload"]
    # ${ROLE} comes from role.d; every role the unit says it may hold must be a command.
    named = re.search(r"holds it \(([^)]*)\)", (DEPLOY / "systemd" / "livecdn@.service").read_text())
    assert named, "the unit no longer says which roles /etc/livecdn/role.d holds"
    roles = set(re.split(r", | or ", named.group(1)))
    assert roles and roles <= set(ROLES), roles - set(ROLES)


def test_containerfile_copies_what_exists() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src


# The series a metric of each kind carries, by suffix of its name.
SERIES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def exported_series() -> set[str]:
    """Every series name livecdn's /metrics can carry: metric objects and collectors alike."""
    text = metrics.exposition()[0].decode()
    names = set()
    for name, kind in re.findall(r"^# TYPE (livecdn_\w+) (\w+)$", text, re.M):
        # Counters and gauges are one series named as their TYPE line says; others have several.
        assert kind in SERIES, f"{name} is a {kind}: teach exported_series its series names"
        names.update(name + suffix for suffix in SERIES[kind])
    return names


def test_dashboard_queries_only_metrics_livecdn_exports() -> None:
    exported = exported_series()
    assert {"livecdn_requests_total", "livecdn_inflight_requests", "livecdn_dns_queries_total",
            "livecdn_edge_up"} <= exported  # objects and the router's collector, counters and gauges
    dash = json.loads((DEPLOY / "grafana" / "livecdn.json").read_text())
    used = {name for p in dash["panels"] for t in p["targets"] for name in re.findall(r"livecdn_\w+", t["expr"])}
    assert used and used <= exported, used - exported
