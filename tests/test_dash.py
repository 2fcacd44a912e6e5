"""Live DASH through the edge (issue 10, item 5): ffmpeg's dash muxer, ffmpeg and dash.js as players.

A real ffmpeg writes a live DASH stream into a temp folder served by
`FileOrigin`; a shield and an edge with the default guard and limits sit in
front of it. Both stream shapes ffmpeg writes are played: LL-DASH with a
`$Number$` SegmentTemplate (its MPD says minimumUpdatePeriod="PT500S"), and
a SegmentTimeline with `$Time$` names. Before the guard read MPDs, every DASH
segment was a name of an unknown stream and the edge answered 503 after a
few of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from livecdn.config import GuardSettings, LimitSettings, SigningKey, SigningSettings
from livecdn.signing import sign
from tests.cdn import Stack, sample
from tests.fakeorigin import FakeOrigin, FileOrigin, body
from tests.test_players import CHROMIUM, INSTALL_HINT, PLAYERS_DIR, require_browser_harness, require_ffmpeg

pytestmark = pytest.mark.slow

SECONDS = 20
STREAM = "/live/cam/manifest.mpd"
# ffmpeg's two live shapes: LL-DASH with $Number$ (what writes PT500S), and a SegmentTimeline with $Time$.
SHAPES = {
    "number": ["-streaming", "1", "-ldash", "1", "-use_template", "1", "-use_timeline", "0"],
    "timeline": ["-use_template", "1", "-use_timeline", "1",
                 "-media_seg_name", "chunk-$RepresentationID$-$Time$.$ext$"],
}


# How long the origin holds a request for a segment not started yet: one segment (as an LL-DASH origin does).
HOLD = 1.0


class GrowingFileOrigin(FileOrigin):
    """ffmpeg's folder served as an LL-DASH origin serves it: a segment still being written is sent as it grows.

    ffmpeg writes each segment as NAME.tmp and renames it when complete; an
    LL-DASH player asks for a segment as soon as it starts
    (availabilityTimeOffset), so the origin sends the growing file chunked
    until the rename, and holds a request for a segment about to start
    until its first bytes exist, instead of a 404 every cache would keep.
    """

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        final = os.path.join(self.root, request.path.lstrip("/"))
        growing = final + ".tmp"
        if request.path.endswith(".m4s") and request.path not in self.routes and os.path.dirname(
                os.path.normpath(final)).startswith(os.path.normpath(self.root)):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + HOLD
            while not os.path.exists(final) and not os.path.exists(growing) and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if not os.path.exists(final) and os.path.exists(growing):
                self.hits[request.path_qs] += 1
                return await self._grow(request, final, growing)
        return await super()._handle(request)

    async def _grow(self, request: web.Request, final: str, growing: str) -> web.StreamResponse:
        try:
            f = open(growing, "rb")  # noqa: SIM115 - read on after the rename: same file
        except FileNotFoundError:  # renamed in between: complete now
            return await super()._handle(request)
        with f:
            resp = web.StreamResponse(headers={"Content-Type": "video/iso.segment",
                                               "Cache-Control": "max-age=3600"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            deadline = asyncio.get_running_loop().time() + 10 * HOLD
            while True:
                complete = os.path.exists(final)  # checked before reading: what follows is all there is
                data = f.read()
                if data:
                    await resp.write(data)
                elif complete or asyncio.get_running_loop().time() > deadline:
                    break
                else:
                    await asyncio.sleep(0.02)
            await resp.write_eof()
            return resp


def encoder(folder: Path, shape: str) -> subprocess.Popen[bytes]:
    """ffmpeg encoding a small live picture and tone into `folder` as DASH, 1 s segments, at real time."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [require_ffmpeg(), "-nostdin", "-v", "error", "-re",
         "-f", "lavfi", "-i", "testsrc=size=320x180:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", "300", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
         "-profile:v", "baseline", "-g", "25", "-c:a", "aac", "-b:a", "64k",
         "-f", "dash", "-seg_duration", "1", "-window_size", "10", "-extra_window_size", "5", *SHAPES[shape],
         str(folder / "manifest.mpd")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


