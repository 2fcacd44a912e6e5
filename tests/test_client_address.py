"""Real client addresses behind load balancers, against a running CDN (`livecdn demo`).

edge-1 (eu) trusts 127.0.0.1 to name its clients in X-Forwarded-For; edge-2
(us) wants a PROXY header on every connection; the router trusts 127.0.0.1
too. The test is the load balancer: curl or a raw socket from 127.0.0.1 (a
trusted hop) or from another loopback address (anyone else). Each test uses
client addresses of its own, so the per-client buckets of one never meet
another's. Before this change every one of these saw 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdn import ROOT, run_cdn, topology_toml, wait_until

pytestmark = pytest.mark.slow

SYNTHETIC = {"mode": "synthetic", "target_duration": 1, "window": 4, "segment_bytes": 20_000}
# Small enough to hit in a few requests: a client's 4th request in a row is a 429.
BURST = 3
PER_ADDRESS = 2  # open connections per client address
HEADER_TIMEOUT = 1.0
V2 = b"\r\n\r\n\x00\r\nQUIT\n"
# A trusted balancer the demo database places in the us (127.0.0.1 is placed nowhere: the default, eu).
US_BALANCER = "127.0.2.250"


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    config = tmp_path_factory.mktemp("addresses") / "cdn.toml"
    text = topology_toml(origin=SYNTHETIC)
    text = text.replace('[cdn]\n', f'[cdn]\ntrusted_proxies = ["127.0.0.1/32", "{US_BALANCER}/32"]\n', 1)
    text = text.replace("[origin]\n", f"[limits]\nrequest_rate = 0.1\nrequest_burst = {BURST}\nmiss_rate = 0\n"
                                      f"connections_per_client = {PER_ADDRESS}\nheader_timeout = {HEADER_TIMEOUT}\n"
                                      "\n[origin]\n", 1)
    text = text.replace("[edges.edge-2]\n", "[edges.edge-2]\nproxy_protocol = true\n", 1)
    config.write_text(text)
    with run_cdn(config) as info:
        yield info


def node(cdn: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in cdn["nodes"] if n["name"] == name)


def hostport(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def curl(url: str, source: str, *args: str) -> tuple[int, dict[str, str]]:
    """One GET with curl from `source`: its status and headers."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-D", "-", "--max-time", "5", "--interface", source,
                          *args, url], capture_output=True, text=True, timeout=10)
    lines = out.stdout.splitlines()
    assert lines, f"curl got no answer: {out.stderr}"
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}


def statuses(url: str, source: str, forwarded: list[str]) -> list[int]:
    return [curl(url, source, "-H", f"X-Forwarded-For: {xff}")[0] for xff in forwarded]


def logged(cdn: dict[str, Any], node_name: str, path: str) -> list[str]:
    """The `remote` of every access line of `node_name` for `path` (access lines are flushed each second)."""
    out = []
    log = Path(cdn["access_log"])  # the demo writes access lines to the file it names
    for line in (log.read_text() if log.exists() else "").splitlines():
        if line.startswith("{") and f'"path":"{path}"' in line:
            entry = json.loads(line)
            if entry.get("node") == node_name:
                out.append(entry["remote"])
    return out


def remotes_for(cdn: dict[str, Any], node_name: str, path: str, count: int) -> list[str]:
    assert wait_until(lambda: len(logged(cdn, node_name, path)) >= count, 5), logged(cdn, node_name, path)
    return logged(cdn, node_name, path)


def play(cdn: dict[str, Any], name: str, tag: str) -> str:
    """The master playlist's URL at edge `name`, with a query of its own so its log lines are this test's."""
    return node(cdn, name)["url"] + f"/live/master.m3u8?t={tag}"


def healthz(cdn: dict[str, Any], name: str) -> dict[str, Any]:
    out = subprocess.run(["curl", "-s", "--max-time", "5", node(cdn, name)["admin"] + "/healthz"],
                         capture_output=True, text=True, timeout=10)
    return dict(json.loads(out.stdout))


# --- X-Forwarded-For -------------------------------------------------------------------

