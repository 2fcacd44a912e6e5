"""What a CDN operator's Prometheus scrapes (issue 14, item 5), from a real CDN with two edge workers.

Every answer a player got is in the edge's latency histogram (by tier and
cache result, hits resolved below a millisecond), its status class and its
bytes, summed over the worker processes whichever one answers /metrics; the
edge and shield report each upstream's answers and failures; the disk tier,
open connections and the version are there; the built-in origin has
/metrics too. `promtool check metrics` (Prometheus's own linter) passes on
each exposition where promtool is installed.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from livecdn import __version__
from livecdn.node.cache import COUNT_INTERVAL
from tests.cdn import ROOT, free_port, run_cdn, topology_toml, wait_until

SYNTHETIC = {"mode": "synthetic", "target_duration": 1, "window": 4, "segment_bytes": 20_000}


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def scrape(admin: str) -> str:
    return get(admin + "/metrics")[1].decode()


def total(text: str, name: str, **labels: str) -> float:
    """The sum of every series of `name` whose labels include `labels`."""
    out = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                out += float(value)
    return out


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("metrics")
    config = tmp / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC, edges=1, workers=2,
                                    cache={"disk_path": str(tmp / "disk" / "{node}"), "disk_bytes": "64MiB"}))
    with run_cdn(config) as info:
        yield info


@pytest.mark.slow
def test_every_answer_is_in_the_histogram_with_its_status_class_and_bytes(cdn: dict[str, Any]) -> None:
    edge = next(n for n in cdn["nodes"] if n["role"] == "edge")
    time.sleep(COUNT_INTERVAL + 0.5)  # the demo's own requests (its readiness) counted by both workers
    before = scrape(edge["admin"])
    sent = 0
    paths = ["/live/master.m3u8"] * 30 + ["/live/nope.m3u8"] * 3
    for path in paths:
        try:
            sent += len(get(edge["url"] + path)[1])
        except urllib.error.HTTPError as e:
            sent += len(e.read())
    time.sleep(COUNT_INTERVAL + 0.5)  # each worker adds its tally once a second
    after = scrape(edge["admin"])

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    edge_labels = {"node": edge["name"], "tier": "edge"}
    assert grew("livecdn_response_seconds_count", **edge_labels) == len(paths)
    assert grew("livecdn_responses_total", code="2xx", **edge_labels) == 30
    assert grew("livecdn_responses_total", code="4xx", **edge_labels) == 3
    assert grew("livecdn_sent_bytes_total", **edge_labels) == sent
    # Hits resolved below a millisecond: most of the 30 master playlists were memory hits.
    assert grew("livecdn_response_seconds_bucket", cache="hit", le="0.001", **edge_labels) >= 20


@pytest.mark.slow
def test_upstreams_disk_connections_and_version(cdn: dict[str, Any]) -> None:
    edge = next(n for n in cdn["nodes"] if n["role"] == "edge")
    shield = next(n for n in cdn["nodes"] if n["role"] == "shield")
    origin = next(n for n in cdn["nodes"] if n["role"] == "origin")
    get(edge["url"] + "/live/master.m3u8")
    text = scrape(edge["admin"])
    assert total(text, "livecdn_upstream_responses_total", upstream=shield["url"], code="2xx") >= 1
    assert f'livecdn_upstream_first_byte_seconds_count{{node="{edge["name"]}",upstream="{shield["url"]}"}}' in text
    assert total(text, "livecdn_disk_cache_bytes", node=edge["name"]) > 0
    assert "# TYPE livecdn_open_connections gauge" in text
    assert total(text, "livecdn_build_info", version=__version__) == 1
    shield_text = scrape(shield["admin"])
    assert total(shield_text, "livecdn_upstream_responses_total", upstream=origin["url"], code="2xx") >= 1
    # The origin's own: what reached it.
    origin_text = scrape(origin["admin"])
    assert total(origin_text, "livecdn_responses_total", tier="origin", code="2xx") >= 1
    assert total(origin_text, "livecdn_sent_bytes_total", tier="origin") > 0


@pytest.mark.slow
def test_an_upstream_that_cannot_be_reached_is_counted_by_upstream_and_error(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    text = topology_toml(origin=down, edges=1, router=False)
    config = tmp_path / "cdn.toml"
    config.write_text(text)
    shield = "http://" + re.search(r'\[shields\.shield-1\][^\[]*?listen = "([^"]+)"', text).group(1)  # type: ignore[union-attr]
    admin = "http://" + re.search(r'\[shields\.shield-1\][^\[]*?admin = "([^"]+)"', text).group(1)  # type: ignore[union-attr]
    proc = subprocess.Popen([sys.executable, "-m", "livecdn", "shield", "--config", str(config), "--node",
                             "shield-1", "--log-level", "error"], cwd=ROOT)
    try:
        assert wait_until(lambda: _answers(shield + "/live/master.m3u8") == 502, 30)
        found = total(scrape(admin), "livecdn_upstream_errors_total", upstream=down, error="connect")
        assert found >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def _answers(url: str) -> int:
    try:
        return get(url)[0]
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) not installed")
def test_promtool_accepts_every_exposition(cdn: dict[str, Any], tmp_path: Path) -> None:
    for node in cdn["nodes"]:
        text = scrape(node["admin"])
        result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, (node["name"], result.stdout + result.stderr)
