"""Content Steering (issue 15): edges name the router's steering manifests, players leave a dying edge.

Pure parts first (the edits an edge makes to masters and MPDs, the router's
order and manifest), then the fill that applies the edit once, then real
processes: every node its own `livecdn ROLE` process (`run_nodes`, so one
edge can be killed or SIGSTOPped while the rest go on) and hls.js in headless
Chromium playing through the router.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import m3u8
import pytest

from geo.choose import UNKNOWN, EdgeState, Site, choose, priority, rank, settled, standing
from geo.steering import steering_manifest
from livecdn.cache.fill import (
    CacheResult,
    ClientRequested,
    Fill,
    ServeStored,
    StartFetch,
    StoreObject,
    UpstreamChunk,
    UpstreamDone,
    UpstreamResponded,
)
from livecdn.cache.freshness import Rules
from livecdn.cache.keys import cache_key
from livecdn.cache.stored import Stored
from livecdn.config import ConfigError
from livecdn.config.load import load
from livecdn.media.kinds import NameKind
from livecdn.media.playlist import read
from livecdn.media.steering import Steering, dress_master, dress_mpd
from tests.cdn import free_port, run_nodes, topology_toml, wait_until
from tests.failover import SECONDS_BEFORE, failover_figures, get, node, play_through_failure
from tests.playbook import Placeholder, Playbook
from tests.test_dash import encoder, stop
from tests.test_players import require_ffmpeg

MASTER = (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n"
          b"#EXT-X-STREAM-INF:BANDWIDTH=2000000,RESOLUTION=1280x720\n720p/index.m3u8\n"
          b"#EXT-X-STREAM-INF:BANDWIDTH=600000,RESOLUTION=640x360\n360p/index.m3u8?token=abc\n"
          b'#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=90000,URI="720p/iframes.m3u8"\n')
STEER = Steering("edge-eu", "http://router.test:8000/steer",
                 (("edge-eu", "http://127.0.1.1:8080"), ("edge-us", "http://127.0.2.1:8080")))
MPD = (b'<?xml version="1.0" encoding="utf-8"?>\n'
       b'<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" availabilityStartTime="2024-01-01T00:00:00Z"'
       b' minimumUpdatePeriod="PT2S" profiles="urn:mpeg:dash:profile:isoff-live:2011">\n'
       b'  <ProgramInformation><Title>cam</Title></ProgramInformation>\n'
       b'  <Period id="0" start="PT0S"><AdaptationSet mimeType="video/mp4">'
       b'<SegmentTemplate media="chunk-$Number$.m4s" initialization="init.m4s" duration="2" startNumber="1"/>'
       b'<Representation id="0" bandwidth="1000000"/></AdaptationSet></Period>\n</MPD>\n')
NS = "{urn:mpeg:dash:schema:mpd:2011}"


# --- what an edge writes ------------------------------------------------------

def test_master_gets_the_tag_and_every_variant_joins_the_edges_pathway() -> None:
    out = dress_master(MASTER, STEER)
    parsed = m3u8.loads(out.decode())
    assert out.splitlines()[1] == (b'#EXT-X-CONTENT-STEERING:SERVER-URI="http://router.test:8000/steer/hls/'
                                   b'edge-eu.json",PATHWAY-ID="edge-eu"')
    variants = [p.stream_info for p in parsed.playlists] + [p.iframe_stream_info for p in parsed.iframe_playlists]
    assert len(variants) == 3 and all(v.pathway_id == "edge-eu" for v in variants)
    # URIs as the origin wrote them: relative, tokens kept (clones replace the host of the resolved URI).
    assert [p.uri for p in parsed.playlists] == ["720p/index.m3u8", "360p/index.m3u8?token=abc"]
    assert read("/live/master.m3u8", out).announced == read("/live/master.m3u8", MASTER).announced


def test_master_edit_is_idempotent_keeps_crlf_and_leaves_an_origins_steering_alone() -> None:
    once = dress_master(MASTER, STEER)
    assert dress_master(once, STEER) == once
    crlf = dress_master(MASTER.replace(b"\n", b"\r\n"), STEER)
    assert crlf == once.replace(b"\n", b"\r\n")
    theirs = MASTER.replace(b"#EXT-X-VERSION:3\n", b'#EXT-X-CONTENT-STEERING:SERVER-URI="https://o/s.json"\n')
    assert dress_master(theirs, STEER) == theirs
    pathway = MASTER.replace(b"RESOLUTION=640x360", b'RESOLUTION=640x360,PATHWAY-ID="cdn-b"')
    assert b'PATHWAY-ID="cdn-b"\n' in dress_master(pathway, STEER)  # a variant's own pathway stays its own


def test_media_playlists_are_left_as_they_are() -> None:
    media = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg1.ts\n"
    assert STEER.dress("/live/720p/index.m3u8", media, read("/live/720p/index.m3u8", media)) == media


def test_mpd_gets_a_base_url_per_edge_and_content_steering_before_its_period() -> None:
    out = dress_mpd(MPD, "/live/cam/manifest.mpd", STEER)
    root = ET.fromstring(out)
    children = [c.tag.removeprefix(NS) for c in root]
    assert children == ["ProgramInformation", "BaseURL", "BaseURL", "Location", "Location", "ContentSteering",
                        "Period"]
    bases = {b.get("serviceLocation"): b.text for b in root.findall(f"{NS}BaseURL")}
    assert bases == {"edge-eu": "http://127.0.1.1:8080/live/cam/", "edge-us": "http://127.0.2.1:8080/live/cam/"}
    locations = {b.get("serviceLocation"): b.text for b in root.findall(f"{NS}Location")}
    assert locations == {"edge-eu": "http://127.0.1.1:8080/live/cam/manifest.mpd",
                         "edge-us": "http://127.0.2.1:8080/live/cam/manifest.mpd"}
    steering = root.find(f"{NS}ContentSteering")
    assert steering is not None and steering.get("defaultServiceLocation") == "edge-eu"
    assert steering.text == "http://router.test:8000/steer/dash/edge-eu.json"
    assert dress_mpd(out, "/live/cam/manifest.mpd", STEER) == out
    own = MPD.replace(b"<Period", b"<BaseURL>https://elsewhere/cam/</BaseURL><Period", 1)
    assert dress_mpd(own, "/live/cam/manifest.mpd", STEER) == own  # the origin's own locations are its own


# --- what the router answers ----------------------------------------------------

SITES = [Site("eu", (50.1, 8.7), "http://127.0.1.1:8080"), Site("us", (39.0, -77.5), "http://127.0.2.1:8080"),
         Site("ap", (1.3, 103.8), "http://127.0.3.1:8080"), Site("sa", (-23.5, -46.6), "http://127.0.4.1:8080")]
SUSPECT = EdgeState(up=True, suspect=True, settled=False)
STATES = [UNKNOWN, EdgeState(up=False), EdgeState(up=True, overloaded=True), SUSPECT]


def test_priority_starts_with_the_edge_choose_picks_and_orders_the_rest_by_health_then_distance() -> None:
    rng = random.Random(15)
    for states in itertools.product(STATES, repeat=len(SITES)):
        where = (rng.uniform(-60, 60), rng.uniform(-180, 180))
        health = {s.name: st for s, st in zip(SITES, states, strict=True)}
        order = priority(where, SITES, health)
        assert sorted(s.name for s in order) == sorted(s.name for s in SITES)
        assert order[0] == choose(where, SITES, health).edge
        tiers = [0 if health[s.name].healthy else 1 if health[s.name].up and not health[s.name].overloaded
                 else 2 if health[s.name].up else 3 for s in order]
        assert tiers == sorted(tiers)  # healthy, suspect, overloaded, down: a down edge listed last, not dropped


def test_a_suspect_edge_goes_behind_the_healthy_ones_and_keeps_the_order_unsettled() -> None:
    eu = (50.1, 8.7)
    assert [s.name for s in priority(eu, SITES, {"eu": SUSPECT})] == ["us", "sa", "ap", "eu"]
    assert [s.name for s in priority(eu, SITES, {"eu": SUSPECT, "us": EdgeState(False)})] == ["sa", "ap", "eu", "us"]
    healthy = {s.name: EdgeState(True) for s in SITES}
    assert settled(eu, SITES, healthy)
    assert not settled(eu, SITES, {**healthy, "eu": SUSPECT})  # the nearest may come back, or go down: ask soon
    assert not settled(eu, SITES, {**healthy, "eu": EdgeState(False, settled=False)})  # on its way back
    assert settled(eu, SITES, {**healthy, "eu": EdgeState(False)})  # down, and staying so: us is the answer
    assert settled(eu, SITES, {**healthy, "ap": SUSPECT})  # farther than the one the player uses
    assert not settled(eu, SITES, {})  # never checked yet


def test_settled_looks_at_the_first_and_every_nearer_edge() -> None:
    rng = random.Random(16)
    for states in itertools.product([*STATES, EdgeState(True), EdgeState(False, settled=False)], repeat=len(SITES)):
        where = (rng.uniform(-60, 60), rng.uniform(-180, 180))
        health = {s.name: st for s, st in zip(SITES, states, strict=True)}
        first = priority(where, SITES, health)[0]
        ranked = [s for _, s in rank(where, SITES)]
        used = ranked[:ranked.index(first) + 1]
        assert settled(where, SITES, health) == all(health[s.name].settled for s in used)
        assert standing(health[first.name]) == min(standing(st) for st in states)


def test_steering_manifest_shape() -> None:
    hosts = {"eu": "127.0.1.1", "us": "127.0.2.1"}
    hls = steering_manifest(["us", "eu"], "eu", hosts, 10, "/steer/hls/eu.json")
    assert hls == {"VERSION": 1, "TTL": 10, "RELOAD-URI": "/steer/hls/eu.json", "PATHWAY-PRIORITY": ["us", "eu"],
                   "PATHWAY-CLONES": [{"BASE-ID": "eu", "ID": "us", "URI-REPLACEMENT": {"HOST": "127.0.2.1"}}]}
    dash = steering_manifest(["us", "eu"], None, hosts, 10, "/steer/dash/eu.json")
    assert "PATHWAY-CLONES" not in dash and dash["PATHWAY-PRIORITY"] == ["us", "eu"]


# --- the fill applies it once ---------------------------------------------------

def test_the_fill_sends_and_stores_the_dressed_master_and_dresses_it_once() -> None:
    calls: list[str] = []

    def dress(path: str, body: bytes, manifest: Any) -> bytes:
        calls.append(path)
        return STEER.dress(path, body, manifest)

    key = cache_key("/live/master.m3u8")
    fill = Fill(key, NameKind.PLAYLIST, ("http://shield",), Rules(error_ttl=0), 1 << 20, dress=dress)
    want = dress_master(MASTER, STEER)
    stored = Placeholder(Stored)
    ct = ("content-type", "application/vnd.apple.mpegurl")
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch("http://shield", 0)
        >> UpstreamResponded(200, (ct, ("content-length", str(len(MASTER)))), 1e9)
        >> ClientRequested(2)
        >> UpstreamChunk(MASTER) >> UpstreamDone(1e9) << StoreObject(stored)
        << ServeStored(1, stored, CacheResult.MISS) << ServeStored(2, stored, CacheResult.COALESCED)
    )
    assert stored().body == want and b"".join(fill.body) == want and calls == [key.path]


# --- the topology ----------------------------------------------------------------

@pytest.mark.parametrize(("edit", "key"), [
    (lambda t: re.sub(r'listen = "127\.0\.2\.1:\d+"', f'listen = "127.0.2.1:{free_port("127.0.2.1")}"', t),
     "router.steering.enabled"),  # edges on two ports: a clone replaces the host only
    (lambda t: t.replace('[edges.edge-2]', '[edges."edge 2"]'), "edges.edge 2"),  # not a Pathway ID
    (lambda t: t.replace("ttl = 4", "ttl = 0"), "router.steering"),
    (lambda t: t.replace("ttl = 4", 'ttl = 4\nurl = "ftp://x"'), "router.steering"),
    (lambda t: t.replace('http = "127.0.0.1:', 'http = "0.0.0.0:'), "router.steering.url"),
])
def test_bad_steering_config_names_the_key(tmp_path: Path, edit: Any, key: str) -> None:
    good = topology_toml(origin="http://127.0.0.1:9", steering_ttl=4)
    ok = tmp_path / "ok.toml"
    ok.write_text(good)
    load(ok)  # the unedited file is fine
    bad = edit(good)
    assert bad != good
    path = tmp_path / "cdn.toml"
    path.write_text(bad)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert key in str(e.value) and str(path) in str(e.value)


# --- real processes --------------------------------------------------------------

TTL = 4  # the steering TTL the process tests use: one of the demo's 2 s segments is half of it
SEGMENT = 2  # seconds: the built-in origin's target duration in these tests
# The player tests fail edge-1 this long after a steering reload: the next reload comes TTL - PHASE = 2.7 s
# after, before three timed-out checks (each starting when the one before timed out, 1 s) could take a hung
# edge down: only a router that sees it hang sooner steers the player away then (else one TTL more).
PHASE = 1.3


@pytest.fixture
def steered(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A CDN with steering on (TTL 4 s), the built-in origin encoding real video, each node its own process."""
    require_ffmpeg()
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin={"mode": "ffmpeg", "target_duration": 2, "window": 6}, steering_ttl=TTL))
    with run_nodes(config) as info:
        yield info


