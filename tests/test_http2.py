"""HTTP/2 toward players over real sockets: what the HTTP/1.1 tests pin, pinned for HTTP/2 too.

A raw `h2` client (tests/h2client.py) speaks to a real shield and edge in
front of the fake origin, with prior knowledge (h2c) or over TLS with ALPN
"h2", and sees every header, body byte, reset and GOAWAY the edge sent.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
from pathlib import Path

import h2.settings
import pytest

from livecdn.config import CacheSettings
from livecdn.front.http2 import MAX_STREAMS
from livecdn.front.listener import PlayerServer
from livecdn.logs import AccessLog
from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin, body, dribble, reset_after, slow, status
from tests.h2client import H2Client

SEG = bytes(range(256)) * 4096  # 1 MiB
PLAYLIST = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n" + b"#EXTINF:2.0,\nseg1.ts\n" * 40
CONNECTION_SPECIFIC = {"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"}


async def test_a_streamed_miss_then_a_memory_hit_with_the_same_fields(origin: FakeOrigin, h2_client: H2Client) -> None:
    origin.routes["/h/seg1.ts"] = dribble(SEG, 8, 0.02)  # arrives in pieces: the edge streams it
    miss = await h2_client.get("/h/seg1.ts")
    hit = await h2_client.get("/h/seg1.ts")
    for answer, cache in ((miss, "MISS"), (hit, "HIT")):
        h = answer.headers
        assert (answer.status, bytes(answer.body), h["x-cache"]) == (200, SEG, cache)
        assert h["content-type"] == "video/mp2t" and h["via"] == "1.1 edge-1 (livecdn)"
        assert h["access-control-allow-origin"] == "*" and "X-Cache" in h["access-control-expose-headers"]
        assert int(h["age"]) >= 0 and h["date"].endswith("GMT")
        assert not CONNECTION_SPECIFIC & set(h) and all(n == n.lower() for n in h)
    assert hit.headers["content-length"] == str(len(SEG))
    assert origin.hits["/h/seg1.ts"] == 1


async def test_ranges_are_206_and_an_unsatisfiable_one_is_416(origin: FakeOrigin, h2_client: H2Client) -> None:
    origin.routes["/r/seg1.ts"] = body(SEG)
    await h2_client.get("/r/seg1.ts")
    part = await h2_client.get("/r/seg1.ts", ("range", "bytes=10-19"))
    assert (part.status, bytes(part.body)) == (206, SEG[10:20])
    assert part.headers["content-range"] == f"bytes 10-19/{len(SEG)}" and part.headers["content-length"] == "10"
    tail = await h2_client.get("/r/seg1.ts", ("range", "bytes=-4"))
    assert (tail.status, bytes(tail.body)) == (206, SEG[-4:])
    bad = await h2_client.get("/r/seg1.ts", ("range", f"bytes={len(SEG)}-"))
    assert bad.status == 416 and bad.headers["content-range"] == f"bytes */{len(SEG)}"


async def test_conditional_requests_are_304_with_no_body(origin: FakeOrigin, h2_client: H2Client) -> None:
    origin.routes["/c/seg1.ts"] = body(b"c" * 100, headers={"ETag": '"v1"', "Last-Modified": "Tue, 01 Dec 2026 "
                                                                                           "10:00:00 GMT"})
    first = await h2_client.get("/c/seg1.ts")
    assert first.status == 200 and first.headers["etag"] == '"v1"'
    for header in (("if-none-match", '"v1"'), ("if-modified-since", "Tue, 01 Dec 2026 10:00:00 GMT")):
        answer = await h2_client.get("/c/seg1.ts", header)
        assert (answer.status, bytes(answer.body)) == (304, b""), header
        assert "content-length" not in answer.headers and answer.headers["etag"] == '"v1"'
    changed = await h2_client.get("/c/seg1.ts", ("if-none-match", '"v0"'))
    assert (changed.status, bytes(changed.body)) == (200, b"c" * 100)


async def test_head_sends_the_length_and_no_body(origin: FakeOrigin, h2_client: H2Client) -> None:
    origin.routes["/hd/seg1.ts"] = body(SEG)
    miss = await h2_client.get("/hd/seg1.ts", method="HEAD")  # a miss streamed from upstream: still no DATA
    hit = await h2_client.get("/hd/seg1.ts", method="HEAD")
    for answer in (miss, hit):
        assert (answer.status, bytes(answer.body), answer.reset) == (200, b"", None)
    assert hit.headers["content-length"] == str(len(SEG))


async def test_cors_preflight_and_headers(h2_client: H2Client) -> None:
    answer = await h2_client.get("/any/index.m3u8", ("origin", "https://player.example"),
                              ("access-control-request-method", "GET"), method="OPTIONS")
    h = answer.headers
    assert answer.status == 204 and h["access-control-allow-origin"] == "*"
    assert h["access-control-allow-methods"] == "GET, HEAD, OPTIONS" and "Range" in h["access-control-allow-headers"]
    assert h["access-control-max-age"] == "86400"


async def test_playlists_are_gzipped_only_for_a_client_that_asks(origin: FakeOrigin, h2_client: H2Client) -> None:
    origin.routes["/g/index.m3u8"] = body(PLAYLIST, "application/vnd.apple.mpegurl")
    await h2_client.get("/g/index.m3u8")
    zipped = await h2_client.get("/g/index.m3u8", ("accept-encoding", "gzip, deflate, br"))
    plain = await h2_client.get("/g/index.m3u8", ("accept-encoding", "identity"))
    assert zipped.headers["content-encoding"] == "gzip" and gzip.decompress(bytes(zipped.body)) == PLAYLIST
    assert zipped.headers["vary"] == "Accept-Encoding"
    assert int(zipped.headers["content-length"]) == len(zipped.body) < len(PLAYLIST)
    assert "content-encoding" not in plain.headers and bytes(plain.body) == PLAYLIST


async def test_age_counts_from_the_answers_birth_upstream(origin: FakeOrigin, h2_client: H2Client) -> None:
    origin.routes["/a/seg1.ts"] = body(b"a", headers={"Age": "30", "Cache-Control": "max-age=600"})
    first = await h2_client.get("/a/seg1.ts")
    await asyncio.sleep(1.1)
    second = await h2_client.get("/a/seg1.ts")
    assert int(first.headers["age"]) >= 30 and second.headers["x-cache"] == "HIT"
    assert int(second.headers["age"]) >= int(first.headers["age"]) + 1


async def test_errors_have_their_status_and_reason_on_their_stream_only(origin: FakeOrigin,
                                                                       h2_client: H2Client) -> None:
    origin.routes["/e/busy.ts"] = status(503, "come back later\n", {"Retry-After": "7"})
    not_found = await h2_client.get("/e/none.ts")
    assert not_found.status == 404
    post = await h2_client.get("/e/a.ts", method="POST")
    assert post.status == 405 and post.headers["allow"] == "GET, HEAD, OPTIONS" and b"POST" in post.body
    bad = await h2_client.get("/live/a/index.m3u8?_HLS_msn=%D9%A3")
    assert bad.status == 400 and b"_HLS_msn" in bad.body and origin.hits["/live/a/index.m3u8"] == 0
    busy = await h2_client.get("/e/busy.ts")
    assert busy.status == 503 and busy.headers["retry-after"] == "7"
    huge = await h2_client.get("/" + "a" * 9000)
    assert huge.status == 414 and b"target" in huge.body
    origin.routes["/e/fine.ts"] = body(b"fine")
    fine = await h2_client.get("/e/fine.ts")  # the connection goes on after every error
    assert (fine.status, bytes(fine.body)) == (200, b"fine") and h2_client.goaway is None


async def test_disk_hits_are_read_in_steps_and_framed(origin: FakeOrigin, tmp_path: Path) -> None:
    cache = CacheSettings(memory_bytes=3 << 20, disk_path=f"{tmp_path}/{{node}}", disk_bytes=64 << 20)
    stack = await Stack(origin.url, cache=cache).start()
    c = await H2Client().connect(stack.edges[0].port)
    try:
        bodies = {f"/d/seg{i}.ts": bytes([i]) * (1 << 20) for i in range(2)}  # too big for memory (3 MiB / 4)
        for path, data in bodies.items():
            origin.routes[path] = body(data)
            assert (await c.get(path)).status == 200
        await asyncio.sleep(0.3)  # disk writes run off the loop
        whole, part, head = await asyncio.gather(
            c.get("/d/seg0.ts"), c.get("/d/seg1.ts", ("range", "bytes=10-19")), c.get("/d/seg0.ts", method="HEAD"))
        assert (whole.status, bytes(whole.body), whole.headers["x-cache"]) == (200, bodies["/d/seg0.ts"], "HIT")
        assert (part.status, bytes(part.body)) == (206, bytes([1]) * 10)
        assert head.headers["content-length"] == str(1 << 20) and bytes(head.body) == b""
        assert stack.edges[0].engine is not None and origin.hits["/d/seg0.ts"] == 1
    finally:
        await c.close()
        await stack.stop()


async def test_concurrent_streams_are_answered_each_at_its_own_pace(origin: FakeOrigin, h2_client: H2Client) -> None:
    origin.routes["/p/slow.ts"] = slow(0.5, b"slow")
    origin.routes["/p/fast.ts"] = body(b"fast")
    await h2_client.get("/p/fast.ts")
    slow_id = h2_client.request("/p/slow.ts")
    fast = await h2_client.get("/p/fast.ts", timeout=0.4)  # not behind the slow one (HTTP/1.1 would be)
    assert (fast.status, bytes(fast.body)) == (200, b"fast")
    await asyncio.wait_for(h2_client.answers[slow_id].ended.wait(), 5)
    assert bytes(h2_client.answers[slow_id].body) == b"slow"


async def test_streams_past_the_advertised_bound_are_refused_not_the_connection(
        origin: FakeOrigin, h2_client: H2Client) -> None:
    origin.routes["/m/slow.ts"] = slow(1.0, b"s")
    assert await h2_client.wait(lambda: h2_client.server_settings)
    assert h2_client.server_settings[3] == MAX_STREAMS  # SETTINGS_MAX_CONCURRENT_STREAMS
    # A client that ignores it:
    h2_client.conn.remote_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 10 * MAX_STREAMS})
    ids = [h2_client.request(f"/m/slow.ts?n={i}") for i in range(MAX_STREAMS + 5)]
    assert await h2_client.wait(lambda: all(h2_client.answers[i].ended.is_set() for i in ids), 10)
    refused = [i for i in ids if h2_client.answers[i].reset == 7]  # REFUSED_STREAM
    answered = [i for i in ids if h2_client.answers[i].reset is None]
    assert len(refused) == 5 and len(answered) == MAX_STREAMS and h2_client.goaway is None
    assert all(bytes(h2_client.answers[i].body) == b"s" for i in answered)


async def test_a_cancelled_stream_stops_and_the_shared_fetch_goes_on(origin: FakeOrigin, h2_client: H2Client,
                                                                     stack: Stack) -> None:
    origin.routes["/x/seg1.ts"] = dribble(SEG, 10, 0.05)
    sid = h2_client.request("/x/seg1.ts")
    assert await h2_client.wait(lambda: len(h2_client.answers[sid].body) > 0)
    h2_client.reset(sid)
    front = stack.edges[0].front
    assert front is not None
    assert await h2_client.wait(lambda: front.inflight == 0, 5)  # the stream's plan was released
    again = await h2_client.get("/x/seg1.ts")  # the fill went on: whole, one origin request
    assert bytes(again.body) == SEG and origin.hits["/x/seg1.ts"] == 1


async def test_a_body_that_breaks_upstream_resets_the_stream_never_ends_it(origin: FakeOrigin,
                                                                           h2_client: H2Client) -> None:
    origin.routes["/b/seg1.ts"] = reset_after(SEG, 100_000)
    answer = await h2_client.get("/b/seg1.ts")
    assert answer.reset is not None and len(answer.body) < len(SEG)
    origin.routes["/b/ok.ts"] = body(b"ok")
    assert bytes((await h2_client.get("/b/ok.ts")).body) == b"ok"  # only that stream


async def test_an_idle_connection_ends_at_the_keepalive_timeout(origin: FakeOrigin, stack: Stack) -> None:
    stack.edges[0].players.keepalive_timeout = 0.5
    c = await H2Client().connect(stack.edges[0].port)
    try:
        origin.routes["/i/a.ts"] = body(b"i")
        assert (await c.get("/i/a.ts")).status == 200
        assert await c.wait(lambda: c.closed.is_set(), 5)
        assert c.goaway is not None and c.goaway.error_code == 0
    finally:
        await c.close()


async def test_access_lines_say_http2(origin: FakeOrigin, stack: Stack, capfd: pytest.CaptureFixture[str]) -> None:
    players = stack.edges[0].players
    players.access = AccessLog("edge-1")
    origin.routes["/l/a.ts"] = body(b"l" * 10)
    c = await H2Client().connect(stack.edges[0].port)
    try:
        await c.get("/l/a.ts")
        await c.get("/l/a.ts")
    finally:
        await c.close()
    players.access.flush()
    lines = [line for line in capfd.readouterr().err.splitlines() if '"/l/a.ts"' in line]
    assert len(lines) == 2 and all('"protocol":"HTTP/2"' in line and '"bytes":10' in line for line in lines)


async def test_without_h2c_the_preface_is_an_http1_error(stack: Stack) -> None:
    stack.edges[0].players.h2c = False
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.edges[0].port)
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith((b"HTTP/1.1 400", b"HTTP/1.1 505")) and b"Connection: close" in head
    writer.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl, as an operator would make one)."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=edge.test", "-addext", "subjectAltName=DNS:edge.test",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


@pytest.mark.parametrize("alpn", [["h2", "http/1.1"], ["http/1.1"]])
async def test_alpn_h2_makes_a_tls_connection_http2_and_http11_stays_http11(
        origin: FakeOrigin, stack: Stack, certificate: tuple[Path, Path], alpn: list[str]) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    assert stack.edges[0].front is not None
    players = PlayerServer(stack.edges[0].front, h2c=False)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(players, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client_ctx.set_alpn_protocols(alpn)
    origin.routes["/t/seg1.ts"] = body(b"t" * 1000)
    try:
        if alpn[0] == "h2":
            c = await H2Client().connect(port, tls=client_ctx, server_hostname="edge.test")
            answer = await c.get("/t/seg1.ts")
            assert (answer.status, bytes(answer.body)) == (200, b"t" * 1000)
            await c.close()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                           server_hostname="edge.test")
            writer.write(b"GET /t/seg1.ts HTTP/1.1\r\nHost: edge.test\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).startswith(b"HTTP/1.1 200")
            writer.close()
    finally:
        server.close()
        await players.shutdown(1.0)



def test_h2c_is_on_unless_the_topology_turns_it_off_for_an_edge(tmp_path: Path) -> None:
    from livecdn.config import ConfigError, load
    from tests.test_config import MINIMAL
    path = tmp_path / "cdn.toml"
    path.write_text(MINIMAL)
    assert load(path).edges["e"].h2c is True
    path.write_text(MINIMAL.replace('admin = "127.0.1.1:9080"', 'admin = "127.0.1.1:9080"\nh2c = false'))
    assert load(path).edges["e"].h2c is False
    path.write_text(MINIMAL.replace('admin = "127.0.1.1:9080"', 'admin = "127.0.1.1:9080"\nh2c = "maybe"'))
    with pytest.raises(ConfigError, match=r"edges\.e\.h2c: expected true or false, got 'maybe'"):
        load(path)
