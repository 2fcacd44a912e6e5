"""Synthetic segment bodies: MPEG-TS-shaped bytes with no encoder behind them.

For load tests and cache tests: a body is a pure function of (stream, rendition,
sequence, size), so any node can check which segment it got and that it is whole,
and the origin can keep a handful of them built instead of encoding anything.

Layout: 188-byte transport packets (sync byte 0x47, PID 0x0100, a running continuity
counter); each payload starts with an ASCII label
`LIVECDN <stream>/<rendition> seq=<N> pkt=<K>;` padded with 0xFF. The body is exactly
`size` bytes long, so when `size` is not a multiple of 188 the last packet is cut short.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict

__all__ = ["PACKET_SIZE", "etag_of", "segment_body", "segment_identity", "SegmentCache"]

PACKET_SIZE = 188
_PID = 0x0100
_PAYLOAD = PACKET_SIZE - 4
_LABEL = re.compile(rb"LIVECDN ([A-Za-z0-9_-]+)/([^ ]+) seq=(\d+) pkt=0;")


def etag_of(data: bytes) -> str:
    """A strong ETag made from the bytes themselves: every origin process gives the same bytes the same tag."""
    return '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'


def segment_body(stream: str, rendition: str, seq: int, size: int) -> bytes:
    """The bytes of synthetic segment `seq`, exactly `size` bytes (deterministic)."""
    if size < 1:
        raise ValueError(f"segment size must be positive, got {size!r}")
    prefix = f"LIVECDN {stream}/{rendition} seq={seq} pkt=".encode()
    packets = []
    for k in range(-(-size // PACKET_SIZE)):
        first = k == 0
        header = bytes((
            0x47,
            (0x40 if first else 0x00) | (_PID >> 8),  # payload_unit_start on the first packet
            _PID & 0xFF,
            0x10 | (k & 0x0F),  # payload only, continuity counter
        ))
        label = prefix + f"{k};".encode()
        payload = label[:_PAYLOAD].ljust(_PAYLOAD, b"\xff")
        packets.append(header + payload)
    return b"".join(packets)[:size]


def segment_identity(body: bytes) -> tuple[str, str, int] | None:
    """(stream, rendition, seq) of a synthetic body, or None if it is not one."""
    m = _LABEL.match(body, 4)
    if not m or body[:1] != b"\x47":
        return None
    return m.group(1).decode(), m.group(2).decode(), int(m.group(3))


class SegmentCache:
    """The few segment bodies currently available, built once each.

    Bounded by entry count: the origin only ever serves `window + retain` segments per
    rendition, so a bound a little above that keeps every live one built.
    """

    __slots__ = ("_size", "_max_entries", "_entries")

    def __init__(self, size: int, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be positive, got {max_entries!r}")
        self._size = size
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str, int], tuple[bytes, str]] = OrderedDict()

    def get(self, stream: str, rendition: str, seq: int) -> tuple[bytes, str]:
        """(body, strong ETag) of a segment, building it on first use."""
        key = (stream, rendition, seq)
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        body = segment_body(stream, rendition, seq, self._size)
        etag = etag_of(body)
        self._entries[key] = (body, etag)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return body, etag

    def __len__(self) -> int:
        return len(self._entries)
