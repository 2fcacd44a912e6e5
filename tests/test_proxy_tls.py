"""TLS under a PROXY header: the header in plain, then the handshake on the bytes after it.

The seam the TLS listener uses (`PlayerServer.start(..., ssl=context)` with
`proxy_protocol`): a real edge's front behind a second player listener that
wants both, reached by curl (`--haproxy-protocol` over https) and by a raw
socket that writes a v2 header and then speaks TLS. The access log is a file
here, so what the edge took for the client's address can be read back.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from livecdn.front.listener import PlayerServer
from livecdn.logs import AccessLog
from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin, body

V2 = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def behind(stack: Stack, origin: FakeOrigin, ca: trustme.CA,
                 tmp_path: Path) -> AsyncIterator[tuple[PlayerServer, Path, Path]]:
    """A PROXY + TLS listener over the stack's edge; yields it, the access log file, the CA file."""
    origin.routes["/t/a.ts"] = body(b"a" * 1000)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    log_path, ca_path = tmp_path / "access.log", tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    with open(log_path, "wb") as out:
        access = AccessLog("tls-edge", out.fileno())
        server = PlayerServer(stack.edges[0].front, access_log=access, proxy_protocol=True,  # type: ignore[arg-type]
                              header_timeout=1.0)
        await server.start("127.0.0.1", 0, ssl=context)
        try:
            yield server, log_path, ca_path
        finally:
            await server.shutdown(1.0)
            access.flush()


def remotes(path: Path) -> list[str]:
    return [json.loads(line)["remote"] for line in path.read_text().splitlines()]


async def test_curl_over_https_with_a_proxy_header(behind: tuple[PlayerServer, Path, Path]) -> None:
    server, log_path, ca_path = behind
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--haproxy-protocol", "--interface", "127.0.0.6",
        "--cacert", str(ca_path), f"https://127.0.0.1:{server.port}/t/a.ts", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert out == b"200"
    assert server.access is not None
    server.access.flush()
    assert remotes(log_path) == ["127.0.0.6"]


def _tls_get(port: int, ca_path: Path, header: bytes) -> bytes:
    """A v2 header in plain, then TLS on the same socket: one request, the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(header)
        context = ssl.create_default_context(cafile=str(ca_path))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /t/a.ts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data


async def test_a_v2_header_then_tls_names_the_client(behind: tuple[PlayerServer, Path, Path]) -> None:
    server, log_path, ca_path = behind
    block = socket.inet_pton(socket.AF_INET6, "2001:db8::5") * 2 + struct.pack("!HH", 1234, 443)
    header = V2 + b"\x21\x21" + struct.pack("!H", len(block) + 7) + block + b"\x05\x00\x04tlv!"  # a TLV skipped
    answer = await asyncio.to_thread(_tls_get, server.port, ca_path, header)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"a" * 1000)
    assert server.access is not None
    server.access.flush()
    assert remotes(log_path) == ["2001:db8::5"]


def _closed_without_answer(port: int, first: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(first)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        return data


@pytest.mark.parametrize("first", [
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a ClientHello with no header before it
    b"PROXY TCP4 198.51.100.1 127.0.0.1 1 443\r\nGET / HTTP/1.1\r\n\r\n",  # a header, then plain HTTP: no TLS
    b"PROXY TCP4 198.51",  # a header that never ends (the header timeout: 1 s)
])
async def test_without_a_header_and_a_handshake_the_connection_is_closed(
        behind: tuple[PlayerServer, Path, Path], first: bytes) -> None:
    server, _, ca_path = behind
    assert await asyncio.to_thread(_closed_without_answer, server.port, first) == b""
    assert server.refused_proxy == 1
    block = socket.inet_pton(socket.AF_INET, "198.51.100.2") * 2 + struct.pack("!HH", 1, 443)
    header = V2 + b"\x21\x11" + struct.pack("!H", len(block)) + block
    assert (await asyncio.to_thread(_tls_get, server.port, ca_path, header)).startswith(b"HTTP/1.1 200 ")
