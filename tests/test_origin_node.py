"""A real OriginNode on 127.0.0.1 port 0, synthetic mode, driven over HTTP with aiohttp."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from multidict import CIMultiDict

from livecdn.config import Address, OriginConfig, Rendition
from livecdn.origin import OriginNode
from livecdn.origin.synthetic import segment_identity

T = 0.5  # target duration: short, so the window slides quickly
WINDOW = 3
RETAIN = 2  # the origin keeps this many segments past the window
SEG_BYTES = 10_000

CONFIG = OriginConfig(
    name="origin-test",
    listen=Address("127.0.0.1", 0),
    mode="synthetic",
    streams=("live", "other"),
    target_duration=T,
    window=WINDOW,
    segment_bytes=SEG_BYTES,
    renditions=(Rendition("hi", 1_000_000, 640, 360), Rendition("lo", 300_000, 320, 180)),
)


@pytest_asyncio.fixture
async def origin() -> AsyncIterator[OriginNode]:
    node = OriginNode(CONFIG)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def fetch(http: aiohttp.ClientSession, url: str, method: str = "GET",
                **kw) -> tuple[int, CIMultiDict[str], bytes]:
    async with http.request(method, url, **kw) as r:
        return r.status, r.headers.copy(), await r.read()


def parse_playlist(text: str) -> tuple[int, list[str]]:
    lines = text.splitlines()
    seq = next(int(ln.split(":", 1)[1]) for ln in lines if ln.startswith("#EXT-X-MEDIA-SEQUENCE:"))
    return seq, [ln for ln in lines if ln and not ln.startswith("#")]


async def playlist(http: aiohttp.ClientSession, node: OriginNode, rendition: str = "hi",
                   stream: str = "live") -> tuple[int, list[str]]:
    status, headers, body = await fetch(http, f"{node.url}/{stream}/{rendition}/index.m3u8")
    assert status == 200, body
    return parse_playlist(body.decode())


async def first_playlist(http: aiohttp.ClientSession, node: OriginNode) -> tuple[int, list[str]]:
    deadline = time.monotonic() + 5 * T
    while time.monotonic() < deadline:
        status, _, _ = await fetch(http, f"{node.url}/live/hi/index.m3u8")
        if status == 200:
            return await playlist(http, node)
        assert status == 404
        await asyncio.sleep(T / 10)
    raise AssertionError("no media playlist within 5 target durations")


# --- listener and lifecycle ------------------------------------------------------


@pytest.mark.asyncio
async def test_port_zero_binds_a_real_port_and_healthz_answers(origin, http):
    assert origin.port > 0
    assert origin.url == f"http://127.0.0.1:{origin.port}"
    status, headers, body = await fetch(http, f"{origin.url}/healthz")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert await (await http.get(f"{origin.url}/healthz")).json() == {"status": "ok", "role": "origin"}


@pytest.mark.asyncio
async def test_lifecycle_misuse_and_idempotent_stop():
    node = OriginNode(CONFIG)
    with pytest.raises(RuntimeError):
        _ = node.port
    await node.stop()  # before start: harmless
    node = OriginNode(CONFIG)
    await node.start()
    port = node.port
    with pytest.raises(RuntimeError):
        await node.start()
    await node.stop()
    await node.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.asyncio
async def test_ffmpeg_mode_without_ffmpeg_fails_start_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no ffmpeg on PATH
    node = OriginNode(OriginConfig(name="o", listen=Address("127.0.0.1", 0), mode="ffmpeg",
                                   work_dir=str(tmp_path / "work")))
    with pytest.raises(RuntimeError, match="synthetic") as info:
        await node.start()
    assert "ffmpeg" in str(info.value)
    await node.stop()  # still harmless after a failed start


# --- playlists --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_master_playlist(origin, http):
    status, headers, body = await fetch(http, f"{origin.url}/live/master.m3u8")
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.apple.mpegurl"
    assert headers["Cache-Control"].startswith("max-age=")
    text = body.decode()
    assert text.startswith("#EXTM3U\n")
    assert "#EXT-X-STREAM-INF:BANDWIDTH=1000000,RESOLUTION=640x360\nhi/index.m3u8\n" in text
    assert "#EXT-X-STREAM-INF:BANDWIDTH=300000,RESOLUTION=320x180\nlo/index.m3u8\n" in text


@pytest.mark.asyncio
async def test_media_playlist_is_live_and_short_lived(origin, http):
    await first_playlist(http, origin)
    status, headers, body = await fetch(http, f"{origin.url}/live/lo/index.m3u8")
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.apple.mpegurl"
    assert headers["Cache-Control"] == "max-age=1"
    text = body.decode()
    assert "#EXT-X-TARGETDURATION:1\n" in text
    assert "#EXT-X-VERSION:" in text
    assert "#EXTINF:0.500," in text
    assert "ENDLIST" not in text


@pytest.mark.asyncio
@pytest.mark.slow
async def test_window_slides_with_the_clock(origin, http):
    seq0, uris0 = await first_playlist(http, origin)
    t0 = time.monotonic()
    seen = [(seq0, uris0)]
    while time.monotonic() - t0 < 6 * T:
        await asyncio.sleep(T / 4)
        seen.append(await playlist(http, origin))
    elapsed = time.monotonic() - t0
    for seq, uris in seen:
        assert 1 <= len(uris) <= WINDOW
        assert uris == [f"seg{n}.ts" for n in range(seq, seq + len(uris))]
    newest = [seq + len(uris) - 1 for seq, uris in seen]
    assert newest == sorted(newest)
    # About one new segment per target duration, no more, no less.
    advanced = newest[-1] - newest[0]
    assert int(elapsed / T) - 1 <= advanced <= int(elapsed / T) + 1
    final_seq, final_uris = seen[-1]
    assert len(final_uris) == WINDOW and final_seq > seq0


# --- segments ---------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.slow
async def test_segment_appears_on_schedule_and_is_removed_after_the_window(origin, http):
    seq, uris = await first_playlist(http, origin)
    newest = seq + len(uris) - 1
    future = newest + 2
    status, _, _ = await fetch(http, f"{origin.url}/live/hi/seg{future}.ts")
    assert status == 404  # not produced yet
    deadline = time.monotonic() + 20 * T  # a broken clock fails instead of hanging
    # Wait until the playlist announces it, then it is there.
    while time.monotonic() < deadline:
        s, u = await playlist(http, origin)
        if f"seg{future}.ts" in u:
            break
        await asyncio.sleep(T / 10)
    else:
        raise AssertionError(f"seg{future}.ts never announced")
    status, headers, body = await fetch(http, f"{origin.url}/live/hi/seg{future}.ts")
    assert status == 200
    assert segment_identity(body) == ("live", "hi", future)
    # It stays fetchable for RETAIN segments after leaving the window, then 404.
    left_window_at = None
    while time.monotonic() < deadline:
        s, u = await playlist(http, origin)
        status, _, _ = await fetch(http, f"{origin.url}/live/hi/seg{future}.ts")
        if s > future and left_window_at is None:
            left_window_at = s
        if status == 404:
            break
        assert status == 200
        await asyncio.sleep(T / 10)
    else:
        raise AssertionError(f"seg{future}.ts still served after {20 * T}s")
    assert left_window_at is not None, "removed while still in the playlist"
    s, _ = await playlist(http, origin)
    assert s >= future + RETAIN  # it was kept past the window, as packagers do


@pytest.mark.asyncio
@pytest.mark.slow
async def test_segment_bytes_headers_and_stability(origin, http):
    seq, uris = await first_playlist(http, origin)
    url = f"{origin.url}/other/lo/{uris[-1]}"
    status, h1, b1 = await fetch(http, url)
    await asyncio.sleep(T)  # the window moves on; the segment's bytes do not
    status2, h2, b2 = await fetch(http, url)
    assert status == status2 == 200
    assert b1 == b2
    assert len(b1) == SEG_BYTES and b1[0] == 0x47
    assert segment_identity(b1) == ("other", "lo", seq + len(uris) - 1)
    assert h1["Content-Type"] == "video/mp2t"
    assert h1["Cache-Control"] == "max-age=3600"
    assert h1["ETag"] == h2["ETag"] and h1["ETag"].startswith('"')
    assert h1["Last-Modified"] == h2["Last-Modified"]
    # Different renditions and streams have different bytes.
    _, _, other = await fetch(http, f"{origin.url}/live/lo/{uris[-1]}")
    assert other != b1


@pytest.mark.asyncio
async def test_conditional_requests(origin, http):
    _, uris = await first_playlist(http, origin)
    url = f"{origin.url}/live/hi/{uris[-1]}"
    _, headers, _ = await fetch(http, url)
    status, h, body = await fetch(http, url, headers={"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b"" and h["ETag"] == headers["ETag"]
    status, _, body = await fetch(http, url, headers={"If-None-Match": '"something-else"'})
    assert status == 200 and len(body) == SEG_BYTES
    status, _, _ = await fetch(http, url, headers={"If-Modified-Since": headers["Last-Modified"]})
    assert status == 304
    # A live playlist is revalidated by its ETag only: it changes twice a second here,
    # finer than Last-Modified can tell.
    purl = f"{origin.url}/live/hi/index.m3u8"
    _, ph, pbody = await fetch(http, purl)
    status, _, body = await fetch(http, purl, headers={"If-None-Match": ph["ETag"]})
    assert status in (200, 304)  # 200 only if the window slid in between
    if status == 200:
        assert body != pbody
    status, _, body = await fetch(http, purl, headers={"If-Modified-Since": ph["Last-Modified"]})
    assert status == 200 and body.startswith(b"#EXTM3U")


@pytest.mark.asyncio
async def test_head_has_get_headers_and_no_body(origin, http):
    _, uris = await first_playlist(http, origin)
    for path in ("/live/master.m3u8", f"/live/hi/{uris[-1]}"):
        status, get_h, get_b = await fetch(http, origin.url + path)
        status_h, head_h, head_b = await fetch(http, origin.url + path, method="HEAD")
        assert status == status_h == 200
        assert head_b == b""
        assert head_h["Content-Length"] == str(len(get_b))
        for name in ("Content-Type", "Cache-Control", "ETag"):
            assert head_h[name] == get_h[name]
    status, _, _ = await fetch(http, f"{origin.url}/live/hi/seg999999.ts", method="HEAD")
    assert status == 404


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_are_405(origin, http, method):
    status, headers, _ = await fetch(http, f"{origin.url}/live/master.m3u8", method=method)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


@pytest.mark.asyncio
@pytest.mark.parametrize("path", [
    "/", "/nope/master.m3u8", "/live", "/live/", "/live/xx/index.m3u8", "/live/hi/seg01.ts",
    "/live/hi/seg1.ts.tmp", "/live/hi/../lo/index.m3u8x", "/live/hi/foo.txt", "/live/master.m3u",
    "/live/hi/seg1.ts/extra", "/live/hi/seg99999999999999999999999.ts",
])
async def test_unknown_names_are_404(origin, http, path):
    status, _, _ = await fetch(http, origin.url + path)
    assert status == 404


# --- ffmpeg mode ------------------------------------------------------------------


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.asyncio
@pytest.mark.slow
async def test_ffmpeg_mode_serves_real_segments_and_leaves_no_encoder(http, tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is not installed: run `make test`, which installs it", pytrace=False)
    work = tmp_path / "work"
    stale = work / "live" / "hi" / "seg5.ts"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from an earlier run")
    node = OriginNode(OriginConfig(
        name="origin-ffmpeg", listen=Address("127.0.0.1", 0), mode="ffmpeg", target_duration=1.0,
        window=3, work_dir=str(work),
        renditions=(Rendition("hi", 800_000, 1280, 720), Rendition("lo", 300_000, 640, 360))))
    await node.start()  # returns once the first segment of each rendition exists
    try:
        assert processes_mentioning(str(work)), "no ffmpeg running for the work dir"
        status, _, body = await fetch(http, f"{node.url}/live/master.m3u8")
        text = body.decode()
        assert status == 200
        # Scaled down together to fit the CPU budget, and advertised as encoded.
        assert 'BANDWIDTH=800000,RESOLUTION=640x360,CODECS="avc1.42c01f,mp4a.40.2"' in text
        assert 'BANDWIDTH=300000,RESOLUTION=320x180,CODECS="avc1.42c01f,mp4a.40.2"' in text
        status, headers, body = await fetch(http, f"{node.url}/live/lo/index.m3u8")
        assert status == 200 and headers["Content-Type"] == "application/vnd.apple.mpegurl"
        seq, uris = parse_playlist(body.decode())
        assert uris and uris[0] == f"seg{seq}.ts"
        status, headers, seg = await fetch(http, f"{node.url}/live/lo/{uris[0]}")
        assert status == 200 and headers["Content-Type"] == "video/mp2t"
        assert len(seg) > 1000 and len(seg) % 188 == 0 and seg[0] == 0x47
        assert headers["Cache-Control"] == "max-age=3600" and "ETag" in headers
        status, _, again = await fetch(http, f"{node.url}/live/lo/{uris[0]}")
        assert again == seg
        status, _, _ = await fetch(http, f"{node.url}/live/hi/seg5.ts")
        assert status == 404  # the stale file was cleared, not served as this run's
    finally:
        await node.stop(timeout=5)
    assert processes_mentioning(str(work)) == []
