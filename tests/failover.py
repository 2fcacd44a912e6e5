"""hls.js or dash.js through a real CDN while one edge fails: the harness of the steering tests and of
benchmarks/steering.py (which also runs it on trees without steering: nothing here needs it)."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.test_players import PLAYERS_DIR, edges_as_public, require_browser_harness

__all__ = ["JOIN_SEGMENTS", "SECONDS_AFTER", "SECONDS_BEFORE", "failover_figures", "get", "join_running_stream", "node",
           "play_through_failure"]

SECONDS_BEFORE = 12  # played before the edge fails: the player's buffer is full (3 segments behind live)
SECONDS_AFTER = 24
# hls.js starts 3 target durations behind the live edge (liveSyncDurationCount): with this many segments listed it
# can, and holds 2-3 segments ahead from then on. Joined when the stream has fewer, it starts at the first segment
# and plays within one of the live edge all along (0.8 s buffered ahead), a player no failover can spare a stall.
JOIN_SEGMENTS = 4


def get(url: str, source: str = "127.0.0.1", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str],
                                                                                             bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def node(cdn: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(next(n for n in cdn["nodes"] if n["name"] == name))


def play_through_failure(cdn: dict[str, Any], action: str, tmp_path: Path,
                         steering_phase: float | None = None) -> dict[str, Any]:
    """hls.js plays the router's URL; `action` (a shell command) runs after SECONDS_BEFORE of playback, or
    with `steering_phase` that many seconds after the next steering manifest load after that (play.mjs)."""
    harness = require_browser_harness()
    join_running_stream(cdn["play"])
    env = {**os.environ, "CHROMIUM": edges_as_public(cdn, tmp_path), "LIVECDN_ACTION": action,
           "LIVECDN_ACTION_AFTER": str(SECONDS_BEFORE)}
    if steering_phase is not None:
        env["LIVECDN_ACTION_STEERING_PHASE"] = str(steering_phase)
    seconds = SECONDS_BEFORE + SECONDS_AFTER
    proc = subprocess.run([harness, str(PLAYERS_DIR / "play.mjs"), cdn["play"], str(seconds)], cwd=PLAYERS_DIR,
                          capture_output=True, text=True, timeout=seconds + 120, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"play.mjs printed no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert proc.returncode == 0 and "harnessError" not in result, json.dumps(result, indent=1)
    assert result["started"] and "actionAt" in result, json.dumps(result, indent=1)
    return result


def join_running_stream(play: str, segments: int = JOIN_SEGMENTS, timeout: float = 30.0) -> None:
    """Wait, as a viewer arriving at a running stream would find it, until an HLS play URL's first variant lists
    `segments` whole segments (a DASH URL: at once; its player's delay is set in play.mjs)."""
    if urllib.parse.urlsplit(play).path.endswith(".mpd"):
        return
    deadline = time.monotonic() + timeout
    while True:
        listed = 0
        try:
            with urllib.request.urlopen(play, timeout=10) as r:  # the router's 302, then the edge's master
                master, base = r.read().decode(), r.url
            variant = next(ln for ln in master.splitlines() if ln and not ln.startswith("#"))
            with urllib.request.urlopen(urllib.parse.urljoin(base, variant), timeout=10) as r:
                listed = len(re.findall(r"^#EXTINF:", r.read().decode(), re.MULTILINE))
        except OSError:
            pass  # nothing to play yet (the encoder is starting)
        if listed >= segments:
            return
        assert time.monotonic() < deadline, f"{play}: {listed} segments listed after {timeout:.0f} s"
        time.sleep(0.2)


def failover_figures(r: dict[str, Any], dead_host: str) -> dict[str, Any]:
    """What a viewer saw after the edge failed: longest stall, time to the first segment from another edge,
    and the media it had buffered ahead when the edge failed (what it could play while switching)."""
    at = r["actionAt"]
    end = at + SECONDS_AFTER
    after = [f for f in r["frags"] if f["at"] >= at]
    moved = [f for f in after if f["host"] != dead_host]
    stalls = [(s["at"], s.get("until", end)) for s in r["stalls"] if s.get("until", end) >= at]
    errors = [e for e in r["errors"] if e["at"] >= at and e["type"] == "networkError"]
    return {"switch_s": round(moved[0]["at"] - at, 2) if moved else None,
            "longest_stall_s": round(max((u - max(a, at) for a, u in stalls), default=0.0), 2),
            "buffer_ahead_s": round(r.get("bufferAheadAtAction", 0.0), 2),
            "network_errors": len(errors), "errors_first_3s": sum(e["at"] < at + 3 for e in errors),
            "segments_after": len(after), "segments_elsewhere": len(moved),
            "fatal": [e["details"] for e in r["errors"] if e["fatal"]],
            "stalled_at_end": bool(r["stalls"]) and "until" not in r["stalls"][-1]}
