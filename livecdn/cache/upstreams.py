"""Where a key is fetched from: shields by consistent hash, then the origin.

Consistent hashing sends every request for one object to one shield, so the
origin sees one fetch per object however many edges ask; when that shield
fails, the next one on the ring takes over for the key.
"""

from __future__ import annotations

from uhashring import HashRing

__all__ = ["Upstreams"]


class Upstreams:
    """The ordered upstream list for each key.

    Args:
        shields: base URLs of the shield tier (may be empty).
        origin: the origin's base URL, tried after every shield when
            `origin_fallback` is set, or alone when there are no shields.
    """

    __slots__ = ("_ring", "_tail", "_single")

    def __init__(self, shields: list[str], origin: str | None = None, origin_fallback: bool = False) -> None:
        if not shields and origin is None:
            raise ValueError("an upstream list needs at least one shield or an origin")
        self._ring = HashRing(shields) if len(shields) > 1 else None
        self._tail = (origin,) if origin is not None and (origin_fallback or not shields) else ()
        self._single = tuple(shields[:1]) + self._tail if len(shields) <= 1 else None

    def order(self, key: str) -> tuple[str, ...]:
        """Upstreams to try for `key`, best first."""
        if self._single is not None:
            return self._single
        assert self._ring is not None
        return tuple(n["nodename"] for n in self._ring.range(key, unique=True)) + self._tail
