"""Origin protection during errors: a failed fetch is remembered for `error_ttl`.

The fill says so (`RememberFailure`, the error its clients got, born when the
fetch failed); the engine keeps it beside the stores, never in them, and for
that second answers the key's requests with the stale copy (within
stale-if-error) or the same error, asking nobody. Over real sockets: while
the origin answers 500s or a malformed playlist to thirty viewers (issue 11,
item 3), it sees about one request per key per second.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from livecdn.cache.fill import (
    CacheResult,
    ClientRequested,
    EndResponse,
    Fill,
    Head,
    RememberFailure,
    Respond,
    ServeStored,
    StaleTimer,
    StartFetch,
    UpstreamChunk,
    UpstreamDone,
    UpstreamFailed,
    UpstreamResponded,
)
from livecdn.cache.freshness import Lifetime, Rules
from livecdn.cache.keys import CacheKey, cache_key
from livecdn.cache.stored import Stored
from livecdn.config import CacheSettings
from livecdn.media.kinds import NameKind, kind_of
from tests.cdn import Stack
from tests.fakeorigin import Behaviour, FakeOrigin, body, status
from tests.playbook import Placeholder, Playbook

T0 = 1_700_000_000.0
RULES = Rules()
SEG = cache_key("/live/cam/seg7.ts")
PLAYLIST = cache_key("/live/cam/index.m3u8")
UPSTREAMS = ("http://shield-a", "http://shield-b")
M3U8 = "application/vnd.apple.mpegurl"
LIVE = (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n"
        b"#EXTINF:2.0,\nseg7.ts\n#EXTINF:2.0,\nseg8.ts\n")
NEXT = LIVE.replace(b"SEQUENCE:7", b"SEQUENCE:8").replace(b"seg7.ts\n", b"") + b"#EXTINF:2.0,\nseg9.ts\n"


def make_fill(key: CacheKey = SEG, *, stale: Stored | None = None, rules: Rules = RULES,
              upstreams: tuple[str, ...] = UPSTREAMS[:1]) -> Fill:
    return Fill(key, kind_of(key.extension), upstreams, rules, 1 << 20, stale)


# --- the fill: events in, commands out ------------------------------------------

@pytest.mark.parametrize("failure", [
    UpstreamFailed("connection refused", T0 + 1),
    UpstreamResponded(500, (("content-type", "text/plain"),), T0 + 1),
    UpstreamFailed("timed out", T0 + 1, timeout=True),
])
def test_the_last_failure_is_remembered_as_the_error_its_clients_got(failure: object) -> None:
    h, memo = Placeholder(Head), Placeholder(Stored)
    assert (
        Playbook(make_fill())
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0) >> ClientRequested(2)
        >> failure << Respond(1, h) << EndResponse(1) << Respond(2, h) << EndResponse(2) << RememberFailure(memo)
    )
    error = memo()
    assert (error.status, error.headers, error.body) == (h().status, h().headers, h().body)
    assert error.born == T0 + 1 and error.lifetime == Lifetime(RULES.error_ttl, 0.0, 0.0, store=False)
    assert error.fresh(T0 + 1.9) and not error.fresh(T0 + 2.0)


def test_a_malformed_playlist_is_remembered_as_a_502() -> None:
    memo = Placeholder(Stored)
    junk = b"<html>oops</html>"
    assert (
        Playbook(make_fill(PLAYLIST))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamResponded(200, (("content-type", M3U8),), T0) >> UpstreamChunk(junk) >> UpstreamDone(T0)
        << Respond(1, Placeholder(Head)) << EndResponse(1) << RememberFailure(memo)
    )
    assert memo().status == 502 and memo().kind is NameKind.PLAYLIST and not memo().lifetime.store


def test_a_failure_served_from_the_stale_copy_is_remembered_too() -> None:
    old = Stored(SEG.key, 200, (("content-type", "video/mp2t"),), b"old", T0 - 20, Lifetime(10.0, 0.0, 30.0),
                 NameKind.MEDIA)
    memo = Placeholder(Stored)
    assert (
        Playbook(make_fill(stale=old))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0) << StaleTimer(RULES.stale_after)
        >> UpstreamResponded(500, (), T0) << ServeStored(1, old, CacheResult.STALE) << RememberFailure(memo)
    )
    assert memo().status == 502 and memo().body != old.body  # an error is never the copy, nor stored as one


def test_a_failover_is_not_yet_a_failure() -> None:
    assert (
        Playbook(make_fill(upstreams=UPSTREAMS))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamFailed("refused", T0) << StartFetch(UPSTREAMS[1], 1)  # nothing remembered
    )


def test_an_error_ttl_of_zero_remembers_nothing() -> None:
    assert (
        Playbook(make_fill(rules=Rules(error_ttl=0)))
        >> ClientRequested(1) << StartFetch(UPSTREAMS[0], 0)
        >> UpstreamFailed("refused", T0) << Respond(1, Placeholder(Head)) << EndResponse(1)
    )


# --- over real sockets: an error storm --------------------------------------------

VIEWERS = 30
STORM = 3.0  # seconds


async def viewer(session: aiohttp.ClientSession, base: str, until: float, seen: Counter[tuple[str, int, bool]]) -> None:
    """Ask for the playlist and a segment again and again, as a player that gets errors retries."""
    while time.monotonic() < until:
        for path in ("/live/cam/index.m3u8", "/live/cam/seg8.ts"):
            async with session.get(base + path) as r:
                data = await r.read()
                seen[path, r.status, data == LIVE] += 1
        await asyncio.sleep(0.1)


BROKEN: dict[str, Behaviour] = {"500": status(500), "malformed": body(b"<html>oops</html>", M3U8)}


@pytest.mark.parametrize("fault", list(BROKEN))
async def test_an_error_storm_costs_the_origin_about_one_request_per_key_per_second(
        origin: FakeOrigin, fault: str) -> None:
    playlist, segment = "/live/cam/index.m3u8", "/live/cam/seg8.ts"
    origin.routes[playlist] = body(LIVE, M3U8)
    stack = await Stack(origin.url, cache=CacheSettings(disk_path="", upstream_timeout=3)).start()
    try:
        connector = aiohttp.TCPConnector(limit=VIEWERS)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(stack.edge + playlist) as r:
                assert (r.status, await r.read()) == (200, LIVE)
            origin.routes[playlist] = BROKEN[fault]
            origin.routes[segment] = status(500)
            before = origin.hits.copy()
            seen: Counter[tuple[str, int, bool]] = Counter()
            start = time.monotonic()
            await asyncio.gather(*(viewer(session, stack.edge, start + STORM, seen) for _ in range(VIEWERS)))
            took = time.monotonic() - start
            rates = {p: (origin.hits[p] - before[p]) / took for p in (playlist, segment)}
            asked = {p: sum(n for (q, _, _), n in seen.items() if q == p) for p in (playlist, segment)}
            print(f"\nerror storm ({fault} playlist, 500 segment): viewers asked {asked[playlist] / took:.0f}"
                  f" playlists/s and {asked[segment] / took:.0f} segments/s; the origin got"
                  f" {rates[playlist]:.2f} and {rates[segment]:.2f} requests/s")
            assert all(rate <= 1.5 for rate in rates.values()), rates
            # The playlist's stale copy is within stale-if-error: every viewer got it, never an error.
            assert {(s, good) for (p, s, good) in seen if p == playlist} == {(200, True)}
            # The segment has no copy: errors only, never one cached as a 200.
            assert {s for (p, s, _) in seen if p == segment} <= {500, 502, 503, 504}

            origin.routes[playlist] = body(NEXT, M3U8)  # the origin recovers: seen within a second or two
            origin.routes[segment] = body(b"segment eight")
            await asyncio.sleep(RULES.error_ttl + 1.2)
            async with session.get(stack.edge + playlist) as r:
                assert (r.status, await r.read()) == (200, NEXT)
            async with session.get(stack.edge + segment) as r:
                assert (r.status, await r.read()) == (200, b"segment eight")
    finally:
        await stack.stop()