async def live_mpd(folder: Path, proc: subprocess.Popen[bytes], segments: int = 3) -> str:
    """Wait until ffmpeg has written a live MPD and `segments` segments per stream; returns the MPD."""
    for _ in range(300):
        mpd = folder / "manifest.mpd"
        if proc.poll() is not None:
            said = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"ffmpeg exited {proc.returncode}: {said}")
        if mpd.exists() and len(list(folder.glob("chunk-*0-*.m4s"))) >= segments:
            text = mpd.read_text()
            if 'type="dynamic"' in text:
                return text
        await asyncio.sleep(0.1)
    raise AssertionError("ffmpeg wrote no live MPD in 30 s")


class Cdn:
    """An origin over ffmpeg's folder, one shield and one edge with the default guard and limits."""

    def __init__(self, origin: FileOrigin, stack: Stack) -> None:
        self.origin, self.stack = origin, stack

    @property
    def url(self) -> str:
        return self.stack.edge + STREAM

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(self.stack.edge_admin() + "/metrics") as r:
            return await r.text()

    async def rejections(self) -> float:
        """The edge's guard rejections so far (counters live per process: tests compare two readings)."""
        return sample(await self.metrics(), "livecdn_guard_rejections_total")


async def start_cdn(folder: Path, signing: SigningSettings | None = None) -> Cdn:
    origin = GrowingFileOrigin(str(folder.parent.parent))
    await origin.start()
    stack = await Stack(origin.url, guard=GuardSettings(), limits=LimitSettings(), signing=signing).start()
    return Cdn(origin, stack)


@contextlib.asynccontextmanager
async def live_cdn(tmp_path: Path, shape: str, signing: SigningSettings | None = None) -> AsyncIterator[Cdn]:
    folder = tmp_path / "live" / "cam"
    proc = encoder(folder, shape)
    cdn = None
    try:
        await live_mpd(folder, proc, segments=5)  # players start a few segments behind live
        cdn = await start_cdn(folder, signing)
        yield cdn
    finally:
        if cdn is not None:
            await cdn.stack.stop()
            await cdn.origin.stop()
        stop(proc)


@pytest.fixture(params=sorted(SHAPES))
async def live(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cdn]:
    async with live_cdn(tmp_path, request.param) as cdn:
        yield cdn


async def test_ffmpeg_plays_live_dash_through_the_edge_with_no_guard_rejection(live: Cdn) -> None:
    before = await live.rejections()
    proc = await asyncio.create_subprocess_exec(
        require_ffmpeg(), "-nostdin", "-hide_banner", "-v", "error", "-i", live.url, "-t", str(SECONDS),
        "-f", "null", "-", "-nostats", "-progress", "pipe:1",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SECONDS + 60)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    progress = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    played = int(progress.get("out_time_us", "0")) / 1e6
    metrics = await live.metrics()
    rejected = sample(metrics, "livecdn_guard_rejections_total") - before
    reasons = [line for line in metrics.splitlines() if line.startswith("livecdn_guard_rejections_total{")]
    report = (f"exit {proc.returncode}, played {played:.1f} s, guard rejections {rejected} {reasons}, "
              f"origin requests {sum(live.origin.hits.values())}; stderr:\n{err.decode()[-3000:]}")
    assert rejected == 0, report
    assert proc.returncode == 0 and progress.get("progress") == "end", report
    assert played >= SECONDS - 0.5, report
    # Every segment came through the edge: 20 s of 1 s segments, video and audio.
    segments = [p for p in live.origin.hits if p.endswith(".m4s") and "init" not in p]
    assert len(segments) >= SECONDS, report
    # The guard knows this stream as it knows an HLS one: a made-up name in it never reaches the origin.
    made_up = "/live/cam/chunk-stream0-99999999.m4s"
    async with aiohttp.ClientSession() as s, s.get(live.stack.edge + made_up) as r:
        assert r.status == 404, report
    assert live.origin.hits[made_up] == 0, report


