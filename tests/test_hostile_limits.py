"""Hostile clients (issue 12), resource bounds: connections in all, refusals that arrive, slow heads, RTSP.

Real edges on loopback (in this process, or a `livecdn edge` process with a
small RLIMIT_NOFILE), raw sockets from many loopback source addresses, and
the router's own health checker against them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from geo.health import HealthChecker
from livecdn.config import LimitSettings
from livecdn.front.connlimit import MAX_LINGERING, OVERLOAD_SHARE, connection_budget, per_process
from livecdn.node.cache import UPSTREAM_CONNECTIONS
from tests.cdn import ROOT, Stack, free_port, wait_until
from tests.fakeorigin import FakeAdmin, FakeOrigin, body
from tests.test_http1_sockets import Reply, connect, get, read_reply, warm


async def idle_from(host: str, port: int, n: int, source: str) -> list[socket.socket]:
    """`n` connections from `source` (a loopback address of its own) that never send a byte."""
    loop = asyncio.get_running_loop()
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.bind((source, 0))
        try:
            await asyncio.wait_for(loop.sock_connect(s, (host, port)), 2)
        except (OSError, TimeoutError):
            s.close()
            break
        socks.append(s)
    return socks


async def ask(host: str, port: int, path: str, source: str = "127.0.0.1", wait: float = 3.0) -> Reply:
    """One GET on a new connection from `source`, answered within `wait` seconds."""
    async def go() -> Reply:
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        try:
            writer.write(get(path, "Connection: close"))
            return await read_reply(reader)
        finally:
            writer.close()
    return await asyncio.wait_for(go(), wait)


def admin_get(url: str, wait: float = 3.0) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=wait) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# --- 3. no cap on total connections ------------------------------------------------

NOFILE = 1024  # the edge process's descriptor limit: a few hundred connections run it out


@contextlib.contextmanager
def edge_process(tmp_path: Path, origin_url: str) -> Iterator[tuple[str, int, str]]:
    """`livecdn edge` with RLIMIT_NOFILE = NOFILE; yields (host, player port, admin URL)."""
    port, admin = free_port(), free_port()
    config = tmp_path / "cdn.toml"
    config.write_text(f"""
[cdn]
name = "t"
[origin]
url = "{origin_url}"
[limits]
miss_rate = 0
connections_per_client = 300
header_timeout = 30
[regions.eu]
location = [50.1, 8.7]
[edges.edge-1]
region = "eu"
listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
origin_fallback = true
[edges.edge-1.cache]
disk_path = ""
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "livecdn", "edge", "--config", str(config), "--node", "edge-1", "--no-access-log",
         "--log-level", "error"], cwd=ROOT, stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE)))
    try:
        url = f"http://127.0.0.1:{admin}/healthz"
        assert wait_until(lambda: _answers(url), 20), "the edge did not come up"
        yield "127.0.0.1", port, url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(url: str) -> bool:
    try:
        admin_get(url, 1)
        return True
    except OSError:
        return False


@pytest.mark.slow
async def test_idle_connections_from_many_addresses_leave_the_edge_answering_and_the_router_steering(
        tmp_path: Path, origin: FakeOrigin) -> None:
    origin.routes["/n/seg1.ts"] = body(b"n" * 1000)
    with edge_process(tmp_path, origin.url) as (host, port, healthz):
        assert (await ask(host, port, "/n/seg1.ts")).status == 200
        # 1,100 idle connections from 5 addresses, each under the per-address cap of 300:
        # more than the process has descriptors (once: GETs and /healthz failed while they stood).
        held: list[socket.socket] = []
        for i in range(5):
            held += await idle_from(host, port, 220, f"127.0.0.{10 + i}")
        try:
            await asyncio.sleep(0.5)
            reply = await ask(host, port, "/n/seg1.ts", "127.0.0.99")  # once: no answer at all
            assert reply.status == 503 and b"connection limit" in reply.body
            status, health = await asyncio.to_thread(admin_get, healthz)
            assert status == 503 and health["overloaded"] is True
            assert health["connections"] <= health["max_connections"] + MAX_LINGERING
            assert health["max_connections"] == connection_budget(UPSTREAM_CONNECTIONS, NOFILE)
            states = []
            checker = HealthChecker({"edge-1": healthz}, lambda _e, s: states.append(s),
                                    interval=0.2, timeout=1.0, failures=3, rise=2)
            async with aiohttp.ClientSession() as session:
                checker.start(session)
                assert await _until(lambda: bool(states))
                await checker.stop()
            assert states[-1].up and states[-1].overloaded  # the router sends new players elsewhere
        finally:
            for s in held:
                s.close()
        await asyncio.sleep(0.3)
        assert (await ask(host, port, "/n/seg1.ts")).status == 200  # and takes them back after
        assert (await asyncio.to_thread(admin_get, healthz))[0] == 200


