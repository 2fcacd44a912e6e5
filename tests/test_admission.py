"""Admission through the engine (issue 9): asked once, only for a request that would start a new fetch.

A real engine in front of the fake origin, a disk tier that counts lookups,
and an admission that records what it is asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from livecdn.cache.engine import Engine
from livecdn.cache.freshness import Rules
from livecdn.cache.keys import BadRequest, CacheKey, cache_key
from livecdn.cache.memory import MemoryStore
from livecdn.cache.stored import Stored
from tests.fakeorigin import FakeOrigin, body, slow


class CountingDisk:
    """A disk tier that holds nothing and counts the lookups."""

    def __init__(self) -> None:
        self.lookups = 0

    async def get(self, key: str) -> None:
        self.lookups += 1
        await asyncio.sleep(0)  # a real lookup runs on a thread: the request yields here

    async def put(self, obj: Stored) -> None:
        return None


class Recorder:
    """An admission that records its calls; refuses names under /no/, and may wait in `check`."""

    def __init__(self, wait: asyncio.Event | None = None) -> None:
        self.checks: list[str] = []
        self.charges: list[str] = []
        self.wait = wait

    async def check(self, key: CacheKey, client: str) -> None:
        self.checks.append(client)
        if self.wait is not None:
            await self.wait.wait()
        if key.path.startswith("/no/"):
            raise BadRequest("no such stream", 404)

    def charge(self, key: CacheKey, client: str) -> None:
        self.charges.append(client)


@pytest.fixture
async def engine(origin: FakeOrigin) -> AsyncIterator[tuple[Engine, CountingDisk]]:
    disk = CountingDisk()
    e = Engine("t", MemoryStore(1 << 20), disk, lambda key: (origin.url,), Rules(), 1 << 20, 3.0)  # type: ignore
    async with aiohttp.ClientSession() as session:
        e.start(session)
        yield e, disk
        await e.close(2.0)


async def read(engine: Engine, target: str, client: str, admission: Recorder) -> bytes:
    answer = await engine.get(cache_key(target), client, admission)
    try:
        if answer.obj is not None:
            return answer.obj.body
        assert answer.stream is not None
        return b"".join([bytes(p) async for p in answer.stream.chunks()])
    finally:
        answer.close()


async def test_a_refused_name_costs_no_disk_lookup_and_no_fetch(
        origin: FakeOrigin, engine: tuple[Engine, CountingDisk]) -> None:
    e, disk = engine
    admission = Recorder()
    with pytest.raises(BadRequest):
        await e.get(cache_key("/no/seg1.ts"), "a", admission)
    assert admission.checks == ["a"] and admission.charges == [] and disk.lookups == 0
    assert origin.hits["/no/seg1.ts"] == 0


async def test_requests_joining_a_fetch_are_not_asked(origin: FakeOrigin, engine: tuple[Engine, CountingDisk]) -> None:
    e, _ = engine
    origin.routes["/s/seg1.ts"] = slow(0.2, b"x" * 100)
    admission = Recorder()
    bodies = await asyncio.gather(*(read(e, "/s/seg1.ts", f"c{i}", admission) for i in range(5)))
    assert bodies == [b"x" * 100] * 5
    assert admission.charges == ["c0"] and origin.hits["/s/seg1.ts"] == 1  # one fetch, charged once


async def test_what_the_check_waited_for_is_not_fetched_again(
        origin: FakeOrigin, engine: tuple[Engine, CountingDisk]) -> None:
    e, _ = engine
    origin.routes["/w/index.m3u8"] = body(b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nseg1.ts\n",
                                          "application/vnd.apple.mpegurl")
    gate = asyncio.Event()
    admission = Recorder(gate)
    waiting = asyncio.ensure_future(read(e, "/w/index.m3u8", "a", admission))
    await asyncio.sleep(0.05)
    await e.refresh(cache_key("/w/index.m3u8"))  # what a guard's check waits for: the playlist refreshed
    gate.set()
    assert (await waiting).startswith(b"#EXTM3U")
    assert origin.hits["/w/index.m3u8"] == 1 and admission.charges == []  # a hit once the check was over
