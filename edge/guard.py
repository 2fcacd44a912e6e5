"""The edge's first line: refuse names that cannot be media objects.

Checked before the engine, so a request for such a name never costs a lookup
or an upstream fetch. Path syntax (traversal, encoding) is already refused by
the cache key; here the name itself must look like something a packager
writes. The Bloom filter of announced names builds on this guard.
"""

from __future__ import annotations

from livecdn.keys import BadRequest, CacheKey
from livecdn.media import CONTENT_TYPES

__all__ = ["NameGuard"]


class NameGuard:
    """Refuses extensions no HLS/DASH packager produces."""

    async def check(self, key: CacheKey) -> None:
        ext = key.extension
        if ext not in CONTENT_TYPES:
            raise BadRequest(f"{ext or 'a name without extension'} is not a media object type", 404)
