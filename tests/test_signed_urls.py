"""Signed URLs at real edges (`livecdn demo` processes: router, two edges, a shield) in front of a fake origin.

The origin runs in a thread of this process (`in_thread`) so its request log can be read:
the origin, and the shield's access lines, must never hold a token. Players
are tests/test_players.py (hls.js, ffmpeg) and tests/test_dash.py (dash.js).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest

from livecdn.signing import sign
from tests.cdn import ROOT, run_cdn, sample, topology_toml, wait_until
from tests.fakeorigin import FakeOrigin, body, in_thread

pytestmark = pytest.mark.slow

K1 = "k1-secret-0123456789abcdef"
K2 = "k2-secret-from-a-file-0123"
MASTER = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\n720p/index.m3u8\n"
MEDIA = (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
         + b"".join(b"#EXTINF:2.0,\nseg%d.ts\n" % n for n in range(3)))
MPD = b"""<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT6S" minBufferTime="PT2S"
     profiles="urn:mpeg:dash:profile:isoff-live:2011"><Period><AdaptationSet mimeType="video/mp4">
<SegmentTemplate timescale="1" duration="2" startNumber="1" initialization="$RepresentationID$/init.mp4"
 media="$RepresentationID$/chunk-$Number%05d$.m4s"/>
<Representation id="v0" bandwidth="800000" width="640" height="360" codecs="avc1.42c01e"/>
</AdaptationSet></Period></MPD>
"""


def publish(origin: FakeOrigin) -> None:
    """A live HLS stream under /live/ and a static DASH one under /dash/."""
    origin.routes.update({
        "/live/master.m3u8": body(MASTER, "application/vnd.apple.mpegurl"),
        "/live/720p/index.m3u8": body(MEDIA, "application/vnd.apple.mpegurl"),
        "/dash/manifest.mpd": body(MPD, "application/dash+xml"),
        "/dash/v0/init.mp4": body(b"init" * 100, "video/mp4"),
    })
    origin.routes.update({f"/live/720p/seg{n}.ts": body(b"%d" % n * 1000) for n in range(3)})
    origin.routes.update({f"/dash/v0/chunk-{n:05d}.m4s": body(b"m%d" % n * 500, "video/iso.segment")
                          for n in range(1, 4)})


def signing_table(*keys: str) -> str:
    """`[[signing.keys]]`: k2 from a file beside the topology, k1 inline; in the order given (the first signs)."""
    tables = {"k2": 'id = "k2"\nfile = "k2.key"\n', "k1": f'id = "k1"\nsecret = "{K1}"\n'}
    return "".join(f"[[signing.keys]]\n{tables[k]}" for k in keys)


@pytest.fixture(scope="module")
def origin() -> Iterator[FakeOrigin]:
    with in_thread(FakeOrigin()) as o:
        publish(o)
        yield o


@pytest.fixture(scope="module")
def cdn(origin: FakeOrigin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("signed")
    (folder / "k2.key").write_text(K2 + "\n")
    config = folder / "cdn.toml"
    config.write_text(topology_toml(origin=origin.url) + '[signing]\nprefixes = ["/live/", "/dash/"]\n'
                      + signing_table("k2", "k1"))
    with run_cdn(config) as info:
        info["config"] = config
        yield info


def edge(cdn: dict[str, Any], i: int = 0) -> str:
    return str([n["url"] for n in cdn["nodes"] if n["role"] == "edge"][i])


def router(cdn: dict[str, Any]) -> str:
    return str(next(n["url"] for n in cdn["nodes"] if n["role"] == "geo"))


def get(url: str, source: str = "127.0.0.1") -> tuple[int, bytes, dict[str, str]]:
    """One GET from `source` (a loopback address), redirects not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def signed(path: str, key: str = "k1", ttl: int = 600, **kw: Any) -> str:
    secret = {"k1": K1, "k2": K2}[key]
    return sign(path, key, secret.encode(), int(time.time()) + ttl, **kw)


def test_the_demo_json_play_url_is_signed_and_plays(cdn: dict[str, Any]) -> None:
    play = cdn["play"]
    assert play.startswith(router(cdn) + "/~k2~")  # the first key signs
    with urllib.request.urlopen(play, timeout=10) as r:  # follows the router's 302
        assert r.status == 200 and r.read() == MASTER


