"""The edge's knowledge of its streams: guard, prefetch, client limits.

Unit tests for the pure pieces, then a real edge (tests/cdn.py) in front of a
fake origin whose live playlist the test advances by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import string
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edge.guard import Generations, StreamGuard
from edge.limits import ClientLimits, TokenBucket
from livecdn.cache.fill import ClientRequested, Fill, StoreObject, UpstreamChunk, UpstreamDone, UpstreamResponded
from livecdn.cache.freshness import Rules
from livecdn.cache.keys import BadRequest, CacheKey, cache_key
from livecdn.config import CacheSettings, GuardSettings, LimitSettings
from livecdn.media.kinds import kind_of
from tests.cdn import NO_LIMITS, Stack, sample
from tests.fakeorigin import FakeOrigin, body
from tests.parses import count_loads

GUARD = GuardSettings(refresh_interval=0.5, unknown_rate=1.0, unknown_burst=3, viewer_idle=30.0)


# --- pure pieces ------------------------------------------------------------------

@pytest.mark.slow
def test_generations_keep_memory_flat_and_never_refuse_the_window() -> None:
    """A day of a live stream: one new segment every 2 s, a window of 6 re-announced each time."""
    gens = Generations(capacity=256, error_rate=0.0001)
    sizes = set()
    for newest in range(43_200):
        window = [f"/live/720p/seg{n}.ts" for n in range(max(0, newest - 5), newest + 1)]
        for name in window:
            gens.add(name)
        if newest % 1000 == 0:
            assert all(name in gens for name in window)
            sizes.add(gens.nbytes)
    assert len(sizes) <= 2  # one filter at first, then always two of the same size
    assert max(sizes) == 2 * gens.nbytes // 2


def test_false_positive_rate_stays_near_the_configured_one() -> None:
    rate = 0.01
    gens = Generations(capacity=2000, error_rate=rate)
    for n in range(5000):  # past one rotation: both generations are full
        gens.add(f"/live/seg{n}.ts")
    trials = 50_000
    false = sum(f"/other/{n}.ts" in gens for n in range(trials))
    assert false / trials <= 2 * rate


def test_token_bucket() -> None:
    b = TokenBucket(burst=2, now=0.0)
    assert b.take(1.0, 2, 0.0) == 0 and b.take(1.0, 2, 0.0) == 0
    assert b.take(1.0, 2, 0.0) == pytest.approx(1.0)
    assert b.take(1.0, 2, 0.5) == pytest.approx(0.5)
    assert b.take(1.0, 2, 1.0) == 0  # refilled


def test_client_limits_are_per_client_and_bounded() -> None:
    limits = ClientLimits(LimitSettings(miss_rate=1, miss_burst=1, max_clients=2))
    assert limits.miss_wait("a", 0) == 0 and limits.miss_wait("a", 0) > 0
    assert limits.miss_wait("b", 0) == 0  # b has its own bucket
    limits.miss_wait("c", 0)  # forgets a, the least recently seen
    assert limits.miss_wait("a", 0) == 0
    assert ClientLimits(LimitSettings(miss_rate=0)).miss_wait("x", 0) == 0  # 0 means unlimited


class NothingNew:
    """The engine as the guard sees it: a playlist refresh that announces nothing new."""

    def __init__(self) -> None:
        self.refreshed: list[str] = []

    async def refresh(self, key: CacheKey) -> None:
        self.refreshed.append(key.key)


async def test_a_playlist_filled_and_learned_by_the_guard_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = count_loads(monkeypatch)
    key = cache_key("/live/cam/index.m3u8")
    body = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nseg7.ts\n#EXTINF:4.0,\nseg8.ts\n"
    fill = Fill(key, kind_of(key.extension), ("http://shield",), Rules(), 1 << 20)
    commands = [*fill.handle(ClientRequested(1)),
                *fill.handle(UpstreamResponded(200, (("content-type", "application/vnd.apple.mpegurl"),), 0.0)),
                *fill.handle(UpstreamChunk(body)), *fill.handle(UpstreamDone(0.0))]
    [stored] = [c.obj for c in commands if isinstance(c, StoreObject)]
    engine = NothingNew()
    guard = StreamGuard(GUARD, engine, "parsed-once")  # type: ignore[arg-type]  # only refresh() is used
    said = guard.learn(stored)
    assert said is not None and said.segments == ("/live/cam/seg7.ts", "/live/cam/seg8.ts")
    await guard.check(cache_key("/live/cam/seg8.ts"), "10.0.0.1")  # announced: let through
    with pytest.raises(BadRequest) as refused:
        await guard.check(cache_key("/live/cam/seg99.ts"), "10.0.0.1")
    assert refused.value.status == 404 and engine.refreshed == [key.key]  # one refresh, then refused
    assert parsed == [body.decode()]


# --- a real edge in front of a live stream ---------------------------------------------

class LiveOrigin:
    """A fake live stream: the test publishes segments; the playlist lists the last three."""

    def __init__(self, origin: FakeOrigin) -> None:
        self.newest = 2
        origin.routes["/live/master.m3u8"] = body(
            b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\n720p/index.m3u8\n", "application/vnd.apple.mpegurl")
        origin.routes["/live/720p/index.m3u8"] = self._playlist
        self.origin = origin
        self._publish()

    async def _playlist(self, request: web.Request) -> web.Response:
        first = max(0, self.newest - 2)
        lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:4", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for n in range(first, self.newest + 1):
            lines += ["#EXTINF:4.0,", f"seg{n}.ts"]
        return web.Response(text="\n".join(lines) + "\n", content_type="application/vnd.apple.mpegurl")

    def _publish(self) -> None:
        for n in range(self.newest + 1):
            self.origin.routes[f"/live/720p/seg{n}.ts"] = body(b"segment %d" % n)

    def advance(self) -> None:
        self.newest += 1
        self._publish()

    def segment_fetches(self) -> int:
        return sum(v for k, v in self.origin.hits.items() if k.endswith(".ts"))


async def get(url: str, client: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    connector = aiohttp.TCPConnector(local_addr=(client, 0))
    async with aiohttp.ClientSession(connector=connector) as s, s.get(url) as r:
        return r.status, dict(r.headers), await r.read()


async def metric(stack: Stack, name: str, **labels: str) -> float:
    """A counter's value (counters live in the test process and add up across tests: compare deltas)."""
    return sample((await get(stack.edge_admin() + "/metrics"))[2].decode(), name, **labels)