@pytest.mark.slow
def test_edges_steer_their_masters_and_the_router_follows_health(steered: dict[str, Any]) -> None:
    router = node(steered, "router")["url"]
    for name in ("edge-1", "edge-2"):
        edge = node(steered, name)["url"]
        status, headers, body = get(edge + "/live/master.m3u8")
        tag = f'#EXT-X-CONTENT-STEERING:SERVER-URI="{router}/steer/hls/{name}.json",PATHWAY-ID="{name}"'.encode()
        assert status == 200 and tag in body.splitlines(), body
        status, headers, zipped = get(edge + "/live/master.m3u8", headers={"Accept-Encoding": "gzip"})
        assert headers.get("Content-Encoding") == "gzip" and gzip.decompress(zipped) == body  # the stored gzip copy
    status, headers, body = get(router + "/steer/hls/edge-1.json?_HLS_pathway=edge-1&_HLS_throughput=5000000",
                                source="127.0.2.5")  # a player in us
    manifest = json.loads(body)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*" and headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("application/json")
    host = urllib.parse.urlsplit(node(steered, "edge-2")["url"]).hostname
    assert manifest == {"VERSION": 1, "TTL": TTL, "RELOAD-URI": "/steer/hls/edge-1.json",
                        "PATHWAY-PRIORITY": ["edge-2", "edge-1"],
                        "PATHWAY-CLONES": [{"BASE-ID": "edge-1", "ID": "edge-2", "URI-REPLACEMENT": {"HOST": host}}]}
    assert get(router + "/steer/hls/edge-1.json?_HLS_throughput=fast")[0] == 400
    assert get(router + "/steer/hls/edge-9.json")[0] == 404

    def first(source: str) -> str:
        return str(json.loads(get(router + "/steer/hls/edge-1.json", source=source)[2])["PATHWAY-PRIORITY"][0])

    assert first("127.0.1.5") == "edge-1"
    edge1 = steered["procs"]["edge-1"]
    edge1.send_signal(signal.SIGSTOP)  # hung: failing its health checks
    try:
        assert wait_until(lambda: first("127.0.1.5") == "edge-2", 10, 0.2)
    finally:
        edge1.send_signal(signal.SIGCONT)
    assert wait_until(lambda: first("127.0.1.5") == "edge-1", 10, 0.2)


