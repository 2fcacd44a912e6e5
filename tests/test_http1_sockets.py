"""The player listener over real sockets: pipelining, keep-alive, limits, slow readers, shutdown.

A raw asyncio client speaks HTTP/1.x byte for byte, so each test sees exactly
what the edge wrote, in which order, and when it closed the connection.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiohttp import web

from livecdn.front.http1 import MAX_PENDING as MAX_PIPELINED
from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin, body, slow

SEG = bytes(range(256)) * 4096  # 1 MiB


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self) -> str:
        return f"Reply({self.status}, {len(self.body)} bytes)"


async def read_reply(reader: asyncio.StreamReader, head_only: bool = False) -> Reply:
    """One response: by Content-Length, chunked, or (no framing) until the connection ends."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if head_only or status in (204, 304):
        return Reply(status, headers, b"")
    if "content-length" in headers:
        return Reply(status, headers, await reader.readexactly(int(headers["content-length"])))
    if headers.get("transfer-encoding") == "chunked":
        data = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data += await reader.readexactly(size)
            await reader.readexactly(2)
            if size == 0:
                return Reply(status, headers, data)
    return Reply(status, headers, await reader.read())


async def connect(stack: Stack) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", stack.edges[0].port)


def get(path: str, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/{version}", "Host: edge", *extra, "", ""]).encode()


async def warm(stack: Stack, path: str) -> None:
    reader, writer = await connect(stack)
    writer.write(get(path, "Connection: close"))
    assert (await read_reply(reader)).status == 200
    writer.close()


async def test_pipelined_answers_keep_request_order_around_a_slow_miss(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/p/hot.ts"] = body(b"hot")
    origin.routes["/p/slow.ts"] = slow(0.4, b"slow")
    await warm(stack, "/p/hot.ts")
    reader, writer = await connect(stack)
    writer.write(get("/p/hot.ts") + get("/p/slow.ts") + get("/p/hot.ts", "Range: bytes=1-1") + get("/p/hot.ts"))
    replies = [await read_reply(reader) for _ in range(4)]
    assert [(r.status, r.body, r.headers["x-cache"]) for r in replies] == [
        (200, b"hot", "HIT"), (200, b"slow", "MISS"), (206, b"o", "HIT"), (200, b"hot", "HIT")]
    writer.close()


async def test_pipelining_is_bounded_and_every_request_is_answered(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/q/a.ts"] = body(b"a" * 100)
    await warm(stack, "/q/a.ts")
    reader, writer = await connect(stack)
    n = MAX_PIPELINED * 8
    writer.write(get("/q/a.ts") * n)
    replies = [await read_reply(reader) for _ in range(n)]
    assert all(r.status == 200 and r.body == b"a" * 100 for r in replies)
    writer.close()


async def test_keep_alive_then_idle_close(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/k/a.ts"] = body(b"a")
    stack.edges[0].players.keepalive_timeout = 0.4
    reader, writer = await connect(stack)
    for _ in range(3):  # one connection, several requests
        writer.write(get("/k/a.ts"))
        reply = await read_reply(reader)
        assert reply.status == 200 and "connection" not in reply.headers
        await asyncio.sleep(0.25)  # shorter than the timeout each time: the timer is rescheduled
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the edge once idle
    assert 0.1 < time.monotonic() - started < 1.5
    writer.close()


async def test_connection_close_and_http10(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/v/a.ts"] = body(b"abc")
    for request, header in [(get("/v/a.ts", "Connection: close"), "close"),
                            (get("/v/a.ts", version="1.0"), "close")]:
        reader, writer = await connect(stack)
        writer.write(request)
        reply = await read_reply(reader)
        assert (reply.status, reply.body, reply.headers.get("connection")) == (200, b"abc", header)
        assert await reader.read() == b""
        writer.close()
    reader, writer = await connect(stack)
    writer.write(get("/v/a.ts", "Connection: keep-alive", version="1.0") * 2)
    for _ in range(2):
        reply = await read_reply(reader)
        assert (reply.body, reply.headers["connection"]) == (b"abc", "keep-alive")
    writer.close()


async def test_http10_gets_a_streamed_body_of_unknown_length_until_close(origin: FakeOrigin, stack: Stack) -> None:
    async def unframed(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "video/mp2t"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(3):
            await resp.write(b"x" * 1000)
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp
    origin.routes["/u/a.ts"] = unframed
    origin.routes["/u/b.ts"] = unframed
    reader, writer = await connect(stack)
    writer.write(get("/u/a.ts", "Connection: keep-alive", version="1.0"))
    reply = await read_reply(reader)
    assert reply.body == b"x" * 3000 and reply.headers["connection"] == "close"
    writer.close()
    reader, writer = await connect(stack)
    writer.write(get("/u/b.ts") + get("/u/b.ts"))  # HTTP/1.1: chunked, the connection stays usable
    first, second = await read_reply(reader), await read_reply(reader)
    assert first.headers.get("transfer-encoding") == "chunked" and first.body == b"x" * 3000
    assert second.body == b"x" * 3000
    writer.close()


async def test_head_has_the_length_and_no_body(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/h/a.ts"] = body(SEG)
    reader, writer = await connect(stack)
    # On the miss, then on the hit; then a GET on the same connection proves the framing.
    writer.write(get("/h/a.ts", method="HEAD") + get("/h/a.ts", method="HEAD") + get("/h/a.ts", "Range: bytes=0-3"))
    miss, hit = await read_reply(reader, head_only=True), await read_reply(reader, head_only=True)
    assert miss.headers["content-length"] == hit.headers["content-length"] == str(len(SEG))
    assert hit.headers["x-cache"] in ("COALESCED", "HIT")  # the miss's body may still be arriving
    rng = await read_reply(reader)
    assert (rng.status, rng.body) == (206, SEG[:4])
    writer.close()


async def test_oversized_and_bad_requests_get_a_reason_then_close(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/b/a.ts"] = body(b"fine")
    cases = [
        (b"GET /b/a.ts HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 10000 + b"\r\n\r\n", 431, b"Cookie"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, b"target"),
        (b"BREW /b/a.ts HTTP/1.1\r\nHost: x\r\n\r\n", 405, b"method"),
        (b"GET /b/a.ts HTTP/1.1\r\n\r\n", 400, b"Host"),
        (b"GET /b/a.ts HTTP/1.1\r\nHost: x\r\nExpect: tea\r\n\r\n", 417, b"Expect"),
    ]
    for data, status, word in cases:
        reader, writer = await connect(stack)
        writer.write(get("/b/a.ts") + data)  # a good request first: it is answered, in order
        good = await read_reply(reader)
        bad = await read_reply(reader)
        assert (good.status, good.body) == (200, b"fine")
        assert bad.status == status and word in bad.body and bad.headers["connection"] == "close", bad.body
        if status == 405:
            assert bad.headers["allow"] == "GET, HEAD, OPTIONS"
        assert await reader.read() == b""
        writer.close()


async def test_expect_100_continue_on_a_get_is_just_answered(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/e/a.ts"] = body(b"e")
    reader, writer = await connect(stack)
    writer.write(get("/e/a.ts", "Expect: 100-continue"))
    reply = await read_reply(reader)
    assert (reply.status, reply.body) == (200, b"e")
    writer.close()


async def test_a_post_is_refused_without_reading_its_body(origin: FakeOrigin, stack: Stack) -> None:
    reader, writer = await connect(stack)
    writer.write(b"POST /x.ts HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
    reply = await asyncio.wait_for(read_reply(reader), 5)
    assert reply.status == 405 and reply.headers["connection"] == "close"
    writer.close()
    assert origin.requests == []


async def test_a_slow_reader_does_not_hold_back_others(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/s/big.ts"] = body(SEG)
    origin.routes["/s/small.ts"] = body(b"small")
    await warm(stack, "/s/big.ts")
    await warm(stack, "/s/small.ts")
    # A player that asks for 32 MiB and reads nothing, with a tiny receive window.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", stack.edges[0].port))
    sock.send(get("/s/big.ts") * 32)
    await asyncio.sleep(0.2)
    started = time.monotonic()
    for _ in range(20):
        reader, writer = await connect(stack)
        writer.write(get("/s/small.ts", "Connection: close"))
        assert (await read_reply(reader)).body == b"small"
        writer.close()
    assert time.monotonic() - started < 2.0
    edge = stack.edges[0]
    (slow_conn,) = [c for c in edge.players.connections if c.h1.pending]
    # Its answers wait in its own queue: the transport holds about one body, not 32.
    assert slow_conn.transport.get_write_buffer_size() <= 2 * len(SEG)
    sock.close()


async def test_stop_closes_idle_keep_alive_connections_at_once(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/i/a.ts"] = body(b"a")
    reader, writer = await connect(stack)
    writer.write(get("/i/a.ts"))
    await read_reply(reader)
    started = time.monotonic()
    await stack.edges[0].stop(5.0)
    assert time.monotonic() - started < 1.0  # nothing in flight: no waiting for the timeout
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()


@pytest.mark.parametrize("gzip", [False, True])
async def test_hits_carry_the_same_headers_as_before(origin: FakeOrigin, stack: Stack, gzip: bool) -> None:
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:60\n#EXT-X-MEDIA-SEQUENCE:1\n" + b"#EXTINF:60,\nseg.ts\n" * 40
    origin.routes["/g/index.m3u8"] = body(playlist, "application/vnd.apple.mpegurl",
                                          headers={"ETag": '"p1"', "Last-Modified": "Mon, 02 Nov 2026 10:00:00 GMT"})
    await warm(stack, "/g/index.m3u8")
    reader, writer = await connect(stack)
    writer.write(get("/g/index.m3u8", *(["Accept-Encoding: gzip"] if gzip else [])))
    reply = await read_reply(reader)
    h = reply.headers
    assert (reply.status, h["x-cache"], h["content-type"]) == (200, "HIT", "application/vnd.apple.mpegurl")
    assert h["etag"] == '"p1"' and h["last-modified"] == "Mon, 02 Nov 2026 10:00:00 GMT"
    assert h["access-control-allow-origin"] == "*" and "X-Cache" in h["access-control-expose-headers"]
    assert h["via"] == "1.1 edge-1 (livecdn)" and h["accept-ranges"] == "bytes"
    assert h["vary"] == "Accept-Encoding" and int(h["age"]) >= 0 and h["date"].endswith("GMT")
    assert "cache-control" not in h  # the origin sent none: freshness is the edge's own
    assert h.get("content-encoding") == ("gzip" if gzip else None)
    assert int(h["content-length"]) == len(reply.body)
    writer.close()


async def test_disk_hits_without_loop_sendfile_are_copied_at_the_players_pace(
        origin: FakeOrigin, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop has no loop.sendfile: a disk-tier file is read off the loop and written chunk by chunk."""
    from livecdn.config import CacheSettings

    async def no_sendfile(*args: object, **kwargs: object) -> None:
        raise NotImplementedError
    monkeypatch.setattr(asyncio.get_running_loop(), "sendfile", no_sendfile)
    cache = CacheSettings(memory_bytes=3 << 20, disk_path=f"{tmp_path}/{{node}}", disk_bytes=64 << 20)
    stack = await Stack(origin.url, cache=cache).start()
    try:
        bodies = {f"/d/seg{i}.ts": bytes([i]) * (1 << 20) for i in range(2)}  # too big for memory (3 MiB / 4)
        for path, data in bodies.items():
            origin.routes[path] = body(data)
            await warm(stack, path)
        await asyncio.sleep(0.3)  # disk writes run off the loop
        reader, writer = await connect(stack)
        writer.write(get("/d/seg0.ts") + get("/d/seg1.ts", "Range: bytes=10-19") + get("/d/seg0.ts", method="HEAD"))
        whole, part, head = await read_reply(reader), await read_reply(reader), await read_reply(reader, True)
        assert (whole.status, whole.body, whole.headers["x-cache"]) == (200, bodies["/d/seg0.ts"], "HIT")
        assert (part.status, part.body) == (206, bytes([1]) * 10)
        assert head.headers["content-length"] == str(1 << 20)
        writer.close()
    finally:
        await stack.stop()
