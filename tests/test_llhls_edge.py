"""LL-HLS through real edge and shield nodes (issue 15): holds that outlive the first-byte wait, what the edge
answers itself, and the origin's 503 for an expired hold.

The origin is `tests/fakeorigin.py`, scripted per path, so each test states
the origin's hold exactly; the edge and shield are real nodes with their
default upstream waits (`upstream_timeout` 10 s), the case the issue saw.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from livecdn.config import CacheSettings
from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin, dribble

pytestmark = pytest.mark.slow

CACHE = CacheSettings(disk_path="")  # the default waits: upstream_timeout 10 s
TARGET = 4  # a 4 s target: its blocking hold (3 targets, 12 s) outlasts upstream_timeout
PLAYLIST = (b"#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:4\n"
            b"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=3.0\n"
            b"#EXT-X-PART-INF:PART-TARGET=1.0\n#EXT-X-MEDIA-SEQUENCE:4\n"
            + b"".join(b"#EXTINF:4.0,\nseg%d.ts\n" % n for n in range(4, 8))
            + b'#EXT-X-PART:DURATION=1.0,URI="seg8.0.ts"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI="seg8.1.ts"\n')
PART = b"\x47" * 188 * 40


def held(hold: float, status: int = 200) -> object:
    """A blocking playlist reload answered after `hold` seconds (`status` then: 503 for an expired hold)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if "_HLS_msn" in request.query:
            await asyncio.sleep(hold)
            if status != 200:
                return web.Response(status=status, text=f"{status} hold expired\n")
        return web.Response(body=PLAYLIST, content_type="application/vnd.apple.mpegurl")
    return handler


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, float]:
    started = time.monotonic()
    async with http.get(url) as r:
        return r.status, await r.read(), time.monotonic() - started


async def _stack(routes: dict[str, object], shields: int = 1) -> tuple[FakeOrigin, Stack]:
    origin = FakeOrigin()
    origin.routes.update(routes)  # type: ignore[arg-type]
    await origin.start()
    return origin, await Stack(origin.url, cache=CACHE, shields=shields).start()


@pytest.mark.asyncio
async def test_holds_within_three_targets_outlive_the_upstream_timeout_at_both_tiers():
    """A blocking reload held 11 s and a hint part held 10.5 s, then streamed, both arrive whole.

    Before: the hint part, a name without `_HLS_msn`, got the plain 10 s patience at each tier (504).
    """
    origin, stack = await _stack({"/live/b/index.m3u8": held(11.0),
                                  "/live/b/seg8.1.ts": dribble(PART, 4, 0.3, hold=10.5, chunked=True)})
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40)) as http:
            assert (await _get(http, f"{stack.edge}/live/b/index.m3u8"))[0] == 200  # the edge holds the playlist
            (s1, b1, w1), (s2, b2, w2) = await asyncio.gather(
                _get(http, f"{stack.edge}/live/b/index.m3u8?_HLS_msn=8&_HLS_part=1"),
                _get(http, f"{stack.edge}/live/b/seg8.1.ts"))
    finally:
        await stack.stop()
        await origin.stop()
    assert (s1, b1) == (200, PLAYLIST) and w1 >= 11.0, (s1, b1[:80], w1)
    assert (s2, b2) == (200, PART) and w2 >= 11.0, (s2, len(b2), w2)


@pytest.mark.asyncio
async def test_an_expired_hold_reaches_the_player_as_503():
    """The origin gives up on a blocking reload after 3 targets with a 503: the player gets it, once held.

    With two shields, the edge took the first shield's 503 for a failure and asked the next one, which
    asked the origin again: the player waited two holds (or more), and the origin held it twice.
    """
    origin, stack = await _stack({"/live/b/index.m3u8": held(3 * TARGET, 503)}, shields=2)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40)) as http:
            assert (await _get(http, f"{stack.edge}/live/b/index.m3u8"))[0] == 200
            status, text, waited = await _get(http, f"{stack.edge}/live/b/index.m3u8?_HLS_msn=8&_HLS_part=1")
    finally:
        await stack.stop()
        await origin.stop()
    assert status == 503 and 3 * TARGET <= waited < 4 * TARGET, (status, text, waited)
    assert origin.hits["/live/b/index.m3u8?_HLS_msn=8&_HLS_part=1"] == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(("query", "why"), [
    ("_HLS_part=1", "_HLS_part without _HLS_msn"),
    # The last segment held is 8 (its parts); the edge allows one more (the origin may have completed it since).
    ("_HLS_msn=12&_HLS_part=0", "more than two segments ahead"),
])
async def test_the_edge_refuses_what_no_playlist_can_answer_without_asking_upstream(query: str, why: str):
    """rfc8216bis 6.2.5.2: `_HLS_part` alone, or an `_HLS_msn` more than two past the newest segment: 400.

    Before: both went to the shield and the origin (an upstream request each, held or refused there).
    """
    origin, stack = await _stack({"/live/b/index.m3u8": held(0.0)})
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            assert (await _get(http, f"{stack.edge}/live/b/index.m3u8"))[0] == 200
            before = sum(origin.hits.values())
            status, text, _ = await _get(http, f"{stack.edge}/live/b/index.m3u8?{query}")
            ok, _, _ = await _get(http, f"{stack.edge}/live/b/index.m3u8?_HLS_msn=11&_HLS_part=0")
    finally:
        await stack.stop()
        await origin.stop()
    assert status == 400 and why.encode() in text, (status, text)
    assert ok == 200  # two ahead of the last (8, or 9 by now) is still a fair question
    assert sum(origin.hits.values()) == before + 1  # only the fair one went upstream


def test_the_edge_counts_what_was_made_since_it_read_the_playlist():
    """A low-latency player reloads by blocking requests only: the plain read held may be old by now.

    Before (this branch's first cut): the edge refused msn 15 from a read of 9 seven seconds old, and hls.js
    stopped on the 400.
    """
    from livecdn.media.directives import too_far_ahead
    from livecdn.media.playlist import Run

    run = Run(media_sequence=4, segments=6)  # last 9
    assert too_far_ahead("_HLS_msn=12", run, age=0.0, target=2.0) is None
    assert too_far_ahead("_HLS_msn=13", run, age=0.0, target=2.0) is not None
    assert too_far_ahead("_HLS_msn=15", run, age=7.0, target=2.0) is None  # 3 made since, a 4th about to be
    assert too_far_ahead("_HLS_msn=16", run, age=7.0, target=2.0) is not None
    assert too_far_ahead("_HLS_skip=YES", run, age=0.0, target=2.0) is None  # not a blocking reload
