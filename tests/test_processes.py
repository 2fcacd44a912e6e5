"""The `livecdn` command as users run it: the demo, single nodes, workers, bad configs."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from livecdn.node.cache import COUNT_INTERVAL
from tests.cdn import ROOT, run_cdn, sample, topology_toml, wait_until

SYNTHETIC = {"mode": "synthetic", "target_duration": 1, "window": 4, "segment_bytes": 200_000}


def segments(playlist_url: str) -> list[str]:
    """The segment names of a live media playlist, once the origin has published some."""
    names: list[str] = []

    def published() -> bool:
        names[:] = [ln for ln in fetch(playlist_url)[2].decode().splitlines() if ln.endswith(".ts")]
        return bool(names)
    assert wait_until(published, 15), f"no segments in {playlist_url}"
    return names


def fetch(url: str, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def metric(admin: str, name: str, **labels: str) -> float:
    return sample(fetch(admin + "/metrics")[2].decode(), name, **labels)


def livecdn(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livecdn", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = tmp_path_factory.mktemp("demo") / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC))
    with run_cdn(config) as info:
        yield info


@pytest.mark.slow
def test_demo_prints_every_node_and_a_play_url_that_plays(demo: dict[str, Any]) -> None:
    roles = [n["role"] for n in demo["nodes"]]
    assert roles == ["origin", "shield", "edge", "edge", "geo"]
    edge_urls = [n["url"] for n in demo["nodes"] if n["role"] == "edge"]
    hosts = {u.split("//")[1].split(":")[0] for u in edge_urls}
    assert hosts == {"127.0.1.1", "127.0.2.1"}  # one loopback address per edge...
    assert len({u.rsplit(":", 1)[1] for u in edge_urls}) == 1  # ...on one port: a DNS answer is enough
    for n in demo["nodes"]:
        assert fetch(n["admin"] + "/healthz")[0] == 200
    router = next(n for n in demo["nodes"] if n["role"] == "geo")
    assert demo["play"].startswith(router["url"] + "/")  # players start at the router...
    with urllib.request.urlopen(demo["play"], timeout=10) as r:
        status, headers, master, final = r.status, r.headers, r.read(), r.geturl()
    assert any(final.startswith(u + "/") for u in edge_urls), final  # ...which sends them to an edge
    assert status == 200 and headers["Content-Type"] == "application/vnd.apple.mpegurl"
    rendition = [ln for ln in master.decode().splitlines() if ln and not ln.startswith("#")][0]
    base = final.rsplit("/", 1)[0]
    segment = segments(f"{base}/{rendition}")[-1]
    seg_url = f"{base}/{rendition.rsplit('/', 1)[0]}/{segment}"
    status, _, data = fetch(seg_url)
    assert status == 200 and len(data) == 200_000


@pytest.mark.slow
def test_one_origin_fetch_per_segment_across_both_edges(demo: dict[str, Any]) -> None:
    edges = [n for n in demo["nodes"] if n["role"] == "edge"]
    shield = next(n for n in demo["nodes"] if n["role"] == "shield")
    path = "/live/360p/index.m3u8"
    newest = segments(edges[0]["url"] + path)[-1]
    before = metric(shield["admin"], "livecdn_upstream_requests_total")
    urls = [e["url"] + f"/live/360p/{newest}" for e in edges for _ in range(40)]
    with ThreadPoolExecutor(80) as pool:
        results = list(pool.map(fetch, urls))
    assert {r[0] for r in results} == {200}
    assert len({r[2] for r in results}) == 1
    assert metric(shield["admin"], "livecdn_upstream_requests_total") - before == 1
    for e in edges:
        assert metric(e["admin"], "livecdn_upstream_requests_total") >= 1
        assert metric(e["admin"], "livecdn_requests_total", cache="coalesced") \
            + metric(e["admin"], "livecdn_requests_total", cache="hit") >= 39


@pytest.mark.slow
def test_sigterm_stops_every_process(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC))
    with run_cdn(config) as info:
        proc = info["process"]
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) == 5  # origin, shield, two edges, router
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


@pytest.mark.slow
def test_a_node_runs_on_its_own_from_the_topology_file(tmp_path: Path) -> None:
    """An operator's view: one node per command, the same file everywhere."""
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC, edges=1))
    text = config.read_text()
    procs = [subprocess.Popen([sys.executable, "-m", "livecdn", role, "--config", str(config), "--node", name,
                               "--log-level", "warning"], cwd=ROOT)
             for role, name in (("origin", "origin"), ("shield", "shield-1"), ("edge", "edge-1"))]
    try:
        edge = "http://" + re.search(r'\[edges\.edge-1\][^\[]*listen = "([^"]+)"', text).group(1)  # type: ignore[union-attr]
        assert wait_until(lambda: status_of(edge + "/live/master.m3u8") == 200, 30)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(20) for p in procs] == [0, 0, 0]


