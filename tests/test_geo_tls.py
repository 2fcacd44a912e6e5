"""The router over HTTPS: its own TLS listener, its plain one redirecting there, https Locations, reload.

A real GeoNode on loopback (the edges' admin listeners are test_geo_node's
fakes); clients are aiohttp and openssl s_client, certificates from a
throwaway CA.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from geo import GeoNode
from livecdn.config import Address, Topology
from livecdn.config.schema import Certificate, TlsSettings
from tests.test_geo_node import FakeEdgeAdmin, edges, running, topology  # noqa: F401 - `edges` is a fixture
from tests.test_tls import issue, leaf_of, served

pytestmark = pytest.mark.slow

LOCAL = Address("127.0.0.1", 0)


def tls_topology(admins: dict[str, FakeEdgeAdmin], where: Path, ca: trustme.CA) -> Topology:
    """test_geo_node's topology; the router serves HTTPS (plain redirects there), edge-lon has TLS on 8443."""
    cert, key = issue(ca, where, "router", "127.0.0.1")
    topo = topology(admins)
    assert topo.router is not None
    router = dataclasses.replace(topo.router, tls=TlsSettings(LOCAL, (Certificate(str(cert), str(key)),),
                                                              plain="redirect"))
    lon = topo.edges["edge-lon"]
    lon = dataclasses.replace(lon, tls=TlsSettings(Address(lon.listen.host, 8443), (Certificate("x", "y"),)))
    return dataclasses.replace(topo, router=router, edges={**topo.edges, "edge-lon": lon})


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_router(edges: dict[str, FakeEdgeAdmin], tmp_path: Path,  # noqa: F811 - the fixture
                     ca: trustme.CA) -> AsyncIterator[GeoNode]:
    async with running(tls_topology(edges, tmp_path, ca)) as node:
        yield node


async def test_the_router_redirects_over_https_to_an_edge_s_https_url(tls_router: GeoNode, ca: trustme.CA) -> None:
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    target = "/live/720p/index.m3u8?x=1"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{tls_router.http_port}{target}", allow_redirects=False) as r:
            assert r.status == 301  # its plain listener only sends players to its https one
            assert r.headers["Location"] == f"https://127.0.0.1:{tls_router.tls_port}{target}"
        async with s.get(f"https://127.0.0.1:{tls_router.tls_port}{target}", allow_redirects=False, ssl=trust) as r:
            assert r.status == 302
            assert r.headers["Location"] == f"https://127.0.1.1:8443{target}"  # edge-lon serves TLS on 8443


async def test_the_router_reads_its_certificate_again_on_reload(tls_router: GeoNode, ca: trustme.CA,
                                                                tmp_path: Path) -> None:
    async def presented() -> str:  # the router runs in this loop: the client must not block it
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{tls_router.tls_port}", "-showcerts",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        return served(out.decode())

    before = await presented()
    assert before == leaf_of(tmp_path / "router.pem")
    issue(ca, tmp_path, "router", "127.0.0.1")
    tls_router.reload(tls_router.topology)
    after = await presented()
    assert after != before and after == leaf_of(tmp_path / "router.pem")