def test_a_trusted_proxy_names_the_client_that_is_logged_and_limited(cdn: dict[str, Any]) -> None:
    url = play(cdn, "edge-1", "trusted")
    assert statuses(url, "127.0.0.1", ["203.0.113.10"] * (BURST + 1)) == [200] * BURST + [429]
    # Another client behind the same balancer has a bucket of its own (once: the balancer's, spent: 429).
    assert statuses(url, "127.0.0.1", ["203.0.113.11"]) == [200]
    path = urllib.parse.urlsplit(url).path + "?t=trusted"
    assert remotes_for(cdn, "edge-1", path, BURST + 2) == ["203.0.113.10"] * (BURST + 1) + ["203.0.113.11"]


def test_over_http2_a_trusted_proxy_names_the_client_of_each_stream(cdn: dict[str, Any]) -> None:
    url = play(cdn, "edge-1", "trusted-h2")
    status, _ = curl(url, "127.0.0.1", "--http2-prior-knowledge", "-H", "X-Forwarded-For: 203.0.113.40")
    assert status == 200
    status, _ = curl(url, "127.0.0.21", "--http2-prior-knowledge", "-H", "X-Forwarded-For: 203.0.113.41")
    assert status == 200  # from an untrusted peer the header is ignored, over HTTP/2 as over HTTP/1.1
    path = urllib.parse.urlsplit(url).path + "?t=trusted-h2"
    assert remotes_for(cdn, "edge-1", path, 2) == ["203.0.113.40", "127.0.0.21"]


def test_from_an_untrusted_peer_the_header_is_ignored(cdn: dict[str, Any]) -> None:
    url = play(cdn, "edge-1", "untrusted")
    # A new address each time would be a fresh bucket each time, if it were believed.
    got = statuses(url, "127.0.0.2", [f"203.0.113.{20 + i}" for i in range(BURST + 1)])
    assert got == [200] * BURST + [429]
    assert set(remotes_for(cdn, "edge-1", "/live/master.m3u8?t=untrusted", BURST + 1)) == {"127.0.0.2"}


def test_spoofed_entries_left_of_the_client_do_not_win(cdn: dict[str, Any]) -> None:
    url = play(cdn, "edge-1", "spoofed")
    # The client wrote what is left of its own address; 127.0.0.1 (a trusted hop) on the right is skipped.
    forged = [f"198.51.100.{i}, 203.0.113.30" for i in range(BURST)] + ["198.51.100.9, 203.0.113.30, 127.0.0.1"]
    assert statuses(url, "127.0.0.1", forged) == [200] * BURST + [429]
    assert set(remotes_for(cdn, "edge-1", "/live/master.m3u8?t=spoofed", BURST + 1)) == {"203.0.113.30"}


def test_garbage_in_the_header_falls_back_to_the_peer(cdn: dict[str, Any]) -> None:
    url = play(cdn, "edge-1", "garbage")
    for value in ("not-an-address", "203.0.113.40, ::::zz", "", "[2001:db8::1"):
        assert curl(url, "127.0.0.1", "-H", f"X-Forwarded-For: {value}")[0] in (200, 429)
    assert curl(url, "127.0.0.1", "-H", "X-Forwarded-For: [2001:db8::7]:4711")[0] == 200
    assert remotes_for(cdn, "edge-1", "/live/master.m3u8?t=garbage", 5)[-5:] == ["127.0.0.1"] * 4 + ["2001:db8::7"]


def test_a_trusted_balancer_is_not_capped_per_address_but_others_are(cdn: dict[str, Any]) -> None:
    host, port = hostport(node(cdn, "edge-1")["url"])
    trusted = [_connected(host, port, "127.0.0.1") for _ in range(PER_ADDRESS + 2)]
    others = [_connected(host, port, "127.0.0.3") for _ in range(PER_ADDRESS + 1)]
    try:
        for i, s in enumerate(trusted):
            assert _get(s, f"/live/master.m3u8?t=cap{i}", f"X-Forwarded-For: 203.0.113.{50 + i}\r\n") == 200
        assert [_get(s, "/live/master.m3u8?t=capo") for s in others] == [200] * PER_ADDRESS + [429]
    finally:
        for s in trusted + others:
            s.close()


# --- PROXY protocol --------------------------------------------------------------------

def test_curl_haproxy_protocol_gives_its_address_to_the_log(cdn: dict[str, Any]) -> None:
    url = play(cdn, "edge-2", "curlpp")
    assert curl(url, "127.0.0.4", "--haproxy-protocol")[0] == 200
    assert remotes_for(cdn, "edge-2", "/live/master.m3u8?t=curlpp", 1) == ["127.0.0.4"]


