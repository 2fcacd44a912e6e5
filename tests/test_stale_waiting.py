"""Stale beats waiting: a slow or hung upstream never holds a request that has a stale copy for long.

The fill asks for a timer when its first client has a stale copy to fall back
on (`StaleTimer`); when it fires (`StaleDeadline`) the waiting clients get the
copy and the fetch goes on, its answer stored when it comes. Over real
sockets: an origin that stops answering (issue 11, item 2) costs a viewer
about half a target duration, never a 504 while the copy is within its bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from livecdn.cache.fill import (
    CacheResult,
    ClientRequested,
    EndResponse,
    Fill,
    Head,
    Log,
    RefreshRequested,
    RememberFailure,
    Respond,
    SendBytes,
    ServeStored,
    StaleDeadline,
    StaleTimer,
    StartFetch,
    StoreObject,
    UpstreamChunk,
    UpstreamDone,
    UpstreamFailed,
    UpstreamResponded,
)
from livecdn.cache.freshness import Lifetime, Rules, stale_after
from livecdn.cache.keys import CacheKey, cache_key
from livecdn.cache.stored import Stored
from livecdn.config import CacheSettings
from livecdn.media.kinds import ManifestKind, NameKind, kind_of
from livecdn.media.playlist import PlaylistInfo, read
from tests.cdn import ROOT, Stack, topology_toml
from tests.fakeorigin import Behaviour, FakeOrigin, body
from tests.playbook import Placeholder, Playbook

T0 = 1_700_000_000.0
RULES = Rules()
PLAYLIST = cache_key("/live/cam/index.m3u8")
SEG = cache_key("/live/cam/seg7.ts")
UPSTREAM = ("http://shield-a",)
M3U8 = "application/vnd.apple.mpegurl"
TARGET = 2.0  # the playlists' target duration below


def playlist(sequence: int) -> bytes:
    return (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{TARGET:.0f}\n#EXT-X-MEDIA-SEQUENCE:{sequence}\n"
            f"#EXTINF:2.0,\nseg{sequence}.ts\n#EXTINF:2.0,\nseg{sequence + 1}.ts\n").encode()


OLD, NEW = playlist(7), playlist(8)


def stale_copy(key: CacheKey = PLAYLIST, *, data: bytes = OLD, fresh: float = 1.0, sie: float = 30.0) -> Stored:
    kind = kind_of(key.extension)
    manifest = read(key.path, data) if kind is NameKind.PLAYLIST else None
    return Stored(key.key, 200, (("content-type", M3U8),), data, T0, Lifetime(fresh, 0.0, sie), kind, manifest)


def make_fill(stale: Stored | None, key: CacheKey = PLAYLIST) -> Fill:
    return Fill(key, kind_of(key.extension), UPSTREAM, RULES, 1 << 20, stale)


# --- the fill: events in, commands out ------------------------------------------

def test_the_wait_is_half_a_target_duration_for_live_playlists_and_fixed_for_the_rest() -> None:
    rules = Rules(stale_after=0.8, stale_after_targets=0.5)
    assert stale_after(rules, PlaylistInfo(ManifestKind.LIVE, 6.0)) == 3.0
    assert stale_after(rules, PlaylistInfo(ManifestKind.LIVE, None)) == 0.8  # the target is not known
    assert stale_after(rules, PlaylistInfo(ManifestKind.MASTER)) == 0.8
    assert stale_after(rules, PlaylistInfo(ManifestKind.ENDED, 6.0)) == 0.8
    assert stale_after(rules, None) == 0.8


def test_a_slow_upstream_gets_waiting_clients_the_stale_copy_and_the_fetch_goes_on() -> None:
    old = stale_copy()
    stored, why = Placeholder(Stored), Placeholder(Log)
    bound = T0 + 1.0 + 30.0  # fresh + stale_if_error: counted from when the copy became stale
    fill = make_fill(old)
    assert (
        Playbook(fill, logs=True)
        >> ClientRequested(1) << StartFetch(UPSTREAM[0], 0) << StaleTimer(TARGET / 2)
        >> ClientRequested(2)  # joins the wait, no second timer
        >> StaleDeadline(T0 + 20)
        << why << ServeStored(1, old, CacheResult.STALE) << ServeStored(2, old, CacheResult.STALE)
        << StaleTimer(bound - (T0 + 20))  # when the copy leaves its bound
        >> ClientRequested(3) << ServeStored(3, old, CacheResult.STALE)  # no wait once the upstream is known slow
        >> UpstreamResponded(200, (("content-type", M3U8),), T0 + 21)
        >> UpstreamChunk(NEW) >> UpstreamDone(T0 + 21)
        << StoreObject(stored)  # the late answer is kept for the next requests; nobody is left to answer
    )
    assert stored().body == NEW and fill.finished
    assert "upstream slow" in why().message


def test_once_the_copy_leaves_its_bound_later_clients_wait_for_the_fetch() -> None:
    old = stale_copy(sie=5.0)
    fill = make_fill(old)
    error = Placeholder(Head)
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAM[0], 0) << StaleTimer(TARGET / 2)
        >> StaleDeadline(T0 + 2) << ServeStored(1, old, CacheResult.STALE) << StaleTimer(4.0)
        >> StaleDeadline(T0 + 6)  # the copy is out of bound now: nothing to serve
        >> ClientRequested(2)  # waits for the fetch
        >> UpstreamFailed("timed out", T0 + 7, timeout=True)
        << Respond(2, error) << EndResponse(2) << RememberFailure(Placeholder(Stored))
    )
    assert error().status == 504


def test_a_deadline_after_the_bound_serves_nothing() -> None:
    fill = make_fill(stale_copy(sie=5.0))
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAM[0], 0) << StaleTimer(TARGET / 2)
        >> StaleDeadline(T0 + 6.0)  # fresh 1 + stale_if_error 5: just out
        >> UpstreamResponded(200, (("content-type", M3U8),), T0 + 7) >> UpstreamChunk(NEW) >> UpstreamDone(T0 + 7)
        << StoreObject(fresh := Placeholder(Stored)) << ServeStored(1, fresh, CacheResult.MISS)
    )
    assert fresh().body == NEW


def test_a_deadline_once_a_streamed_answer_has_begun_changes_nothing() -> None:
    old = stale_copy(SEG, data=b"old segment")
    fill = make_fill(old, SEG)
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAM[0], 0) << StaleTimer(RULES.stale_after)
        >> UpstreamResponded(200, (("content-type", "video/mp2t"),), T0 + 2) << Respond(1, Placeholder(Head))
        >> StaleDeadline(T0 + 3)  # the client has its head: it gets the new body, however slow
        >> UpstreamChunk(b"new") << SendBytes(1, 0, 3)
    )


def test_a_client_joining_a_streamed_answer_gets_it_and_no_timer() -> None:
    fill = make_fill(stale_copy(SEG, data=b"old segment"), SEG)
    assert (
        Playbook(fill)
        >> ClientRequested(1) << StartFetch(UPSTREAM[0], 0) << StaleTimer(RULES.stale_after)
        >> UpstreamResponded(200, (("content-type", "video/mp2t"),), T0 + 2) << Respond(1, Placeholder(Head))
        >> UpstreamChunk(b"new") << SendBytes(1, 0, 3)
        >> ClientRequested(2) << Respond(2, Placeholder(Head)) << SendBytes(2, 0, 3)
    )


def test_a_client_joining_a_refresh_starts_the_wait() -> None:
    old = stale_copy()
    assert (
        Playbook(make_fill(old))
        >> RefreshRequested() << StartFetch(UPSTREAM[0], 0)  # nobody waits: no timer
        >> ClientRequested(1) << StaleTimer(TARGET / 2)
        >> StaleDeadline(T0 + 3) << ServeStored(1, old, CacheResult.STALE) << StaleTimer(T0 + 31 - (T0 + 3))
    )


@pytest.mark.parametrize("stale", [
    None,  # nothing to fall back on: the request waits for the upstream
    stale_copy(sie=0.0),  # a copy that may not be served on error (must-revalidate, stale-if-error=0)
], ids=["no copy", "no stale-if-error"])
def test_no_timer_without_a_copy_to_serve(stale: Stored | None) -> None:
    assert Playbook(make_fill(stale)) >> ClientRequested(1) << StartFetch(UPSTREAM[0], 0)


def test_a_blocking_playlist_reload_waits_by_design() -> None:
    key = cache_key("/live/cam/index.m3u8?_HLS_msn=9")
    assert Playbook(make_fill(stale_copy(key), key)) >> ClientRequested(1) << StartFetch(UPSTREAM[0], 0)


# --- over real sockets: a hung origin ---------------------------------------------

def hang(released: asyncio.Event, then: Behaviour) -> Behaviour:
    """An origin that stops answering (SIGSTOP, a dead disk) until `released`, then answers with `then`."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await released.wait()
        return await then(request)
    return handler


