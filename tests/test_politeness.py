"""Origin politeness: one playlist request per expiry per rendition per shield, prefetch included.

A real synthetic origin behind a counting relay (which takes PACKAGING to
answer a playlist, as a packager does), one shield (one worker) and one edge
with its prefetch on, or the edge alone in front of the origin; simulated
players poll the edge for about ten seconds as players do (each reloads its
media playlist and fetches the newest segment, at its own phase). However many
players, and whatever the edge's own polling does, the origin must be asked
for each media playlist at most once per half target duration (its lifetime),
plus one.

Seen: an edge asking the origin itself asked twice per expiry under load. A
viewer arriving while the edge's poll was refreshing the playlist set the next
poll by the expired copy's time (MIN_POLL later), and that poll refetched a
copy just stored. Behind a shield the second ask was a hit there.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from livecdn.config import Address, GuardSettings, OriginConfig, Rendition
from livecdn.origin import OriginNode
from tests.cdn import NO_LIMITS, Stack, run_cdn, topology_toml
from tests.fakeorigin import in_thread

TARGET = 2.0  # seconds: live playlists expire every TARGET / 2
RUN = 10.0
PLAYERS = 40
PACKAGING = 0.1  # seconds the origin takes to answer a playlist
RENDITIONS = (Rendition("hi", 1_000_000, 640, 360), Rendition("lo", 300_000, 320, 180))
GUARD = GuardSettings(unknown_rate=0, unknown_client_rate=0)  # prefetch on, as shipped


class CountingRelay:
    """An origin's front door that counts every request by path and passes it on."""

    def __init__(self, upstream: str, delay: float) -> None:
        self.upstream, self.delay = upstream, delay
        self.hits: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _relay(self, request: web.Request) -> web.Response:
        assert self._session is not None
        self.hits[request.path] += 1
        if request.path.endswith(".m3u8"):
            await asyncio.sleep(self.delay)
        asks = {k: v for k, v in request.headers.items() if k.lower() in ("if-none-match", "if-modified-since")}
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=asks) as r:
            data = await r.read()
            keep = {k: v for k, v in r.headers.items() if k.lower() in ("cache-control", "etag", "last-modified",
                                                                       "content-type", "age")}
            return web.Response(status=r.status, body=data, headers=keep)


class Packager:
    """The synthetic origin behind a counting relay: what the CDN asks is in `relay.hits`."""

    def __init__(self) -> None:
        self.origin = OriginNode(OriginConfig("origin", Address("127.0.0.1", 0), mode="synthetic",
                                              streams=("live",), target_duration=TARGET, window=4,
                                              segment_bytes=20_000, renditions=RENDITIONS))
        self.relay: CountingRelay | None = None

    @property
    def url(self) -> str:
        assert self.relay is not None
        return self.relay.url

    async def start(self) -> None:
        await self.origin.start()
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # its first segment is published one target duration in
                async with session.get(f"{self.origin.url}/live/lo/index.m3u8") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
        self.relay = CountingRelay(self.origin.url, PACKAGING)
        await self.relay.start()

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
        await self.origin.stop()


@pytest.fixture
async def relay() -> AsyncIterator[CountingRelay]:
    packager = Packager()
    await packager.start()
    try:
        assert packager.relay is not None
        yield packager.relay
    finally:
        await packager.stop()


async def _player(session: aiohttp.ClientSession, edge: str, rendition: str, until: float) -> None:
    """Reload the media playlist every half target duration (at a phase of its own), fetch its newest segment."""
    await asyncio.sleep(random.uniform(0, TARGET / 2))
    while time.monotonic() < until:
        async with session.get(f"{edge}/live/{rendition}/index.m3u8") as r:
            text = await r.text()
        assert r.status == 200, text
        newest = [line for line in text.splitlines() if line and not line.startswith("#")][-1]
        async with session.get(f"{edge}/live/{rendition}/{newest}") as r:
            await r.read()
        await asyncio.sleep(TARGET / 2 * random.uniform(0.8, 1.2))


@pytest.mark.parametrize("shields", [1, 0], ids=["through a shield", "edge to origin"])
async def test_origin_hears_one_playlist_request_per_expiry_per_rendition(relay: CountingRelay, shields: int) -> None:
    stack = await Stack(relay.url, shields=shields, origin_fallback=not shields, guard=GUARD, limits=NO_LIMITS).start()
    try:
        elapsed = await _players(stack.edge)
    finally:
        await stack.stop()
    _at_most_one_per_expiry(relay.hits, elapsed)


def _at_most_one_per_expiry(hits: Counter[str], elapsed: float) -> None:
    expiries = elapsed / (TARGET / 2)
    playlists = {p: n for p, n in hits.items() if p.endswith("/index.m3u8")}
    assert set(playlists) == {f"/live/{r.name}/index.m3u8" for r in RENDITIONS}
    for path, n in playlists.items():
        assert n <= expiries + 1, f"{path}: {n} origin requests in {elapsed:.1f} s ({expiries:.1f} expiries)"


async def _players(edge: str) -> float:
    """PLAYERS players on `edge` for RUN seconds; returns how long they played."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{edge}/live/master.m3u8") as r:
            assert r.status == 200
        start = time.monotonic()
        await asyncio.gather(*(_player(session, edge, RENDITIONS[i % 2].name, start + RUN) for i in range(PLAYERS)))
        return time.monotonic() - start


@pytest.mark.slow
def test_a_node_of_two_workers_asks_as_one(tmp_path: Path) -> None:
    """Real processes: a shield and an edge of two workers each, the edge prefetching as shipped.

    Seen: 1.46-1.51 origin requests per expiry per rendition (`benchmarks/politeness.py --workers 2
    --edge-workers 2`). Live playlists live half a target duration, too short for the shared disk
    tier, so each worker of a node fetched its own copy once per expiry, and the shield's two
    workers each asked the origin.
    """
    with in_thread(Packager()) as packager:
        config = tmp_path / "cdn.toml"
        config.write_text(topology_toml(origin=packager.url, edges=1, workers=2, shield_workers=2, router=False))
        with run_cdn(config) as info:
            edge = next(n for n in info["nodes"] if n["role"] == "edge")
            assert packager.relay is not None
            packager.relay.hits.clear()  # the demo's own readiness checks are not players
            elapsed = asyncio.run(_players(edge["url"]))
            hits = Counter(packager.relay.hits)
    _at_most_one_per_expiry(hits, elapsed)