def _no_cache_control(folder: Path) -> web.StreamResponse:
    """ffmpeg's MPD as a plain web server without caching headers serves it: the MPD alone says how long."""
    return web.Response(body=(folder / "manifest.mpd").read_bytes(), content_type="application/dash+xml")


async def test_a_restarted_encoders_mpd_reaches_the_edge_within_about_a_segment(tmp_path: Path) -> None:
    """PT500S was held 250 s, so players kept the old availabilityStartTime and asked for numbers that did not exist."""
    folder = tmp_path / "live" / "cam"
    proc = encoder(folder, "number")
    cdn = None
    try:
        first = await live_mpd(folder, proc)
        assert 'minimumUpdatePeriod="PT500S"' in first  # what ffmpeg writes for LL-DASH
        cdn = await start_cdn(folder)

        async def mpd_route(request: web.Request) -> web.StreamResponse:
            return _no_cache_control(folder)
        cdn.origin.routes[STREAM] = mpd_route

        def started(text: str) -> str:
            m = re.search(r'availabilityStartTime="([^"]+)"', text)
            assert m is not None, text
            return m.group(1)

        async with aiohttp.ClientSession() as s:
            async def edge_mpd() -> str:
                async with s.get(cdn.url) as r:
                    assert r.status == 200, await r.text()
                    return await r.text()
            before = started(await edge_mpd())
            stop(proc)
            proc = encoder(folder, "number")  # restarted in the same folder: names reused from 1
            after = before
            for _ in range(300):
                after = started(await live_mpd(folder, proc, segments=1))
                if after != before:
                    break
                await asyncio.sleep(0.1)
            assert after != before, "the restarted ffmpeg wrote no MPD of its own in 30 s"
            served = before
            for _ in range(40):  # 4 s: eight lifetimes of a 1 s segment's MPD, 1.6% of the 250 s seen
                await asyncio.sleep(0.1)
                served = started(await edge_mpd())
                if served == after:
                    break
            assert served == after, f"the edge still serves the MPD of the previous run ({before})"
    finally:
        if cdn is not None:
            await cdn.stack.stop()
            await cdn.origin.stop()
        stop(proc)


def public_chromium(endpoint: str, tmp_path: Path) -> str:
    """A Chromium launcher treating the edge as a public address, as real edges are (see test_players)."""
    launcher = tmp_path / "chromium"
    launcher.write_text(f'#!/bin/sh\nexec {CHROMIUM} "$@" --ip-address-space-overrides={endpoint}=public\n')
    launcher.chmod(0o755)
    return str(launcher)


async def play_dashjs(cdn: Cdn, url: str, tmp_path: Path) -> tuple[dict[str, object], str]:
    """dash.js in Chromium plays `url` for SECONDS; its result (and the guard's rejections meanwhile), as a report."""
    node = require_browser_harness()
    if not (PLAYERS_DIR / "node_modules" / "dashjs" / "package.json").exists():
        pytest.fail(f"missing tests/players/node_modules/dashjs: {INSTALL_HINT}", pytrace=False)
    before = await cdn.rejections()
    endpoint = cdn.stack.edge.removeprefix("http://")
    env = {**os.environ, "CHROMIUM": public_chromium(endpoint, tmp_path)}
    proc = await asyncio.create_subprocess_exec(
        node, str(PLAYERS_DIR / "play.mjs"), url, str(SECONDS), cwd=PLAYERS_DIR, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), SECONDS + 120)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    assert lines, f"play.mjs printed no result (exit {proc.returncode}):\n{out.decode()}\n{err.decode()}"
    r = json.loads(lines[-1])
    r["guardRejections"] = await cdn.rejections() - before
    report = json.dumps(r, indent=1)
    assert proc.returncode == 0 and "harnessError" not in r, report
    return r, report