def _v1(source: str) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    dest = "::1" if ":" in source else "127.0.2.1"
    return f"PROXY {family} {source} {dest} 40000 8080\r\n".encode()


def _v2(source: str, tlvs: bytes = b"") -> bytes:
    packed = socket.inet_pton(socket.AF_INET6 if ":" in source else socket.AF_INET, source)
    family = 0x21 if ":" in source else 0x11
    addresses = packed + packed + struct.pack("!HH", 40000, 8080) + tlvs
    return V2 + bytes([0x21, family]) + struct.pack("!H", len(addresses)) + addresses


@pytest.mark.parametrize(("header", "source", "expected"), [
    (_v1("198.51.100.7"), "127.0.0.1", "198.51.100.7"),
    (_v1("2001:db8::42"), "127.0.0.1", "2001:db8::42"),
    (_v2("198.51.100.8", tlvs=b"\x05\x00\x04abcd\x04\x00\x00"), "127.0.0.1", "198.51.100.8"),  # TLVs skipped
    (_v2("2001:db8::43"), "127.0.0.1", "2001:db8::43"),
    (V2 + b"\x20\x00\x00\x00", "127.0.0.11", "127.0.0.11"),  # LOCAL (a health check): the real peer
    (V2 + b"\x21\x00\x00\x04abcd", "127.0.0.12", "127.0.0.12"),  # UNSPEC: the real peer
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", "127.0.0.13", "127.0.0.13"),
])
def test_a_proxy_header_names_the_client_in_the_log(cdn: dict[str, Any], header: bytes, source: str,
                                                     expected: str) -> None:
    host, port = hostport(node(cdn, "edge-2")["url"])
    tag = f"pp{expected}"
    s = _connected(host, port, source)
    try:
        s.sendall(header)  # the header and the request in separate writes, then in one
        time.sleep(0.05)
        assert _get(s, f"/live/master.m3u8?t={tag}") == 200
    finally:
        s.close()
    s = _connected(host, port, source)
    try:
        assert _get(s, f"/live/master.m3u8?t={tag}", prefix=header) == 200
    finally:
        s.close()
    assert remotes_for(cdn, "edge-2", f"/live/master.m3u8?t={tag}", 2) == [expected] * 2


def test_the_per_address_cap_counts_the_proxy_headers_address(cdn: dict[str, Any]) -> None:
    host, port = hostport(node(cdn, "edge-2")["url"])
    opened = []
    try:
        for _ in range(PER_ADDRESS):
            opened.append(_connected(host, port, "127.0.0.1"))
            assert _get(opened[-1], "/live/master.m3u8?t=ppcap", prefix=_v1("198.51.100.60")) == 200
        extra = _connected(host, port, "127.0.0.1")
        opened.append(extra)
        assert _get(extra, "/live/master.m3u8?t=ppcap", prefix=_v1("198.51.100.60")) == 429
        other = _connected(host, port, "127.0.0.1")
        opened.append(other)
        assert _get(other, "/live/master.m3u8?t=ppcap", prefix=_v2("198.51.100.61")) == 200
    finally:
        for s in opened:
            s.close()


@pytest.mark.parametrize("start", [
    b"GET /live/master.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n",  # no header at all
    b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n",
    b"PROXY TCP4 " + b"1" * 200,  # past the v1 bound
    V2 + b"\x21\x11\xff\xff",  # a v2 header longer than its bound
    b"\x16\x03\x01\x00\xa5\x01\x00",  # a TLS ClientHello
])
def test_a_connection_without_a_good_proxy_header_is_closed_and_counted(cdn: dict[str, Any], start: bytes) -> None:
    host, port = hostport(node(cdn, "edge-2")["url"])
    before = healthz(cdn, "edge-2")["refused_proxy_headers"]
    s = _connected(host, port, "127.0.0.1")
    try:
        s.sendall(start)
        assert _read_all(s) == b""  # closed, nothing answered
    finally:
        s.close()
    assert healthz(cdn, "edge-2")["refused_proxy_headers"] == before + 1
    assert curl(play(cdn, "edge-2", "after"), "127.0.0.1", "--haproxy-protocol")[0] in (200, 429)  # still serving