async def _until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return bool(predicate())


@contextlib.asynccontextmanager
async def edge_with(origin: FakeOrigin, **limits: Any) -> AsyncIterator[Stack]:
    """A shield and an edge with these `[limits]` (misses unmetered)."""
    s = Stack(origin.url, limits=LimitSettings(miss_rate=0, **limits))
    try:
        yield await s.start()
    finally:
        await s.stop()


@pytest.fixture
async def capped(origin: FakeOrigin) -> AsyncIterator[Stack]:
    """An edge bounded to 20 connections in all, 8 per client address."""
    async with edge_with(origin, connections_per_client=8, max_connections=20) as s:
        yield s


async def test_the_edge_reports_overloaded_before_its_connections_run_out(
        origin: FakeOrigin, capped: Stack) -> None:
    origin.routes["/c/a.ts"] = body(b"c" * 10)
    await warm(capped, "/c/a.ts")
    port, healthz = capped.edges[0].port, capped.edge_admin() + "/healthz"
    held = []
    for i in range(2):
        held += await idle_from("127.0.0.1", port, 8, f"127.0.0.{20 + i}")
    await _until(lambda: capped.edges[0].players.open == 16)
    status, health = await asyncio.to_thread(admin_get, healthz)
    assert (status, health["overloaded"], health["connections"]) == (200, False, 16)
    held += await idle_from("127.0.0.1", port, 2, "127.0.0.22")
    await _until(lambda: capped.edges[0].players.open == 18)
    status, health = await asyncio.to_thread(admin_get, healthz)
    assert OVERLOAD_SHARE * 20 <= 18 and (status, health["overloaded"]) == (503, True)
    assert (await ask("127.0.0.1", port, "/c/a.ts", "127.0.0.23")).status == 200  # not full yet: served
    held += await idle_from("127.0.0.1", port, 2, "127.0.0.24")
    reply = await ask("127.0.0.1", port, "/c/a.ts", "127.0.0.25")
    assert reply.status == 503 and reply.headers["retry-after"] == "1"
    assert capped.edges[0].players.refused >= 1
    for s in held:
        s.close()


def test_the_connection_bound_is_derived_from_the_descriptor_limit() -> None:
    assert connection_budget(512, 1 << 16) > connection_budget(512, 4096) > connection_budget(512, 1024) > 0
    assert connection_budget(512, 100) == 1  # too few descriptors: still one
    assert per_process(0, 4, 1000) == 1000  # no node total: what the descriptors allow
    assert per_process(10_000, 4, 1000) == 1000  # a node total above that: still the descriptors
    assert per_process(1000, 3, 5000) == 334  # the node's total, shared by its workers


# --- 5. the refusal at the per-address cap must reach the client ---------------------

def refused_by(host: str, port: int) -> int | str:
    """What a client that sends its GET at once and reads only later gets (a blocking socket, in a thread)."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(get("/x/a.ts"))  # sent before the refusal arrives, so it is still unread when the edge closes
        time.sleep(0.2)
        try:
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionError as e:
            return type(e).__name__
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else repr(data[:40])


async def test_every_refusal_at_the_per_address_cap_is_read_not_reset(origin: FakeOrigin) -> None:
    async with edge_with(origin, connections_per_client=2) as stack:
        held = await idle_from("127.0.0.1", stack.edges[0].port, 2, "127.0.0.1")
        outcomes = await asyncio.gather(*(asyncio.to_thread(refused_by, "127.0.0.1", stack.edges[0].port)
                                          for _ in range(50)))
        assert outcomes == [429] * 50  # once: ConnectionResetError 28-42 times in 50
        for s in held:
            s.close()


# --- 5. RTSP is not HTTP --------------------------------------------------------------

@pytest.mark.parametrize("line", [b"GET /live/master.m3u8 RTSP/1.0", b"OPTIONS rtsp://x/live RTSP/1.0",
                                  b"DESCRIBE /live RTSP/1.0", b"GET /live/master.m3u8 RTSP/2.0"])
async def test_an_rtsp_request_is_a_400_that_says_why(stack: Stack, line: bytes) -> None:
    reader, writer = await connect(stack)
    writer.write(line + b"\r\nCSeq: 1\r\nHost: x\r\n\r\n")
    reply = await read_reply(reader)  # once: served as HTTP/1.0
    assert reply.status == 400 and b"RTSP" in reply.body and b"not HTTP" in reply.body
    writer.close()


# --- 5. slowloris: a header timeout, a 408 ----------------------------------------------

@pytest.fixture
async def hurried(origin: FakeOrigin) -> AsyncIterator[Stack]:
    async with edge_with(origin, connections_per_client=0, header_timeout=0.6) as s:
        yield s


async def test_a_request_head_that_never_ends_gets_a_408_at_the_header_timeout(hurried: Stack) -> None:
    reader, writer = await connect(hurried)
    writer.write(b"GET /live/a.ts HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    for i in range(20):  # slowloris: one header field every 0.1 s, never the blank line
        writer.write(b"X-Drip-%d: 1\r\n" % i)
        await asyncio.sleep(0.1)
        if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
            break
    reply = await asyncio.wait_for(read_reply(reader), 3)  # once: closed at 75 s, with no answer
    assert reply.status == 408 and reply.headers["connection"] == "close"
    assert time.monotonic() - started < 1.5
    assert await asyncio.wait_for(reader.read(), 3) == b""
    writer.close()


async def test_a_connection_that_sends_nothing_closes_at_the_header_timeout_but_keep_alive_waits(
        origin: FakeOrigin, hurried: Stack) -> None:
    origin.routes["/k/a.ts"] = body(b"k")
    silent_reader, silent = await connect(hurried)
    reader, writer = await connect(hurried)
    writer.write(get("/k/a.ts"))
    assert (await read_reply(reader)).status == 200
    await asyncio.sleep(1.0)  # past the header timeout: the silent one is gone, the kept-alive one is not
    assert await asyncio.wait_for(silent_reader.read(), 1) == b""  # closed, nothing said: no request began
    writer.write(get("/k/a.ts"))
    assert (await read_reply(reader)).status == 200
    silent.close()
    writer.close()


# --- the router's health check: a fresh connection each time ---------------------------

class CountingAdmin(FakeAdmin):
    """An admin listener answering /healthz with `answer`, remembering each connection's client port."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: tuple[int, dict[str, Any]] = (200, {"status": "ok", "overloaded": False, "load": 0.1})
        self.peers: list[int] = []

    async def _healthz(self, request: web.Request) -> web.Response:
        self.peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        status, health = self.answer
        return web.json_response(health, status=status)


