"""Vary (issue 10, item 7): an origin whose answer depends on a request header.

RFC 9111 4.1: a stored answer is reused only for requests whose headers named
by its Vary match. livecdn keys such an object's variants by those headers
(and forwards them upstream); `Vary: *` is never stored. Accept-Encoding stays
livecdn's own business. Real shield and edge nodes on loopback.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin

NAME = "/live/a/seg1.ts"
GREETINGS = {"fr": b"bonjour " * 64, "de": b"hallo " * 64}
DEFAULT = b"hello " * 64


def by_language(vary: str = "Accept-Language") -> web.StreamResponse:
    async def handler(request: web.Request) -> web.StreamResponse:
        language = request.headers.get("Accept-Language", "").split(",")[0].strip()
        return web.Response(body=GREETINGS.get(language, DEFAULT), content_type="video/mp2t",
                            headers={"Vary": vary, "Cache-Control": "max-age=3600"})
    return handler  # type: ignore[return-value]


async def fetch(url: str, language: str | None) -> tuple[bytes, str, str]:
    headers = {"Accept-Encoding": "identity", **({"Accept-Language": language} if language else {})}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        assert r.status == 200
        return await r.read(), r.headers["X-Cache"], r.headers.get("Vary", "")


async def test_each_language_gets_its_own_variant_and_each_variant_is_cached(origin: FakeOrigin,
                                                                              stack: Stack) -> None:
    origin.routes[NAME] = by_language()  # type: ignore[assignment]
    url = stack.edge + NAME
    first = [await fetch(url, language) for language in ("fr", "de", None)]
    # What was seen: the first body (French) for everyone, and no Vary towards the player.
    assert [body for body, _, _ in first] == [GREETINGS["fr"], GREETINGS["de"], DEFAULT]
    assert all("accept-language" in vary.lower() for _, _, vary in first)
    again = [await fetch(url, language) for language in ("fr", "de", None)]
    assert [(body, cache) for body, cache, _ in again] == [
        (GREETINGS["fr"], "HIT"), (GREETINGS["de"], "HIT"), (DEFAULT, "HIT")]
    # Each variant reached the origin once, with its own header; learning the
    # Vary cost one request without it, at the shield and then at the edge's.
    asked = [r.headers.get("Accept-Language") for r in origin.requests]
    assert sorted(a for a in asked if a) == ["de", "fr"]
    assert asked.count(None) == 2


async def test_vary_star_is_never_stored(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes[NAME] = by_language("*")  # type: ignore[assignment]
    results = [await fetch(stack.edge + NAME, "fr") for _ in range(3)]
    # Vary: * names no header livecdn could forward: every request is the origin's to answer, as asked.
    assert [(body, cache, vary) for body, cache, vary in results] == [(DEFAULT, "MISS", "*")] * 3
    assert origin.hits[NAME] == 3


async def test_accept_encoding_alone_keys_nothing(origin: FakeOrigin, stack: Stack) -> None:
    origin.routes[NAME] = by_language("Accept-Encoding")  # type: ignore[assignment]
    results = [await fetch(stack.edge + NAME, language) for language in ("fr", "de")]
    assert [(body, cache) for body, cache, _ in results] == [(DEFAULT, "MISS"), (DEFAULT, "HIT")]
    assert origin.hits[NAME] == 1