@pytest.fixture
async def live(origin: FakeOrigin) -> LiveOrigin:
    return LiveOrigin(origin)


@pytest.fixture
async def guarded(origin: FakeOrigin) -> Stack:
    s = Stack(origin.url, guard=GUARD, limits=NO_LIMITS)
    try:
        yield await s.start()
    finally:
        await s.stop()


async def play(stack: Stack) -> list[str]:
    """What a player does first: master, media playlist, the segments it lists."""
    assert (await get(stack.edge + "/live/master.m3u8"))[0] == 200
    status, _, text = await get(stack.edge + "/live/720p/index.m3u8")
    assert status == 200
    names = [ln for ln in text.decode().splitlines() if ln.endswith(".ts")]
    for name in names:
        assert (await get(stack.edge + f"/live/720p/{name}"))[0] == 200
    return names


async def test_a_player_at_a_fresh_edge_plays_normally(live: LiveOrigin, guarded: Stack) -> None:
    assert await play(guarded) == ["seg0.ts", "seg1.ts", "seg2.ts"]
    assert live.segment_fetches() == 3


async def test_random_names_in_a_real_stream_cost_no_upstream_fetch(live: LiveOrigin, guarded: Stack) -> None:
    await play(guarded)
    playlist_fetches = live.origin.hits["/live/720p/index.m3u8"]
    rejected = await metric(guarded, "livecdn_guard_rejections_total", reason="not_announced")
    refreshes = await metric(guarded, "livecdn_guard_refreshes_total")
    started = time.monotonic()
    results = await asyncio.gather(*(get(guarded.edge + f"/live/720p/{_random()}.ts") for _ in range(200)))
    intervals = (time.monotonic() - started) / GUARD.refresh_interval
    assert {s for s, _, _ in results} == {404}
    assert all(b"not announced" in b for _, _, b in results)
    assert live.segment_fetches() == 3  # nothing per random name
    # At most one coalesced refresh of the stream's playlist per refresh interval, whatever the names.
    refreshed = await metric(guarded, "livecdn_guard_refreshes_total") - refreshes
    assert 1 <= refreshed <= 1 + intervals
    assert live.origin.hits["/live/720p/index.m3u8"] - playlist_fetches <= refreshed
    assert await metric(guarded, "livecdn_guard_rejections_total", reason="not_announced") - rejected == 200


