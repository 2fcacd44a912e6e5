"""HTTP/2 conformance and abuse, in the spirit of h2spec (not installable here), over real sockets.

Frames are written raw (what no well-behaved client would send) or with the
`h2` package as a client (tests/h2client.py), against a real edge; each test
checks the frames the edge answered with and when it closed the connection.
"""

from __future__ import annotations

import asyncio

import h2.connection
import pytest

from livecdn.front import listener_h2
from livecdn.front.http2 import MAX_CONTROL, MAX_HEADER_BLOCK, MAX_HEADER_LIST, MAX_RESETS, MAX_STREAMS, PREFACE
from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin, body, slow
from tests.h2client import Answer, H2Client

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, ENHANCE_YOUR_CALM = 0, 1, 3, 6, 11
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 2, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of each whole frame."""
    out = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF, data[9:9 + length]))
        data = data[9 + length:]
    return out


def request_block(path: str = "/c/a.ts", sid: int = 1) -> bytes:
    """A HEADERS frame (END_HEADERS, END_STREAM) for GET `path`, HPACK-encoded by the h2 client."""
    c = h2.connection.H2Connection()
    c.initiate_connection()
    c.data_to_send()
    c.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "edge"), (":path", path)],
                   end_stream=True)
    return c.data_to_send()


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[list[tuple[int, int, int, bytes]], bool]:
    """Preface, empty SETTINGS, then `data`; everything the server sends until it closes (or `timeout`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + frame(SETTINGS, 0, 0) + data)
    received = b""
    closed = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
            if not chunk:
                closed = True
                break
            received += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return frames_of(received), closed


def goaway_code(frames: list[tuple[int, int, int, bytes]]) -> int | None:
    codes = [int.from_bytes(p[4:8], "big") for kind, _, _, p in frames if kind == GOAWAY]
    return codes[-1] if codes else None


async def test_the_server_preface_is_settings_with_our_bounds_and_it_acknowledges_ours(stack: Stack) -> None:
    frames, _ = await exchange(stack.edges[0].port, b"", timeout=0.5)
    kind, flags, sid, payload = frames[0]
    assert (kind, flags, sid) == (SETTINGS, 0, 0)
    settings = {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big")
                for i in range(0, len(payload), 6)}
    assert settings[0x3] == MAX_STREAMS and settings[0x6] == MAX_HEADER_LIST and settings[0x2] == 0
    assert (SETTINGS, ACK, 0, b"") in frames


async def test_a_preface_that_goes_wrong_is_no_http2_and_gets_an_http1_400(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.edges[0].port)
    writer.write(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + frame(SETTINGS, 0, 0))
    data = await asyncio.wait_for(reader.read(), 5)  # until the server closes
    assert data.startswith(b"HTTP/1.1 400") and b"Preface" in data
    writer.close()


HEADERS_1 = request_block()


