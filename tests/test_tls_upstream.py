"""HTTPS origins: a self-signed origin certificate is trusted through the origin's `ca_file`, never by default.

A real aiohttp origin over TLS (its certificate from a throwaway CA), a real
shield and edge in front of it on loopback. With the CA as `ca_file` the
player gets the origin's bytes; without it the shield refuses the origin's
certificate and the player gets a 502 that says so (not a silent insecure
fetch, and not a bare "could not be reached").
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin, body

PLAYLIST = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n#EXTINF:2.0,\nseg1.ts\n"


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    path = tmp_path / "origin-ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


@pytest.fixture
async def https_origin(ca: tuple[trustme.CA, Path]) -> AsyncIterator[FakeOrigin]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca[0].issue_cert("127.0.0.1").configure_cert(ctx)
    origin = FakeOrigin(ctx)
    origin.routes["/live/media.m3u8"] = body(PLAYLIST, "application/vnd.apple.mpegurl")
    await origin.start()
    yield origin
    await origin.stop()


async def _get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("fallback", [False, True], ids=["through-shield", "edge-to-origin"])
async def test_a_self_signed_origin_is_fetched_when_its_ca_file_is_given(
        https_origin: FakeOrigin, ca: tuple[trustme.CA, Path], fallback: bool) -> None:
    stack = await Stack(https_origin.url, shields=0 if fallback else 1, origin_fallback=fallback,
                        origin_ca=str(ca[1])).start()
    try:
        status, data = await _get(stack.edge + "/live/media.m3u8")
    finally:
        await stack.stop()
    assert (status, data) == (200, PLAYLIST)
    assert https_origin.hits["/live/media.m3u8"] == 1


@pytest.mark.parametrize("fallback", [False, True], ids=["through-shield", "edge-to-origin"])
async def test_an_untrusted_origin_certificate_is_a_502_that_says_so(https_origin: FakeOrigin,
                                                                     fallback: bool) -> None:
    stack = await Stack(https_origin.url, shields=0 if fallback else 1, origin_fallback=fallback).start()
    try:
        status, data = await _get(stack.edge + "/live/media.m3u8")
    finally:
        await stack.stop()
    assert status == 502, data
    assert b"certificate that is not trusted" in data, data
    assert https_origin.hits["/live/media.m3u8"] == 0  # no request went over the untrusted connection
