"""The edge's check of signed URLs (the format is `livecdn.signing`).

Every request, hits included, passes here before its cache key is made. A
token is taken off the target whether it is good or not, so the key, the
request upstream and the access line never hold it: every viewer's token
names one cached object, and the shield and origin never see one. A refusal
is a 403 with a short reason.

A hit must stay cheap, so a token's signature is checked once: verified
tokens are remembered by their segment, and a request with a known token
costs one dict lookup and three comparisons (expiry, scope, address). Only
verified tokens are remembered, so garbage cannot fill the memo; the
signature compare is constant-time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
from typing import NoReturn

from livecdn import metrics
from livecdn.cache.keys import BadRequest
from livecdn.config import SigningSettings
from livecdn.front.request import Request
from livecdn.signing import MARK, BadToken, parse, signature

__all__ = ["VERIFIED_BOUND", "TokenGate"]

# Verified tokens remembered (one per viewer session and stream, about 200 bytes each):
# past this many the memo starts again, which costs each viewer one HMAC more.
VERIFIED_BOUND = 65_536
_SKIP = len(MARK)


class TokenGate:
    """Signed URLs at one edge process, with the keys and prefixes of one topology (a reload makes a new gate)."""

    __slots__ = ("prefixes", "node", "_secrets", "_verified")

    def __init__(self, settings: SigningSettings, node: str = "") -> None:
        """`node`: the edge's name, for the refusal counter."""
        self.node = node
        self.prefixes = settings.prefixes  # normalized paths under these need a token (`require`)
        self._secrets = {k.id: k.secret.encode() for k in settings.keys}
        # token segment → (expires, scope, address): what its verified signature allows
        self._verified: dict[str, tuple[int, str, str]] = {}

    def unwrap(self, request: Request, peer: str, now: float) -> bool:
        """Take a token off `request.target` and check it; True if there was one (and it allows this request).

        Raises:
            BadRequest: 403 with the reason (malformed, unknown key, bad signature,
                expired, out of scope, wrong address).
        """
        target = request.target
        if not target.startswith(MARK):
            return False
        end = target.find("/", _SKIP)
        segment = target[_SKIP:end] if end > 0 else target[_SKIP:]
        # Whatever follows, the token goes no further (key, upstream, access line).
        rest = request.target = target[end:] if end > 0 else "/"
        allowed = self._verified.get(segment)
        if allowed is None:
            allowed = self._verify(segment)
        expires, scope, address = allowed
        if now > expires:
            self._refuse("token expired")
        # The raw path against the (normalized) scope: normalizing can move no path out of a
        # directory it starts with ("..", encoded slashes are refused), only refuse odd spellings.
        if not rest.startswith(scope):
            self._refuse("path out of token scope")
        if address and address != peer:
            self._refuse("token for another address")
        return True

    def require(self, path: str) -> None:
        """A request without a token, for this normalized path: refused where the topology asks for tokens."""
        if path.startswith(self.prefixes):
            self._refuse("token missing")

    def _refuse(self, reason: str) -> NoReturn:
        metrics.TOKEN_REFUSALS.labels(self.node, reason).inc()
        raise BadRequest(reason, 403)

    def _verify(self, segment: str) -> tuple[int, str, str]:
        try:
            token = parse(segment)
        except BadToken as e:
            self._refuse(e.reason)
        secret = self._secrets.get(token.key)
        if secret is None:
            self._refuse("token key unknown")
        if not hmac.compare_digest(signature(secret, token), token.mac):
            self._refuse("token signature bad")
        verified = self._verified
        if len(verified) >= VERIFIED_BOUND:
            verified.clear()
        allowed = verified[segment] = (token.expires, token.scope, token.address)
        return allowed
