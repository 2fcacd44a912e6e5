"""Signed URLs: the token format, shared by whoever signs (`livecdn sign`, the demo) and the edge that checks.

A token is the first segment of the path, before the path it allows:

    /~KEY~EXPIRES~SCOPE~ADDRESS~SIGNATURE/live/720p/index.m3u8

- KEY: the id of the key that signed it (several are accepted at once, for rotation);
- EXPIRES: Unix seconds after which it is refused;
- SCOPE: the directory it covers, base64url (``/live/`` → ``L2xpdmUv``): every
  path under it, so one token serves a whole stream (master playlist, media
  playlists, segments);
- ADDRESS: the one client address it is good for, or empty;
- SIGNATURE: base64url HMAC-SHA256, under KEY's secret, of the four fields.

Why in the path: a player resolves a playlist's relative URIs (``720p/index.m3u8``,
``seg42.ts``, a DASH SegmentTemplate) against the URL it fetched, which keeps a
leading path segment but drops the query. So the token reaches every request of
the stream without the edge rewriting what it serves, and a playlist stays one
cached object for every viewer. The scope and address are stated in the token
(not derived from the path), so a refusal can say which rule failed.
Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from livecdn.media.names import BadName, directory, normalize

__all__ = ["MARK", "BadToken", "Token", "parse", "sign", "signature"]

MARK = "/~"  # a signed target starts so; no packager writes a first path segment starting with "~"
_FIELDS = 5
# Longest token segment: a 32-character key id, a 2048-byte scope in base64, an IPv6 address,
# 43 characters of signature. A longer one is refused before any decoding work.
MAX_TOKEN_CHARS = 3000


class BadToken(ValueError):
    """A token that allows nothing; `reason` is the short one the player gets with its 403."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Token:
    """A token's fields as read from its segment (not yet checked against any key)."""

    key: str
    expires: int
    scope: str
    address: str
    mac: bytes

    def message(self) -> bytes:
        """What the signature covers: every field but itself, one per line."""
        return f"{self.key}\n{self.expires}\n{self.scope}\n{self.address}".encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signature(secret: bytes, token: Token) -> bytes:
    """HMAC-SHA256 of the token's message under `secret`."""
    return hmac.new(secret, token.message(), hashlib.sha256).digest()


def sign(path: str, key: str, secret: bytes, expires: int, address: str = "", scope: str | None = None) -> str:
    """`path` signed: the token segment, then the path (its query kept).

    Args:
        path: an absolute path, e.g. ``/live/master.m3u8?x=1``.
        key: the signing key's id; secret: its secret.
        expires: Unix seconds.
        address: the client address the URL is good for ("" for any).
        scope: the directory allowed (normalized, ending in "/"); default: `path`'s directory.

    Raises:
        ValueError: the path is no media path, or it is outside `scope`.
    """
    bare, sep, query = path.partition("?")
    try:
        normal = normalize(bare)
    except BadName as e:
        raise ValueError(f"{path!r}: {e.reason}") from None
    scope = directory(normal) if scope is None else scope
    if not (scope.startswith("/") and scope.endswith("/")):
        raise ValueError(f"scope {scope!r} must start and end with '/' (a directory)")
    if not normal.startswith(scope):
        raise ValueError(f"{normal!r} is outside the scope {scope!r}")
    token = Token(key, expires, scope, address, b"")
    mac = _b64(signature(secret, token))
    return f"{MARK}{key}~{expires}~{_b64(scope.encode())}~{address}~{mac}{normal}{sep}{query}"


def parse(segment: str) -> Token:
    """The fields of a token segment (what follows `MARK`, up to the next "/").

    Raises:
        BadToken: "token malformed" for anything that is not five well-formed fields.
    """
    parts = segment.split("~") if len(segment) <= MAX_TOKEN_CHARS else []
    if len(parts) != _FIELDS:
        raise BadToken("token malformed")
    key, expires, scope, address, mac = parts
    try:
        when = int(expires) if expires.isdigit() else -1
        where = _unb64(scope).decode("utf-8")
        sig = _unb64(mac)
    except (binascii.Error, ValueError):
        raise BadToken("token malformed") from None
    if not key or when < 0 or len(sig) != hashlib.sha256().digest_size or not where.startswith("/") \
            or not where.endswith("/"):
        raise BadToken("token malformed")
    return Token(key, when, where, address, sig)
