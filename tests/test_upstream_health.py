"""Upstream health that learns (issue 11, item 1): a hung shield is found out once, then skipped.

The state machine (`livecdn.cache.health.Health`) is driven with plain
numbers; the rest runs real nodes on loopback: a synthetic origin, two
shields, one of them behind `tests/faultproxy.py`, and an edge, with viewers
playing through the edge while the proxy hangs, stalls or resets that shield.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from edge import EdgeNode
from livecdn.cache.health import PROBE_PATIENCE, Health
from livecdn.config import Address, CacheSettings, EdgeConfig, OriginConfig, Region, Rendition, Topology
from livecdn.origin import OriginNode
from tests.cdn import NO_LIMITS, OPEN_GUARD, Stack, sample
from tests.fakeorigin import FakeOrigin, slow
from tests.faultproxy import FaultProxy, Mode

A, B, ORIGIN = "http://a", "http://b", "http://origin"

# --- the state machine ---------------------------------------------------------------------------


def test_a_timeout_ejects_and_later_requests_skip_it_at_once():
    h = Health(eject_after=1, backoff=1.0, max_backoff=8.0)
    assert h.order((A, B), 0.0) == (A, B)
    assert h.failed(A, 10.0, "timed out") == 1.0
    assert h.order((A, B), 10.1) == (B,)
    assert h.order((B, A), 10.1) == (B,)
    assert h.state(A).ejected and h.state(A).reason == "timed out"


def test_failures_in_a_row_are_needed_and_an_answer_resets_them():
    h = Health(eject_after=3, backoff=1.0, max_backoff=8.0)
    assert h.failed(A, 0.0, "reset") is None
    assert h.failed(A, 0.1, "reset") is None
    assert h.succeeded(A) is False  # it answered: not back from anything, the count starts again
    assert h.failed(A, 0.2, "reset") is None
    assert h.failed(A, 0.3, "reset") is None
    assert h.order((A, B), 0.4) == (A, B)
    assert h.failed(A, 0.5, "reset") == 1.0
    assert h.order((A, B), 0.6) == (B,)


def test_one_probe_after_the_backoff_then_back_or_out_for_twice_as_long():
    h = Health(eject_after=1, backoff=1.0, max_backoff=3.0)
    h.failed(A, 0.0, "timed out")
    assert h.order((A, B), 0.9) == (B,)
    assert h.order((A, B), 1.0) == (A, B)  # this request is the probe
    assert h.order((A, B), 1.1) == (B,)  # one at a time
    assert h.order((B, A), 1.1) == (B,)
    assert h.failed(A, 1.5, "timed out") == 2.0  # the probe failed: out for twice as long
    assert h.order((A, B), 3.4) == (B,)
    assert h.order((A, B), 3.5) == (A, B)
    assert h.failed(A, 4.0, "timed out") == 3.0  # capped
    assert h.order((A, B), 7.0) == (A, B)
    assert h.succeeded(A) is True
    assert h.order((A, B), 7.1) == (A, B) and not h.state(A).ejected
    h.failed(A, 8.0, "timed out")
    assert h.state(A).until == 9.0  # back to the first back-off once it answered


def test_a_probe_is_handed_out_only_where_the_upstream_leads():
    h = Health(eject_after=1, backoff=1.0, max_backoff=8.0)
    h.failed(A, 0.0, "timed out")
    assert h.order((B, A), 2.0) == (B,)  # asked only if B failed: no probe would be reported
    assert h.state(A).probe is None
    assert h.order((A, B), 2.0) == (A, B)


def test_failures_of_fetches_sent_before_the_ejection_change_nothing():
    h = Health(eject_after=1, backoff=1.0, max_backoff=8.0)
    assert h.failed(A, 0.0, "timed out") == 1.0
    assert h.failed(A, 0.5, "timed out") is None
    assert h.state(A).until == 1.0 and h.state(A).ejections == 1


def test_every_upstream_ejected_still_tries_the_one_due_back_first():
    h = Health(eject_after=1, backoff=1.0, max_backoff=8.0)
    h.failed(A, 0.3, "timed out")
    h.failed(B, 0.5, "timed out")
    h.failed(ORIGIN, 0.2, "timed out")
    assert h.order((A, B, ORIGIN), 0.6) == (ORIGIN,)  # back at 1.2, before A (1.3) and B (1.5)
    assert h.order((A,), 0.6) == (A,)  # a shield's origin: its only upstream is always tried


def test_an_unreported_probe_is_handed_out_again_after_its_patience():
    h = Health(eject_after=1, backoff=1.0, max_backoff=8.0)
    h.failed(A, 0.0, "timed out")
    assert h.order((A, B), 1.0) == (A, B)
    assert h.order((A, B), 1.0 + PROBE_PATIENCE - 1) == (B,)
    assert h.order((A, B), 1.0 + PROBE_PATIENCE) == (A, B)


def test_report_says_up_or_ejected_with_the_time_left():
    h = Health(eject_after=1, backoff=2.0, max_backoff=8.0)
    h.failed(A, 0.0, "timed out")
    report = h.report((A, B), 0.5)
    assert report[B] == {"state": "up", "failures": 0}
    assert report[A]["state"] == "ejected" and report[A]["ejected_for"] == 1.5
    assert report[A]["failures"] == 1 and report[A]["reason"] == "timed out"


@pytest.mark.parametrize(("args", "problem"), [((0, 1.0, 2.0), "eject_after"), ((1, 3.0, 2.0), "backoff")])
def test_bad_bounds_are_refused(args, problem):
    with pytest.raises(ValueError, match=problem):
        Health(*args)


def test_cache_settings_cap_every_wait_by_upstream_timeout():
    assert CacheSettings().waits == (1.0, 1.5, 5.0)
    assert CacheSettings(upstream_timeout=1.2).waits == (1.0, 1.2, 1.2)
    with pytest.raises(ValueError, match="eject_backoff"):
        CacheSettings(eject_backoff=60.0, eject_max_backoff=30.0)


# --- real nodes ---------------------------------------------------------------------------------

T = 1.0  # target duration
FIRST_BYTE = CacheSettings().first_byte_timeout
CACHE = CacheSettings(disk_path="")  # the default waits (10 s upstream_timeout above them)


@dataclass
class Cdn:
    origin: OriginNode
    stack: Stack
    proxy: FaultProxy  # in front of shield-1
    edge: EdgeNode

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.edge.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.edge.admin_port}"


@pytest_asyncio.fixture
async def cdn() -> AsyncIterator[Cdn]:
    origin = OriginNode(OriginConfig(name="origin", listen=Address("127.0.0.1", 0), target_duration=T,
                                     window=6, segment_bytes=40_000,
                                     renditions=(Rendition("hi", 1_000_000, 640, 360),
                                                 Rendition("lo", 300_000, 320, 180))))
    await origin.start()
    stack = await Stack(origin.url, shields=2, edges=0, cache=CACHE).start()
    proxy = FaultProxy(stack.shields[0].port)
    await proxy.__aenter__()
    # The edge knows shield-1 by the proxy's address, as if the proxy were the network between them.
    shields = {s.config.name: dataclasses.replace(s.config, listen=Address("127.0.0.1", port))
               for s, port in zip(stack.shields, (proxy.port, stack.shields[1].port), strict=True)}
    local = Address("127.0.0.1", 0)
    cfg = EdgeConfig("edge-1", "eu", local, local, (50.0, 8.0), cache=CACHE, guard=OPEN_GUARD, limits=NO_LIMITS)
    topology = Topology("(test)", "test", "cdn.test", origin.url, None, {"eu": Region("eu", (50.0, 8.0))},
                        shields, {cfg.name: cfg})
    edge = EdgeNode(topology, cfg, access_log=False)
    await edge.start()
    try:
        yield Cdn(origin, stack, proxy, edge)
    finally:
        await edge.stop(1.0)
        await proxy.__aexit__(None, None, None)
        await stack.stop()
        await origin.stop()


@dataclass
class Fetch:
    url: str
    started: float
    seconds: float
    status: int  # 0: no answer (cut, refused)


async def viewer(http: aiohttp.ClientSession, base: str, rendition: str, stop: asyncio.Event,
                 log: list[Fetch]) -> None:
    """A player: the playlist every target duration, then every segment it has not fetched yet."""
    playlist = f"{base}/live/{rendition}/index.m3u8"
    fetched: set[str] = set()

    async def get(url: str) -> bytes:
        started = time.monotonic()
        status, body = 0, b""
        try:
            async with http.get(url) as r:
                status, body = r.status, await r.read()
        except aiohttp.ClientError:
            status = 0
        log.append(Fetch(url, started, time.monotonic() - started, status))
        return body if status == 200 else b""

    while not stop.is_set():
        cycle = time.monotonic()
        text = (await get(playlist)).decode()
        names = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
        for name in (names[-3:] if not fetched else names):
            if name not in fetched:
                fetched.add(name)
                await get(urljoin(playlist, name))
        await asyncio.sleep(max(0.0, cycle + T - time.monotonic()))


async def upstreams(http: aiohttp.ClientSession, cdn: Cdn) -> dict[str, dict[str, object]]:
    async with http.get(f"{cdn.admin}/healthz") as r:
        report: dict[str, dict[str, object]] = (await r.json()).get("upstreams", {})
        return report


async def wait_playing(http: aiohttp.ClientSession, cdn: Cdn) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        async with http.get(f"{cdn.url}/live/hi/index.m3u8") as r:
            if r.status == 200 and (await r.read()).count(b"#EXTINF") >= 3:
                return
        await asyncio.sleep(0.2)
    raise AssertionError("the stream did not start")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_hung_shield_is_ejected_once_and_viewers_play_through(cdn):
    hung_for = 10.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await wait_playing(http, cdn)
        log: list[Fetch] = []
        start = time.monotonic()
        hung_at, resumed_at = start + 3.0, start + 3.0 + hung_for
        stop = asyncio.Event()
        viewers = [asyncio.create_task(viewer(http, cdn.url, r, stop, log)) for r in ("hi", "lo", "hi", "lo")]
        detected = back = None
        await asyncio.sleep(hung_at - time.monotonic())
        cdn.proxy.mode = Mode.HANG
        while time.monotonic() < resumed_at:
            if detected is None and (await upstreams(http, cdn)).get(cdn.proxy.url, {}).get("state") == "ejected":
                detected = time.monotonic()
                ejected = (await upstreams(http, cdn))[cdn.proxy.url]
            await asyncio.sleep(0.05)
        cdn.proxy.mode = Mode.PASS
        # Viewers go on: a real request is the probe that brings it back, after at most one back-off
        # (< 16 s after 10 s out).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (await upstreams(http, cdn)).get(cdn.proxy.url, {}).get("state") == "up":
                back = time.monotonic()
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(max(0.0, resumed_at + 3.0 - time.monotonic()))
        stop.set()
        await asyncio.gather(*viewers)
        async with http.get(f"{cdn.admin}/metrics") as r:
            exposition = await r.text()

    # Until the first detection, fetches that went to the hung shield waited out the first-byte timeout;
    # after it, no viewer request waits much longer than that (a probe pays it once per back-off) and none fails.
    settled = detected if detected is not None else hung_at + FIRST_BYTE + 1.0
    after = [f for f in log if f.started + f.seconds >= settled]  # those still waiting at detection too
    slowest = max(after, key=lambda f: f.seconds)
    failed = [f for f in log if f.status != 200]
    during = [f for f in log if hung_at <= f.started < resumed_at]
    print(f"\nhung shield {hung_for:.0f} s: {len(log)} viewer requests, {len(during)} during the hang;"
          f" detected after {_since(detected, hung_at)}; back {_since(back, resumed_at)} after it resumed;"
          f" failed {len(failed)}; slower than one target duration: "
          f"{sum(f.seconds > T for f in log)} ({sum(f.seconds > T for f in after)} after detection);"
          f" slowest after detection {slowest.seconds:.2f} s")
    assert slowest.seconds < FIRST_BYTE + 1.5, slowest
    assert not failed, failed[:5]
    assert detected is not None and detected - hung_at < FIRST_BYTE + T + 1.0  # its first fetch's wait
    assert ejected["failures"] >= 1 and ejected["reason"]
    assert back is not None, "the shield never came back into the ring"
    assert sample(exposition, "livecdn_upstream_ejections_total", upstream=cdn.proxy.url) >= 1
    assert sample(exposition, "livecdn_upstream_up", upstream=cdn.proxy.url) == 1
    assert sample(exposition, "livecdn_upstream_first_byte_seconds_count",
                  upstream=f"http://127.0.0.1:{cdn.stack.shields[1].port}") >= 1


def _since(when: float | None, start: float) -> str:
    return "never" if when is None else f"{when - start:.2f} s"


async def proxied_segments(http: aiohttp.ClientSession, cdn: Cdn) -> list[str]:
    """Paths of the playing stream's segments (both renditions) whose keys go to the proxied shield first."""
    await wait_playing(http, cdn)
    paths = []
    for rendition in ("hi", "lo"):
        async with http.get(f"{cdn.url}/live/{rendition}/index.m3u8") as r:
            paths += [f"/live/{rendition}/{ln}" for ln in (await r.text()).splitlines() if ln and ln[0] != "#"]
    assert cdn.edge.engine is not None
    paths = [p for p in paths if cdn.edge.engine.upstreams(cdn.stack.key(p))[0] == cdn.proxy.url]
    if not paths:  # about one run in 64: every key of both windows hashed to the other shield
        pytest.skip("no segment of this window hashes to the proxied shield")
    return paths


