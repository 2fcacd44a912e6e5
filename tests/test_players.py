"""Real players against a live stream: ffmpeg's HLS demuxer, and hls.js in headless Chromium.

The stream URL comes from ONE fixture, `play_url`. Today it is the built-in origin in
ffmpeg mode, started below; switching to the whole CDN is the one commented line there.

These tests never skip: a missing ffmpeg, Chromium or npm package fails them with the
command to run (`make test` installs all of them).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livecdn.config import Address, OriginConfig
from livecdn.origin import OriginNode

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


class _OriginThread:
    """An OriginNode on its own event loop in a thread, so sync tests and any
    asyncio_mode can share one for the whole module."""

    def __init__(self, config: OriginConfig) -> None:
        self.node = OriginNode(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="origin", daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.node.start(), self._loop).result(timeout=60)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.node.stop(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


@pytest.fixture(scope="module")
def player_origin() -> Iterator[str]:
    """The built-in origin encoding a real H.264/AAC stream; yields its play URL."""
    require_ffmpeg()
    origin = _OriginThread(OriginConfig(name="origin-players", listen=Address("127.0.0.1", 0),
                                        mode="ffmpeg", target_duration=2.0, window=6))
    origin.start()
    try:
        yield f"{origin.node.url}/live/master.m3u8"
    finally:
        origin.stop()


@pytest.fixture
def play_url(request: pytest.FixtureRequest) -> str:
    """The URL every player test plays."""
    # To play through the whole CDN instead of the origin directly, replace the line below with:
    #     return request.getfixturevalue("cdn")["play"]
    return request.getfixturevalue("player_origin")


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
