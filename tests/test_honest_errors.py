"""Honest errors (issue 11, item 4): the status the tier above meant, a reason that names no address.

An origin's 503 and its Retry-After reach the player through shield and edge
as they are; a timeout is a 504, anything else a 502. Whatever failed, what a
player gets (body and every header) names the tier that failed, never where
it lives; the node's log keeps the addresses. Real shield and edge on
loopback in this process, a fake origin, and once the whole demo as processes
(for its access log).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from livecdn.config import CacheSettings
from tests.cdn import Stack, run_cdn, topology_toml, wait_until
from tests.fakeorigin import FakeOrigin, body, status

# What would show a player where a tier lives: a URL, an IPv4 address, a bracketed IPv6 one.
ADDRESS = re.compile(r"://|\b\d{1,3}(?:\.\d{1,3}){3}\b|\[[0-9a-f:]*:[0-9a-f:]*\]", re.IGNORECASE)
M3U8 = "application/vnd.apple.mpegurl"


async def get(url: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, s.get(url) as r:
        return r.status, r.headers.copy(), await r.read()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_no_address(headers: CIMultiDict[str], data: bytes, *ports: int) -> None:
    """Nothing a player got names an address or a port of the tiers behind the edge."""
    shown = [data.decode("utf-8", "replace"), *(f"{k}: {v}" for k, v in headers.items())]
    for text in shown:
        assert not ADDRESS.search(text), text
    for port in ports:  # Date and Content-Length hold numbers too: look for the ports where reasons go
        assert str(port) not in data.decode("utf-8", "replace"), data
        assert str(port) not in headers.get("X-Livecdn-Error", ""), headers


@pytest.fixture
async def two_tiers(origin: FakeOrigin) -> AsyncIterator[Stack]:
    """Shield and edge with a short upstream timeout; no stale copies to hide an error."""
    s = Stack(origin.url, cache=CacheSettings(disk_path="", upstream_timeout=3.0, stale_if_error=0,
                                              stale_while_revalidate=0))
    try:
        yield await s.start()
    finally:
        await s.stop()


@pytest.mark.parametrize("fallback", [False, True], ids=["shield-only", "origin-fallback"])
async def test_origin_503_and_retry_after_reach_the_player(origin: FakeOrigin, fallback: bool) -> None:
    origin.routes["/busy/seg1.ts"] = status(503, "come back later\n", {"Retry-After": "7"})
    stack = await Stack(origin.url, origin_fallback=fallback,
                        cache=CacheSettings(disk_path="", upstream_timeout=3.0, stale_if_error=0)).start()
    try:
        code, headers, data = await get(stack.edge + "/busy/seg1.ts")
    finally:
        await stack.stop()
    assert code == 503, data
    assert headers["Retry-After"] == "7"
    # The edge's last upstream was the shield (which had the origin's 503), or the origin itself.
    said = "origin answered 503" if fallback else "shield answered 503 (origin answered 503)"
    assert data == f"503 {said}\n".encode()
    assert headers["X-Livecdn-Error"] == said
    assert headers["X-Cache"] == "ERROR"
    assert_no_address(headers, data, origin.port)


async def test_a_timeout_is_a_504_and_other_failures_a_502(origin: FakeOrigin, two_tiers: Stack) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(body=b"late")

    origin.routes["/hang/seg1.ts"] = hang
    origin.routes["/err/seg1.ts"] = status(500)
    assert two_tiers.shields[0].engine is not None
    two_tiers.shields[0].engine.timeout = 0.3  # the shield gives up long before the edge would
    code, headers, data = await get(two_tiers.edge + "/hang/seg1.ts")
    assert (code, data) == (504, b"504 shield answered 504 (origin timed out)\n")
    assert_no_address(headers, data, origin.port, two_tiers.shields[0].port)
    code, headers, data = await get(two_tiers.edge + "/err/seg1.ts")
    assert (code, data) == (502, b"502 shield answered 502 (origin answered 500)\n")
    assert_no_address(headers, data, origin.port, two_tiers.shields[0].port)


async def test_no_error_a_player_gets_names_an_internal_address(
        origin: FakeOrigin, two_tiers: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """Dead origin, dead shield, a malformed playlist naming internal hosts, an origin's own error header."""
    shield = two_tiers.shields[0]
    origin.routes["/bad/index.m3u8"] = body(b"#EXTM3U\n#EXTINF:junk http://10.1.2.3:8500/x\n", M3U8)
    origin.routes["/said/seg1.ts"] = status(502, headers={"X-Livecdn-Error": "http://10.1.2.3:8500 answered 503"})
    answers = {}
    with caplog.at_level(logging.WARNING, "livecdn.cache.fill"), caplog.at_level(logging.WARNING,
                                                                                 "livecdn.cache.engine"):
        answers["malformed"] = await get(two_tiers.edge + "/bad/index.m3u8")
        answers["origin said"] = await get(two_tiers.edge + "/said/seg1.ts")
        assert shield.engine is not None
        dead = f"http://127.0.0.1:{closed_port()}"
        shield.engine.upstreams = lambda key: (dead,)  # the shield's origin is gone
        answers["dead origin"] = await get(two_tiers.edge + "/dead/seg1.ts")
        shield_port = shield.port
        await shield.stop(1.0)  # and now the edge's shield is gone too
        answers["dead shield"] = await get(two_tiers.edge + "/dead/seg2.ts")
    assert {name: (code, data) for name, (code, _, data) in answers.items()} == {
        "malformed": (502, b"502 shield answered 502 (origin sent a malformed playlist)\n"),
        "origin said": (502, b"502 shield answered 502 (origin answered 502 ((address) answered 503))\n"),
        "dead origin": (502, b"502 shield answered 502 (origin could not be reached)\n"),
        "dead shield": (502, b"502 shield could not be reached\n"),
    }
    for _, headers, data in answers.values():
        assert_no_address(headers, data, origin.port, shield_port, int(dead.rsplit(":", 1)[1]))
    # The operator still learns where: the log names the addresses the players were not told.
    for where in (f"{dead}: Cannot connect", f"{origin.url} sent a malformed playlist: ",
                  f"http://127.0.0.1:{shield_port}: Cannot connect"):
        assert where in caplog.text, caplog.text