@pytest.mark.asyncio
async def test_a_reset_shield_fails_over_at_once_and_is_ejected(cdn):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        paths = await proxied_segments(http, cdn)
        cdn.proxy.mode = Mode.RESET
        for path in paths:
            started = time.monotonic()
            async with http.get(cdn.url + path) as r:
                assert r.status == 200 and len(await r.read()) == 40_000
            assert time.monotonic() - started < FIRST_BYTE  # a reset is no wait
        report = await upstreams(http, cdn)
    assert report[cdn.proxy.url]["state"] == "ejected", report
    assert report[f"http://127.0.0.1:{cdn.stack.shields[1].port}"]["state"] == "up"


@pytest.mark.asyncio
async def test_a_body_that_stalls_is_cut_within_the_read_timeout_and_ejects_its_shield(cdn):
    read = CACHE.waits[2]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        paths = await proxied_segments(http, cdn)
        cdn.proxy.mode = Mode.STALL
        started = time.monotonic()
        with pytest.raises(aiohttp.ClientPayloadError):  # headers were sent: the answer can only be cut
            async with http.get(cdn.url + paths[0]) as r:
                assert r.status == 200
                await r.read()
        waited = time.monotonic() - started
        report = await upstreams(http, cdn)
    assert waited < read + 2.0
    assert report[cdn.proxy.url]["state"] == "ejected", report


