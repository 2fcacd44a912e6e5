"""The PROXY header parser (livecdn/front/proxyproto.py): the spec's examples, then Hypothesis.

Headers are built here from the spec (haproxy's proxy-protocol.txt), not by
the parser's code; the properties hold however the bytes are split into
reads, and whatever a client sends instead of a header.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livecdn.front.proxyproto import (
    V1_MAX,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
)

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow])
LOCAL, PROXY = 0x20, 0x21
TCP4, UDP4, TCP6, UNIX, UNSPEC = 0x11, 0x12, 0x21, 0x31, 0x00


def v2(command: int, family: int, addresses: bytes, tlvs: bytes = b"") -> bytes:
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(addresses) + len(tlvs)) + addresses + tlvs


def inet(src: str, dst: str, sport: int = 1234, dport: int = 80) -> bytes:
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    return socket.inet_pton(family, src) + socket.inet_pton(family, dst) + struct.pack("!HH", sport, dport)


def parse(data: bytes) -> ProxyHeader | None:
    return ProxyHeaderParser().receive_data(data)


@pytest.mark.parametrize(("data", "source", "length"), [
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", "192.168.0.1", 47),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n", "2001:db8::1", 46),
    (b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n", "192.0.2.1", 37),  # IPv4-mapped: IPv4
    (b"PROXY UNKNOWN\r\n", None, 15),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", None, 59),  # the rest is ignored
    (v2(PROXY, TCP4, inet("192.0.2.7", "192.0.2.1")), "192.0.2.7", 28),
    (v2(PROXY, UDP4, inet("192.0.2.7", "192.0.2.1")), "192.0.2.7", 28),
    (v2(PROXY, TCP6, inet("2001:db8::7", "2001:db8::1")), "2001:db8::7", 52),
    (v2(PROXY, TCP4, inet("192.0.2.7", "192.0.2.1"), b"\x03\x00\x04\x00\x00\x00\x00\xea\x00\x02ab"), "192.0.2.7",
     28 + 12),  # TLVs (a CRC, a custom one) skipped
    (v2(LOCAL, UNSPEC, b""), None, 16),  # a health check from the balancer itself
    (v2(LOCAL, TCP4, inet("192.0.2.7", "192.0.2.1")), None, 28),  # LOCAL: its addresses are ignored
    (v2(PROXY, UNSPEC, b"abc"), None, 19),
    (v2(PROXY, UNIX, b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")), None, 232),
])
def test_headers_of_the_spec(data: bytes, source: str | None, length: int) -> None:
    header = parse(data + b"GET / HTTP/1.1\r\n")
    assert header is not None and (header.source, header.length) == (source, length)
    assert header.rest == b"GET / HTTP/1.1\r\n"


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n",  # no header: the first byte says so
    b"\x16\x03\x01",  # TLS
    b"PROXZ",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",  # family and address disagree
    b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF alone
    b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 " + b"1" * V1_MAX,  # no end within the bound
    v2(0x11, TCP4, inet("1.2.3.4", "5.6.7.8")),  # version 1 in a v2 header
    v2(0x22, TCP4, inet("1.2.3.4", "5.6.7.8")),  # command 2
    v2(PROXY, 0x41, inet("1.2.3.4", "5.6.7.8")),  # family 4
    v2(PROXY, 0x13, inet("1.2.3.4", "5.6.7.8")),  # transport 3
    v2(PROXY, TCP4, b"\x01\x02\x03"),  # too short for its family
    v2(PROXY, TCP6, inet("1.2.3.4", "5.6.7.8")),
    V2_SIGNATURE + bytes([PROXY, TCP4]) + struct.pack("!H", V2_MAX_PAYLOAD + 1),  # past the bound, refused at once
    b"\r\n\r\n\x00\r\nQUIX\n",
])
def test_what_is_no_header_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data)


def test_partial_headers_wait_for_more() -> None:
    parser = ProxyHeaderParser()
    assert parser.receive_data(b"") is None
    assert parser.receive_data(b"PRO") is None
    assert parser.receive_data(b"XY TCP4 1.2.3.4 5.6.7.8 1 2\r") is None
    header = parser.receive_data(b"\nrest")
    assert header is not None and header.source == "1.2.3.4" and header.rest == b"rest"
    assert ProxyHeaderParser().receive_data(V2_SIGNATURE[:5]) is None
    assert ProxyHeaderParser().receive_data(v2(PROXY, TCP4, inet("1.2.3.4", "5.6.7.8"))[:20]) is None


# --- Hypothesis -------------------------------------------------------------------------

addresses = st.one_of(st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
                      st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6)))
ports = st.integers(0, 65535)


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def expected(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


@FUZZ
@given(pair=addresses, sport=ports, dport=ports, tlvs=st.binary(max_size=300), after=st.binary(max_size=50),
       cuts=st.lists(st.integers(0, 1000), max_size=5), version=st.sampled_from([1, 2]))
def test_any_header_split_anyhow_gives_its_source_and_the_bytes_after_it(
        pair: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | tuple[ipaddress.IPv6Address, ipaddress.IPv6Address],
        sport: int, dport: int, tlvs: bytes, after: bytes, cuts: list[int], version: int) -> None:
    src, dst = pair
    if version == 1:
        header = f"PROXY TCP{src.version} {src} {dst} {sport} {dport}\r\n".encode()
    else:
        block = src.packed + dst.packed + struct.pack("!HH", sport, dport)
        header = v2(PROXY, TCP4 if src.version == 4 else TCP6, block, tlvs)
    data = header + after
    parser, got, rest = ProxyHeaderParser(), None, b""
    for piece in splits(data, cuts):
        if got is not None:
            rest += piece  # the listener's own: after the header, bytes go to HTTP (or TLS)
            continue
        got = parser.receive_data(piece)
        if got is not None:
            rest = got.rest
    assert got is not None and got.source == expected(src) and got.length == len(header)
    assert got.version == version and rest == after


@FUZZ
@given(data=st.one_of(st.binary(max_size=300),
                      st.binary(max_size=120).map(lambda b: b"PROXY " + b),
                      st.binary(max_size=300).map(lambda b: V2_SIGNATURE + b)),
       cuts=st.lists(st.integers(0, 400), max_size=5))
def test_any_bytes_give_a_header_or_a_clear_refusal_within_the_bounds(data: bytes, cuts: list[int]) -> None:
    parser = ProxyHeaderParser()
    fed = 0
    try:
        for piece in splits(data, cuts):
            fed += len(piece)
            header = parser.receive_data(piece)
            if header is not None:
                assert header.length <= (V1_MAX if data[:1] == b"P" else 16 + V2_MAX_PAYLOAD)
                assert data[header.length:fed] == header.rest
                return
            # Still waiting: never more held than a header's bound.
            assert fed < (V1_MAX if data[:1] == b"P" else 16 + V2_MAX_PAYLOAD)
    except ProxyHeaderError as e:
        assert str(e)
