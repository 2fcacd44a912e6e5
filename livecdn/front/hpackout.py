"""HPACK for the header blocks we send (RFC 7541), sans-io: static-table indexes and literals, no dynamic table.

The `hpack` package's Encoder searches its dynamic table, Huffman-codes
every literal and indexes it, in Python, per field per answer: most of what
an HTTP/2 answer cost. An answer's fields are nearly the same from hit to
hit (a stored object's, plus Content-Length, Age and Date), so this encoder
keeps each field's encoding, built once: a field is its static-table index
when name and value are in the static table (`:status: 200`), else a
literal without indexing, named by its static index when the name is there
(RFC 7541 §6.2.2), values as raw octets (Huffman coding is optional). With
no dynamic table there is no state to keep in step with the peer's decoder:
the first block says so (a dynamic table size update to 0, §6.3), so a later
SETTINGS_HEADER_TABLE_SIZE never needs an answer.

`Encoder` is one connection's: its first block carries that size update.
The HTTP/2 connection hands it an answer's fields encoded already
(`field()` for `:status`, Content-Length, Age and Date; `block()` once for a
stored object's own fields, kept on the object) and `join()` puts them
together, so an answer's head costs a few dictionary lookups and one join.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack.table import HeaderTable

__all__ = ["Encoder", "MAX_KEPT", "block", "encode_field", "encode_integer", "field"]

# Fields whose encoding is kept (per process: every connection shares them). A stored object's fields, and
# Date, Age and Content-Length values that recur: emptied when full, so a flood of distinct values costs
# their encoding again, never memory.
MAX_KEPT = 4096
_STATIC = HeaderTable.STATIC_TABLE
_FULL = {field: i for i, field in reversed(list(enumerate(_STATIC, 1)))}  # the first index of each
_NAMES = {name: i for i, (name, _) in reversed(list(enumerate(_STATIC, 1)))}
_TABLE_SIZE_ZERO = b"\x20"  # a dynamic table size update to 0 (001 prefix, 5-bit integer 0)


def encode_integer(value: int, prefix: int) -> bytearray:
    """An integer with a `prefix`-bit prefix (RFC 7541 §5.1); the first byte's high bits are left 0."""
    top = (1 << prefix) - 1
    if value < top:
        return bytearray((value,))
    out = bytearray((top,))
    value -= top
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return out


def _string(data: bytes) -> bytes:
    """A string literal, raw octets (H bit 0, §5.2)."""
    return bytes(encode_integer(len(data), 7)) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field: its static index if the table has it whole, else a literal without indexing (§6.1, §6.2.2)."""
    index = _FULL.get((name, value))
    if index is not None:
        head = encode_integer(index, 7)
        head[0] |= 0x80
        return bytes(head)
    index = _NAMES.get(name)
    if index is not None:
        return bytes(encode_integer(index, 4)) + _string(value)
    return b"\x00" + _string(name) + _string(value)


_kept: dict[tuple[bytes, bytes], bytes] = {}


def field(name: bytes, value: bytes) -> bytes:
    """`encode_field()`, kept (see MAX_KEPT)."""
    key = (name, value)
    out = _kept.get(key)
    if out is None:
        if len(_kept) >= MAX_KEPT:
            _kept.clear()
        out = _kept[key] = encode_field(name, value)
    return out


def block(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Fields encoded, in order (a stored object's, once: the shell keeps the result)."""
    return b"".join(encode_field(name, value) for name, value in fields)


class Encoder:
    """One connection's header block encoder, with no dynamic table (its first block empties the peer's)."""

    __slots__ = ("_first",)

    def __init__(self) -> None:
        self._first = True

    def encode(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The header block of `headers` (names lower-case bytes, values bytes)."""
        return self.join([field(name, value) for name, value in headers])

    def join(self, encoded: list[bytes]) -> bytes:
        """The header block of fields encoded already (`field()`, `block()`), in order."""
        if self._first:
            self._first = False
            return _TABLE_SIZE_ZERO + b"".join(encoded)
        return b"".join(encoded)
