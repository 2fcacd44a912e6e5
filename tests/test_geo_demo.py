"""The router as `livecdn demo` runs it: players bound to 127.0.1.x go to eu, 127.0.2.x to us.

The demo database (configs/demo-geo.mmdb) places 127.0.1.0/24 in Frankfurt
and 127.0.2.0/24 in Ashburn; 127.0.0.1 is in neither and gets the default
region (eu). Every edge listens on the same port of its own address, so the
address in a DNS answer is all a player needs.
"""

from __future__ import annotations

import http.client
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cdn import ROOT, run_cdn, topology_toml, wait_until

SYNTHETIC = {"mode": "synthetic", "target_duration": 1, "window": 4, "segment_bytes": 20_000}

# Every test starts `livecdn` or `dig` as a process.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    config = tmp_path_factory.mktemp("geo-demo") / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC))
    with run_cdn(config) as info:
        info["config"] = config
        yield info


def dig(cdn: dict[str, Any], source: str, *args: str) -> list[str]:
    if shutil.which("dig") is None:
        pytest.fail("dig is not installed: run `make test` (it installs bind9-dnsutils)", pytrace=False)
    host, port = cdn["dns"].rsplit(":", 1)
    out = subprocess.run(["dig", f"@{host}", "-p", port, "-b", source, "+short", "+tries=1", "+time=2",
                          cdn["hostname"], *args], capture_output=True, text=True, timeout=10)
    return out.stdout.split()


def get(url: str, source: str) -> tuple[int, dict[str, str], bytes]:
    """A GET from a chosen source address, redirects not followed."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        r = conn.getresponse()
        return r.status, dict(r.headers), r.read()
    finally:
        conn.close()


def edge_url(cdn: dict[str, Any], name: str) -> str:
    return str(next(n["url"] for n in cdn["nodes"] if n["name"] == name))


@pytest.mark.parametrize(("source", "edge", "address"), [
    ("127.0.1.5", "edge-1", "127.0.1.1"),  # eu
    ("127.0.2.5", "edge-2", "127.0.2.1"),  # us
    ("127.0.0.1", "edge-1", "127.0.1.1"),  # not in the database: the default region, eu
])
def test_source_address_decides_the_edge(cdn: dict[str, Any], source: str, edge: str, address: str) -> None:
    assert dig(cdn, source) == [address]
    status, headers, _ = get(cdn["play"], source)
    assert status == 302 and headers["Location"] == edge_url(cdn, edge) + "/live/master.m3u8"
    # The DNS answer is usable as is: the address, on the edges' common port, serves the stream.
    port = urllib.parse.urlsplit(headers["Location"]).port
    status, headers, body = get(f"http://{address}:{port}/live/master.m3u8", source)
    assert status == 200 and body.startswith(b"#EXTM3U")


def test_dns_answers_from_the_demo_router(cdn: dict[str, Any]) -> None:
    assert dig(cdn, "127.0.0.1", "+subnet=127.0.2.0/24") == ["127.0.2.1"]  # a resolver speaking for us
    assert dig(cdn, "127.0.2.9", "+tcp") == ["127.0.2.1"]
    assert dig(cdn, "127.0.2.9", "AAAA") == []  # the demo's edges have no IPv6 address: NODATA


def test_a_hung_edge_leaves_the_answers_within_10s_and_returns(cdn: dict[str, Any]) -> None:
    demo = psutil.Process(cdn["process"].pid)
    edge = next(p for p in demo.children(recursive=True) if "edge-2" in p.cmdline())
    edge.send_signal(signal.SIGSTOP)  # its health checks now time out
    try:
        started = time.monotonic()
        assert wait_until(lambda: dig(cdn, "127.0.2.5") == ["127.0.1.1"], 10, 0.1)
        gone = time.monotonic() - started
        assert gone < 10
    finally:
        edge.send_signal(signal.SIGCONT)
    assert wait_until(lambda: dig(cdn, "127.0.2.5") == ["127.0.2.1"], 10, 0.1)


def geo(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livecdn", "geo", "--config", str(config), "--node", "router",
                           *args], capture_output=True, text=True, timeout=20, cwd=ROOT)


@pytest.mark.parametrize(("old", "new", "key"), [
    ('default_region = "eu"', 'default_region = "mars"', "router.default_region"),
    ("ttl = 5", "ttl = 86400", "router.ttl"),
    ('name = "router"', 'name = "router"\nzone = "elsewhere.test"', "router.zone"),
    ('[router.health]', '[router.addresses]\nedge-1 = ["not-an-ip"]\n[router.health]', "router.addresses.edge-1"),
    ("interval = 0.5", "interval = 0", "router.health"),
])
def test_bad_router_config_is_one_line_and_status_2(tmp_path: Path, old: str, new: str, key: str) -> None:
    good = topology_toml(origin="http://127.0.0.1:9")
    assert old in good
    config = tmp_path / "bad.toml"
    config.write_text(good.replace(old, new, 1))
    result = geo(config)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and key in lines[0] and str(config) in lines[0], result.stderr


def test_an_unusable_database_is_a_config_error(tmp_path: Path) -> None:
    good = topology_toml(origin="http://127.0.0.1:9")
    for database in (tmp_path / "missing.mmdb", ROOT / "configs" / "demo-geo.json"):
        config = tmp_path / "cdn.toml"
        config.write_text(good.replace(str(ROOT / "configs" / "demo-geo.mmdb"), str(database)))
        result = geo(config)
        assert result.returncode == 2 and "router.database" in result.stderr and str(database) in result.stderr


def test_the_router_runs_on_its_own_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin="http://127.0.0.1:9"))
    proc = subprocess.Popen([sys.executable, "-m", "livecdn", "geo", "--config", str(config), "--node", "router",
                             "--log-level", "warning"], cwd=ROOT)
    try:
        port = config.read_text().split('dns = "127.0.0.1:', 1)[1].split('"', 1)[0]
        info = {"dns": f"127.0.0.1:{port}", "hostname": "cdn.livecdn.test"}
        # Every edge is down (nothing runs): the router still answers, with the nearest.
        assert wait_until(lambda: dig(info, "127.0.2.3") == ["127.0.2.1"], 15, 0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
