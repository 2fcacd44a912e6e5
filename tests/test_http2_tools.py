"""Real HTTP/2 clients against a real edge: Debian's nghttp2-client tools (nghttp, h2load) and curl.

h2c (prior knowledge) on the edge's plain listener, and HTTP/2 over TLS
(ALPN) on a player listener given an SSL context, as the TLS listener will.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from livecdn.front.http2 import MAX_STREAMS
from livecdn.front.listener import PlayerServer
from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin, body

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("nghttp") or not shutil.which("h2load"),
                                 reason="nghttp2-client is not installed (make deps-test installs it)")]

SEG = bytes(range(256)) * 256  # 64 KiB


async def run(*argv: str, timeout: float = 30.0) -> tuple[int, str]:
    """A tool's exit status and output (run off the loop: the edge under test is in this process)."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace")


async def test_nghttp_sees_our_settings_and_a_whole_answer(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/n/seg1.ts"] = body(SEG)
    code, out = await run("nghttp", "-nv", f"http://127.0.0.1:{stack.edges[0].port}/n/seg1.ts")
    assert code == 0, out
    assert f"[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):{MAX_STREAMS}]" in out
    assert re.search(r"recv \(stream_id=\d+\) :status: 200", out)
    assert re.search(r"recv \(stream_id=\d+\) x-cache: MISS", out)
    assert re.search(r"recv DATA frame <length=\d+, flags=0x01, stream_id=\d+>", out)  # END_STREAM on the last
    assert "recv GOAWAY" not in out


async def test_h2load_a_short_bounded_run_succeeds_whole(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/n/seg1.ts"] = body(SEG)
    code, out = await run("h2load", "-n", "400", "-c", "2", "-m", "20",
                          f"http://127.0.0.1:{stack.edges[0].port}/n/seg1.ts")
    assert code == 0, out
    assert "400 succeeded, 0 failed, 0 errored" in out and "status codes: 400 2xx" in out, out
    assert origin.hits["/n/seg1.ts"] == 1


async def test_curl_with_prior_knowledge_sees_http2_200(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes["/n/seg1.ts"] = body(SEG)
    code, out = await run("curl", "-sS", "-o", "/dev/null", "-D", "-", "--http2-prior-knowledge",
                          f"http://127.0.0.1:{stack.edges[0].port}/n/seg1.ts")
    assert code == 0 and out.startswith("HTTP/2 200"), out


async def test_curl_over_tls_negotiates_http2(origin: FakeOrigin, stack: Stack, tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=edge.test", "-addext", "subjectAltName=DNS:edge.test",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    assert stack.edges[0].front is not None
    players = PlayerServer(stack.edges[0].front)
    server = await asyncio.get_running_loop().create_server(players, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    origin.routes["/n/seg1.ts"] = body(SEG)
    try:
        code, out = await run("curl", "-sS", "-o", "/dev/null", "-D", "-", "--http2", "--cacert",
                              str(tmp_path / "cert.pem"), "--resolve", f"edge.test:{port}:127.0.0.1",
                              f"https://edge.test:{port}/n/seg1.ts")
        assert code == 0 and out.startswith("HTTP/2 200"), out
        code, out = await run("curl", "-sS", "-o", "/dev/null", "-D", "-", "--http1.1", "--cacert",
                              str(tmp_path / "cert.pem"), "--resolve", f"edge.test:{port}:127.0.0.1",
                              f"https://edge.test:{port}/n/seg1.ts")
        assert code == 0 and out.startswith("HTTP/1.1 200"), out
    finally:
        server.close()
        await players.shutdown(1.0)
