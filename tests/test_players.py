"""Real players against a live stream: ffmpeg's HLS demuxer, and hls.js in headless Chromium.

The stream URL comes from ONE fixture, `play_url`: the play URL `livecdn demo` prints.
It points at the geo router, which redirects the player to the nearest edge, so
every byte the players get went origin → shield → edge.

These tests never skip: a missing ffmpeg, Chromium or npm package fails them with the
command to run (`make test` installs all of them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdn import run_cdn, sample, topology_toml

PLAYERS_DIR = Path(__file__).parent / "players"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SECONDS = 20
INSTALL_HINT = "run `make test`, which installs ffmpeg, chromium and the npm packages in tests/players"

# Real players, a real demo CDN: all slow.
pytestmark = pytest.mark.slow


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


@contextlib.contextmanager
def video_demo(tmp_path_factory: pytest.TempPathFactory, name: str, *flags: str) -> Iterator[dict[str, Any]]:
    """The whole CDN (`livecdn demo` with `flags`): the built-in origin encoding real H.264/AAC, one
    shield, two edges on their own loopback addresses."""
    require_ffmpeg()
    config = tmp_path_factory.mktemp(name) / "cdn.toml"
    config.write_text(topology_toml(origin={"mode": "ffmpeg", "target_duration": 2, "window": 6}))
    with run_cdn(config, *flags) as info:
        yield info


@pytest.fixture(scope="module")
def video_cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with video_demo(tmp_path_factory, "players") as info:
        yield info


@pytest.fixture
def play_url(video_cdn: dict[str, Any]) -> str:
    """The URL every player test plays: the demo's play URL, at the router (which redirects to an edge)."""
    url = video_cdn["play"]
    router = next(n for n in video_cdn["nodes"] if n["role"] == "geo")
    assert urllib.parse.urlsplit(url).netloc == urllib.parse.urlsplit(router["url"]).netloc
    return str(url)


def counts(cdn: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Redirects the router sent to each edge, and player requests each edge answered."""
    def metrics(node: dict[str, Any]) -> str:
        with urllib.request.urlopen(node["admin"] + "/metrics", timeout=10) as r:
            return str(r.read().decode())
    router = metrics(next(n for n in cdn["nodes"] if n["role"] == "geo"))
    edges = {n["name"]: n for n in cdn["nodes"] if n["role"] == "edge"}
    return ({e: sample(router, "livecdn_redirects_total", edge=e) for e in edges},
            {e: sample(metrics(n), "livecdn_requests_total") for e, n in edges.items()})


def ffmpeg_reads(play_url: str, cdn: dict[str, Any]) -> None:
    """ffmpeg starts at the router, is redirected once, then reads everything from that edge."""
    ffmpeg = require_ffmpeg()
    redirects_before, served_before = counts(cdn)
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
    redirects_after, served_after = counts(cdn)
    redirected = {e: redirects_after[e] - redirects_before[e] for e in redirects_after}
    served = {e: served_after[e] - served_before[e] for e in served_after}
    edge = max(redirected, key=lambda e: redirected[e])
    # One redirect for the master playlist (a few at most, should ffmpeg reopen it);
    # the media playlists and their segments come from the edge directly, resolved
    # against the redirected URL: 20 s of 2 s segments is 10 segments at least.
    assert 1 <= sum(redirected.values()) <= 3, (redirected, served)
    assert served[edge] >= SECONDS / 2, (redirected, served)


def test_ffmpeg_reads_the_live_stream_without_error(play_url: str, video_cdn: dict[str, Any]) -> None:
    ffmpeg_reads(play_url, video_cdn)


def edges_as_public(cdn: dict[str, Any], tmp_path: Path, *extra: str, scheme: str = "url") -> str:
    """A Chromium launcher that treats the edges' endpoints as public addresses, as they are in production.

    The harness page is served by interception, so Chromium cannot place it in
    an address space; when the router redirects hls.js to an edge on 127.0.N.1,
    Local Network Access then denies the request into the loopback space
    without a prompt. Real edges have public addresses, where that check does
    not apply; `--ip-address-space-overrides` says so for these endpoints only
    (`scheme`: the nodes' "url" or "https" ones). `extra`: more Chromium flags.
    """
    endpoints = ",".join(f"{urllib.parse.urlsplit(n[scheme]).netloc}=public"
                         for n in cdn["nodes"] if n["role"] == "edge")
    launcher = tmp_path / "chromium"
    flags = " ".join([f"--ip-address-space-overrides={endpoints}", *extra])
    launcher.write_text(f'#!/bin/sh\nexec {CHROMIUM} "$@" {flags}\n')
    launcher.chmod(0o755)
    return str(launcher)


def hlsjs_plays(play_url: str, cdn: dict[str, Any], tmp_path: Path) -> None:
    node = require_browser_harness()
    env = {**os.environ, "CHROMIUM": edges_as_public(cdn, tmp_path)}
    assert_hlsjs_played(play_hlsjs(node, play_url, env))


def play_hlsjs(node: str, url: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """hls.js in headless Chromium (`env["CHROMIUM"]`: its launcher) plays `url` for SECONDS."""
    return subprocess.run([node, str(PLAYERS_DIR / "play.mjs"), url, str(SECONDS)],
                          cwd=PLAYERS_DIR, capture_output=True, text=True, timeout=SECONDS + 120, env=env)


def assert_hlsjs_played(proc: subprocess.CompletedProcess[str]) -> None:
    """play.mjs's report says the stream played SECONDS without a stall, a network error or a fatal one."""
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


def test_hlsjs_in_chromium_plays_without_stalling(play_url: str, video_cdn: dict[str, Any],
                                                  tmp_path: Path) -> None:
    hlsjs_plays(play_url, video_cdn, tmp_path)


# --- signed URLs: `livecdn demo --signed` -------------------------------------------------


@pytest.fixture(scope="module")
def signed_cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The video CDN with `--signed`: its play URL carries a token, and every edge wants one."""
    with video_demo(tmp_path_factory, "signed-players", "--signed") as info:
        yield info


def test_the_signed_demo_refuses_an_unsigned_request(signed_cdn: dict[str, Any]) -> None:
    play = signed_cdn["play"]
    key_id = signed_cdn["signing_keys"].split(":")[0]
    assert urllib.parse.urlsplit(play).path.startswith(f"/~{key_id}~")
    unsigned = urllib.parse.urljoin(play, "/live/master.m3u8")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(unsigned, timeout=10)  # the router redirects; the edge refuses
    assert (info.value.code, info.value.read()) == (403, b"403 token missing\n")
    with urllib.request.urlopen(play, timeout=10) as r:
        assert r.status == 200


def test_ffmpeg_reads_a_signed_play_url(signed_cdn: dict[str, Any]) -> None:
    ffmpeg_reads(signed_cdn["play"], signed_cdn)


def test_hlsjs_plays_a_signed_play_url(signed_cdn: dict[str, Any], tmp_path: Path) -> None:
    hlsjs_plays(signed_cdn["play"], signed_cdn, tmp_path)
