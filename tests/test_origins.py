"""Cache identity includes the origin (#10 item 1): several origins, routed by Host and prefix, never mixed up.

The process tests run the origins in a thread of their own (the demo's
start-up blocks this thread while it asks the play URL through the edge).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from livecdn.cache.keys import cache_key, origin_identity, origin_of, path_of
from livecdn.config import ConfigError, Topology, load
from livecdn.config.schema import DEFAULT_ORIGIN, OriginRoute
from livecdn.front.origins import Origins
from livecdn.front.request import Request
from tests.cdn import Stack, run_cdn, topology_toml
from tests.fakeorigin import FakeOrigin, body
from tests.test_config import MINIMAL
from tests.test_processes import livecdn

HLS = "application/vnd.apple.mpegurl"


def master(tag: str) -> bytes:
    return (f"#EXTM3U\n## {tag}\n#EXT-X-STREAM-INF:BANDWIDTH=600000,RESOLUTION=640x360\n"
            f"360p/index.m3u8\n").encode()


def media(tag: str) -> bytes:
    return (f"#EXTM3U\n## {tag}\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:2.0,\nseg0.ts\n#EXTINF:2.0,\nseg1.ts\n").encode()


def packager(origin: FakeOrigin, tag: str, root: str = "/live/") -> None:
    """A stream under `root` whose every body says `tag`: master, one rendition, two segments."""
    origin.routes[f"{root}master.m3u8"] = body(master(tag), HLS)
    origin.routes[f"{root}360p/index.m3u8"] = body(media(tag), HLS)
    for n in (0, 1):
        origin.routes[f"{root}360p/seg{n}.ts"] = body(f"{tag} segment {n} ".encode() * 500)


@contextlib.contextmanager
def origins(n: int) -> Iterator[list[FakeOrigin]]:
    """`n` fake origins served from a loop in another thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started = [FakeOrigin() for _ in range(n)]
    try:
        for o in started:
            asyncio.run_coroutine_threadsafe(o.start(), loop).result(10)
        yield started
    finally:
        for o in started:
            asyncio.run_coroutine_threadsafe(o.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def fetch(url: str, host: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={**({"Host": host} if host else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def edge_and_shield(info: dict[str, object]) -> tuple[str, str]:
    nodes = info["nodes"]
    assert isinstance(nodes, list)
    return tuple(next(n["url"] for n in nodes if n["role"] == role) for role in ("edge", "shield"))  # type: ignore


# --- what was seen: origin switched, the old origin's cache served -------------------------


def test_a_cdn_restarted_in_front_of_another_origin_serves_that_origins_bytes(tmp_path: Path) -> None:
    """`demo --origin A`, stopped, `demo --origin B` on the same disk tier: B's master and B's reused names."""
    config = tmp_path / "cdn.toml"
    with origins(2) as (a, b):
        packager(a, "A")
        packager(b, "B")
        config.write_text(topology_toml(origin=a.url, edges=1, router=False,
                                        cache={"disk_path": str(tmp_path / "disk" / "{node}")}))
        with run_cdn(config, "--origin", a.url) as info:
            edge, _ = edge_and_shield(info)
            assert fetch(edge + "/live/master.m3u8") == (200, master("A"))
            assert fetch(edge + "/live/360p/index.m3u8") == (200, media("A"))
            assert fetch(edge + "/live/360p/seg0.ts")[1].startswith(b"A segment 0")
        assert any((tmp_path / "disk").rglob("*")), "the first run left nothing on disk: nothing to prove"
        with run_cdn(config, "--origin", b.url) as info:
            edge, _ = edge_and_shield(info)
            assert fetch(edge + "/live/master.m3u8") == (200, master("B"))
            assert fetch(edge + "/live/360p/index.m3u8") == (200, media("B"))
            assert fetch(edge + "/live/360p/seg0.ts")[1].startswith(b"B segment 0")
        assert b.hits["/live/master.m3u8"] >= 1 and b.hits["/live/360p/seg0.ts"] == 1


# --- several origins at once ------------------------------------------------------------------


def test_origins_routed_by_host_and_by_prefix_each_serve_their_own_bytes(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    with origins(3) as (a, b, c):
        packager(a, "A")  # the default: every request no other origin takes
        packager(b, "B")  # players asking for b.example (any port, any case)
        packager(c, "C", "/customer-c/live/")  # one path prefix
        config.write_text(topology_toml(origin=a.url, edges=1, router=False) + f"""
[origins.cust-b]
url = "{b.url}"
hosts = ["b.example", "www.b.example"]
host_header = "packager-b.internal"

[origins.cust-c]
url = "{c.url}/"
prefix = "/customer-c/"
""")
        with run_cdn(config) as info:
            edge, shield = edge_and_shield(info)
            for _ in range(2):  # the second round is answered from the edge's memory: still each its own
                assert fetch(edge + "/live/master.m3u8") == (200, master("A"))
                assert fetch(edge + "/live/master.m3u8", "B.Example:8080") == (200, master("B"))
                assert fetch(edge + "/live/master.m3u8", "www.b.example") == (200, master("B"))
                assert fetch(edge + "/customer-c/live/master.m3u8") == (200, master("C"))
                # A rule naming the Host comes before a prefix-only one: B's, which has no such name.
                assert fetch(edge + "/customer-c/live/master.m3u8", "b.example")[0] == 404
                assert fetch(edge + "/live/360p/seg1.ts", "b.example")[1].startswith(b"B segment 1")
                assert fetch(edge + "/customer-c/live/360p/seg1.ts")[1].startswith(b"C segment 1")
                assert fetch(edge + "/live/360p/seg1.ts")[1].startswith(b"A segment 1")
            # The shield routes a player's request as the edge does; an origin it does not know is refused.
            assert fetch(shield + "/live/360p/seg0.ts", "b.example")[1].startswith(b"B segment 0")
            assert fetch(shield + "/live/360p/seg0.ts", headers={"X-Livecdn-Origin": "cust-b.00000000"})[0] == 502
        assert b.hits["/live/360p/seg1.ts"] == 1 and c.hits["/customer-c/live/360p/seg1.ts"] == 1
        assert {r.host for r in b.requests} == {"packager-b.internal"}  # the Host it expects
        assert {r.host for r in c.requests} == {f"127.0.0.1:{c.port}"}  # by default its URL's own
        assert not any(r.path.startswith("/customer-c/") for r in a.requests)


async def test_a_reload_that_moves_the_origin_stops_serving_what_the_old_one_sent() -> None:
    """SIGHUP with the origin at a new URL: the memory tiers of edge and shield hold the old bytes, unserved."""
    a, b = FakeOrigin(), FakeOrigin()
    for o, tag in ((a, "A"), (b, "B")):
        await o.start()
        o.routes["/live/360p/seg0.ts"] = body(f"{tag} segment".encode())
    stack = await Stack(a.url).start()
    try:
        assert await get_body(stack.edge + "/live/360p/seg0.ts") == b"A segment"
        for node in [*stack.shields, *stack.edges]:
            node.reload(node.topology.with_origin(b.url))
        assert await get_body(stack.edge + "/live/360p/seg0.ts") == b"B segment"
        assert b.hits["/live/360p/seg0.ts"] == 1
    finally:
        await stack.stop()
        await a.stop()
        await b.stop()


async def get_body(url: str) -> bytes:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200, url
        return await r.read()


def test_the_origin_leads_the_storage_key_and_only_where_it_selects_does_the_host() -> None:
    a, b = OriginRoute("a", "http://10.0.0.1"), OriginRoute("b", "http://10.0.0.2", hosts=("b.example",))
    routing = Origins([a, b])
    key = routing.key(Request("GET", "/live//./seg.ts?token=1", "1.1", {b"host": b"B.EXAMPLE.:81"}, True))
    assert key.origin == origin_identity(b) and key.key == origin_identity(b) + "/live/seg.ts"
    assert path_of(key.key) == "/live/seg.ts" and origin_of(key.key) == origin_identity(b)
    keyed = cache_key("/live/i.m3u8?_HLS_msn=3", origin_identity(a))
    assert path_of(keyed.key) == "/live/i.m3u8" and origin_of(keyed.key) == origin_identity(a)
    # Hosts that select nothing share the default origin's one copy.
    plain = [routing.key(Request("GET", "/live/seg.ts", "1.1", {b"host": h}, True)) for h in (b"x", b"y")]
    assert plain[0] == plain[1] and plain[0].origin == origin_identity(a)
    assert Origins([a]).select is None  # one origin: the target alone finds the memoized key


def test_a_new_url_or_host_header_is_a_new_identity() -> None:
    base = OriginRoute(DEFAULT_ORIGIN, "http://a.example:8080")
    assert origin_identity(base) != origin_identity(OriginRoute(DEFAULT_ORIGIN, "http://b.example:8080"))
    assert origin_identity(base) != origin_identity(OriginRoute(DEFAULT_ORIGIN, base.url, host_header="x"))
    assert origin_identity(base) == origin_identity(OriginRoute(DEFAULT_ORIGIN, base.url + "/"))
    topo = Topology("(t)", "t", "cdn.t", base.url, None, {}, {}, {})
    moved = topo.with_origin("http://b.example:8080")
    assert [origin_identity(r) for r in moved.routes] != [origin_identity(r) for r in topo.routes]


# --- config errors ------------------------------------------------------------------------------


BASE = MINIMAL[MINIMAL.index("[regions."):]  # every table but [origin]


@pytest.mark.parametrize(("origins_toml", "key", "problem"), [
    ('[origin]\nurl = "http://a:1"\n[origins.b]\nurl = "http://b:1"\nhosts = ["b.example"]\n'
     '[origins.c]\nurl = "http://c:1"\nhosts = ["B.example", "c.example"]\n',
     "origins.c", "overlap those of origin 'b'"),
    ('[origin]\nurl = "http://a:1"\n[origins.b]\nurl = "http://b:1"\nprefix = "/x/"\n'
     '[origins.c]\nurl = "http://c:1"\nprefix = "/x/y/"\n', "origins.c", "overlap those of origin 'b'"),
    ('[origin]\nurl = "http://a:1"\n[origins.b]\nurl = "http://b:1"\nprefix = "/x/"\nhosts = ["b.example"]\n'
     '[origins.c]\nurl = "http://c:1"\nhosts = ["b.example"]\n', "origins.c", "overlap those of origin 'b'"),
    ('[origins.b]\nurl = "http://b:1"\nhosts = ["b.example"]\n', "origins", "no default origin"),
    ('[origin]\nurl = "http://a:1"\n[origins.b]\nurl = "http://b:1"\n', "origins", "one default origin at most"),
    ('[origins.a]\nurl = "http://a:1"\n[origins.b]\nurl = "http://b:1"\n', "origins", "one default origin at most"),
    ('[origin]\nurl = "http://a:1"\n[origins.b]\nurl = "http://b:1"\nprefix = "/b"\n',
     "origins.b.prefix", "must start and end with '/'"),
    ('[origin]\nurl = "http://a:1"\n[origins.b]\nurl = "http://b:1"\nhosts = ["not a host"]\n',
     "origins.b.hosts[0]", "not a DNS name"),
    ('[origin]\nurl = "http://a:1"\n[origins.default]\nurl = "http://b:1"\nprefix = "/b/"\n',
     "origins.default", "that name is [origin]'s"),
    ('[origin]\nurl = "http://a:1"\n[origins."b/c"]\nurl = "http://b:1"\nprefix = "/b/"\n',
     "origins.b/c.name", "letters, digits"),
    ('[origin]\nurl = "http://a:1"\n[origins.b]\nurl = "ftp://b"\nprefix = "/b/"\n', "origins.b.url", "http(s) URL"),
    ('[origin]\nurl = "http://a:1"\n[origins.b]\nurl = "http://b:1"\nprefix = "/b/"\npath = "/"\n',
     "origins.b.path", "unknown key"),
    ('[origin]\nurl = "http://a:1"\nhost_header = "a b"\n', "origin.host_header", "a host name"),
    ('[origins.b]\nurl = "http://b:1"\n[origin]\nhost_header = "a"\n', "origin.host_header", "no [origin] url"),
])
def test_bad_origins_are_config_errors(tmp_path: Path, origins_toml: str, key: str, problem: str) -> None:
    path = tmp_path / "cdn.toml"
    path.write_text(origins_toml + BASE)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.key == key and problem in caught.value.problem, str(caught.value)


def test_the_cli_says_file_key_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "cdn.toml"
    path.write_text('[origin]\nurl = "http://a:1"\n[origins.b]\nurl = "http://b:1"\nprefix = "/b/"\n'
                    '[origins.c]\nurl = "http://c:1"\nprefix = "/b/"\n' + BASE)
    out = livecdn("edge", "--config", str(path), "--node", "e")
    assert out.returncode == 2
    assert out.stderr.strip() == f"livecdn: {path}: origins.c: its hosts and prefix overlap those of origin " \
                                 f"'b': a request could be either's"


def test_a_file_with_origins_keeps_one_default_and_the_old_form_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "cdn.toml"
    path.write_text('[origins.main]\nurl = "http://a:1/"\n[origins.b]\nurl = "http://b:1"\nhosts = ["b.example"]\n'
                    + BASE)
    topo = load(path)
    assert topo.origin_url == "http://a:1" and {r.name for r in topo.routes} == {"main", "b"}
    moved = topo.with_origin("http://z:2")
    assert moved.origins["main"].url == "http://z:2" and moved.origins["b"].url == "http://b:1"
    path.write_text('[origin]\nurl = "http://a:1"\n' + BASE)
    assert [(r.name, r.url, r.catch_all) for r in load(path).routes] == [(DEFAULT_ORIGIN, "http://a:1", True)]
