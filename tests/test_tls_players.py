"""Real players over HTTPS: `livecdn demo --tls`, its router and edges serving TLS with the demo's own CA.

ffmpeg verifies the certificates against the demo's CA file (`-tls_verify 1
-ca_file`); Chromium is started trusting the demo's leaf key by its SPKI hash
(`--ignore-certificate-errors-spki-list`, which pins that one key; no
certificate error is ignored otherwise). Both start at the router's https
play URL, are redirected to an https edge, and read everything from there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.test_players import (
    SECONDS,
    assert_hlsjs_played,
    counts,
    edges_as_public,
    play_hlsjs,
    require_browser_harness,
    require_ffmpeg,
    video_demo,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_video_cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`livecdn demo --tls` over the built-in origin encoding real H.264/AAC, one shield, two edges."""
    with video_demo(tmp_path_factory, "tls-players", "--tls") as info:
        yield info


def spki_hash(url: str) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the certificate the server at `url` presents."""
    parts = urllib.parse.urlsplit(url)
    pem = ssl.get_server_certificate((parts.hostname, parts.port))  # type: ignore[arg-type]
    spki = x509.load_pem_x509_certificate(pem.encode()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_ffmpeg_reads_the_https_play_url_verifying_the_demo_ca(tls_video_cdn: dict[str, Any]) -> None:
    ffmpeg = require_ffmpeg()
    play = tls_video_cdn["https"]["play"]
    assert play.startswith("https://")
    redirects_before, served_before = counts(tls_video_cdn)
    proc = subprocess.run(
        [ffmpeg, "-nostdin", "-hide_banner", "-v", "error", "-tls_verify", "1", "-ca_file", tls_video_cdn["ca"],
         "-i", play, "-t", str(SECONDS), "-f", "null", "-", "-nostats", "-progress", "pipe:1"],
        capture_output=True, text=True, timeout=SECONDS + 60)
    progress = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    report = f"exit {proc.returncode}; stderr:\n{proc.stderr}"
    assert proc.returncode == 0 and proc.stderr.strip() == "", report
    assert progress.get("progress") == "end", report
    assert int(progress.get("out_time_us", "0")) / 1e6 >= SECONDS - 0.5, report
    redirects_after, served_after = counts(tls_video_cdn)
    assert 1 <= sum(redirects_after.values()) - sum(redirects_before.values()) <= 3
    assert sum(served_after.values()) - sum(served_before.values()) >= SECONDS / 2  # its segments, from an edge


def test_ffmpeg_refuses_the_https_play_url_without_the_demo_ca(tls_video_cdn: dict[str, Any]) -> None:
    """The certificates are really checked: the same read without the CA fails (the control of the test above)."""
    proc = subprocess.run([require_ffmpeg(), "-nostdin", "-hide_banner", "-v", "error", "-tls_verify", "1",
                           "-i", tls_video_cdn["https"]["play"], "-t", "1", "-f", "null", "-"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0, proc.stderr


def test_hlsjs_in_chromium_plays_over_https_through_router_and_edge(tls_video_cdn: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    node = require_browser_harness()
    play = tls_video_cdn["https"]["play"]
    pins = sorted({spki_hash(u) for u in tls_video_cdn["https"]["nodes"].values()})
    launcher = edges_as_public(tls_video_cdn, tmp_path, f"--ignore-certificate-errors-spki-list={','.join(pins)}",
                               scheme="https")
    redirects_before, _ = counts(tls_video_cdn)
    assert_hlsjs_played(play_hlsjs(node, play, {**os.environ, "CHROMIUM": launcher}))
    redirects_after, _ = counts(tls_video_cdn)
    assert sum(redirects_after.values()) > sum(redirects_before.values())  # it started at the router


def test_hlsjs_without_the_pin_cannot_load_the_https_play_url(tls_video_cdn: dict[str, Any], tmp_path: Path) -> None:
    """The control of the test above: the same Chromium without the SPKI pin refuses the demo's certificate."""
    node = require_browser_harness()
    launcher = edges_as_public(tls_video_cdn, tmp_path, scheme="https")
    proc = play_hlsjs(node, tls_video_cdn["https"]["play"], {**os.environ, "CHROMIUM": launcher})
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert not result["started"], result
    assert any(e["fatal"] and e["type"] == "networkError" for e in result["errors"]), result