def test_a_proxy_header_must_arrive_within_the_header_timeout(cdn: dict[str, Any]) -> None:
    host, port = hostport(node(cdn, "edge-2")["url"])
    before = healthz(cdn, "edge-2")["refused_proxy_headers"]
    s = _connected(host, port, "127.0.0.1")
    try:
        s.sendall(b"PROXY TCP4 198.51.")
        started = time.monotonic()
        assert _read_all(s) == b""
        assert HEADER_TIMEOUT * 0.9 <= time.monotonic() - started < HEADER_TIMEOUT + 2
    finally:
        s.close()
    assert healthz(cdn, "edge-2")["refused_proxy_headers"] == before + 1


def test_a_listener_that_does_not_ask_for_proxy_takes_it_for_a_bad_request(cdn: dict[str, Any]) -> None:
    host, port = hostport(node(cdn, "edge-1")["url"])
    s = _connected(host, port, "127.0.0.5")
    try:  # "PROXY" is an unknown method there: 405, as before PROXY support
        assert _get(s, "/live/master.m3u8?t=noproxy", prefix=_v1("198.51.100.70")) == 405
    finally:
        s.close()


# --- the router's 302 ------------------------------------------------------------------

@pytest.mark.parametrize(("source", "forwarded", "edge"), [
    ("127.0.0.1", "127.0.2.5", "edge-2"),  # a trusted balancer (placed in eu), a player in the us range
    (US_BALANCER, "127.0.1.5", "edge-1"),  # a trusted balancer in the us, a player in eu
    (US_BALANCER, "127.0.2.5, 127.0.1.5", "edge-1"),  # the right-most untrusted hop, not the one on its left
    ("127.0.1.7", "127.0.2.5", "edge-1"),  # untrusted: its own address decides (eu)
])
def test_the_router_redirects_by_the_forwarded_address(cdn: dict[str, Any], source: str, forwarded: str,
                                                       edge: str) -> None:
    status, headers = curl(cdn["play"], source, "-H", f"X-Forwarded-For: {forwarded}")
    assert status == 302 and headers["x-livecdn-edge"] == edge
    assert headers["location"] == node(cdn, edge)["url"] + "/live/master.m3u8"


def test_a_router_that_asks_for_proxy_redirects_by_the_headers_address(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin="http://127.0.0.1:9").replace(
        '[router]\nname = "router"\n', '[router]\nname = "router"\nproxy_protocol = true\n', 1))
    http = re.search(r'http = "127.0.0.1:(\d+)"', config.read_text().split("[router]", 1)[1])
    assert http is not None
    port = int(http.group(1))
    proc = subprocess.Popen([sys.executable, "-m", "livecdn", "geo", "--config", str(config), "--node", "router",
                             "--log-level", "warning"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: _listening(port), 15), "the router did not come up"
        # Every edge is down (nothing runs): the router still answers, with the nearest.
        for header, edge in ((_v1("127.0.2.5"), "edge-2"), (_v2("127.0.1.5"), "edge-1"),
                             (_v1("127.0.2.9"), "edge-2")):
            s = _connected("127.0.0.1", port, "127.0.0.1")
            try:
                s.sendall(header + b"GET /live/master.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = _read_all(s)
            finally:
                s.close()
            assert answer.startswith(b"HTTP/1.1 302 ") and f"X-Livecdn-Edge: {edge}\r\n".encode() in answer
        s = _connected("127.0.0.1", port, "127.0.0.1")
        try:  # no header: closed, nothing answered
            s.sendall(b"GET /live/master.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_all(s) == b""
        finally:
            s.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith('{"time"') and '"remote"' in line]
    assert [entry["remote"] for entry in lines] == ["127.0.2.5", "127.0.1.5", "127.0.2.9"]


# --- helpers ---------------------------------------------------------------------------

def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _connected(host: str, port: int, source: str) -> socket.socket:
    s = socket.create_connection((host, port), timeout=5, source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _get(s: socket.socket, target: str, extra: str = "", prefix: bytes = b"") -> int:
    """One request on an open connection: its status (the body read whole, so the next request can follow)."""
    s.sendall(prefix + f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    length = int(m.group(1)) if m else 0
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1])


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
