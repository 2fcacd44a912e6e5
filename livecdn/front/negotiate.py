"""HTTP validators and ranges (RFC 9110 §13, §14): pure functions over header values."""

from __future__ import annotations

__all__ = ["etag_matches", "parse_range"]


def etag_matches(header: str, etag: str) -> bool:
    """Does an If-None-Match value match `etag`? (weak comparison, RFC 9110 §13.1.2)"""
    bare = etag.removeprefix("W/")
    for candidate in header.split(","):
        c = candidate.strip()
        if c == "*" or c.removeprefix("W/") == bare:
            return True
    return False


def parse_range(value: str | None, size: int) -> tuple[int, int] | None | bool:
    """A single `bytes=` range against a body of `size` bytes.

    Returns:
        (start, stop) for a satisfiable range, None when the header is absent,
        invalid or asks for several ranges (the whole body is sent, as RFC 9110
        allows), False when unsatisfiable (416).
    """
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    first, dash, last = value[6:].strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return False if n == 0 else None
            return (max(0, size - n), size) if size else False
        start = int(first)
        stop = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or (last and stop <= start):
        return None
    if start >= size:
        return False
    return start, min(stop, size)
