"""Age to the millisecond between tiers (issue 11, item 6).

`Age` is whole seconds; an edge that took a shield's `Age: 0` for a copy made
0.9 s before thought it 0.9 s younger than it was, and served it stale-if-error
0.9 s past its bound. Shields now also send `X-Livecdn-Age` (milliseconds),
which an edge prefers when it agrees with `Age`; a stale copy the shield
serves is `X-Cache: STALE` at the edge too, and is never stored there as fresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from livecdn.cache.fill import (
    CacheResult,
    ClientRequested,
    EndResponse,
    Fill,
    Head,
    Respond,
    SendBytes,
    StartFetch,
    StoreObject,
    UpstreamChunk,
    UpstreamDone,
    UpstreamResponded,
)
from livecdn.cache.freshness import Rules
from livecdn.cache.keys import cache_key
from livecdn.cache.stored import Stored
from livecdn.config import CacheSettings
from livecdn.media.kinds import NameKind
from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin, status
from tests.playbook import Placeholder, Playbook

T0 = 1_700_000_000.0
SEG = cache_key("/live/cam/seg7.ts")
TS = ("content-type", "video/mp2t")
FRESH, STALE_IF_ERROR = 1, 2  # the object's max-age and the nodes' stale_if_error, in seconds
# How far past its bound a copy may be seen: the time an answer takes to reach the test, on a busy machine.
SLACK = 0.3


def fill(body: bytes, *headers: tuple[str, str], at: float = T0) -> tuple[Stored, Head]:
    """A one-upstream fill of SEG answered 200 with these headers: what it stored and what its client got."""
    obj, head = Placeholder(Stored), Placeholder(Head)
    assert (
        Playbook(Fill(SEG, NameKind.MEDIA, ("http://shield-a",), Rules(), 1 << 20))
        >> ClientRequested(1) << StartFetch("http://shield-a", 0)
        >> UpstreamResponded(200, (TS, ("content-length", str(len(body))), *headers), at) << Respond(1, head)
        >> UpstreamChunk(body) << SendBytes(1, 0, len(body))
        >> UpstreamDone(at) << StoreObject(obj) << EndResponse(1)
    )
    return obj(), head()


@pytest.mark.parametrize(("age", "precise", "born"), [
    ("10", "10.437", T0 - 10.437),  # a livecdn tier above: to the millisecond
    ("10", None, T0 - 10),  # any other server: Age alone
    ("10", "11.5", T0 - 10),  # not within Age's second: never trusted past what Age says
    ("10", "9.9", T0 - 10),
    ("10", "nan", T0 - 10),
    ("10", "junk", T0 - 10),
    (None, "0.25", T0 - 0.25),  # no Age is Age 0
])
def test_the_precise_age_is_taken_only_within_the_second_age_gives(age: str | None, precise: str | None,
                                                                   born: float) -> None:
    headers = [(k, v) for k, v in (("age", age), ("x-livecdn-age", precise)) if v is not None]
    obj, head = fill(b"x" * 10, *headers)
    assert obj.born == pytest.approx(born, abs=1e-6) and head.born == pytest.approx(born, abs=1e-6)


def test_a_copy_the_tier_above_served_stale_is_stale_here_and_never_stored_fresh() -> None:
    # Segments live a year by the rules here; the shield's copy is 5 s old and was served stale.
    obj, head = fill(b"x" * 10, ("age", "5"), ("x-cache", "STALE"), at=T0 + 5)
    assert head.cache is CacheResult.STALE
    assert obj.born == T0 and not obj.fresh(T0 + 5)
    fresh_obj, fresh_head = fill(b"x" * 10, ("age", "5"), ("x-cache", "HIT"), at=T0 + 5)
    assert fresh_head.cache is CacheResult.MISS and fresh_obj.fresh(T0 + 5)


@pytest.fixture
async def tiers(origin: FakeOrigin) -> AsyncIterator[Stack]:
    s = Stack(origin.url, cache=CacheSettings(disk_path="", upstream_timeout=3.0, stale_if_error=STALE_IF_ERROR,
                                              stale_while_revalidate=0))
    try:
        yield await s.start()
    finally:
        await s.stop()


async def test_the_stale_bound_holds_through_two_tiers(origin: FakeOrigin, tiers: Stack) -> None:
    made: list[float] = []

    async def segment(request: web.Request) -> web.StreamResponse:
        made.append(time.time())
        return web.Response(body=b"seg", content_type="video/mp2t", headers={"Cache-Control": f"max-age={FRESH}"})

    origin.routes["/age/seg1.ts"] = segment
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        async with s.get(f"http://127.0.0.1:{tiers.shields[0].port}/age/seg1.ts") as r:
            assert r.status == 200  # the shield holds it from `made[0]`
        # 0.9 s later the edge gets it from the shield: its Age says 0, the copy is 0.9 s old.
        await asyncio.sleep(made[0] + 0.9 - time.time())
        async with s.get(tiers.edge + "/age/seg1.ts") as r:
            assert r.status == 200 and r.headers["X-Cache"] == "MISS"
        origin.routes["/age/seg1.ts"] = status(500)  # from now on only stale copies can be served
        seen: list[tuple[float, float, int, int, str]] = []  # (asked, answered) - made, status, Age, X-Cache
        while time.time() < made[0] + FRESH + STALE_IF_ERROR + 1.5:
            asked = time.time()
            async with s.get(tiers.edge + "/age/seg1.ts") as r:
                await r.read()
                seen.append((asked - made[0], time.time() - made[0], r.status, int(r.headers.get("Age", -1)),
                             r.headers["X-Cache"]))
            await asyncio.sleep(0.05)
    served = [row for row in seen if row[2] == 200]
    bound = FRESH + STALE_IF_ERROR
    assert served and all(answered <= bound + SLACK and age <= bound for _, answered, _, age, _ in served), seen
    assert seen[-1][2] == 502, seen  # past the bound: an error, not a copy
    # Past its freshness, every copy the edge served came stale from the shield (or was its own, stale).
    late = [row for row in served if row[0] > FRESH + 0.1]
    assert len(late) >= 5 and all(cache == "STALE" for *_, cache in late), seen
