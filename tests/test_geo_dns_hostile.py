"""Hostile DNS clients against a real router process (issue 12, items 6-10), each with the bytes that showed it.

One `livecdn geo` router runs for the module, its stderr in a file: a
traceback there is a failure too. Replies are read from the raw bytes (ID,
flags, rcode), since some of what the router used to send back is not a
message dnspython accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import dns.edns
import dns.message
import psutil
import pytest

from geo.dnsio import share_of
from tests.cdn import ROOT, topology_toml, wait_until

HOST = "cdn.livecdn.test"  # topology_toml's host name; its router places 127.0.2.0/24 in us
FORMERR, NOERROR = 1, 0
# Item 6: a name of five 63-byte labels, 321 bytes on the wire (RFC 1035 allows 255).
LONG_NAME = bytes.fromhex("123401000001000000000000" + ("3f" + "61" * 63) * 5 + "00" + "00010001")
# Item 7: QDCOUNT 10790, one name of 127 one-byte labels, then 10,789 questions pointing back at it.
BOMB = (bytes.fromhex("abcd0100") + struct.pack(">HHHH", 10790, 0, 0, 0) + b"\x01a" * 127 + b"\x00\x00\x01\x00\x01"
        + bytes.fromhex("c00c00010001") * 10_789)
# The router spent about a second of its only loop on each bomb before the
# fix: a client waiting behind ten of them gives up after this long.
BEHIND_BOMBS_TIMEOUT = 5.0

pytestmark = pytest.mark.slow  # a router process, dig, a thousand connections


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    where = tmp_path_factory.mktemp("dns-hostile")
    config = where / "cdn.toml"
    config.write_text(topology_toml(origin="http://127.0.0.1:9"))
    port = int(config.read_text().split('dns = "127.0.0.1:', 1)[1].split('"', 1)[0])
    stderr = where / "router.stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "livecdn", "geo", "--config", str(config), "--node",
                                 "router", "--log-level", "warning"], cwd=ROOT, stderr=err)
    info = {"port": port, "process": proc, "stderr": stderr}
    try:
        assert wait_until(lambda: ask_udp(port, plain_query(1)) is not None, 20, 0.2), "the router did not start"
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def plain_query(qid: int, **edns: Any) -> bytes:
    m = dns.message.make_query(HOST, "A", id=qid)
    if edns:
        m.use_edns(0, **edns)
    return bytes(m.to_wire())


def padded_query(qid: int, padding: bytes) -> bytes:
    """A query for the host name with an EDNS padding option (RFC 7830) of any size (dnspython stops at 64 KB)."""
    question = b"".join(bytes([len(x)]) + x.encode() for x in HOST.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    opt = b"\0" + struct.pack(">HHIH", 41, 1232, 0, 4 + len(padding)) + struct.pack(">HH", 12, len(padding))
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1) + question + opt + padding


def ask_udp(port: int, wire: bytes, timeout: float = 2.0, source: str = "127.0.0.1") -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(wire, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def read_tcp(sock: socket.socket, deadline: float = float("inf")) -> bytes:
    """One length-prefixed message; TimeoutError past `deadline` (monotonic) or the socket's timeout."""
    size = int.from_bytes(recv_exactly(sock, 2, deadline), "big")
    return recv_exactly(sock, size, deadline)


def recv_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    out = b""
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(out)} of {n} bytes by the deadline")
        if left < (sock.gettimeout() or left):
            sock.settimeout(left)
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def rcode(reply: bytes) -> int:
    return reply[3] & 0x0F


def is_reply_to(reply: bytes | None, query: bytes) -> bool:
    return reply is not None and reply[:2] == query[:2] and bool(reply[2] & 0x80)


def no_tracebacks(router: dict[str, Any]) -> None:
    text = router["stderr"].read_text()
    assert "Traceback" not in text, text[-3000:]


def dig(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("dig") is None:
        pytest.fail("dig is not installed: run `make test` (it installs bind9-dnsutils)", pytrace=False)
    return subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=2", *args, HOST],
                          capture_output=True, text=True, timeout=15)


def test_names_over_255_bytes_get_formerr_over_udp_and_tcp(router: dict[str, Any]) -> None:
    reply = ask_udp(router["port"], LONG_NAME)
    assert is_reply_to(reply, LONG_NAME) and reply is not None and rcode(reply) == FORMERR
    with socket.create_connection(("127.0.0.1", router["port"]), timeout=5) as s:
        valid = plain_query(77)
        s.sendall(len(LONG_NAME).to_bytes(2, "big") + LONG_NAME + len(valid).to_bytes(2, "big") + valid)
        reply = read_tcp(s)
        assert is_reply_to(reply, LONG_NAME) and rcode(reply) == FORMERR
        after = read_tcp(s)  # the connection lives on: the next query on it is answered
        assert is_reply_to(after, valid) and rcode(after) == NOERROR
    no_tracebacks(router)


def test_a_compression_pointer_bomb_is_refused_before_it_is_parsed(router: dict[str, Any]) -> None:
    assert len(BOMB) == 65_005
    reply = ask_udp(router["port"], BOMB, timeout=BEHIND_BOMBS_TIMEOUT)
    assert is_reply_to(reply, BOMB) and reply is not None and rcode(reply) == FORMERR
    # Ten bombs and then a valid query, pipelined on one connection: the query waits behind them.
    valid = plain_query(78)
    with socket.create_connection(("127.0.0.1", router["port"]), timeout=BEHIND_BOMBS_TIMEOUT) as s:
        s.sendall((len(BOMB).to_bytes(2, "big") + BOMB) * 10 + len(valid).to_bytes(2, "big") + valid)
        deadline = time.monotonic() + BEHIND_BOMBS_TIMEOUT  # for all eleven answers, as the client waits
        for _ in range(10):
            reply = read_tcp(s, deadline)
            assert is_reply_to(reply, BOMB) and rcode(reply) == FORMERR and len(reply) == 12  # a header alone
        answered = read_tcp(s, deadline)
        assert is_reply_to(answered, valid) and rcode(answered) == NOERROR
    no_tracebacks(router)


