"""hls.js in low-latency mode through router, edge and shield, from the built-in origin's LL-HLS (issue 15).

The origin is the ffmpeg mode's real H.264/AAC with `low_latency = true`: 0.5 s
parts ffmpeg cuts itself, 2 s segments, blocking reloads and preload hints,
which every tier holds and streams. The player fetches the router's play URL,
is redirected to an edge, and asks for parts and blocking reloads from it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdn import run_cdn, topology_toml
from tests.failover import join_running_stream
from tests.test_players import PLAYERS_DIR, edges_as_public, require_browser_harness, require_ffmpeg

pytestmark = pytest.mark.slow
SECONDS = 20


@pytest.fixture(scope="module")
def ll_cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_ffmpeg()
    config = tmp_path_factory.mktemp("llplayers") / "cdn.toml"
    config.write_text(topology_toml(origin={"mode": "ffmpeg", "target_duration": 2, "window": 10,
                                            "low_latency": True, "part_target": 0.5}))
    with run_cdn(config) as info:
        # A player joining a running stream: ffmpeg's first whole segment exists (before it, the
        # playlist holds parts only, which hls.js reports as levelEmptyError).
        join_running_stream(info["play"], segments=1)
        yield info


def play_low_latency(url: str, env: dict[str, str], seconds: int = SECONDS) -> dict[str, Any]:
    """One hls.js lowLatencyMode run (tests/players/play.mjs): its JSON result."""
    node = require_browser_harness()
    proc = subprocess.run([node, str(PLAYERS_DIR / "play.mjs"), url, str(seconds)], cwd=PLAYERS_DIR,
                          capture_output=True, text=True, timeout=seconds + 120,
                          env={**env, "LIVECDN_LOW_LATENCY": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"play.mjs printed no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert proc.returncode == 0 and "harnessError" not in result, json.dumps(result, indent=1)
    return result


def test_hlsjs_low_latency_plays_through_router_and_edge_without_stalling(ll_cdn: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    """No stall, no network error, and a live latency near the origin's PART-HOLD-BACK (1.5 s).

    Before: the built-in origin had no low-latency mode at all (hls.js played plain HLS, 6 s behind).
    """
    env = {**os.environ, "CHROMIUM": edges_as_public(ll_cdn, tmp_path)}
    r = play_low_latency(ll_cdn["play"], env)
    report = json.dumps(r, indent=1)
    assert r["started"], f"playback never started:\n{report}"
    assert not [e for e in r["errors"] if e["fatal"]], f"fatal hls.js errors:\n{report}"
    bad = [e for e in r["errors"] if e["type"] == "networkError" or e["details"] == "bufferStalledError"]
    assert not bad, f"hls.js network errors or buffer stalls:\n{report}"
    assert r["stalls"] == [], f"playback stalled after it started:\n{report}"
    # An exception thrown in hls.js or in the harness's event handlers (the harness's own was one, every run).
    assert not [e for e in r["errors"] if e["details"] == "internalException"], report
    assert any(f["part"] is not None for f in r["frags"]), f"hls.js loaded no parts:\n{report}"
    assert r["playedSeconds"] >= SECONDS - 2, f"played too little:\n{report}"
    assert r.get("latency"), f"hls.js reported no live latency:\n{report}"
    print(f"hls.js lowLatencyMode through router and edge: latency mean {r['latency']['mean']:.2f} s, "
          f"last {r['latency']['last']:.2f} s over {r['latency']['samples']} samples")
    # A low-latency player sits within a segment of the live edge: plain HLS would be 3 segments (6 s) behind.
    assert r["latency"]["mean"] < 2 * 2.0, report
