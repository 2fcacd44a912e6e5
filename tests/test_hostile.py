"""Hostile clients (issue 12), the first HTTP items: each bad request answered, with the bytes that showed it.

A real shield and edge on loopback, raw sockets.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import termios

import pytest

from livecdn.front.http1 import MAX_PENDING, PARSE_SLICE
from livecdn.front.listener import HIGH_WATER, UNSENT_LOW
from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin, body
from tests.test_http1_sockets import connect, get, read_reply, warm

PLAYLIST = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n" + b"#EXTINF:2.0,\nseg1.ts\n" * 40


@pytest.mark.parametrize("date", [
    "Mon, 01 Jan 99999999999 00:00:00 GMT",
    "Mon, 01 Jan 2024 99999999999999999999:00:00 GMT",
    "Mon, 01 Jan 2024 00:00:00 +99999999999999",
])
async def test_an_unreadable_if_modified_since_is_ignored_and_the_pipeline_goes_on(
        origin: FakeOrigin, stack: Stack, caplog: pytest.LogCaptureFixture, date: str) -> None:
    origin.routes["/h/seg5.ts"] = body(b"5" * 50, headers={"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"})
    await warm(stack, "/h/seg5.ts")
    reader, writer = await connect(stack)
    with caplog.at_level(logging.ERROR):
        writer.write(get("/h/seg5.ts", f"If-Modified-Since: {date}") + get("/h/seg5.ts"))
        first, second = await read_reply(reader), await read_reply(reader)  # once: no answer, a closed connection
    assert (first.status, first.body) == (200, b"5" * 50) and (second.status, second.body) == (200, b"5" * 50)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    writer.close()


@pytest.mark.parametrize("line", [b"GET /live/master.m3u8", b"GET /x.tsHTTP/1.1"])
async def test_a_request_line_without_a_version_is_a_400(stack: Stack, line: bytes) -> None:
    reader, writer = await connect(stack)
    writer.write(line + b"\r\nHost: x\r\n\r\n")
    reply = await read_reply(reader)  # once: 505 HTTP Version Not Supported
    assert reply.status == 400 and b"no HTTP version" in reply.body
    writer.close()


async def test_http_2_0_in_an_http1_request_line_is_still_a_505(stack: Stack) -> None:
    reader, writer = await connect(stack)
    writer.write(b"GET /a.ts HTTP/2.0\r\nHost: x\r\n\r\n")
    assert (await read_reply(reader)).status == 505
    writer.close()


@pytest.mark.parametrize(("accept", "gzipped"), [
    ("gzip;q=0", False),  # once gzip: "gzip" was found as a substring
    ("nogzip", False),
    ("identity, gzip;q=0", False),
    ("br, GZIP;q=0.5", True),
    ("*", True),
    ("gzip;q=0, *", False),
])
async def test_accept_encoding_is_read_as_codings_with_weights(
        origin: FakeOrigin, stack: Stack, accept: str, gzipped: bool) -> None:
    origin.routes["/g/index.m3u8"] = body(PLAYLIST, "application/vnd.apple.mpegurl")
    await warm(stack, "/g/index.m3u8")
    reader, writer = await connect(stack)
    for extra in ((f"Accept-Encoding: {accept}",), (f"Accept-Encoding: {accept}", "Range: bytes=0-")):
        writer.write(get("/g/index.m3u8", *extra))  # the shared hit plan, and the negotiated path
        reply = await read_reply(reader)
        assert reply.status in (200, 206)
        assert (reply.headers.get("content-encoding") == "gzip") is (gzipped and reply.status == 200)
    writer.close()


async def test_an_absolute_form_target_is_served_as_its_path(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/abs/seg1.ts"] = body(b"a" * 10)
    reader, writer = await connect(stack)
    writer.write(b"GET http://cdn.example/abs/seg1.ts?token=x HTTP/1.1\r\nHost: cdn.example\r\n\r\n"
                 b"GET https://cdn.example/abs/seg1.ts HTTP/1.1\r\n\r\n")  # no Host: the target names it
    first, second = await read_reply(reader), await read_reply(reader)  # once: 400 "must be an absolute path"
    assert (first.status, first.body) == (200, b"a" * 10) and (second.status, second.body) == (200, b"a" * 10)
    writer.close()


async def test_an_hls_directive_in_other_digits_is_refused_not_forwarded(origin: FakeOrigin, stack: Stack) -> None:
    reader, writer = await connect(stack)
    writer.write(get("/live/a/index.m3u8?_HLS_msn=%D9%A3"))  # ARABIC-INDIC DIGIT THREE
    reply = await read_reply(reader)
    assert reply.status == 400 and b"_HLS_msn" in reply.body
    assert origin.hits["/live/a/index.m3u8"] == 0
    writer.close()


async def test_an_unread_pipeline_is_held_as_bytes_not_as_thousands_of_requests(
        origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/pl/a.ts"] = body(b"p" * 4096)
    await warm(stack, "/pl/a.ts")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a player that reads nothing, a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", stack.edges[0].port))
    reader, writer = await asyncio.open_connection(sock=sock)
    n = 256 * 1024 // len(get("/pl/a.ts"))
    writer.write(get("/pl/a.ts") * n)  # 256 KiB of GETs, none of the answers read yet
    await writer.drain()
    await asyncio.sleep(0.3)
    (conn,) = [c for c in stack.edges[0].players.connections if c.h1.backlog or c.h1.pending]
    assert conn.h1.pending <= MAX_PENDING + PARSE_SLICE // 30  # once: ~5,700 queued requests from one read
    replies = [await read_reply(reader) for _ in range(n)]  # every request answered, in order, once read
    assert all(r.status == 200 and r.body == b"p" * 4096 for r in replies)
    writer.close()


async def test_a_client_that_reads_nothing_gets_a_bounded_share_of_answers_until_it_reads(
        origin: FakeOrigin, stack: Stack) -> None:
    # Issue 12: 100 such clients cost the edge 5 s of CPU and /healthz 218 ms: the kernel's
    # autotuned send buffer (up to 4 MiB) took every one of the ~5,700 answers of each.
    origin.routes["/pl/b.ts"] = body(b"b" * 10)
    await warm(stack, "/pl/b.ts")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", stack.edges[0].port))
    reader, writer = await asyncio.open_connection(sock=sock)
    n = 256 * 1024 // len(get("/pl/b.ts"))
    writer.write(get("/pl/b.ts") * n)
    await writer.drain()
    await asyncio.sleep(1.0)
    (conn,) = stack.edges[0].players.connections
    assert conn.transport is not None
    unsent = fcntl.ioctl(conn.transport.get_extra_info("socket").fileno(), termios.TIOCOUTQ, b"\0" * 4)
    committed = int.from_bytes(unsent, "little") + conn.transport.get_write_buffer_size()
    assert committed <= UNSENT_LOW + HIGH_WATER + (64 << 10)  # once: 2.0 MB, every answer made and queued
    assert conn.flow.writing_paused and (conn.h1.pending or conn.h1.backlog)  # the rest waits, unanswered
    replies = [await read_reply(reader) for _ in range(n)]  # read, and every request is answered, in order
    assert all(r.status == 200 and r.body == b"b" * 10 for r in replies)
    writer.close()


@pytest.mark.parametrize("first", ["/pl/c.ts", "/pl/miss.ts"])
async def test_only_a_client_that_pipelines_past_one_batch_gets_its_unsent_bytes_bounded(
        origin: FakeOrigin, stack: Stack, first: str) -> None:
    # The bound is for pipelines past one batch (also behind a miss); a player asking one at a time keeps
    # the kernel's whole send buffer for its segments.
    origin.routes["/pl/c.ts"] = body(b"c" * 10)
    origin.routes["/pl/miss.ts"] = body(b"m" * 10)
    await warm(stack, "/pl/c.ts")
    reader, writer = await connect(stack)
    writer.write(get("/pl/c.ts"))
    assert (await read_reply(reader)).status == 200
    (conn,) = stack.edges[0].players.connections
    sock = conn.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) != UNSENT_LOW
    writer.write(get(first) + get("/pl/c.ts") * (256 * 1024 // len(get("/pl/c.ts"))))
    await writer.drain()
    await read_reply(reader)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == UNSENT_LOW
    writer.close()