async def test_a_segment_newer_than_the_edges_playlist_is_found_by_one_refresh(
        live: LiveOrigin, origin: FakeOrigin) -> None:
    # Edge straight to the origin: the tier above has the newer playlist, as a
    # shield does once any edge has fetched it.
    stack = await Stack(origin.url, shields=0, guard=GUARD, limits=NO_LIMITS).start()
    try:
        await play(stack)
        refreshes = await metric(stack, "livecdn_guard_refreshes_total")
        live.advance()  # published upstream; the edge's playlist copy is still fresh (2 s)
        await asyncio.sleep(0.6)  # past the guard's refresh interval
        status, _, data = await get(stack.edge + "/live/720p/seg3.ts")
        assert (status, data) == (200, b"segment 3")
        assert await metric(stack, "livecdn_guard_refreshes_total") - refreshes == 1
    finally:
        await stack.stop()


async def test_a_segment_asked_just_after_a_refresh_waits_for_the_next_one_and_is_served(
        live: LiveOrigin, origin: FakeOrigin) -> None:
    """Seen under load with two edge workers: a segment the playlist listed got a 404 (this worker's last
    refresh was under an interval ago). A name not seen yet is often real: it waits for the next refresh."""
    stack = await Stack(origin.url, shields=0, guard=GUARD, limits=NO_LIMITS).start()
    try:
        await play(stack)
        assert (await get(stack.edge + "/live/720p/nope.ts"))[0] == 404  # a refresh now: the next is due later
        refreshes = await metric(stack, "livecdn_guard_refreshes_total")
        live.advance()
        started = time.monotonic()
        status, _, data = await get(stack.edge + "/live/720p/seg3.ts")
        assert (status, data) == (200, b"segment 3")
        assert time.monotonic() - started <= GUARD.refresh_interval + 0.5  # it waited for that refresh, no longer
        assert await metric(stack, "livecdn_guard_refreshes_total") - refreshes == 1
    finally:
        await stack.stop()


async def test_names_of_unknown_streams_get_a_bounded_number_of_tries(origin: FakeOrigin, guarded: Stack) -> None:
    results = await asyncio.gather(*(get(guarded.edge + f"/{_random()}/{_random()}.ts") for _ in range(30)))
    statuses = [s for s, _, _ in results]
    assert statuses.count(404) <= GUARD.unknown_burst + 1  # the origin was asked, said 404
    assert statuses.count(503) >= 30 - GUARD.unknown_burst - 1
    assert all(h.get("Retry-After") for s, h, _ in results if s == 503)
    assert len(origin.requests) <= GUARD.unknown_burst + 1


async def test_the_same_unknown_name_asked_at_once_is_one_try(origin: FakeOrigin, guarded: Stack) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(body=b"x", content_type="video/mp2t")
    origin.routes["/new/seg1.ts"] = slow
    results = await asyncio.gather(*(get(guarded.edge + "/new/seg1.ts") for _ in range(20)))
    assert {s for s, _, _ in results} == {200}
    assert origin.hits["/new/seg1.ts"] == 1


@pytest.mark.slow
async def test_prefetch_makes_the_first_request_for_a_new_segment_a_hit(live: LiveOrigin, origin: FakeOrigin) -> None:
    stack = await Stack(origin.url, shields=0, guard=GuardSettings(refresh_interval=0.5), limits=NO_LIMITS).start()
    try:
        await play(stack)
        prefetches = await metric(stack, "livecdn_prefetches_total")
        hits = await metric(stack, "livecdn_prefetch_hits_total")
        live.advance()
        await asyncio.sleep(2.1)  # the playlist (target 4 s) goes stale
        await get(stack.edge + "/live/720p/index.m3u8")  # stale answer, background refresh
        await asyncio.sleep(0.3)  # refresh, then prefetch of seg3
        assert origin.hits["/live/720p/seg3.ts"] == 1
        status, headers, _ = await get(stack.edge + "/live/720p/seg3.ts")
        assert (status, headers["X-Cache"]) == (200, "HIT")
        assert await metric(stack, "livecdn_prefetches_total") - prefetches == 1
        assert await metric(stack, "livecdn_prefetch_hits_total") - hits == 1
    finally:
        await stack.stop()