def test_a_query_of_16000_edns_options_is_refused_before_it_is_parsed(router: dict[str, Any]) -> None:
    """Item 7's rule for the OPT record: a 64 KB message of empty options cost ~40 ms of dnslib each."""
    options = struct.pack(">HH", 65001, 0) * 16_000
    wire = padded_query(81, b"")[:-6] + struct.pack(">H", len(options)) + options  # a new RDLENGTH, then them
    valid = plain_query(82)
    with socket.create_connection(("127.0.0.1", router["port"]), timeout=BEHIND_BOMBS_TIMEOUT) as s:
        s.sendall((len(wire).to_bytes(2, "big") + wire) * 10 + len(valid).to_bytes(2, "big") + valid)
        for _ in range(10):
            reply = read_tcp(s)
            assert is_reply_to(reply, wire) and rcode(reply) == FORMERR and len(reply) == 12
        assert rcode(read_tcp(s)) == NOERROR
    no_tracebacks(router)


def test_unique_large_queries_do_not_grow_the_router(router: dict[str, Any]) -> None:
    """2,000 queries of 60 KB, each with padding of its own, every one answered from the memo but the first."""
    proc = psutil.Process(router["process"].pid)
    port = router["port"]
    assert ask_udp(port, padded_query(1, bytes(60_000))) is not None
    before = proc.memory_info().rss
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for i in range(2000):
            padding = i.to_bytes(4, "big") * 15_000
            wire = padded_query(i, padding)
            s.sendto(wire, ("127.0.0.1", port))
            reply = s.recv(65535)
            assert is_reply_to(reply, wire) and rcode(reply) == NOERROR
    grown = proc.memory_info().rss - before
    assert grown < 10 << 20, f"the router grew by {grown >> 20} MB"  # it was 112 MB before the fix


async def test_idle_tcp_clients_hold_only_their_share(router: dict[str, Any]) -> None:
    """1,024 connections from one address (the cap was global): another client still gets TCP answers."""
    port = router["port"]
    hog = ("127.0.0.8", 0)  # an address of its own: no other test waits for its places to be given back
    held = [await asyncio.open_connection("127.0.0.1", port, local_addr=hog) for _ in range(1024)]
    try:
        results = [await asyncio.to_thread(dig, port, "+tcp", "-b", "127.0.2.2", "+short") for _ in range(8)]
        assert [r.stdout.split() for r in results] == [["127.0.2.1"]] * 8, [r.stdout for r in results[:1]]
        closed = 0
        for reader, _ in held:  # past its share, the hog's connections were closed at once
            with contextlib.suppress(TimeoutError):
                closed += await asyncio.wait_for(reader.read(), 0.01) == b""
        assert closed >= 1024 - 64
    finally:
        for _, writer in held:
            writer.close()


async def test_a_dripping_tcp_message_is_closed_at_its_deadline(router: dict[str, Any]) -> None:
    """One byte every half second used to restart the idle timer, holding the place for good."""
    reader, writer = await asyncio.open_connection("127.0.0.1", router["port"], local_addr=("127.0.0.3", 0))
    wire = plain_query(79)
    message = len(wire).to_bytes(2, "big") + wire  # never whole within the test: 30-odd bytes at 2 per second
    sent = 0
    try:
        while sent < 16:  # 8 s: before the idle timer's 10 s, before the message is whole
            writer.write(message[sent:sent + 1])
            sent += 1
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(), 0.5) == b"":
                    break  # closed by the router
        else:
            pytest.fail("the router kept a connection that never completed its message")
        assert sent > 1  # past the first byte: the message's deadline closed it
    finally:
        writer.close()


def test_ecs_source_prefix_zero_with_address_bytes_is_formerr(router: dict[str, Any]) -> None:
    """RFC 7871 7.1.1: a source /0 has no address bytes; sent with some, the query is malformed."""
    bad = dns.edns.GenericOption(dns.edns.ECS, struct.pack(">HBB", 1, 0, 0) + bytes([127, 0, 2, 9]))
    wire = plain_query(80, options=[bad])
    reply = ask_udp(router["port"], wire)
    assert is_reply_to(reply, wire) and reply is not None and rcode(reply) == FORMERR
    good = dig(router["port"], "+subnet=0.0.0.0/0", "+short", "-b", "127.0.2.7")  # no address bytes: fine
    assert good.stdout.split() == ["127.0.2.1"]
    no_tracebacks(router)



def test_an_ipv6_client_is_its_64() -> None:
    """The TCP share is per IPv6 /64, since one host can pick any address in it; IPv4 stays per address."""
    assert share_of("2001:db8::1") == share_of("2001:db8::ffff:ffff:ffff:1") == "2001:db8::/64"
    assert share_of("2001:db8:0:1::1") != share_of("2001:db8::1")
    assert share_of("::ffff:192.0.2.7") == "192.0.2.7"  # IPv4 through a dual-stack socket
    assert share_of("fe80::1%eth0") == "fe80::/64"
    assert share_of("192.0.2.7") == "192.0.2.7" != share_of("192.0.2.8")