def test_missing_malformed_tampered_expired_out_of_scope_tokens_get_403_with_the_reason(
        cdn: dict[str, Any]) -> None:
    e = edge(cdn)
    good = signed("/live/master.m3u8")
    mac = good.split("/")[1].rsplit("~", 1)[1]
    tampered = good.replace(mac, mac[:5] + ("A" if mac[5] != "A" else "B") + mac[6:])
    cases = {
        "/live/master.m3u8": "token missing",
        "/live/720p/seg0.ts?token=garbage": "token missing",  # a query token is no token
        "/~k1~nonsense/live/master.m3u8": "token malformed",
        tampered: "token signature bad",
        signed("/live/master.m3u8", ttl=-5): "token expired",
        signed("/dash/manifest.mpd").replace("/dash/", "/live/", 1): "path out of token scope",
        sign("/live/master.m3u8", "k9", K1.encode(), int(time.time()) + 60): "token key unknown",
    }
    admin = next(n["admin"] for n in cdn["nodes"] if n["url"] == e)

    def refusals() -> dict[str, float]:
        with urllib.request.urlopen(admin + "/metrics", timeout=10) as r:
            text = r.read().decode()
        return {reason: sample(text, "livecdn_token_refusals_total", reason=reason) for reason in cases.values()}
    before = refusals()
    for path, reason in cases.items():
        status, text, headers = get(e + path)
        assert (status, text.decode()) == (403, f"403 {reason}\n"), path
        assert headers["access-control-allow-origin"] == "*"  # a web player can read why
    status, text, _ = get(e + good)
    assert (status, text) == (200, MASTER)
    after = refusals()
    assert {r: after[r] - before[r] for r in after} == {r: 1 if r != "token missing" else 2 for r in after}


def test_relative_uris_from_a_signed_master_reach_every_segment_and_the_origin_sees_no_token(
        cdn: dict[str, Any], origin: FakeOrigin) -> None:
    master = edge(cdn) + signed("/live/master.m3u8")
    status, text, _ = get(master)
    media = urljoin(master, text.decode().splitlines()[-1])  # as a player resolves it
    status, text, _ = get(media)
    assert status == 200, text
    for name in [ln for ln in text.decode().splitlines() if ln and not ln.startswith("#")]:
        status, data, headers = get(urljoin(media, name))
        assert status == 200 and len(data) == 1000, (name, data[:80])
    assert origin.hits["/live/720p/seg2.ts"] == 1
    assert not [p for p in origin.hits if "~" in p], list(origin.hits)


def test_viewers_with_different_tokens_share_one_cached_copy(cdn: dict[str, Any], origin: FakeOrigin) -> None:
    e = edge(cdn, 1)
    one = signed("/live/720p/seg1.ts", ttl=300)
    other = signed("/live/720p/seg1.ts", key="k2", ttl=900, address="127.0.0.1")
    assert one != other
    before = origin.hits["/live/720p/seg1.ts"]
    statuses = [get(e + one), get(e + other), get(e + one)]
    assert [s for s, _, _ in statuses] == [200, 200, 200]
    assert statuses[2][2]["x-cache"] == "HIT" and statuses[1][2]["x-cache"] == "HIT"
    assert origin.hits["/live/720p/seg1.ts"] - before <= 1  # at most one fetch for this edge (the shield's copy)


def test_an_address_bound_token_plays_from_its_address_only(cdn: dict[str, Any]) -> None:
    e = edge(cdn)
    bound = signed("/live/720p/index.m3u8", address="127.0.0.9")
    assert get(e + bound, source="127.0.0.9")[0] == 200
    status, text, _ = get(e + bound, source="127.0.0.1")
    assert (status, text) == (403, b"403 token for another address\n")


def test_the_routers_302_keeps_the_token(cdn: dict[str, Any]) -> None:
    path = signed("/live/master.m3u8")
    status, _, headers = get(router(cdn) + path)
    assert status == 302
    location = headers["location"]
    assert urlsplit(location).path == path.partition("?")[0]
    assert get(location)[0] == 200


def test_dash_segment_urls_resolved_as_dashjs_does_play_signed(cdn: dict[str, Any], origin: FakeOrigin) -> None:
    mpd_url = edge(cdn) + signed("/dash/manifest.mpd")
    status, text, _ = get(mpd_url)
    assert status == 200 and text == MPD
    # dash.js: SegmentTemplate names, $RepresentationID$ and $Number%05d$ filled, resolved against the MPD URL.
    names = ["v0/init.mp4"] + [f"v0/chunk-{n:05d}.m4s" for n in range(1, 4)]
    for name in names:
        status, data, _ = get(urljoin(mpd_url, name))
        assert status == 200 and data, name
    status, text, _ = get(edge(cdn) + "/dash/v0/init.mp4")
    assert status == 403
    assert not [p for p in origin.hits if "~" in p]