async def test_no_prefetch_for_a_stream_nobody_watches(live: LiveOrigin, origin: FakeOrigin) -> None:
    stack = await Stack(origin.url, shields=0, guard=GuardSettings(viewer_idle=0.2), limits=NO_LIMITS).start()
    try:
        await get(stack.edge + "/live/720p/index.m3u8")
        await asyncio.sleep(0.3)
        live.advance()
        await stack.edges[0].engine.refresh(stack.key("/live/720p/index.m3u8"))  # type: ignore[union-attr]
        await asyncio.sleep(0.2)
        assert origin.hits["/live/720p/seg3.ts"] == 0
    finally:
        await stack.stop()


async def test_misses_past_the_client_limit_get_429_hits_do_not(live: LiveOrigin, origin: FakeOrigin) -> None:
    limits = LimitSettings(miss_rate=1, miss_burst=5, connections_per_client=0)
    no_prefetch = dataclasses.replace(GUARD, prefetch=False)  # prefetch would fetch seg3 for free
    stack = await Stack(origin.url, shields=0, guard=no_prefetch, limits=limits).start()
    try:
        limited = await metric(stack, "livecdn_rate_limited_total", limit="miss")  # on the admin port
        await play(stack)  # 5 misses: master, playlist, 3 segments — the whole burst
        statuses = [(await get(stack.edge + "/live/720p/seg0.ts"))[0] for _ in range(20)]
        assert statuses == [200] * 20  # hits stay unlimited
        live.advance()  # a real new segment: the guard lets it through, the bucket is empty
        await asyncio.sleep(0.6)
        status, headers, _ = await get(stack.edge + "/live/720p/seg3.ts")
        assert status == 429 and int(headers["Retry-After"]) >= 1
        status, _, _ = await get(stack.edge + "/live/720p/seg3.ts", client="127.0.0.7")
        assert status == 200  # another client has its own bucket
        assert await metric(stack, "livecdn_rate_limited_total", limit="miss") - limited == 1
    finally:
        await stack.stop()


async def test_connections_past_the_per_client_limit_are_refused(live: LiveOrigin, origin: FakeOrigin) -> None:
    stack = await Stack(origin.url, guard=GUARD, limits=LimitSettings(connections_per_client=2)).start()
    try:
        refused_before = await metric(stack, "livecdn_rate_limited_total", limit="connections")
        port = stack.edges[0].port
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(reader.read(), 5)
        assert refused.startswith(b"HTTP/1.1 429")
        writer.close()
        assert (await get(stack.edge + "/live/master.m3u8", client="127.0.0.8"))[0] == 200
        for _, w in held:
            w.close()
            await w.wait_closed()
        await asyncio.sleep(0.1)
        assert (await get(stack.edge + "/live/master.m3u8"))[0] == 200
        assert await metric(stack, "livecdn_rate_limited_total", limit="connections") - refused_before == 1
    finally:
        await stack.stop()


def _random() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=12))


async def test_viewers_behind_one_address_joining_a_fetch_are_not_metered(
        live: LiveOrigin, origin: FakeOrigin) -> None:
    """A NAT full of players asking for the new segment costs one fetch, not one token each."""
    limits = LimitSettings(miss_rate=1, miss_burst=6, connections_per_client=0)
    stack = await Stack(origin.url, shields=0, guard=GUARD, limits=limits).start()
    try:
        await play(stack)

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(0.3)
            return web.Response(body=b"segment 9", content_type="video/mp2t")
        origin.routes["/live/720p/seg9.ts"] = slow
        live.newest = 9
        await stack.edges[0].engine.refresh(stack.key("/live/720p/index.m3u8"))  # type: ignore[union-attr]
        results = await asyncio.gather(*(get(stack.edge + "/live/720p/seg9.ts") for _ in range(30)))
        assert [s for s, _, _ in results] == [200] * 30
        assert origin.hits["/live/720p/seg9.ts"] == 1
    finally:
        await stack.stop()


