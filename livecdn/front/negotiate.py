"""Conditional requests and byte ranges (RFC 9110 §13, §14), negotiated in one place.

Pure functions over header values: every answer with a body of known size
(memory, disk file, stream) goes through `negotiate()`.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from .request import Request

__all__ = ["accepts_gzip", "etag_matches", "negotiate", "parse_range"]

# Accept-Encoding values remembered with their verdict: players send a few
# distinct ones, so a hit pays a dictionary lookup. Bounded: a client sending
# distinct values empties it rather than growing it.
ENCODING_MEMO_BOUND = 256
_GZIP_OK: dict[bytes, bool] = {}


def accepts_gzip(value: bytes) -> bool:
    """Does an Accept-Encoding value accept gzip (RFC 9110 §12.5.3)? Tokens, not substrings; q=0 refuses."""
    ok = _GZIP_OK.get(value)
    if ok is None:
        ok = _accepts_gzip(value.decode("latin-1"))
        if len(_GZIP_OK) >= ENCODING_MEMO_BOUND:
            _GZIP_OK.clear()
        _GZIP_OK[value] = ok
    return ok


def _accepts_gzip(value: str) -> bool:
    weights: dict[str, float] = {}
    for item in value.split(","):
        coding, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            name, _, number = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(number)
                except ValueError:
                    q = 0.0  # a weight we cannot read accepts nothing
        if coding:
            weights[coding.lower()] = q
    for coding in ("gzip", "x-gzip", "*"):  # the named coding wins over the wildcard
        if coding in weights:
            return weights[coding] > 0
    return False


def negotiate(request: Request, headers: dict[str, str], size: int | None) -> tuple[int, int, int | None]:
    """Conditional request and byte range against a 200 of `size` bytes (None: not known yet).

    Returns:
        (status, start, stop): 304 or 416 (no body), 206 with the range, or 200 with [0, size).
        `headers` (lower-case names) gains accept-ranges / content-range, or loses content-type for a 304.
    """
    etag = headers.get("etag")
    if _not_modified(request, etag, headers.get("last-modified")):
        headers.pop("content-type", None)
        return 304, 0, 0
    if size is None:
        return 200, 0, None  # streamed with its length unknown: no ranges
    headers["accept-ranges"] = "bytes"
    if_range = request.header(b"if-range")
    if if_range is not None and (etag is None or if_range.strip() != etag):
        return 200, 0, size  # the client's copy is different: send the whole object
    rng = parse_range(request.header(b"range"), size)
    if rng is False:
        headers["content-range"] = f"bytes */{size}"
        return 416, 0, 0
    if isinstance(rng, tuple):
        start, stop = rng
        headers["content-range"] = f"bytes {start}-{stop - 1}/{size}"
        return 206, start, stop
    return 200, 0, size


def _not_modified(request: Request, etag: str | None, last_modified: str | None) -> bool:
    inm = request.header(b"if-none-match")
    if inm is not None:
        return etag is not None and etag_matches(inm, etag)
    ims = request.header(b"if-modified-since")
    if ims and last_modified:
        try:
            return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(ims)
        except (TypeError, ValueError, OverflowError):  # a date we cannot read is ignored (RFC 9110 §13.1.3)
            return False
    return False


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