SYNTHETIC = {"mode": "synthetic", "target_duration": 2, "window": 4, "segment_bytes": 10_000}
INTERVAL, SLOW = 0.5, 0.25  # topology_toml's [router.health] interval, and the default slow


@pytest.mark.slow
def test_a_hung_edge_goes_behind_the_others_within_a_check_with_a_short_ttl_and_comes_back(tmp_path: Path) -> None:
    """SIGSTOP: the edge's kernel still accepts connections and nothing answers, so checks fail only at their
    timeout (once: 3 in a row took ~3 s, the manifest kept it first with its long TTL all along)."""
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC, steering_ttl=TTL))
    with run_nodes(config) as cdn:
        router = node(cdn, "router")["url"]

        def manifest(source: str = "127.0.1.5") -> dict[str, Any]:  # a player in eu: edge-1 is its nearest
            return dict(json.loads(get(router + "/steer/hls/edge-1.json", source=source)[2]))

        def redirected(source: str = "127.0.1.5") -> str:
            return get(router + "/live/master.m3u8", source=source)[1]["X-Livecdn-Edge"]

        settled = {"VERSION": 1, "TTL": TTL, "RELOAD-URI": "/steer/hls/edge-1.json",
                   "PATHWAY-PRIORITY": ["edge-1", "edge-2"]}
        assert wait_until(lambda: {k: v for k, v in manifest().items() if k != "PATHWAY-CLONES"} == settled, 10)
        edge1 = cdn["procs"]["edge-1"]
        edge1.send_signal(signal.SIGSTOP)
        hung = time.monotonic()
        try:
            assert wait_until(lambda: manifest()["PATHWAY-PRIORITY"][0] == "edge-2", 10, 0.02)
            moved = time.monotonic() - hung
            assert moved <= INTERVAL + SLOW + 0.35, f"behind edge-2 after {moved:.2f} s"  # a check, and its slow
            now = manifest()
            assert now["PATHWAY-PRIORITY"] == ["edge-2", "edge-1"] and now["TTL"] == 1, now  # unsettled: ask soon
            assert redirected() == "edge-2"  # the 302 (and DNS) prefer a healthy edge too
            assert manifest("127.0.2.5")["TTL"] == TTL  # a player in us uses edge-2, which is settled
            # Down (three checks timed out): still listed, last, as a fallback; settled again, the long TTL.
            health = node(cdn, "router")["admin"] + "/healthz"
            assert wait_until(lambda: not json.loads(get(health)[2])["edges"]["edge-1"]["up"], 10)
            assert wait_until(lambda: manifest()["TTL"] == TTL, 5)
            assert manifest()["PATHWAY-PRIORITY"] == ["edge-2", "edge-1"]
        finally:
            edge1.send_signal(signal.SIGCONT)
        assert wait_until(lambda: manifest()["PATHWAY-PRIORITY"][0] == "edge-1", 10, 0.1)
        assert wait_until(lambda: {k: v for k, v in manifest().items() if k != "PATHWAY-CLONES"} == settled, 10)
        assert redirected() == "edge-1"