async def test_one_client_cannot_spend_the_tries_everyone_shares(origin: FakeOrigin) -> None:
    guard = GuardSettings(unknown_rate=100, unknown_burst=100, unknown_client_rate=0.1, unknown_client_burst=2)
    stack = await Stack(origin.url, guard=guard, limits=NO_LIMITS).start()
    try:
        greedy = [(await get(stack.edge + f"/{_random()}/a.ts", client="127.0.0.5"))[0] for _ in range(10)]
        assert greedy == [404, 404] + [503] * 8  # two tries reached the origin, then its share was spent
        assert (await get(stack.edge + f"/{_random()}/a.ts", client="127.0.0.6"))[0] == 404  # tried
        assert len(origin.requests) == 3
    finally:
        await stack.stop()


@pytest.mark.slow
async def test_a_watched_live_playlist_is_polled_and_its_news_prefetched(
        live: LiveOrigin, origin: FakeOrigin) -> None:
    """No viewer reload needed: the edge refreshes a watched playlist when it expires."""
    stack = await Stack(origin.url, shields=0, guard=GuardSettings(), limits=NO_LIMITS).start()
    try:
        await play(stack)
        live.advance()
        await asyncio.sleep(2.5)  # the playlist's lifetime is 2 s (target 4 s)
        assert origin.hits["/live/720p/seg3.ts"] == 1  # found and fetched with no player asking
        status, headers, data = await get(stack.edge + "/live/720p/seg3.ts")
        assert (status, headers["X-Cache"], data) == (200, "HIT", b"segment 3")
    finally:
        await stack.stop()


@pytest.mark.slow
async def test_polling_stops_when_nobody_watches(live: LiveOrigin, origin: FakeOrigin) -> None:
    stack = await Stack(origin.url, shields=0, guard=GuardSettings(viewer_idle=3.0), limits=NO_LIMITS).start()
    try:
        await play(stack)
        await asyncio.sleep(4.5)  # a poll at 2 s (watched 2 s ago), none at 4 s (nobody for 4 s)
        assert origin.hits["/live/720p/index.m3u8"] == 2
    finally:
        await stack.stop()


async def test_concurrent_first_requests_share_one_try_while_the_disk_is_asked(
        live: LiveOrigin, origin: FakeOrigin, tmp_path: Path) -> None:
    # 64 players open the stream at once: the entry point is unknown, and the
    # edge looks for it on disk before fetching. Those that arrive during the
    # lookup join its fetch; they are not each a new try at an unknown name.
    guard = GuardSettings(unknown_rate=100, unknown_burst=100, unknown_client_rate=0.1, unknown_client_burst=2)
    cache = CacheSettings(disk_path=str(tmp_path / "disk-{node}"), upstream_timeout=3.0)
    stack = await Stack(origin.url, shields=0, guard=guard, limits=NO_LIMITS, cache=cache).start()
    try:
        results = await asyncio.gather(*(get(stack.edge + "/live/master.m3u8") for _ in range(64)))
        assert [s for s, _, _ in results] == [200] * 64
        assert origin.hits["/live/master.m3u8"] == 1
    finally:
        await stack.stop()


async def test_reload_applies_new_client_limits(live: LiveOrigin, origin: FakeOrigin) -> None:
    # Under attack an operator tightens the limits and sends SIGHUP: no restart, no dropped viewers.
    stack = await Stack(origin.url, shields=0, guard=GUARD, limits=NO_LIMITS).start()
    try:
        edge = stack.edges[0]
        port = edge.port
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]  # counted, not limited
        assert [(await get(stack.edge + "/live/master.m3u8"))[0] for _ in range(5)] == [200] * 5
        tight = LimitSettings(request_rate=1, request_burst=2, connections_per_client=3)
        cfg = dataclasses.replace(edge.config, limits=tight)
        edge.reload(dataclasses.replace(edge.topology, edges={cfg.name: cfg}))
        statuses = [(await get(stack.edge + "/live/master.m3u8"))[0] for _ in range(4)]
        assert statuses == [200, 200, 429, 429]  # every request now takes a token
        held.append(await asyncio.open_connection("127.0.0.1", port))  # the 3rd one open: the limit
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 429")
        writer.close()
        assert (await get(stack.edge + "/live/master.m3u8", client="127.0.0.8"))[0] == 200  # others unaffected
        edge.reload(dataclasses.replace(edge.topology, edges={cfg.name: dataclasses.replace(cfg, limits=NO_LIMITS)}))
        assert [(await get(stack.edge + "/live/master.m3u8"))[0] for _ in range(5)] == [200] * 5  # 4 open
        for _, w in held:
            w.close()
    finally:
        await stack.stop()
