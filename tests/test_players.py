"""Real players against a live stream: ffmpeg's HLS demuxer, and hls.js in headless Chromium.

The stream URL comes from ONE fixture, `play_url`: the play URL `livecdn demo` prints,
so every byte the players get went origin → shield → edge.

These tests never skip: a missing ffmpeg, Chromium or npm package fails them with the
command to run (`make test` installs all of them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdn import run_cdn, topology_toml

PLAYERS_DIR = Path(__file__).parent / "players"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SECONDS = 20
INSTALL_HINT = "run `make test`, which installs ffmpeg, chromium and the npm packages in tests/players"


def require_ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        pytest.fail(f"ffmpeg is not installed: {INSTALL_HINT}", pytrace=False)
    return path


def require_browser_harness() -> str:
    node = shutil.which("node")
    missing = []
    if node is None:
        missing.append("node")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(CHROMIUM)
    for pkg in ("hls.js", "playwright-core"):
        if not (PLAYERS_DIR / "node_modules" / pkg / "package.json").exists():
            missing.append(f"tests/players/node_modules/{pkg}")
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: {INSTALL_HINT}", pytrace=False)
    assert node is not None
    return node


@pytest.fixture(scope="module")
def video_cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The whole CDN (`livecdn demo`): the built-in origin encoding real H.264/AAC, one shield,
    two edges on their own loopback addresses."""
    require_ffmpeg()
    config = tmp_path_factory.mktemp("players") / "cdn.toml"
    config.write_text(topology_toml(origin={"mode": "ffmpeg", "target_duration": 2, "window": 6}))
    with run_cdn(config) as info:
        yield info


@pytest.fixture
def play_url(video_cdn: dict[str, Any]) -> str:
    """The URL every player test plays: the demo's play URL, through an edge."""
    url = video_cdn["play"]
    assert urllib.parse.urlsplit(url).port in {urllib.parse.urlsplit(n["url"]).port
                                               for n in video_cdn["nodes"] if n["role"] == "edge"}
    return str(url)


def test_ffmpeg_reads_the_live_stream_without_error(play_url: str) -> None:
    ffmpeg = require_ffmpeg()
    started = time.monotonic()
    proc = subprocess.run(
        [ffmpeg, "-nostdin", "-hide_banner", "-v", "error", "-i", play_url, "-t", str(SECONDS),
         "-f", "null", "-", "-nostats", "-progress", "pipe:1"],
        capture_output=True, text=True, timeout=SECONDS + 60)
    elapsed = time.monotonic() - started
    progress = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    out_seconds = int(progress.get("out_time_us", "0")) / 1e6
    report = f"exit {proc.returncode} after {elapsed:.1f}s, read {out_seconds:.1f}s; stderr:\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert proc.stderr.strip() == "", report
    assert progress.get("progress") == "end", report
    assert out_seconds >= SECONDS - 0.5, report


def test_hlsjs_in_chromium_plays_without_stalling(play_url: str) -> None:
    node = require_browser_harness()
    proc = subprocess.run([node, str(PLAYERS_DIR / "play.mjs"), play_url, str(SECONDS)],
                          cwd=PLAYERS_DIR, capture_output=True, text=True, timeout=SECONDS + 120)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"play.mjs printed no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    r = json.loads(lines[-1])
    report = json.dumps(r, indent=1)
    assert proc.returncode == 0 and "harnessError" not in r, report
    assert r["hlsSupported"] and r["mse"], (
        "this Chromium build has no MediaSource support for H.264/AAC, so hls.js cannot play:\n"
        + report)
    assert r["started"], f"playback never started:\n{report}"
    fatal = [e for e in r["errors"] if e["fatal"]]
    assert not fatal, f"fatal hls.js errors:\n{report}"
    # On loopback a healthy origin or CDN never makes hls.js retry a load or stall its buffer;
    # other non-fatal notes (such as a gap jump at the very first segment) are allowed.
    bad = [e for e in r["errors"] if e["type"] == "networkError" or e["details"] == "bufferStalledError"]
    assert not bad, f"hls.js network errors or buffer stalls:\n{report}"
    assert r["stalls"] == [], f"playback stalled after it started:\n{report}"
    assert r["playedSeconds"] >= SECONDS - 2, f"played too little:\n{report}"