def status_of(url: str) -> int:
    """The status, or 0 while nothing listens."""
    try:
        return fetch(url, 2)[0]
    except OSError:
        return 0


@pytest.mark.slow
def test_workers_share_the_port_and_metrics_add_up(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC, edges=1, workers=2))
    with run_cdn(config) as info:
        edge = next(n for n in info["nodes"] if n["role"] == "edge")
        pids = set()
        for _ in range(60):
            pids.add(json.loads(fetch(edge["admin"] + "/healthz")[2])["pid"])
        assert len(pids) == 2  # SO_REUSEPORT spread the connections over both workers
        time.sleep(COUNT_INTERVAL + 0.5)  # the start's own requests (its readiness) counted first
        before = metric(edge["admin"], "livecdn_requests_total", node=edge["name"])
        for _ in range(50):
            assert fetch(edge["url"] + "/live/master.m3u8")[0] == 200
        # Whichever worker answers /metrics, it reports the whole node, once
        # each worker has added its memory hits (every COUNT_INTERVAL).
        time.sleep(COUNT_INTERVAL + 0.5)
        # Player requests only: a worker asking its sibling for a key it does not own is counted under
        # node="<name>/workers".
        readings = {metric(edge["admin"], "livecdn_requests_total", node=edge["name"]) - before for _ in range(10)}
        assert readings == {50.0}


@pytest.mark.parametrize(("old", "new", "key"), [
    ('region = "eu"', 'region = "nowhere"', "edges.edge-1.region"),
    ("[cache]\n", '[cache]\nmemory_bytes = "lots"\n', "cache.memory_bytes"),
    ("[cdn]\n", '[cdn]\nnmae = "typo"\n', "cdn.nmae"),
    ('[shields.shield-1]\nlisten = "127.0.0.1:', '[shields.shield-1]\nlisten = "127.0.0.1:9',
     "shields.shield-1.listen"),
    ("[cdn]", "this is not toml", "(syntax)"),
])
@pytest.mark.slow
def test_bad_config_is_one_clear_line_and_status_2(tmp_path: Path, old: str, new: str, key: str) -> None:
    good = topology_toml(origin="http://127.0.0.1:9")
    assert old in good
    config = tmp_path / "bad.toml"
    config.write_text(good.replace(old, new, 1))
    result = livecdn("edge", "--config", str(config), "--node", "edge-1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(config) in lines[0] and key in lines[0], result.stderr


@pytest.mark.slow
def test_wrong_node_name_and_role(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC))
    result = livecdn("edge", "--config", str(config), "--node", "nope")
    assert result.returncode == 2 and "no node named 'nope'" in result.stderr
    result = livecdn("edge", "--config", str(config), "--node", "shield-1")
    assert result.returncode == 2 and "is a shield node" in result.stderr


@pytest.mark.slow
def test_demo_in_front_of_an_existing_origin(tmp_path: Path, demo: dict[str, Any]) -> None:
    """`--origin URL`: the same CDN in front of someone else's origin (here: the first demo's)."""
    origin = next(n for n in demo["nodes"] if n["role"] == "origin")["url"]
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC))
    with run_cdn(config, "--origin", origin) as info:
        assert [n["role"] for n in info["nodes"]] == ["shield", "edge", "edge", "geo"]
        status, headers, _ = fetch(info["play"])
        assert status == 200 and headers["X-Cache"] in ("MISS", "HIT")
    started = time.monotonic()
    assert livecdn("demo", "--config", str(config), "--origin", "ftp://x", timeout=10).returncode == 2
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("name", ["demo.toml", "multi-region.toml"])
def test_shipped_topologies_load(name: str) -> None:
    from livecdn.config import load
    topo = load(ROOT / "configs" / name)
    # load() checks each edge's region exists; a region no edge serves would be a slip of the file.
    assert {e.region for e in topo.edges.values()} == set(topo.regions)