async def test_the_router_checks_each_time_on_a_new_connection_and_reads_a_503_overloaded() -> None:
    admin = CountingAdmin()
    await admin.start()
    states: list[Any] = []
    checker = HealthChecker({"e": admin.url}, lambda _e, s: states.append(s), interval=0.05, timeout=1.0,
                            failures=2, rise=1)
    try:
        async with aiohttp.ClientSession() as session:
            checker.start(session)
            assert await _until(lambda: len(admin.peers) >= 4)
            assert len(set(admin.peers)) == len(admin.peers)  # once: one kept-alive connection for every check
            admin.answer = (503, {"status": "ok", "overloaded": True, "load": 0.5})
            assert await _until(lambda: bool(states) and states[-1].overloaded)
            assert states[-1].up
            admin.answer = (503, {"status": "ok"})  # a 503 that does not say overloaded is a failure
            assert await _until(lambda: not states[-1].up)
            await checker.stop()
    finally:
        assert admin.runner is not None
        await admin.runner.cleanup()


async def test_reload_applies_the_connection_bound_and_the_header_timeout(origin: FakeOrigin, capped: Stack) -> None:
    edge = capped.edges[0]
    port = edge.port
    held = await idle_from("127.0.0.1", port, 8, "127.0.0.30")
    await _until(lambda: edge.players.open == 8)
    cfg = edge.config
    limits = dataclasses.replace(cfg.limits, max_connections=8, header_timeout=0.5)
    edge.reload(dataclasses.replace(edge.topology, edges={cfg.name: dataclasses.replace(cfg, limits=limits)}))
    assert (edge.players.max_connections, edge.players.header_timeout) == (8, 0.5)
    assert (await ask("127.0.0.1", port, "/c/a.ts", "127.0.0.31")).status == 503  # the new bound: full
    status, health = await asyncio.to_thread(admin_get, capped.edge_admin() + "/healthz")
    assert (status, health["max_connections"]) == (503, 8)
    for s in held:
        s.close()


async def test_a_long_pipeline_of_hits_waits_its_turn_behind_another_player(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/t/a.ts"] = body(b"t" * 10)
    await warm(stack, "/t/a.ts")
    pipeline_reader, pipeline = await connect(stack)
    pipeline.write(get("/t/a.ts") * 3000)  # hits, all answerable at once
    await pipeline.drain()
    reader, writer = await connect(stack)
    writer.write(get("/t/a.ts"))
    assert (await read_reply(reader)).status == 200
    (busy,) = [c for c in stack.edges[0].players.connections if c.h1.backlog or c.h1.pending]
    assert busy.h1.backlog or busy.h1.pending  # once: all 3,000 answered before this player got a turn
    writer.close()
    replies = [await read_reply(pipeline_reader) for _ in range(3000)]
    assert all(r.status == 200 for r in replies)
    pipeline.close()
