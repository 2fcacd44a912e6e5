"""Lint for what operators install with: it parses, it loads, what it names exists, and it holds up.

Kubernetes manifests against the Kubernetes schemas (kubernetes-validate), the
memory limits against what the topology makes each pod hold, the systemd
unit through `systemd-analyze verify` and `security`, the Containerfile
through hadolint; and a real node's readiness as systemd hears it.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from livecdn import metrics
from livecdn.cli import _parser
from livecdn.config import EdgeConfig, ShieldConfig, Topology, load
from tests.cdn import ROOT, topology_toml

DEPLOY = ROOT / "deploy"


def manifests() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_every_manifest_has_kind_name_and_namespace() -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "StatefulSet", "Service", "DaemonSet",
                                         "Deployment", "PodDisruptionBudget"}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "livecdn", d["metadata"]["name"]


# The Kubernetes release whose schemas the manifests are checked against (kubernetes-validate ships them).
K8S_VERSION = "1.30.0"


def test_manifests_match_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    for d in manifests():
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)  # raises with the field at fault


def topology(tmp_path: Path) -> Topology:
    config = next(d for d in manifests() if d["kind"] == "ConfigMap")["data"]["cdn.toml"]
    path = tmp_path / "cdn.toml"
    path.write_text(config)
    return load(path)


def workloads() -> list[dict]:
    return [d for d in manifests() if d["kind"] in ("StatefulSet", "DaemonSet", "Deployment")]


def container(d: dict) -> dict:
    (only,) = d["spec"]["template"]["spec"]["containers"]
    return only


def pod_nodes(d: dict, topo: Topology) -> list[str]:
    """The topology nodes the workload's pods can be: `--node` as the downward API resolves it."""
    args, c = container(d)["args"], container(d)
    given = args[args.index("--node") + 1]
    var = re.fullmatch(r"\$\((\w+)\)", given)
    if var is None:
        return [given]
    field = next(e for e in c["env"] if e["name"] == var.group(1))["valueFrom"]["fieldRef"]["fieldPath"]
    if d["kind"] == "StatefulSet":
        assert field == "metadata.name"  # pods are NAME-0, NAME-1, ...
        return [f"{d['metadata']['name']}-{i}" for i in range(d["spec"]["replicas"])]
    assert d["kind"] == "DaemonSet" and field == "spec.nodeName"  # one pod per Kubernetes node
    return list(topo.edges)  # each [edges.NODE] is a node's; the nodeSelector picks which run one


def test_every_pod_finds_its_own_node_in_the_topology(tmp_path: Path) -> None:
    topo = topology(tmp_path)
    for d in workloads():
        role = container(d)["args"][0]
        names = pod_nodes(d, topo)
        assert names and len(set(names)) == len(names)
        for name in names:
            kind, cfg = topo.node(name)
            assert kind == role, (name, kind, role)
            ports = {p["name"]: p["containerPort"] for p in container(d)["ports"]}
            assert ports[container(d)["readinessProbe"]["httpGet"]["port"]] == cfg.admin.port  # type: ignore[union-attr]
            if kind in ("shield", "edge"):
                assert ports["http"] == cfg.listen.port  # type: ignore[union-attr]
        if d["kind"] == "DaemonSet":
            assert d["spec"]["template"]["spec"]["hostNetwork"]  # an edge binds its node's address


