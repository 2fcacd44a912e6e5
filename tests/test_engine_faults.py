"""Code the engine runs but does not own cannot break it (issue 9).

A playlist observer (the edge's guard) or the edge's policy that raises, or a
fill whose own handling raises, fails at most the request that ran it, with a
5xx that says why and a traceback in the log; the key stays usable. Real
shield and edge in this process, real sockets, a fake origin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from edge.prefetch import Prefetcher
from livecdn.cache.engine import Engine
from livecdn.cache.fill import CacheResult, Fill, UpstreamResponded
from livecdn.cache.freshness import Rules
from livecdn.cache.keys import CacheKey, cache_key
from livecdn.cache.memory import MemoryStore
from livecdn.config import CacheSettings, GuardSettings
from livecdn.media.playlist import Announced, read
from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin, body

PLAYLIST = (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
            b"#EXTINF:1.0,\nseg0.ts\n")


class Boom(RuntimeError):
    """A bug planted by the test."""


async def get(url: str) -> tuple[int, bytes, Any]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
        return r.status, await r.read(), r.headers


@pytest.fixture
async def fresh(origin: FakeOrigin) -> AsyncIterator[Stack]:
    """A shield and an edge with the guard on and nothing cached."""
    s = Stack(origin.url, cache=CacheSettings(disk_path="", upstream_timeout=3.0, stale_while_revalidate=0))
    try:
        yield await s.start()
    finally:
        await s.stop()


def raiser(*_: object, **__: object) -> None:
    raise Boom("planted")


async def test_a_raising_playlist_observer_strands_no_player_and_poisons_no_key(
        origin: FakeOrigin, fresh: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    origin.routes["/obs/index.m3u8"] = body(PLAYLIST, "application/vnd.apple.mpegurl")
    edge = fresh.edges[0]
    assert edge.policy is not None
    monkeypatch.setattr(edge.policy.guard, "learn", raiser)
    with caplog.at_level(logging.ERROR, "livecdn.cache.engine"):
        status, data, _ = await get(fresh.edge + "/obs/index.m3u8")  # once stranded until the client gave up
    assert (status, data) == (200, PLAYLIST)
    assert any(r.exc_info and r.exc_info[0] is Boom for r in caplog.records), caplog.text
    assert edge.engine is not None and edge.engine.inflight_fetches == 0  # the fill was not left registered
    await asyncio.sleep(0.6)  # the playlist (target 1 s) expires: the next request fills the key again
    status, data, headers = await get(fresh.edge + "/obs/index.m3u8")
    assert (status, data, headers["X-Cache"]) == (200, PLAYLIST, "MISS")


@pytest.mark.parametrize("hook", ["check", "charge", "seen"])
async def test_a_raising_policy_fails_that_request_with_a_reason_and_the_key_stays_usable(
        origin: FakeOrigin, fresh: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        hook: str) -> None:
    origin.routes["/pol/seg1.ts"] = body(b"s" * 100)
    edge = fresh.edges[0]
    with monkeypatch.context() as m, caplog.at_level(logging.ERROR, "livecdn.front"):
        m.setattr(edge.policy, hook, raiser)
        status, data, headers = await get(fresh.edge + "/pol/seg1.ts")
    assert status == 500 and b"internal error" in data and headers["X-Cache"] == "ERROR"
    assert any(r.exc_info and r.exc_info[0] is Boom for r in caplog.records), caplog.text
    status, data, _ = await get(fresh.edge + "/pol/seg1.ts")
    assert (status, data) == (200, b"s" * 100)


async def test_a_raising_hit_hook_fails_only_that_hit(
        origin: FakeOrigin, fresh: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    origin.routes["/hit/seg1.ts"] = body(b"h" * 10)
    assert (await get(fresh.edge + "/hit/seg1.ts"))[0] == 200
    edge = fresh.edges[0]
    with monkeypatch.context() as m:
        m.setattr(edge.policy, "seen", raiser)
        assert (await get(fresh.edge + "/hit/seg1.ts"))[0] == 500
    status, data, headers = await get(fresh.edge + "/hit/seg1.ts")
    assert (status, data, headers["X-Cache"]) == (200, b"h" * 10, "HIT")


async def test_a_fill_that_raises_is_abandoned_and_the_key_fills_again(
        origin: FakeOrigin, fresh: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    origin.routes["/fill/seg1.ts"] = body(b"f" * 10)
    handle = Fill.handle

    def broken(self: Fill, event: object) -> list[Any]:
        if isinstance(event, UpstreamResponded):
            raise Boom("planted in the fill")
        return handle(self, event)  # type: ignore[arg-type]

    with monkeypatch.context() as m, caplog.at_level(logging.ERROR):
        m.setattr(Fill, "handle", broken)
        status, data, _ = await get(fresh.edge + "/fill/seg1.ts")
    assert status in (500, 502) and data  # the edge's own fill failed (500), or the shield's (a 502 from it)
    assert any(r.exc_info and r.exc_info[0] is Boom for r in caplog.records), caplog.text
    assert fresh.edges[0].engine.inflight_fetches == 0 and fresh.shields[0].engine.inflight_fetches == 0
    assert (await get(fresh.edge + "/fill/seg1.ts"))[:2] == (200, b"f" * 10)


async def test_a_background_task_that_dies_is_logged_with_its_traceback(
        origin: FakeOrigin, caplog: pytest.LogCaptureFixture) -> None:
    class BrokenDisk:
        async def get(self, key: str) -> None:
            return None

        async def put(self, obj: object) -> None:
            raise Boom("planted in the disk tier")

    origin.routes["/task/seg1.ts"] = body(b"t" * 10)
    engine = Engine("t", MemoryStore(1 << 20), BrokenDisk(), lambda key: (origin.url,),  # type: ignore[arg-type]
                    Rules(), 1 << 20, 3.0)
    async with aiohttp.ClientSession() as session:
        engine.start(session)
        with caplog.at_level(logging.ERROR, "livecdn.cache.engine"):
            answer = await engine.get(cache_key("/task/seg1.ts"))
            assert answer.stream is not None
            assert b"".join([bytes(p) async for p in answer.stream.chunks()]) == b"t" * 10
            answer.close()
            await engine.close(2.0)  # the disk write (a segment lives long) has run and died
    assert any("died" in r.getMessage() and r.exc_info and r.exc_info[0] is Boom for r in caplog.records), \
        caplog.text


async def test_a_prefetch_worker_outlives_a_name_that_fails(caplog: pytest.LogCaptureFixture) -> None:
    class Engine_:
        """Just the engine's prefetch: fails for seg1, nothing to start for the others."""

        def __init__(self) -> None:
            self.asked: list[str] = []

        def prefetch(self, key: CacheKey) -> None:
            self.asked.append(key.path)
            if key.path.endswith("/seg1.ts"):
                raise Boom("planted in a prefetch")

    def playlist(*segments: int) -> Announced:
        body = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n" + b"".join(b"#EXTINF:2.0,\nseg%d.ts\n" % n for n in segments)
        manifest = read("/live/a/index.m3u8", body)
        assert manifest.announced is not None
        return manifest.announced

    engine = Engine_()
    prefetcher = Prefetcher(GuardSettings(prefetch_concurrency=1), engine, "t")  # type: ignore[arg-type]
    prefetcher.start()
    try:
        prefetcher.seen(cache_key("/live/a/index.m3u8"), CacheResult.MISS)  # a viewer watches the stream
        prefetcher.learned("/live/a/index.m3u8", playlist(0), 10.0)  # first sighting: history, not news
        with caplog.at_level(logging.ERROR, "livecdn.prefetch"):
            prefetcher.learned("/live/a/index.m3u8", playlist(0, 1, 2), 10.0)
            for _ in range(100):
                if len(engine.asked) == 2:
                    break
                await asyncio.sleep(0.01)
    finally:
        await prefetcher.stop()
    assert engine.asked == ["/live/a/seg1.ts", "/live/a/seg2.ts"]  # the one worker went on after seg1
    assert any(r.exc_info and r.exc_info[0] is Boom for r in caplog.records), caplog.text