async def viewer(session: aiohttp.ClientSession, url: str, until: float,
                 answers: list[tuple[float, int, bytes]]) -> None:
    """Reload `url` every quarter second until `until`: (seconds taken, status, body) of each answer."""
    while time.monotonic() < until:
        start = time.monotonic()
        try:
            async with asyncio.timeout(4 * TARGET):
                async with session.get(url) as r:
                    answers.append((time.monotonic() - start, r.status, await r.read()))
        except TimeoutError:
            answers.append((time.monotonic() - start, 0, b""))  # 0: no answer at all
        await asyncio.sleep(0.25)


async def until_true(check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_hung_origin_costs_a_playlist_request_half_a_target_duration_not_a_504(origin: FakeOrigin) -> None:
    path = "/live/cam/index.m3u8"
    origin.routes[path] = body(OLD, M3U8)
    # A stale bound shorter than the upstream timeout: waiting for the timeout would give a 504 (issue 11, item 2).
    stack = await Stack(origin.url, cache=CacheSettings(disk_path="", stale_while_revalidate=0, stale_if_error=5,
                                                        upstream_timeout=10)).start()
    released = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(stack.edge + path) as r:
                assert (r.status, await r.read()) == (200, OLD)
            born = time.monotonic()
            origin.routes[path] = hang(released, body(NEW, M3U8))
            await asyncio.sleep(1.2)  # the copies (fresh for half of TARGETDURATION 2) are stale at both tiers
            answers: list[tuple[float, int, bytes]] = []
            # Four viewers reload while the copy is within its bound (fresh 1 s + stale_if_error 5 s).
            await asyncio.gather(*(viewer(session, stack.edge + path, born + 4.5, answers) for _ in range(4)))
            slowest = max(t for t, _, _ in answers)
            print(f"\nhung origin: {len(answers)} playlist answers, slowest {slowest:.2f} s "
                  f"(wait {TARGET / 2:.1f} s), statuses {sorted({s for _, s, _ in answers})}")
            assert [(s, b) for _, s, b in answers] == [(200, OLD)] * len(answers)  # no 5xx, no hang
            assert slowest <= TARGET / 2 + 0.6  # half a target duration, and slack for a shared machine
            assert origin.hits[path] <= 3  # the hung fetch goes on; nobody piles more onto the origin

            released.set()  # the origin answers again: what the hung fetch gets is stored and served

            async def new_playlist() -> bool:
                async with session.get(stack.edge + path) as r:
                    return r.status == 200 and await r.read() == NEW
            assert await until_true(new_playlist, 3 * TARGET)
    finally:
        released.set()
        await stack.stop()


@contextlib.contextmanager
def origin_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real `livecdn origin` (synthetic live stream, target duration 2 s) and its URL; stopped afterwards."""
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin={"mode": "synthetic", "target_duration": TARGET, "window": 4,
                                            "segment_bytes": 20_000}, edges=1, router=False))
    listen = re.search(r'\[origin\.builtin\][^\[]*listen = "([^"]+)"', config.read_text())
    assert listen is not None
    proc = subprocess.Popen([sys.executable, "-m", "livecdn", "origin", "--config", str(config), "--node", "origin",
                             "--log-level", "warning"], cwd=ROOT)
    try:
        yield proc, f"http://{listen.group(1)}"
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_a_sigstopped_origin_process_costs_half_a_target_duration_not_a_504(tmp_path: Path) -> None:
    """What was seen (issue 11, item 2), as it was seen: the origin process stopped, the kernel still accepting."""
    with origin_process(tmp_path) as (proc, url):
        async with aiohttp.ClientSession() as session:
            async def live(path: str) -> bool:  # the origin is up and has published a segment
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + path) as r:
                        return r.status == 200
                return False
            assert await until_true(lambda: live("/live/master.m3u8"), 30)
            stack = await Stack(url, cache=CacheSettings(disk_path="", stale_while_revalidate=0, stale_if_error=5,
                                                         upstream_timeout=10)).start()
            try:
                async with session.get(stack.edge + "/live/master.m3u8") as r:  # as a player starts
                    path = "/live/" + next(line for line in (await r.text()).splitlines() if line.endswith(".m3u8"))
                assert await until_true(lambda: live(path), 5 * TARGET)
                async with session.get(stack.edge + path) as r:
                    assert r.status == 200
                    held = await r.read()
                born = time.monotonic()
                proc.send_signal(signal.SIGSTOP)
                await asyncio.sleep(1.2)  # stale at both tiers
                answers: list[tuple[float, int, bytes]] = []
                await asyncio.gather(*(viewer(session, stack.edge + path, born + 4.5, answers) for _ in range(4)))
                slowest = max(t for t, _, _ in answers)
                print(f"\nSIGSTOPped origin: {len(answers)} playlist answers, slowest {slowest:.2f} s, "
                      f"statuses {sorted({s for _, s, _ in answers})}")
                assert [(s, b) for _, s, b in answers] == [(200, held)] * len(answers)
                assert slowest <= TARGET / 2 + 0.6

                proc.send_signal(signal.SIGCONT)  # the stream went on meanwhile: a newer playlist soon

                async def newer() -> bool:
                    async with session.get(stack.edge + path) as r:
                        return r.status == 200 and await r.read() != held
                assert await until_true(newer, 5 * TARGET)
            finally:
                await stack.stop()