PLAYLIST = (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
            b"#EXTINF:2.0,\nseg0.ts\n")


def test_the_demo_tells_players_503_and_logs_where(tmp_path: Path) -> None:
    """Real processes: the player's 503 and Retry-After; the access line's 503; the log line's address."""
    async def serve() -> None:
        origin = FakeOrigin()
        origin.routes["/live/master.m3u8"] = body(PLAYLIST, M3U8)  # what the demo waits for
        origin.routes["/busy/seg1.ts"] = status(503, headers={"Retry-After": "3"})
        await origin.start()
        config = tmp_path / "cdn.toml"
        config.write_text(topology_toml(origin=origin.url, shields=1, edges=1, router=False,
                                        cache={"stale_if_error": 0}))
        try:
            await asyncio.to_thread(play_busy, config, origin.port)
        finally:
            await origin.stop()

    asyncio.run(serve())


def play_busy(config: Path, origin_port: int) -> None:
    with run_cdn(config) as info:
        edge = next(n for n in info["nodes"] if n["name"] == "edge-1")
        url = urlsplit(edge["url"])
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            conn.request("GET", "/busy/seg1.ts")
            r = conn.getresponse()
            code, headers, data = r.status, CIMultiDict(r.getheaders()), r.read()
        finally:
            conn.close()
        assert (code, headers.get("Retry-After")) == (503, "3"), (code, data)
        assert_no_address(headers, data, origin_port)

        def access_line() -> dict[str, object] | None:  # in the file the demo names (issue 14)
            log = Path(info["access_log"])
            for line in (log.read_text() if log.exists() else "").splitlines():
                if line.startswith("{") and '"path":"/busy/seg1.ts"' in line and '"node":"edge-1"' in line:
                    return json.loads(line)  # type: ignore[no-any-return]
            return None

        assert wait_until(lambda: access_line() is not None, timeout=5), info["stderr"]()
        line = access_line()
        assert line is not None and (line["status"], line["cache"]) == (503, "ERROR"), line
        assert wait_until(lambda: f"127.0.0.1:{origin_port} answered 503" in info["stderr"](), timeout=5), \
            info["stderr"]()