def assert_played(r: dict[str, object], report: str) -> None:
    assert r["player"] == "dash.js" and r["dashSupported"] and r["mse"], report
    assert r["started"], f"playback never started:\n{report}"
    assert r["guardRejections"] == 0, report
    assert r["playedSeconds"] >= SECONDS - 2, report  # type: ignore[operator]
    assert r["errors"] == [], report


async def test_dashjs_in_chromium_plays_live_dash_through_the_edge(live: Cdn, tmp_path: Path) -> None:
    assert_played(*await play_dashjs(live, live.url, tmp_path))


async def test_dashjs_plays_a_signed_mpd_url_and_unsigned_requests_get_403(tmp_path: Path) -> None:
    # dash.js resolves the SegmentTemplate's init and media names against the MPD's URL: the token
    # segment leading it is kept, so every segment request carries it.
    key = SigningKey("k1", "dash-secret-0123456789abcdef")
    async with live_cdn(tmp_path, "number", SigningSettings((key,))) as cdn:
        signed = sign(STREAM, key.id, key.secret.encode(), int(time.time()) + 600)
        async with aiohttp.ClientSession() as s, s.get(cdn.stack.edge + STREAM) as r:
            assert (r.status, await r.text()) == (403, "403 token missing\n")
        r, report = await play_dashjs(cdn, cdn.stack.edge + signed, tmp_path)
        assert_played(r, report)
        seen = list(cdn.origin.hits)
        assert any(p.endswith(".m4s") for p in seen) and not any("~" in p for p in seen), seen


async def test_an_unknown_dash_name_costs_one_mpd_refresh_then_a_404() -> None:
    """As for HLS: the MPD is the playlist the guard refreshes for the directories its names live in."""
    timeline = ('<MPD type="dynamic" availabilityStartTime="2026-01-01T00:00:00Z" minimumUpdatePeriod="PT2S">'
                '<Period><AdaptationSet><Representation id="v"><SegmentTemplate timescale="1" '
                'media="video/$Time$.m4s" initialization="video/init.mp4"><SegmentTimeline>'
                '<S t="100" d="2" r="2"/></SegmentTimeline></SegmentTemplate></Representation></AdaptationSet>'
                '</Period></MPD>')
    origin = FakeOrigin()
    origin.routes[STREAM] = body(timeline.encode(), "application/dash+xml")
    origin.routes["/live/cam/video/104.m4s"] = body(b"segment")
    await origin.start()
    stack = await Stack(origin.url, guard=GuardSettings(), limits=LimitSettings()).start()
    try:
        async with aiohttp.ClientSession() as s:
            async def get(path: str) -> int:
                async with s.get(stack.edge + path) as r:
                    await r.read()
                    return r.status

            async def refreshes() -> float:
                async with s.get(stack.edge_admin() + "/metrics") as r:
                    return sample(await r.text(), "livecdn_guard_refreshes_total")
            assert await get(STREAM) == 200
            assert await get("/live/cam/video/104.m4s") == 200  # announced: straight through
            before, started = await refreshes(), time.monotonic()
            assert await get("/live/cam/video/1.m4s") == 404  # a directory the MPD speaks for, a name it does not
            assert await get("/live/cam/video/3.m4s") == 404
            # A refresh of the MPD each, at most one per refresh interval (the second waits for its turn), as for HLS.
            intervals = (time.monotonic() - started) / GuardSettings().refresh_interval
            assert 1 <= await refreshes() - before <= min(2, 1 + intervals)
            assert origin.hits["/live/cam/video/1.m4s"] == origin.hits["/live/cam/video/3.m4s"] == 0  # never asked
    finally:
        await stack.stop()
        await origin.stop()