@pytest.mark.asyncio
async def test_a_hung_origin_does_not_eject_the_shield_that_waits_for_it():
    """The shield, alive while it waits, answers its edge's probes: the edge hears its answer (504 at its patience)."""
    origin = FakeOrigin()
    origin.routes["/live/hi/seg1.ts"] = slow(30.0, b"x")
    await origin.start()
    stack = await Stack(origin.url, cache=CACHE).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            started = time.monotonic()
            async with http.get(f"{stack.edge}/live/hi/seg1.ts") as r:
                status = r.status
            waited = time.monotonic() - started
            async with http.get(f"{stack.edge_admin()}/healthz") as r:
                report = (await r.json())["upstreams"]
    finally:
        await stack.stop()
        await origin.stop()
    assert status == 504 and CACHE.upstream_timeout <= waited < CACHE.upstream_timeout + FIRST_BYTE, waited
    assert [entry["state"] for entry in report.values()] == ["up"], report


LIVE = b"#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:4\n" + b"".join(
    b"#EXTINF:1.0,\nseg%d.ts\n" % n for n in range(4, 8))


@pytest.mark.asyncio
async def test_a_blocking_playlist_request_waits_three_target_durations_more():
    """An LL-HLS origin holds `_HLS_msn` requests until the part exists: longer than any first-byte wait."""
    hold = FIRST_BYTE + 0.5

    async def playlist(request: web.Request) -> web.StreamResponse:
        if "_HLS_msn" in request.query:
            await asyncio.sleep(hold)
        return web.Response(body=LIVE, content_type="application/vnd.apple.mpegurl")

    origin = FakeOrigin()
    origin.routes["/live/b/index.m3u8"] = playlist
    await origin.start()
    stack = await Stack(origin.url, cache=CACHE).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(f"{stack.edge}/live/b/index.m3u8") as r:  # held: its target duration is known
                assert r.status == 200
            started = time.monotonic()
            async with http.get(f"{stack.edge}/live/b/index.m3u8?_HLS_msn=8") as r:
                status, body = r.status, await r.read()
            waited = time.monotonic() - started
    finally:
        await stack.stop()
        await origin.stop()
    assert status == 200 and body == LIVE
    assert waited >= hold


@pytest.mark.asyncio
async def test_a_slow_origin_is_waited_for_not_taken_for_hung():
    """Slow is not hung: past the first-byte wait each tier probes the one above, finds it alive and waits.

    Before: the shield gave up on its origin at 3/4 of the first-byte wait and every client got a 504.
    """
    origin = FakeOrigin()
    origin.routes["/live/hi/seg1.ts"] = slow(2.5, b"slow but whole")  # past every first-byte wait, within patience
    await origin.start()
    stack = await Stack(origin.url, cache=CacheSettings(disk_path="", upstream_timeout=4.0)).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            answers = await asyncio.gather(*(fetch(http, f"{stack.edge}/live/hi/seg1.ts") for _ in range(5)))
            async with http.get(f"{stack.edge_admin()}/healthz") as r:
                report = (await r.json())["upstreams"]
    finally:
        await stack.stop()
        await origin.stop()
    assert answers == [(200, b"slow but whole")] * 5
    assert origin.hits["/live/hi/seg1.ts"] == 1
    assert [entry["state"] for entry in report.values()] == ["up"], report


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with http.get(url) as r:
        return r.status, await r.read()
