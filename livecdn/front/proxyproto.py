"""The PROXY protocol header (HAProxy's v1 text and v2 binary forms): sans-io, bounded.

A layer-4 load balancer (HAProxy, AWS NLB, GCP, Envoy) that opens a TCP
connection on a player's behalf can send, before the player's first byte, one
header naming the player's address. A listener that asks for it
(`proxy_protocol = true`) feeds a connection's first bytes to a
`ProxyHeaderParser` until it returns the header, and takes the source address
from it; bytes after the header are the player's (HTTP, or a TLS ClientHello).
A listener that does not ask for it never looks: there, a "PROXY ..." line is
just a bad HTTP request.

`wanted` says how many bytes can be read without reading past the header's
end. The listener reads exactly that much each time, so the player's first
byte stays in the socket: under TLS it is the ClientHello, which the TLS
layer must read itself (`loop.start_tls` takes no bytes already read).

Bounds (whatever a client sends, the parser holds no more than these): a v1
line is at most `V1_MAX` bytes (the spec's own bound, 107), a v2 header at
most 16 bytes plus `V2_MAX_PAYLOAD`. What is not a header is refused as soon
as a byte shows it (`ProxyHeaderError`): garbage never waits for a timeout.

The spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = ["NEED_DATA", "SHORTEST", "V1_MAX", "V1_SIGNATURE", "V2_MAX_PAYLOAD", "V2_SIGNATURE", "ProxyHeader",
           "ProxyHeaderError", "ProxyHeaderParser"]

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# A v1 line, "PROXY TCP6 <39> <39> 65535 65535\r\n" at its longest (spec 2.1).
V1_MAX = 107
# The shortest header of either version: "PROXY UNKNOWN\r\n" (a v2 one has 16 bytes).
SHORTEST = 15
# The shortest v1 line of each family once its name is read: its addresses and ports at their shortest.
_V1_SHORTEST = {b"PROXY TCP4 ": len(b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n"),
                b"PROXY TCP6 ": len(b"PROXY TCP6 :: :: 0 0\r\n")}
# The v2 fixed part: signature, version/command, family/transport, length.
V2_FIXED = 16
# v2 bytes after the fixed part: the addresses (216 at most, for AF_UNIX) and
# TLVs, which this listener skips. Load balancers' TLVs (AWS's VPC endpoint
# id, GCP's connection id, HAProxy's SSL facts) are tens to a few hundred
# bytes; a larger header is refused rather than buffered.
V2_MAX_PAYLOAD = 2048
NEED_DATA = None

_V2_FIXED = struct.Struct("!12sBBH")
# Address block sizes by family (v2, spec 2.2): AF_INET, AF_INET6, AF_UNIX.
_INET, _INET6, _UNIX = 0x1, 0x2, 0x3
_ADDRESS_BYTES = {_INET: 12, _INET6: 36, _UNIX: 216}
_LOCAL, _PROXY = 0x0, 0x1


class ProxyHeaderError(ValueError):
    """What the connection began with is no PROXY header (the listener closes it)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header.

    `source` is the client's address as text (canonical, IPv4-mapped IPv6 as
    IPv4), or None when the header names none (v1 UNKNOWN; v2 LOCAL, UNSPEC
    or AF_UNIX): then the connection's own peer stands. `length` is the
    header's size in bytes; `rest` what followed it in the same reads.
    """

    version: int
    source: str | None
    length: int
    rest: bytes


def _address(raw: bytes | str) -> str:
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class ProxyHeaderParser:
    """Reads one PROXY header from the start of a connection.

    Feed it the connection's bytes with `receive_data` until it returns a
    `ProxyHeader`; it raises `ProxyHeaderError` as soon as the bytes cannot be
    one, and never holds more than a header's bound.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def wanted(self) -> int:
        """Bytes that are surely part of the header still to come (at least 1): read no more than these."""
        buf = self._buffer
        if len(buf) < SHORTEST:
            return SHORTEST - len(buf)
        if buf[:1] == b"\r":
            if len(buf) < V2_FIXED:
                return V2_FIXED - len(buf)
            return max(1, V2_FIXED + int.from_bytes(buf[14:16], "big") - len(buf))
        return max(1, _V1_SHORTEST.get(buf[:11], 0) - len(buf))

    def receive_data(self, data: bytes) -> ProxyHeader | None:
        """Take bytes that arrived.

        Returns:
            The header once complete (with the bytes after it), else `NEED_DATA` (None).

        Raises:
            ProxyHeaderError: the bytes are not a header (what and why in the message).
        """
        buf = self._buffer = self._buffer + data
        if buf[:1] == b"P":
            return self._v1(buf)
        if buf[:1] == b"\r":
            return self._v2(buf)
        if buf:
            raise ProxyHeaderError(f"no PROXY header: the connection began with {buf[:16]!r}")
        return NEED_DATA

    def _v1(self, buf: bytes) -> ProxyHeader | None:
        if not buf.startswith(V1_SIGNATURE[:len(buf)]):
            raise ProxyHeaderError(f"no PROXY header: the connection began with {buf[:16]!r}")
        end = buf.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buf) >= V1_MAX:
                raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX} bytes")
            if b"\n" in buf:
                raise ProxyHeaderError("PROXY v1 line ends without CRLF")
            return NEED_DATA
        fields = buf[len(V1_SIGNATURE):end].split(b" ")
        length = end + 2
        if fields[0] == b"UNKNOWN":  # the proxy does not know (or will not say): the rest is ignored (spec 2.1)
            return ProxyHeader(1, None, length, buf[length:])
        if len(fields) != 5 or fields[0] not in (b"TCP4", b"TCP6"):
            raise ProxyHeaderError(f"PROXY v1 line is not 'TCP4|TCP6 SRC DST SPORT DPORT': {buf[:end]!r}")
        family, src, dst, sport, dport = fields
        try:
            ips = [ipaddress.ip_address(a.decode("ascii")) for a in (src, dst)]
        except (ValueError, UnicodeDecodeError):
            raise ProxyHeaderError(f"PROXY v1 addresses are not IP addresses: {src!r} {dst!r}") from None
        if any(ip.version != (4 if family == b"TCP4" else 6) for ip in ips):
            raise ProxyHeaderError(f"PROXY v1 {family.decode()} with addresses of another family")
        for port in (sport, dport):
            if not (port.isdigit() and len(port) <= 5 and int(port) <= 65535):
                raise ProxyHeaderError(f"PROXY v1 port is not 0..65535: {port!r}")
        return ProxyHeader(1, _address(ips[0].packed), length, buf[length:])

    def _v2(self, buf: bytes) -> ProxyHeader | None:
        if not buf.startswith(V2_SIGNATURE[:len(buf)]):
            raise ProxyHeaderError(f"no PROXY header: the connection began with {buf[:16]!r}")
        if len(buf) < V2_FIXED:
            return NEED_DATA
        _, version_command, family_transport, size = _V2_FIXED.unpack_from(buf)
        if version_command >> 4 != 2:
            raise ProxyHeaderError(f"PROXY v2 header of version {version_command >> 4}")
        command, family = version_command & 0xF, family_transport >> 4
        if command not in (_LOCAL, _PROXY):
            raise ProxyHeaderError(f"PROXY v2 command {command} is neither LOCAL nor PROXY")
        if size > V2_MAX_PAYLOAD:
            raise ProxyHeaderError(f"PROXY v2 header of {size} bytes past its fixed part (at most {V2_MAX_PAYLOAD})")
        if family not in (0, *_ADDRESS_BYTES) or family_transport & 0xF > 2:
            raise ProxyHeaderError(f"PROXY v2 address family/transport 0x{family_transport:02x} is unknown")
        length = V2_FIXED + size
        if len(buf) < length:
            return NEED_DATA
        rest = buf[length:]
        # LOCAL: the proxy's own connection (a health check): the real peer stands; so for UNSPEC and AF_UNIX.
        if command == _LOCAL or family in (0, _UNIX):
            return ProxyHeader(2, None, length, rest)
        need = _ADDRESS_BYTES[family]
        if size < need:
            raise ProxyHeaderError(f"PROXY v2 address block of {size} bytes, {need} needed for its family")
        source = buf[V2_FIXED:V2_FIXED + (4 if family == _INET else 16)]
        return ProxyHeader(2, _address(source), length, rest)  # TLVs (the rest of `size`) are skipped