def test_livecdn_sign_output_fetched_with_curl_is_200(cdn: dict[str, Any]) -> None:
    out = subprocess.run([sys.executable, "-m", "livecdn", "sign", "--config", str(cdn["config"]),
                          "/live/720p/index.m3u8", "--ttl", "60"],
                         capture_output=True, text=True, cwd=ROOT, timeout=30, check=True).stdout.strip()
    assert out.startswith(router(cdn) + "/~k2~")
    curl = subprocess.run(["curl", "-s", "-L", "-o", "/dev/null", "-w", "%{http_code} %{num_redirects}", out],
                          capture_output=True, text=True, timeout=30)
    assert curl.stdout == "200 1", curl
    curl = subprocess.run(["curl", "-s", "-L", "-o", "/dev/null", "-w", "%{http_code}",
                           router(cdn) + "/live/720p/index.m3u8"], capture_output=True, text=True, timeout=30)
    assert curl.stdout == "403", curl


def access_lines(cdn: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node's access lines so far (the demo writes them to the file it names)."""
    text = Path(cdn["access_log"]).read_text() if Path(cdn["access_log"]).exists() else ""
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith('{"time"') and '"path"' in ln]


def test_access_lines_hold_no_token(cdn: dict[str, Any]) -> None:
    path = signed("/live/720p/seg0.ts")
    token = path.split("/")[1]
    assert get(router(cdn) + path)[0] == 302
    assert get(edge(cdn) + path)[0] == 200
    assert get(edge(cdn) + path.replace("~k1~", "~k2~"))[0] == 403
    lines: list[dict[str, Any]] = []

    def logged() -> bool:  # each node writes its access lines out within a second, on its own clock
        lines[:] = access_lines(cdn)
        nodes = [ln["node"] for ln in lines if ln["path"].endswith("/live/720p/seg0.ts")]
        return "router" in nodes and nodes.count("edge-1") >= 2  # the 302; the 200 and the 403
    assert wait_until(logged, timeout=5)
    assert not [ln for ln in lines if token in json.dumps(ln)]
    by_node = {ln["node"]: ln for ln in lines if ln["path"].endswith("/live/720p/seg0.ts")}
    assert by_node["router"]["path"] == "/~redacted/live/720p/seg0.ts"
    assert {by_node[n]["path"] for n in ("edge-1", "shield-1") if n in by_node} == {"/live/720p/seg0.ts"}
    assert not [ln for ln in lines if ln["node"] == "shield-1" and "~" in ln["path"]]


# --- key rotation: its own CDN (it rewrites the topology file) -------------------------------------

def reload(info: dict[str, Any]) -> None:
    """SIGHUP every edge (by the pid its /healthz reports), as an operator's `systemctl reload` does."""
    for n in info["nodes"]:
        if n["role"] == "edge":
            with urllib.request.urlopen(n["admin"] + "/healthz", timeout=10) as r:
                os.kill(json.loads(r.read())["pid"], signal.SIGHUP)


def test_two_keys_are_accepted_and_a_removed_one_is_refused_after_reload(origin: FakeOrigin, tmp_path: Path) -> None:
    (tmp_path / "k2.key").write_text(K2 + "\n")
    config = tmp_path / "cdn.toml"
    base = topology_toml(origin=origin.url, edges=1, router=False)
    config.write_text(base + signing_table("k2", "k1"))
    with run_cdn(config) as info:
        e = edge(info)
        old, new = signed("/live/master.m3u8"), signed("/live/master.m3u8", key="k2")
        assert [get(e + p)[0] for p in (old, new)] == [200, 200]
        config.write_text(base + signing_table("k2"))
        reload(info)
        assert wait_until(lambda: get(e + old)[0] == 403, timeout=10), get(e + old)
        assert get(e + old)[1] == b"403 token key unknown\n"  # though it was verified (and remembered) before
        assert get(e + new)[0] == 200
        assert get(e + signed("/live/master.m3u8", key="k2"))[0] == 200