@pytest.mark.parametrize(("data", "code"), [
    (frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),  # DATA on stream 0
    (HEADERS_1[:5] + (2).to_bytes(4, "big") + HEADERS_1[9:], PROTOCOL_ERROR),  # a client stream id is odd
    (frame(DATA, 0, 1, b"x"), PROTOCOL_ERROR),  # DATA on an idle stream
    (frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")), PROTOCOL_ERROR),  # RST_STREAM on an idle stream
    (frame(CONTINUATION, END_HEADERS, 1), PROTOCOL_ERROR),  # CONTINUATION with no HEADERS before it
    (HEADERS_1[:5] + (3).to_bytes(4, "big") + HEADERS_1[9:] + HEADERS_1, PROTOCOL_ERROR),  # stream id went down
    (frame(PRIORITY, 0, 1, (1).to_bytes(4, "big") + b"\x10"), PROTOCOL_ERROR),  # a stream depends on itself
    (frame(SETTINGS, 0, 0, b"12345"), FRAME_SIZE_ERROR),  # not a multiple of 6
    (frame(PING, 0, 0, b"1234567"), FRAME_SIZE_ERROR),  # PING is 8 bytes
    (frame(DATA, 0, 1, b"x" * 16385), FRAME_SIZE_ERROR),  # over SETTINGS_MAX_FRAME_SIZE
    (frame(WINDOW_UPDATE, 0, 0, (0).to_bytes(4, "big")), PROTOCOL_ERROR),  # an increment of 0
    (frame(WINDOW_UPDATE, 0, 0, (2 ** 31 - 1).to_bytes(4, "big")), FLOW_CONTROL_ERROR),  # window past 2^31-1
    (frame(SETTINGS, 0, 0, (4).to_bytes(2, "big") + (2 ** 31).to_bytes(4, "big")), FLOW_CONTROL_ERROR),
], ids=["data-stream-0", "even-stream", "data-idle", "rst-idle", "lone-continuation", "stream-id-down",
        "self-dependency", "settings-size", "ping-size", "frame-too-large", "window-update-0", "window-overflow",
        "initial-window-too-large"])
async def test_bad_frames_end_the_connection_with_goaway_and_the_right_code(stack: Stack, data: bytes,
                                                                           code: int) -> None:
    frames, closed = await exchange(stack.edges[0].port, data)
    assert goaway_code(frames) == code and closed


async def test_an_unknown_frame_type_is_ignored(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/c/a.ts"] = body(b"ok")
    frames, _ = await exchange(stack.edges[0].port, frame(0x20, 0, 0, b"zz") + HEADERS_1, timeout=1.0)
    assert [f for f in frames if f[0] == DATA and f[2] == 1][0][3] == b"ok" and goaway_code(frames) is None


async def test_a_one_byte_window_is_never_exceeded(origin: FakeOrigin, stack: Stack) -> None:
    data = bytes(range(256)) * 4
    origin.routes["/w/a.ts"] = body(data)
    warm = await H2Client().connect(stack.edges[0].port)
    await warm.get("/w/a.ts")  # a memory hit from now on
    await warm.close()
    c = await H2Client(window=1, auto_ack=False).connect(stack.edges[0].port)
    try:
        sid = c.request("/w/a.ts")
        assert await c.wait(lambda: len(c.answers[sid].body) == 1)
        await asyncio.sleep(0.3)
        assert len(c.answers[sid].body) == 1 and not c.answers[sid].ended.is_set()
        c.ack(sid, 99)
        assert await c.wait(lambda: len(c.answers[sid].body) == 100)
        await asyncio.sleep(0.3)
        assert len(c.answers[sid].body) == 100
        c.ack(sid, len(data) - 100)
        await asyncio.wait_for(c.answers[sid].ended.wait(), 5)
        assert bytes(c.answers[sid].body) == data
    finally:
        await c.close()


async def test_data_frames_keep_to_the_clients_max_frame_size(origin: FakeOrigin, h2_client: H2Client) -> None:
    import h2.events
    origin.routes["/f/a.ts"] = body(b"f" * (1 << 20))
    await h2_client.get("/f/a.ts")
    sizes = [len(e.data) for e in h2_client.events if isinstance(e, h2.events.DataReceived)]
    assert sum(sizes) == 1 << 20 and max(sizes) == 16384


async def test_a_header_list_over_the_bound_ends_the_connection(h2_client: H2Client) -> None:
    big = [(f"x-pad-{i}", "v" * 1000) for i in range(MAX_HEADER_LIST // 1000 + 2)]
    h2_client.request("/c/a.ts", *big)
    assert await h2_client.wait(lambda: h2_client.closed.is_set())
    assert h2_client.goaway is not None and h2_client.goaway.error_code == ENHANCE_YOUR_CALM


async def test_rapid_reset_is_goaway_enhance_your_calm(origin: FakeOrigin, h2_client: H2Client, stack: Stack) -> None:
    origin.routes["/rr/slow.ts"] = slow(2.0, b"s")
    for i in range(MAX_RESETS + 10):
        h2_client.reset(h2_client.request(f"/rr/slow.ts?n={i}"))  # what CVE-2023-44487's attacker sends
    assert await h2_client.wait(lambda: h2_client.closed.is_set())
    assert h2_client.goaway is not None and h2_client.goaway.error_code == ENHANCE_YOUR_CALM
    assert b"resets" in h2_client.goaway.additional_data
    front = stack.edges[0].front
    assert front is not None
    assert await h2_client.wait(lambda: front.inflight == 0, 5)  # every cancelled answer was released


@pytest.mark.parametrize("flood", [frame(PING, 0, 0, b"12345678"), frame(SETTINGS, 0, 0)], ids=["ping", "settings"])
async def test_ping_and_settings_floods_are_goaway_enhance_your_calm(stack: Stack, flood: bytes) -> None:
    frames, closed = await exchange(stack.edges[0].port, flood * (MAX_CONTROL + 10))
    assert goaway_code(frames) == ENHANCE_YOUR_CALM and closed
    acks = [f for f in frames if f[0] in (PING, SETTINGS) and f[1] & ACK]
    assert len(acks) <= 1  # the flood's read is answered with GOAWAY alone (our SETTINGS' ACK aside)


async def test_the_priority_each_request_carries_is_no_priority_flood(origin: FakeOrigin, h2_client: H2Client) -> None:
    origin.routes["/pr/a.ts"] = body(b"p")
    await h2_client.get("/pr/a.ts")
    for n in range(MAX_CONTROL + 20):  # as Chrome and nghttp send them: HEADERS with the PRIORITY flag
        sid = h2_client.conn.get_next_available_stream_id()
        h2_client.answers[sid] = Answer()
        h2_client.conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "edge"),
                                       (":path", "/pr/a.ts")], end_stream=True, priority_weight=200,
                                 priority_depends_on=0, priority_exclusive=True)
        h2_client._send()
        await asyncio.wait_for(h2_client.answers[sid].ended.wait(), 5)
        assert bytes(h2_client.answers[sid].body) == b"p", n
    assert h2_client.goaway is None


async def test_a_continuation_flood_ends_at_the_header_block_bound(stack: Stack) -> None:
    piece = b"\x00" * 1000
    flood = frame(HEADERS, 0, 1, piece) + frame(CONTINUATION, 0, 1, piece) * 200  # 200 KB, never END_HEADERS
    frames, closed = await exchange(stack.edges[0].port, flood)
    gone = [p for kind, _, _, p in frames if kind == GOAWAY]
    # h2 alone would stop at its 64th CONTINUATION frame (64 KB here) with PROTOCOL_ERROR.
    assert closed and goaway_code(frames) == ENHANCE_YOUR_CALM and b"header block" in gone[-1][8:]
    assert str(MAX_HEADER_BLOCK).encode() in gone[-1][8:]


async def test_a_player_that_opens_no_window_is_let_go(origin: FakeOrigin, stack: Stack,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener_h2, "STALL_TIMEOUT", 0.5)
    origin.routes["/z/a.ts"] = body(b"z" * 1000)
    warm = await H2Client().connect(stack.edges[0].port)
    await warm.get("/z/a.ts")
    await warm.close()
    c = await H2Client(window=0, auto_ack=False).connect(stack.edges[0].port)
    try:
        sid = c.request("/z/a.ts")
        assert await c.wait(lambda: c.answers[sid].headers != {})
        assert await c.wait(lambda: c.closed.is_set(), 5)
        assert len(c.answers[sid].body) == 0 and c.goaway is not None
        await c.close()
        for _ in range(100):  # the edge drops it at once, or after its lingering close
            if stack.edges[0].players.open == 0:
                break
            await asyncio.sleep(0.05)
        assert stack.edges[0].players.open == 0
    finally:
        await c.close()


async def test_a_drain_sends_goaway_finishes_the_streams_in_flight_and_refuses_new_ones(origin: FakeOrigin) -> None:
    stack = await Stack(origin.url).start()
    c = await H2Client().connect(stack.edges[0].port)
    try:
        origin.routes["/g/slow.ts"] = slow(0.6, b"in flight")
        first = c.request("/g/slow.ts")
        await asyncio.sleep(0.1)
        stop = asyncio.create_task(stack.stop())
        assert await c.wait(lambda: c.goaway is not None)
        assert c.goaway is not None and (c.goaway.last_stream_id, c.goaway.error_code) == (first, NO_ERROR)
        late = c.request("/g/slow.ts?late")  # past the GOAWAY's last stream id
        await asyncio.wait_for(c.answers[first].ended.wait(), 5)
        await asyncio.wait_for(c.answers[late].ended.wait(), 5)
        assert bytes(c.answers[first].body) == b"in flight" and c.answers[late].reset == 7  # REFUSED_STREAM
        await stop
        assert await c.wait(lambda: c.closed.is_set(), 5)
    finally:
        await c.close()