def _newest(playlist: bytes) -> int:
    """The media sequence number of a live playlist's last segment."""
    parsed = m3u8.loads(playlist.decode())
    return int(parsed.media_sequence or 0) + len(parsed.segments) - 1


@pytest.mark.slow
def test_an_edge_a_player_moves_to_serves_every_variant_as_the_origin_has_it_now(tmp_path: Path) -> None:
    """What hls.js saw after moving to edge-2 (killed edge-1, one run in three): edge-2's 720p playlist a segment
    behind its 360p one, both read from the shield 50 ms apart. The shield's copy of the 720p, which edge-1's
    player had kept reading, was past its lifetime and was served stale while being revalidated; hls.js aligned
    the new variant a segment off and stalled 7-8 s. A live playlist past its lifetime is now revalidated before
    it is served, at every tier."""
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC, steering_ttl=TTL))
    with run_nodes(config) as cdn:
        origin, shield = node(cdn, "origin")["url"], node(cdn, "shield-1")["url"]
        edge2 = node(cdn, "edge-2")["url"]
        master = m3u8.loads(get(origin + "/live/master.m3u8")[2].decode())
        first = urllib.parse.urljoin("/live/master.m3u8", master.playlists[-1].uri)
        assert wait_until(lambda: _newest(get(origin + first)[2]) >= 1, 10)
        before = _newest(get(shield + first)[2])  # the copy a player on edge-1 keeps the shield holding
        read = time.monotonic()
        assert wait_until(lambda: _newest(get(origin + first)[2]) > before, 2 * SEGMENT + 1, 0.02)
        time.sleep(max(0.0, read + SEGMENT / 2 + 0.05 - time.monotonic()))  # past the copy's lifetime, ½ target
        status, headers, body = get(edge2 + first)  # the player arrives at edge-2
        now = _newest(get(origin + first)[2])
        assert status == 200 and headers["X-Cache"] != "STALE", headers
        assert _newest(body) > before and _newest(body) >= now - 1, (before, now, body.decode())