# Besides each worker's memory tier: the Python process itself and the bodies in flight, per worker,
# and once per pod the supervisor and the disk tier's share of page cache (charged to the pod).
PER_WORKER_OVERHEAD = 512 << 20
PER_POD_OVERHEAD = 512 << 20
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def quantity(text: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", text)
    assert m, text
    return int(m.group(1)) * UNITS.get(m.group(2) or "", 1)


def test_memory_limits_cover_every_workers_memory_tier_and_headroom(tmp_path: Path) -> None:
    topo = topology(tmp_path)
    for d in workloads():
        limit = quantity(container(d)["resources"]["limits"]["memory"])
        assert quantity(container(d)["resources"]["requests"]["memory"]) <= limit
        for name in pod_nodes(d, topo):
            cfg = topo.node(name)[1]
            if isinstance(cfg, (ShieldConfig, EdgeConfig)):
                need = cfg.workers * (cfg.cache.memory_bytes + PER_WORKER_OVERHEAD) + PER_POD_OVERHEAD
                assert limit >= need, (name, limit, need)


def test_pods_run_unprivileged_on_a_read_only_root(tmp_path: Path) -> None:
    uid = int(re.search(r"--uid (\d+)", (DEPLOY / "Containerfile").read_text()).group(1))  # type: ignore[union-attr]
    for d in workloads():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
        sc = container(d)["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        # What a node writes besides its disk tier (the workers' metrics and purge directories) is /tmp.
        assert any(m["mountPath"] == "/tmp" for m in container(d)["volumeMounts"])
        # Ready is /healthz (a 503 when overloaded takes it out of rotation), alive is /livez.
        assert container(d)["readinessProbe"]["httpGet"]["path"] == "/healthz"
        assert container(d)["livenessProbe"]["httpGet"]["path"] == "/livez"


def test_every_workload_has_a_disruption_budget_and_the_metrics_service_selects_every_pod() -> None:
    docs = manifests()
    budgets = [d["spec"]["selector"]["matchLabels"] for d in docs if d["kind"] == "PodDisruptionBudget"]
    for d in workloads():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert any(sel.items() <= labels.items() for sel in budgets), d["metadata"]["name"]
        service = next(s for s in docs if s["kind"] == "Service" and s["metadata"]["name"] == "livecdn-metrics")
        assert service["spec"]["selector"].items() <= labels.items()
        assert "admin" in {p["name"] for p in container(d)["ports"]}
    assert any(d["kind"] == "Deployment" and container(d)["args"][0] == "geo" for d in docs)  # the router


def unit() -> configparser.ConfigParser:
    parsed = configparser.ConfigParser(strict=False, interpolation=None)
    parsed.read(DEPLOY / "systemd" / "livecdn@.service")
    return parsed


def test_systemd_unit_runs_the_node_the_instance_names() -> None:
    service = unit()["Service"]
    start = service["ExecStart"]
    args = shlex.split(start)[1:]
    assert re.fullmatch(r"\S+/livecdn", shlex.split(start)[0])
    parsed = _parser().parse_args(args)
    assert (parsed.command, parsed.config, parsed.node) == ("run", "/etc/livecdn/cdn.toml", "%i")
    assert service["KillSignal"] == "SIGTERM"
    assert "HUP" in (DEPLOY / "systemd" / "livecdn@.service").read_text().split("ExecReload=")[-1]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "all"  # each worker says READY=1


def installed_unit(tmp_path: Path) -> Path:
    """The unit with its ExecStart binary where this environment has it (verify checks that it exists)."""
    text = (DEPLOY / "systemd" / "livecdn@.service").read_text()
    path = tmp_path / "livecdn@edge-1.service"
    path.write_text(text.replace("/opt/livecdn/bin/livecdn", str(Path(sys.executable).parent / "livecdn")))
    return path


# `systemd-analyze security`: 0 is locked down, 10 is everything exposed (the unit before issue 14: 8.6).
EXPOSURE_GOAL = 3.0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    path = installed_unit(tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)], capture_output=True,
                              text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert m, security.stdout + security.stderr
    assert float(m.group(1)) <= EXPOSURE_GOAL, security.stdout


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed")
def test_sysusers_file_makes_the_units_user() -> None:
    path = DEPLOY / "systemd" / "livecdn.sysusers.conf"
    result = subprocess.run(["systemd-sysusers", "--dry-run", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    entries = [ln.split() for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert [e[:2] for e in entries] == [["u", unit()["Service"]["User"]]]


def test_containerfile_copies_what_exists_and_says_its_ports_and_health() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
    assert re.search(r"^EXPOSE .*\b9090\b", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD ", text, re.M) and "/livez" in text
    assert "COPY setup.cfg pyproject.toml README.md LICENSE" in text


def test_containerfile_example_command_runs_a_node_of_the_shipped_topology() -> None:
    """Its `podman run ... livecdn ARGS`: ARGS parse as the image's ENTRYPOINT takes them, the node exists."""
    text = (DEPLOY / "Containerfile").read_text()
    comments = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("#")]
    i = next(i for i, ln in enumerate(comments) if ln.startswith("podman run"))
    words = []
    while True:  # the command and its continuation lines
        words += shlex.split(comments[i].removesuffix("\\"))
        if not comments[i].endswith("\\"):
            break
        i += 1
    args = words[words.index("livecdn", words.index("run")) + 1:]  # after the image name
    parsed = _parser().parse_args(args)
    assert parsed.command == "run" and parsed.config == "/etc/livecdn/cdn.toml"
    assert load(ROOT / "configs" / "multi-region.toml").node(parsed.node)


@pytest.mark.skipif(shutil.which("hadolint") is None and not (Path(sys.executable).parent / "hadolint").exists(),
                    reason="hadolint not installed")
def test_containerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DEPLOY / "Containerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_a_node_says_ready_to_systemd_and_answers_livez(tmp_path: Path) -> None:
    """Type=notify: READY=1 over $NOTIFY_SOCKET once bound, STOPPING=1 when the drain starts."""
    text = topology_toml(origin="http://127.0.0.1:9", edges=1, router=False)
    config = tmp_path / "cdn.toml"
    config.write_text(text)
    admin = "http://" + re.search(r'\[shields\.shield-1\][^\[]*?admin = "([^"]+)"', text).group(1)  # type: ignore[union-attr]
    sock_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(30)
        proc = subprocess.Popen([sys.executable, "-m", "livecdn", "run", "--config", str(config), "--node",
                                 "shield-1", "--log-level", "error"], cwd=ROOT,
                                env={**os.environ, "NOTIFY_SOCKET": str(sock_path)})
        try:
            assert sock.recv(256) == b"READY=1"
            with urllib.request.urlopen(admin + "/livez", timeout=5) as r:  # bound before it said so
                assert r.status == 200 and r.read() == b"ok\n"
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(256) == b"STOPPING=1"
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:  # a failure above: once only (a second SIGTERM after the drain kills)
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)


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
