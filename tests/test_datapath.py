"""The data path over real sockets: fake origin → shield → edge → aiohttp client.

Nodes run in the test's event loop (tests/cdn.py), so a test can both talk
HTTP to them and look at what reached the origin.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import socket
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from livecdn.config import CacheSettings
from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin, body, dribble, reset_after, slow, status

SEG = bytes(range(256)) * 4096  # 1 MiB
LIVE = (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n"
        b"#EXTINF:2.0,\nseg7.ts\n#EXTINF:2.0,\nseg8.ts\n" + b"#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:00Z\n" * 8)
M3U8 = "application/vnd.apple.mpegurl"


async def get(url: str, **kw: object) -> tuple[int, CIMultiDict[str], bytes]:
    """One GET in a fresh session; the body as sent (not decompressed)."""
    kw.setdefault("headers", {})
    kw["headers"].setdefault("Accept-Encoding", "identity")  # type: ignore[union-attr]
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(url, **kw) as r:  # type: ignore[arg-type]
        return r.status, r.headers.copy(), await r.read()


async def test_miss_then_hit_reaches_origin_once(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/live/a/seg1.ts"] = body(SEG)
    s1, h1, b1 = await get(stack.edge + "/live/a/seg1.ts")
    s2, h2, b2 = await get(stack.edge + "/live/a/seg1.ts?token=secret")
    assert (s1, s2) == (200, 200)
    assert b1 == b2 == SEG
    assert (h1["X-Cache"], h2["X-Cache"]) == ("MISS", "HIT")
    assert h1["Content-Type"] == "video/mp2t"
    assert origin.hits["/live/a/seg1.ts"] == 1
    assert all("token" not in r.path_qs for r in origin.requests)


@pytest.mark.slow
async def test_age_grows_while_cached(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/v/seg1.ts"] = body(b"x" * 100, headers={"Age": "5"})
    _, h1, _ = await get(stack.edge + "/v/seg1.ts")
    await asyncio.sleep(1.1)
    _, h2, _ = await get(stack.edge + "/v/seg1.ts")
    assert int(h1["Age"]) >= 5
    assert int(h2["Age"]) >= int(h1["Age"]) + 1


@pytest.mark.parametrize("delay", [0.3, pytest.param(1.0, marks=pytest.mark.slow)])  # under the 1.5 s a shield waits
async def test_concurrent_requests_make_one_origin_fetch(origin: FakeOrigin, stack: Stack, delay: float) -> None:
    origin.routes["/live/a/seg2.ts"] = slow(delay, SEG)
    started = time.monotonic()
    results = await asyncio.gather(*(get(stack.edge + "/live/a/seg2.ts") for _ in range(100)))
    elapsed = time.monotonic() - started
    assert origin.hits["/live/a/seg2.ts"] == 1
    assert all(s == 200 and b == SEG for s, _, b in results)
    caches = sorted(h["X-Cache"] for _, h, _ in results)
    assert caches.count("MISS") == 1 and caches.count("COALESCED") == 99
    assert elapsed < delay + 3.0


@pytest.mark.slow
async def test_late_joiner_gets_bytes_so_far_then_the_rest(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/live/a/seg3.ts"] = dribble(SEG, pieces=8, pause=0.15)
    first = asyncio.ensure_future(get(stack.edge + "/live/a/seg3.ts"))
    await asyncio.sleep(0.5)  # a few pieces are in
    late = await get(stack.edge + "/live/a/seg3.ts")
    early = await first
    assert early[2] == late[2] == SEG
    assert late[1]["X-Cache"] == "COALESCED"
    assert origin.hits["/live/a/seg3.ts"] == 1


@pytest.mark.slow
async def test_a_player_that_stops_reading_mid_stream_gets_every_byte_in_order_and_holds_back_no_one(
        origin: FakeOrigin, stack: Stack) -> None:
    """Bytes that arrive while a player keeps up are written from the fill's dispatch; one whose socket fills
    (here: a 4 KiB receive buffer, not read for a second) falls back to its own task, which drains and goes on."""
    big = hashlib.sha256(b"x").digest() * (16 << 20 >> 5)  # 16 MiB, no two 32-byte runs alike in order
    origin.routes["/live/a/seg9.ts"] = dribble(big, pieces=32, pause=0.03)
    host, port = stack.edge.removeprefix("http://").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, b"GET /live/a/seg9.ts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    started = time.monotonic()
    fast = await asyncio.gather(*(get(stack.edge + "/live/a/seg9.ts") for _ in range(3)))
    took = time.monotonic() - started
    assert all(s == 200 and b == big for s, _, b in fast)
    await asyncio.sleep(max(0.0, 1.0 - took))  # the slow player has not read a byte yet
    received = bytearray()
    while data := await loop.sock_recv(sock, 1 << 16):
        received += data
    sock.close()
    head, _, payload = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and payload == big
    assert origin.hits["/live/a/seg9.ts"] == 1


async def test_a_client_leaving_does_not_cancel_the_shared_fetch(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/live/a/seg4.ts"] = dribble(SEG, pieces=8, pause=0.1)
    stayer = asyncio.ensure_future(get(stack.edge + "/live/a/seg4.ts"))
    async with aiohttp.ClientSession() as s, s.get(stack.edge + "/live/a/seg4.ts") as r:
        await r.content.read(1000)  # then hang up mid-body
    assert (await stayer)[2] == SEG
    status_, headers, data = await get(stack.edge + "/live/a/seg4.ts")
    assert (status_, headers["X-Cache"], data) == (200, "HIT", SEG)
    assert origin.hits["/live/a/seg4.ts"] == 1


async def test_upstream_reset_mid_body_caches_nothing_and_breaks_every_client(
        origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/live/a/seg5.ts"] = reset_after(SEG, sent=300_000, pause=0.3)

    async def fetch() -> str:
        async with aiohttp.ClientSession() as s, s.get(stack.edge + "/live/a/seg5.ts") as r:
            try:
                data = await r.read()
            except aiohttp.ClientPayloadError:
                return "broken"
            return f"whole {len(data)}"
    outcomes = await asyncio.gather(*(fetch() for _ in range(5)))
    assert outcomes == ["broken"] * 5
    origin.routes["/live/a/seg5.ts"] = body(SEG)
    s, h, data = await get(stack.edge + "/live/a/seg5.ts")
    assert (s, h["X-Cache"], data) == (200, "MISS", SEG)  # nothing truncated was stored
    s, _, data = await get(stack.edge_admin() + "/healthz")
    health = json.loads(data)
    assert (s, health["status"], health["fetches"]) == (200, "ok", 0)  # no broken fetch left behind


async def test_malformed_playlist_is_a_502_with_a_reason_and_not_cached(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/live/a/index.m3u8"] = body(b"<html>oops</html>", "text/html")
    s, _, data = await get(stack.edge + "/live/a/index.m3u8")
    assert s == 502 and b"malformed playlist" in data
    origin.routes["/live/a/index.m3u8"] = body(LIVE, M3U8)
    await asyncio.sleep(CacheSettings.error_ttl)  # the failure is remembered that long (tests/test_error_storm.py)
    s, h, data = await get(stack.edge + "/live/a/index.m3u8")
    assert (s, data, h["X-Cache"]) == (200, LIVE, "MISS")


@pytest.mark.slow
async def test_playlist_lifetime_is_half_its_target_duration(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/live/a/index.m3u8"] = body(LIVE, M3U8)
    await get(stack.edge + "/live/a/index.m3u8")
    _, h, _ = await get(stack.edge + "/live/a/index.m3u8")
    assert h["X-Cache"] == "HIT"
    newer = LIVE.replace(b"seg8.ts\n", b"seg8.ts\n#EXTINF:2.0,\nseg9.ts\n")
    origin.routes["/live/a/index.m3u8"] = body(newer, M3U8)  # the encoder published seg9
    await asyncio.sleep(1.1)  # target 2 s → fresh for 1 s
    # Then revalidated before it is served: stale while revalidating, it would be a segment behind (and behind
    # its sibling renditions, which a player switching to it misaligns on).
    _, h, data = await get(stack.edge + "/live/a/index.m3u8")
    assert (h["X-Cache"], data) == ("MISS", newer)
    assert origin.hits["/live/a/index.m3u8"] == 2
    _, h, data = await get(stack.edge + "/live/a/index.m3u8")
    assert (h["X-Cache"], data) == ("HIT", newer)


async def test_requests_joining_a_fetch_in_flight_ask_the_disk_nothing(origin: FakeOrigin, tmp_path: Path) -> None:
    """Seen (reading the engine for issue 15's fan-out): each request that joined a fetch in flight
    looked its key up on the disk tier first, a thread hop each; a blocking LL-HLS reload's waiters
    are hundreds per part."""
    origin.routes["/live/a/seg3.ts"] = slow(0.5, SEG)
    stack = await Stack(origin.url, cache=CacheSettings(disk_path=str(tmp_path / "{node}"))).start()
    try:
        edge = stack.edges[0].engine
        assert edge is not None and edge.disk is not None
        looked: list[str] = []
        lookup = edge.disk.get

        async def counted(key: str) -> object:
            looked.append(key)
            return await lookup(key)
        edge.disk.get = counted  # type: ignore[method-assign]
        first = asyncio.ensure_future(get(stack.edge + "/live/a/seg3.ts"))
        while edge.inflight_fetches == 0:  # the first request's disk miss is over: its fetch is in flight
            await asyncio.sleep(0.01)
        joined = await asyncio.gather(*(get(stack.edge + "/live/a/seg3.ts") for _ in range(20)))
        results = [await first, *joined]
    finally:
        await stack.stop()
    assert [b == SEG for _, _, b in results] == [True] * 21 and origin.hits["/live/a/seg3.ts"] == 1
    assert sorted(h["X-Cache"] for _, h, _ in results) == ["COALESCED"] * 20 + ["MISS"]
    assert len(looked) == 1, looked


@pytest.mark.slow
async def test_expired_object_is_revalidated_with_a_conditional_request(origin: FakeOrigin) -> None:
    origin.routes["/v/seg1.ts"] = body(SEG, headers={"ETag": '"v1"', "Cache-Control": "max-age=1"})
    stack = await Stack(origin.url, cache=CacheSettings(disk_path="", stale_while_revalidate=0)).start()
    try:
        await get(stack.edge + "/v/seg1.ts")
        await asyncio.sleep(1.2)
        s, h, data = await get(stack.edge + "/v/seg1.ts")
        assert (s, data) == (200, SEG)
        assert origin.requests[-1].headers.get("If-None-Match") == '"v1"'
    finally:
        await stack.stop()


@pytest.mark.slow
async def test_stale_if_error_keeps_playback_going_when_tiers_above_fail(origin: FakeOrigin) -> None:
    origin.routes["/live/a/index.m3u8"] = body(LIVE, M3U8)
    stack = await Stack(origin.url, cache=CacheSettings(disk_path="", stale_while_revalidate=0,
                                                         stale_if_error=30, upstream_timeout=1)).start()
    try:
        await get(stack.edge + "/live/a/index.m3u8")
        origin.routes["/live/a/index.m3u8"] = status(503)
        await asyncio.sleep(1.1)
        # The origin fails: the shield answers from its stale copy, with its true Age.
        s, h, data = await get(stack.edge + "/live/a/index.m3u8")
        assert (s, data) == (200, LIVE) and int(h["Age"]) >= 1
        # The shield goes down too: the edge answers from its own stale copy.
        await stack.shields[0].stop()
        await asyncio.sleep(1.1)
        s, h, data = await get(stack.edge + "/live/a/index.m3u8")
        assert (s, h["X-Cache"], data) == (200, "STALE", LIVE)
    finally:
        await stack.stop()


async def test_origin_down_without_stale_copy_is_a_clear_502(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/live/a/seg9.ts"] = status(500)
    s, h, data = await get(stack.edge + "/live/a/seg9.ts")
    assert s == 502 and data == b"502 shield answered 502 (origin answered 500)\n"
    origin.routes["/live/a/seg9.ts"] = body(b"fine")
    await asyncio.sleep(CacheSettings.error_ttl)  # the failure is remembered that long (tests/test_error_storm.py)
    s, _, data = await get(stack.edge + "/live/a/seg9.ts")
    assert (s, data) == (200, b"fine")  # the error was not cached


@pytest.mark.slow
async def test_404_is_cached_briefly(origin: FakeOrigin, stack: Stack) -> None:
    for _ in range(3):
        s, _, _ = await get(stack.edge + "/live/a/seg404.ts")
        assert s == 404
    assert origin.hits["/live/a/seg404.ts"] == 1
    await asyncio.sleep(1.1)
    await get(stack.edge + "/live/a/seg404.ts")
    assert origin.hits["/live/a/seg404.ts"] == 2


async def test_no_store_is_served_but_never_stored(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/p/seg1.ts"] = body(b"private", headers={"Cache-Control": "no-store"})
    for _ in range(2):
        s, h, data = await get(stack.edge + "/p/seg1.ts")
        assert (s, data, h["X-Cache"]) == (200, b"private", "MISS")
    assert origin.hits["/p/seg1.ts"] == 2


async def test_next_shield_takes_over_when_one_fails(origin: FakeOrigin) -> None:
    stack = await Stack(origin.url, shields=2).start()
    try:
        origin.routes.update({f"/f/seg{i}.ts": body(b"%d" % i) for i in range(20)})
        await stack.shields[0].stop()
        results = await asyncio.gather(*(get(stack.edge + f"/f/seg{i}.ts") for i in range(20)))
        assert [b for _, _, b in results] == [b"%d" % i for i in range(20)]
    finally:
        await stack.stop()


async def test_consistent_hashing_sends_each_key_through_one_shield(origin: FakeOrigin) -> None:
    stack = await Stack(origin.url, shields=2, edges=2).start()
    try:
        origin.routes.update({f"/h/seg{i}.ts": body(b"%d" % i) for i in range(30)})
        for e in stack.edges:
            await asyncio.gather(*(get(f"http://127.0.0.1:{e.port}/h/seg{i}.ts") for i in range(30)))
        assert all(origin.hits[f"/h/seg{i}.ts"] == 1 for i in range(30))
        # ...and the key space is split between the shields, not sent to one of them.
        assert {r.headers["User-Agent"] for r in origin.requests} == {
            "livecdn/shield shield-1", "livecdn/shield shield-2"}
    finally:
        await stack.stop()


# --- what players get ---------------------------------------------------------

async def test_range_requests(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/r/seg1.ts"] = dribble(SEG, pieces=4, pause=0.05)
    s, h, data = await get(stack.edge + "/r/seg1.ts", headers={"Range": "bytes=100-199"})  # on the miss
    assert (s, data, h["Content-Range"]) == (206, SEG[100:200], f"bytes 100-199/{len(SEG)}")
    await get(stack.edge + "/r/seg1.ts")  # the whole body is in
    s, h, data = await get(stack.edge + "/r/seg1.ts", headers={"Range": "bytes=-10"})  # on a hit
    assert (s, data, h["X-Cache"]) == (206, SEG[-10:], "HIT")
    s, h, _ = await get(stack.edge + "/r/seg1.ts", headers={"Range": f"bytes={len(SEG)}-"})
    assert (s, h["Content-Range"]) == (416, f"bytes */{len(SEG)}")
    s, _, data = await get(stack.edge + "/r/seg1.ts", headers={"Range": "bytes=0-1,5-6"})
    assert (s, len(data)) == (200, len(SEG))  # several ranges: the whole body, as HTTP allows


async def test_head_and_conditional_requests(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/c/seg1.ts"] = body(SEG, headers={"ETag": '"abc"', "Last-Modified": "Mon, 02 Nov 2026 10:00:00 GMT"})
    async with aiohttp.ClientSession() as s, s.head(stack.edge + "/c/seg1.ts") as r:
        assert r.status == 200 and r.headers["Content-Length"] == str(len(SEG))
        assert await r.read() == b""
    s_, h, data = await get(stack.edge + "/c/seg1.ts", headers={"If-None-Match": '"abc"'})
    assert (s_, data) == (304, b"") and h["ETag"] == '"abc"'
    s_, _, _ = await get(stack.edge + "/c/seg1.ts", headers={"If-Modified-Since": "Tue, 03 Nov 2026 10:00:00 GMT"})
    assert s_ == 304
    s_, _, data = await get(stack.edge + "/c/seg1.ts", headers={"If-None-Match": '"other"'})
    assert (s_, data) == (200, SEG)


async def test_cors_and_preflight(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/c/seg2.ts"] = body(b"x")
    _, h, _ = await get(stack.edge + "/c/seg2.ts", headers={"Origin": "https://player.example"})
    assert h["Access-Control-Allow-Origin"] == "*"
    async with aiohttp.ClientSession() as s, s.options(stack.edge + "/c/seg2.ts", headers={
            "Origin": "https://player.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range"}) as r:
        assert r.status == 204
        assert "GET" in r.headers["Access-Control-Allow-Methods"]
        assert "Range" in r.headers["Access-Control-Allow-Headers"]
    assert origin.hits["/c/seg2.ts"] == 1  # a preflight never goes upstream


async def test_playlists_are_compressed_when_asked(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/z/index.m3u8"] = body(LIVE, M3U8)
    await get(stack.edge + "/z/index.m3u8")
    _, h, data = await get(stack.edge + "/z/index.m3u8", headers={"Accept-Encoding": "gzip, br"})
    assert h["Content-Encoding"] == "gzip" and gzip.decompress(data) == LIVE
    assert h["Content-Type"] == M3U8
    _, h, data = await get(stack.edge + "/z/index.m3u8", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in h and data == LIVE


@pytest.mark.parametrize(("name", "ctype"), [
    ("a.m4s", "video/iso.segment"), ("a.mp4", "video/mp4"), ("a.aac", "audio/aac"),
    ("a.vtt", "text/vtt"), ("a.ts", "video/mp2t"),
])
async def test_content_type_by_name_when_origin_sends_a_generic_one(origin: FakeOrigin, stack: Stack,
                                                                    name: str, ctype: str) -> None:
    origin.routes[f"/t/{name}"] = body(b"data", "application/octet-stream")
    _, h, _ = await get(stack.edge + f"/t/{name}")
    assert h["Content-Type"] == ctype


# --- bad input ----------------------------------------------------------------

@pytest.mark.parametrize(("target", "expected"), [
    ("/live/../etc/passwd.ts", 400),
    ("/live/%2e%2e/x.ts", 400),
    ("/live/a%2Fb.ts", 400),
    ("/live/secret.php", 404),
    ("/live/noext", 404),
    ("/live/index.m3u8?_HLS_msn=abc", 400),
])
async def test_bad_paths_are_refused_without_an_upstream_fetch(origin: FakeOrigin, stack: Stack,
                                                               target: str, expected: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.edges[0].port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    assert response.startswith(f"HTTP/1.1 {expected}".encode()), response[:200]
    assert origin.requests == []


async def test_unknown_method_oversized_header_and_node_keeps_serving(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/ok/seg1.ts"] = body(b"ok")
    async with aiohttp.ClientSession() as s, s.request("PURGE", stack.edge + "/ok/seg1.ts") as r:
        assert r.status == 405 and "GET" in r.headers["Allow"]
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.edges[0].port)
    writer.write(b"GET /ok/seg1.ts HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    response = await reader.read(200)
    writer.close()
    assert response.split(b" ")[1] in (b"400", b"431"), response
    s_, _, data = await get(stack.edge + "/ok/seg1.ts")
    assert (s_, data) == (200, b"ok")


async def test_oversized_object_is_refused_not_buffered(origin: FakeOrigin) -> None:
    origin.routes["/big/seg1.ts"] = body(SEG)
    stack = await Stack(origin.url, cache=CacheSettings(disk_path="", max_object_bytes=1000)).start()
    try:
        s, _, data = await get(stack.edge + "/big/seg1.ts")
        assert s == 502 and b"max_object_bytes" in data
    finally:
        await stack.stop()


# --- stores -------------------------------------------------------------------

async def test_disk_tier_serves_what_memory_evicted(origin: FakeOrigin, tmp_path: object) -> None:
    cache = CacheSettings(memory_bytes=3 << 20, disk_path=f"{tmp_path}/{{node}}", disk_bytes=64 << 20)
    stack = await Stack(origin.url, cache=cache).start()
    try:
        bodies = {f"/d/seg{i}.ts": hashlib.sha256(b"%d" % i).digest() * 32768 for i in range(6)}
        for path, data in bodies.items():
            origin.routes[path] = body(data)
            assert (await get(stack.edge + path))[2] == data
        await asyncio.sleep(0.3)  # disk writes run off the loop
        edge_memory = stack.edges[0].engine.memory  # type: ignore[union-attr]
        assert edge_memory.used <= 3 << 20
        for path, data in bodies.items():  # the first ones left memory; disk has them
            s, h, got = await get(stack.edge + path, headers={"Range": "bytes=10-"})
            assert (s, got, h["X-Cache"]) == (206, data[10:], "HIT")
            s, _, got = await get(stack.edge + path)
            assert (s, got) == (200, data)
        assert all(origin.hits[p] == 1 for p in bodies)
    finally:
        await stack.stop()


# --- lifecycle ----------------------------------------------------------------

async def test_stop_drains_a_response_in_flight(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/l/seg1.ts"] = dribble(SEG, pieces=10, pause=0.1)
    url = stack.edge + "/l/seg1.ts"
    download = asyncio.ensure_future(get(url))
    await asyncio.sleep(0.3)
    await stack.edges[0].stop(5.0)  # stop listening, let the download finish
    status_, _, data = await download
    assert (status_, data) == (200, SEG)
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(url)


async def test_reload_switches_the_upstream_list(origin: FakeOrigin) -> None:
    import dataclasses
    stack = await Stack(origin.url, shields=2).start()
    try:
        edge = stack.edges[0]
        only_second = {n: s for n, s in edge.topology.shields.items() if n == "shield-2"}
        edge.reload(dataclasses.replace(edge.topology, shields=only_second))
        await stack.shields[0].stop()
        origin.routes.update({f"/re/seg{i}.ts": body(b"%d" % i) for i in range(10)})
        results = await asyncio.gather(*(get(stack.edge + f"/re/seg{i}.ts") for i in range(10)))
        assert [s for s, _, _ in results] == [200] * 10
        assert all(r.headers["User-Agent"] == "livecdn/shield shield-2" for r in origin.requests)
    finally:
        await stack.stop()


async def test_an_origin_that_compresses_anyway_is_stored_plain(origin: FakeOrigin, stack: Stack) -> None:
    async def gzipping(request: object) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=gzip.compress(LIVE), headers={
            "Content-Encoding": "gzip", "Content-Type": M3U8})
    origin.routes["/g/index.m3u8"] = gzipping
    s, h, data = await get(stack.edge + "/g/index.m3u8")
    assert (s, data) == (200, LIVE) and "Content-Encoding" not in h


async def test_access_log_has_one_line_per_answer(origin: FakeOrigin, stack: Stack, tmp_path: Path) -> None:
    from livecdn.logs import AccessLog
    path = tmp_path / "access.log"
    with open(path, "wb") as out:
        access = stack.edges[0].players.access = AccessLog("edge-x", out.fileno())
        origin.routes["/al/seg1.ts"] = body(b"x" * 10)
        await get(stack.edge + "/al/seg1.ts", headers={"User-Agent": 'player/1 "quoted"'})
        await get(stack.edge + "/al/seg1.ts")
        await get(stack.edge + "/al/nope.php")
        assert path.read_bytes() == b""  # held until a second has passed or the node stops
        access.flush()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["path"], r["status"], r["cache"]) for r in records] == [
        ("/al/seg1.ts", 200, "MISS"), ("/al/seg1.ts", 200, "HIT"), ("/al/nope.php", 404, "REJECTED")]
    first = records[0]
    assert first["bytes"] == 10 and first["ua"] == 'player/1 "quoted"' and first["ms"] >= 0
    assert first["remote"] == "127.0.0.1" and first["node"] == "edge-x" and first["method"] == "GET"
    assert abs(datetime.fromisoformat(first["time"]).timestamp() - time.time()) < 60  # ISO 8601, UTC


@pytest.mark.slow
async def test_access_lines_are_written_within_a_second_without_a_flush(
        origin: FakeOrigin, stack: Stack, tmp_path: Path) -> None:
    from livecdn.logs import FLUSH_INTERVAL, AccessLog
    path = tmp_path / "access.log"
    with open(path, "wb") as out:
        stack.edges[0].players.access = AccessLog("edge-x", out.fileno())
        origin.routes["/al/seg2.ts"] = body(b"y" * 3)
        await get(stack.edge + "/al/seg2.ts")
        await asyncio.sleep(FLUSH_INTERVAL + 0.3)
        lines = path.read_text().splitlines()
        stack.edges[0].players.access = None
    assert [json.loads(line)["path"] for line in lines] == ["/al/seg2.ts"]