def stall_allowed(figures: dict[str, Any]) -> float:
    """The longest stall a player can be expected to bear: what the switch takes beyond its buffer, + 0.5 s."""
    return max(0.0, figures["switch_s"] - figures["buffer_ahead_s"]) + 0.5


@pytest.mark.slow
@pytest.mark.parametrize("how", ["KILL", "STOP"])
def test_hlsjs_keeps_playing_when_its_edge_dies(steered: dict[str, Any], tmp_path: Path, how: str) -> None:
    """The player starts on edge-1 (the router's choice for 127.0.0.1); edge-1 is killed, or hangs. It is on
    edge-2 within one steering TTL and one segment (a hung edge is behind edge-2 in the router's answers
    within a check; the player hears at its next reload), and stalls only for what the switch takes beyond
    the media it had buffered (a player with less buffer than the switch takes must stall)."""
    edge1 = steered["procs"]["edge-1"]
    dead = urllib.parse.urlsplit(node(steered, "edge-1")["url"]).netloc
    r = play_through_failure(steered, f"kill -{how} {edge1.pid}", tmp_path, steering_phase=PHASE)
    figures = failover_figures(r, dead)
    report = json.dumps({**figures, "steering": r["steering"], "stalls": r["stalls"],
                         "errors": r["errors"][:20]}, indent=1)
    print(f"\nsteering failover ({how}): {json.dumps(figures)}")
    before = [f for f in r["frags"] if f["at"] < r["actionAt"]]
    assert before and all(f["host"] == dead for f in before), report  # it did play from edge-1 first
    assert r["steering"] and r["steering"][0]["priority"][0] == "edge-1", report
    assert figures["segments_elsewhere"] >= 3, report  # it went on, from edge-2
    assert not figures["fatal"] and not figures["stalled_at_end"], report
    assert figures["switch_s"] <= TTL + SEGMENT, report
    # Killed, hls.js used to stall 7-8 s one run in three although it had moved within 0.7 s: the shield served
    # the new edge one variant's playlist stale (a segment behind the other's), and hls.js aligned it a segment off.
    assert figures["longest_stall_s"] <= stall_allowed(figures), report


@pytest.mark.slow
def test_without_steering_a_killed_edge_stops_hlsjs(tmp_path: Path) -> None:
    """The before-state (old main's behaviour, steering off): the player keeps asking the dead edge."""
    require_ffmpeg()
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin={"mode": "ffmpeg", "target_duration": 2, "window": 6}))
    with run_nodes(config) as cdn:
        dead = urllib.parse.urlsplit(node(cdn, "edge-1")["url"]).netloc
        r = play_through_failure(cdn, f"kill -KILL {cdn['procs']['edge-1'].pid}", tmp_path)
    figures = failover_figures(r, dead)
    print(f"\nno steering, edge killed: {json.dumps(figures)}")
    assert not r["steering"], figures
    assert figures["segments_elsewhere"] == 0 and figures["network_errors"] > 0, figures
    assert figures["fatal"] or figures["stalled_at_end"], figures


@pytest.mark.slow
def test_dashjs_plays_the_steered_mpd_and_asks_the_router(tmp_path: Path) -> None:
    """dash.js 4.7 (DASH-IF content steering) on ffmpeg's live DASH through router and edge: it plays the
    dressed MPD (BaseURLs and Locations per edge) from its defaultServiceLocation and reloads the steering
    manifest. (Failover is not pinned: dash.js 4.7 never blacklists a Location that fails, so an MPD reload
    that reaches a dead edge before the next steering reload is fatal; see README.)"""
    root = tmp_path / "origin"
    folder = root / "live" / "cam"
    ffmpeg = encoder(folder, "timeline")
    port = free_port()
    origin = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: (folder / "manifest.mpd").exists()
                          and len(list(folder.glob("chunk-*0-*.m4s"))) >= 3, 30, 0.1), "ffmpeg wrote no live MPD"
        config = tmp_path / "cdn.toml"
        config.write_text(topology_toml(origin=f"http://127.0.0.1:{port}", steering_ttl=TTL).replace(
            'play_path = "/live/master.m3u8"', 'play_path = "/live/cam/manifest.mpd"'))
        with run_nodes(config) as cdn:
            edge1 = node(cdn, "edge-1")["url"]
            status, _, body = get(edge1 + "/live/cam/manifest.mpd")
            assert status == 200 and b"<ContentSteering" in body, body
            r = play_through_failure(cdn, "true", tmp_path)
            asked = [json.loads(line) for line in cdn["stderr"]().splitlines()
                     if line.startswith("{") and '"node":"router"' in line and "/steer/dash/" in line]
    finally:
        origin.terminate()
        origin.wait(10)
        stop(ffmpeg)
    report = json.dumps({"asked": asked[:5], "errors": r["errors"][:10], "frags": r["frags"][-5:]}, indent=1)
    assert not [e for e in r["errors"] if e["fatal"]] and r["playedSeconds"] >= SECONDS_BEFORE, report
    assert r["frags"] and {f["host"] for f in r["frags"]} == {urllib.parse.urlsplit(edge1).netloc}, report
    assert {f["pathway"] for f in r["frags"]} == {"edge-1"}, report
    assert len(asked) >= 2 and all(a["status"] == 200 for a in asked), report
