"""The topology file read one way: exact "file: key: problem" lines, defaults stated once, frozen values."""

from __future__ import annotations

import configparser
import dataclasses
from pathlib import Path

import pytest

import livecdn
from livecdn.cache.freshness import Rules
from livecdn.cli import DEMO_CONFIG
from livecdn.config import (
    Address,
    CacheSettings,
    CdnSettings,
    ConfigError,
    EdgeConfig,
    GuardSettings,
    HealthSettings,
    LimitSettings,
    RouterConfig,
    ShieldConfig,
    Topology,
    load,
)
from livecdn.config.schema import FieldError
from tests.cdn import ROOT

MINIMAL = """\
[origin]
url = "http://127.0.0.1:9/"
[regions.eu]
location = [50.0, 8.0]
[shields.s]
listen = "127.0.0.1:8300"
admin = "127.0.0.1:9300"
[edges.e]
region = "eu"
listen = "127.0.1.1:8080"
admin = "127.0.1.1:9080"
[router]
dns = "127.0.0.1:8053"
http = "127.0.0.1:8000"
admin = "127.0.0.1:9000"
database = "geo.mmdb"
default_region = "eu"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cdn.toml"
    path.write_text(text)
    return path


def problem(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.path == str(path)
    return str(info.value).removeprefix(f"{path}: ")


def test_a_minimal_topology_gets_the_dataclass_defaults(tmp_path: Path) -> None:
    topo = load(write(tmp_path, MINIMAL))
    cdn = CdnSettings()
    assert (topo.name, topo.hostname, topo.play_path) == (cdn.name, cdn.hostname, cdn.play_path)
    assert topo.origin_url == "http://127.0.0.1:9"
    assert topo.shields["s"] == ShieldConfig("s", Address("127.0.0.1", 8300), Address("127.0.0.1", 9300))
    assert topo.edges["e"] == EdgeConfig("e", "eu", Address("127.0.1.1", 8080), Address("127.0.1.1", 9080),
                                         (50.0, 8.0))  # the region's location
    assert topo.router == RouterConfig(
        dns=Address("127.0.0.1", 8053), http=Address("127.0.0.1", 8000), admin=Address("127.0.0.1", 9000),
        database=str(tmp_path.resolve() / "geo.mmdb"), default_region="eu",
        zone="livecdn.test", nameservers=("ns1.livecdn.test",), addresses={"e": ("127.0.1.1",)})
    assert topo.router.name == "router" and topo.router.health == HealthSettings()


def test_top_level_tables_cascade_under_every_node(tmp_path: Path) -> None:
    topo = load(write(tmp_path, MINIMAL + """
[cache]
memory_bytes = "1MiB"
disk_path = "/var/cache/{node}"
master_ttl = 5
[limits]
miss_rate = 7
[edges.e.cache]
memory_bytes = "64 KiB"
[edges.e.guard]
prefetch = false
"""))
    shield, edge = topo.shields["s"].cache, topo.edges["e"]
    assert (shield.memory_bytes, shield.disk_path, shield.master_ttl) == (1 << 20, "/var/cache/s", 5.0)
    assert (edge.cache.memory_bytes, edge.cache.disk_path, edge.cache.master_ttl) == (64 << 10, "/var/cache/e", 5.0)
    assert edge.limits == LimitSettings(miss_rate=7.0)
    assert edge.guard == GuardSettings(prefetch=False)
    assert Rules.of(edge.cache) == Rules(master_ttl=5.0)  # every lifetime of [cache], by name


@pytest.mark.parametrize(("extra", "expected"), [
    ('[edges.e.cache]\nmemory_bytes = "lots"', "edges.e.cache.memory_bytes: expected a size such as 64MiB, got 'lots'"),
    ('[guard]\nprefetch = "yes"', "guard.prefetch: expected true or false, got 'yes'"),
    ('[limits]\nmax_clients = true', "limits.max_clients: expected a whole number, got True"),
    ('[router.health]\ninterval = "1s"', "router.health.interval: expected a number, got '1s'"),
    ('[router.addresses]\ne = "127.0.1.1"', "router.addresses.e: expected an array, got '127.0.1.1'"),
    ('[cache]\nmax_object_bytes = 0', "cache.max_object_bytes: must be at least 1 B, got 0"),
    ('[edges.e.guard]\nfalse_positive_rate = 0.5', "edges.e.guard.false_positive_rate: must be below 0.5, got 0.5"),
    ('[router.health]\ntimeout = 0', "router.health.timeout: must be above 0 s, got 0.0"),
    ('[router.health]\nslow = 0', "router.health.slow: must be above 0 s, got 0.0"),
    ('[router.health]\ntimeout = 0.5\nslow = 0.5', "router.health.slow: must be below timeout (0.5 s), got 0.5"),
    ('[regions.us]\nlocation = [95, 0]', "regions.us.location[0]: must be at most 90°, got 95.0"),
    ('[regions.us]\nlocation = [1, 2, 3]', "regions.us.location: expected an array of 2, got [1, 2, 3]"),
    ('[cdn]\nnmae = "typo"', "cdn.nmae: unknown key"),
    ('[edges.e.cache]\nstale_if_eror = 3', "edges.e.cache.stale_if_eror: unknown key"),
    ('[router.health]\nintervl = 1', "router.health.intervl: unknown key"),
    ('[cdn]\nplay_path = "live.m3u8"', "cdn.play_path: must be a path starting with '/', got 'live.m3u8'"),
    ("[limits]\nmiss_burst = 0",
     "limits.miss_burst: a limited rate (miss_rate = 50/s) needs a burst of at least 1, got 0"),
    ("[edges.e.limits]\nrequest_rate = 5",
     "edges.e.limits.request_burst: a limited rate (request_rate = 5/s) needs a burst of at least 1, got 0"),
    ('[router.addresses]\nnope = ["10.0.0.1"]', "router.addresses.nope: no edge 'nope' in [edges] (known: e)"),
    ('[router.addresses]\ne = ["10.0.0.300"]',
     "router.addresses.e[0]: '10.0.0.300' does not appear to be an IPv4 or IPv6 address"),
    ("[shields.t]\nlisten = \"127.0.0.1:8300\"\nadmin = \"127.0.0.1:9301\"",
     "shields.t.listen: 127.0.0.1:8300 is already used by shields.s.listen"),
    ('[cdn]\ntrusted_proxies = ["10.0.0.1/8"]',
     "cdn.trusted_proxies[0]: not an IP network (ADDRESS/PREFIX, no host bits set): 10.0.0.1/8 has host bits set"),
    ('[cdn]\ntrusted_proxies = "10.0.0.0/8"', "cdn.trusted_proxies: expected an array, got '10.0.0.0/8'"),
    ('[cdn]\nforwarded_header = "x-real-ip"',
     "cdn.forwarded_header: expected one of 'x-forwarded-for', 'forwarded', got 'x-real-ip'"),
])
def test_each_error_names_file_key_and_problem(tmp_path: Path, extra: str, expected: str) -> None:
    assert problem(tmp_path, MINIMAL + extra + "\n") == expected


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('region = "eu"', 'region = "mars"', "edges.e.region: no region 'mars' in [regions] (known: eu)"),
    ('default_region = "eu"', 'default_region = "mars"',
     "router.default_region: no region 'mars' in [regions] (known: eu)"),
    ('default_region = "eu"', 'default_region = "eu"\nzone = "Else.Where."',
     "router.zone: the CDN host name 'cdn.livecdn.test' is not inside zone 'else.where'"),
    ('default_region = "eu"', 'default_region = "eu"\nttl = 86400', "router.ttl: must be at most 3600 s, got 86400"),
    ('[edges.e]\n', '[edges.e]\nname = "f"\n', "edges.e.name: unknown key"),
    ('listen = "127.0.1.1:8080"', 'listen = "0.0.0.0:8080"',
     "router.addresses.e: edge listens on '0.0.0.0': give the addresses players reach it at"),
    ('[shields.s]\n', '[shields.s]\nworkers = 0\n', "shields.s.workers: must be at least 1, got 0"),
    ('admin = "127.0.1.1:9080"\n', "", "edges.e.admin: is required"),
    ('url = "http://127.0.0.1:9/"', 'url = "ftp://x"', "origin.url: expected an http(s) URL, got 'ftp://x'"),
    ('[edges.e]\nregion = "eu"\nlisten = "127.0.1.1:8080"', '[edges.e]\nregion = "eu"\nlisten = "127.0.0.1:8000"',
     "edges.e.listen: 127.0.0.1:8000 is already used by router.http"),
    ('[edges.e]\n', '[edges.e]\ntrusted_proxies = ["fe80::/10", "nope"]\n',
     "edges.e.trusted_proxies[1]: not an IP network (ADDRESS/PREFIX, no host bits set): "
     "'nope' does not appear to be an IPv4 or IPv6 network"),
    ('[router]\n', '[router]\nproxy_protocol = "yes"\n', "router.proxy_protocol: expected true or false, got 'yes'"),
])
def test_cross_references_and_required_keys(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in MINIMAL
    assert problem(tmp_path, MINIMAL.replace(old, new, 1)) == expected


def test_cdn_trusted_proxies_cascade_under_edges_and_router_unless_they_give_their_own(tmp_path: Path) -> None:
    text = MINIMAL.replace("[edges.e]\n", '[edges.e]\ntrusted_proxies = []\nproxy_protocol = true\n') + """
[edges.f]
region = "eu"
listen = "127.0.1.2:8080"
admin = "127.0.1.2:9080"
[cdn]
trusted_proxies = ["10.0.0.0/8", "2001:DB8::/32", "127.0.0.1"]
forwarded_header = "forwarded"
"""
    topo = load(write(tmp_path, text))
    e, f, router = topo.edges["e"], topo.edges["f"], topo.router
    assert router is not None
    assert (e.trusted_proxies, e.forwarded_header, e.proxy_protocol) == ((), "forwarded", True)
    canonical = ("10.0.0.0/8", "2001:db8::/32", "127.0.0.1/32")
    assert (f.trusted_proxies, f.proxy_protocol) == (canonical, False)
    assert (router.trusted_proxies, router.forwarded_header, router.proxy_protocol) == (canonical, "forwarded", False)


def test_the_builtin_origin_is_read_by_the_same_reader(tmp_path: Path) -> None:
    base = MINIMAL.replace('url = "http://127.0.0.1:9/"', '[origin.builtin]\nlisten = "127.0.0.1:8400"')
    topo = load(write(tmp_path, base))
    assert topo.origin is not None and topo.origin.name == "origin" and topo.origin_url == "http://127.0.0.1:8400"
    bad = base.replace('listen = "127.0.0.1:8400"', 'listen = "127.0.0.1:8400"\nstreams = ["ok", "no way"]')
    assert problem(tmp_path, bad) == "origin.builtin.streams[1]: must be letters, digits, '_' or '-', got 'no way'"
    bad = base.replace('listen = "127.0.0.1:8400"', 'listen = "127.0.0.1:8400"\n[[origin.builtin.renditions]]\n'
                                                    'name = "x"\nbandwidth = 1\nwidth = 0\nheight = 1')
    assert problem(tmp_path, bad) == "origin.builtin.renditions[0].width: must be at least 1, got 0"
    assert problem(tmp_path, base.replace('8400"', '8400"\nmode = "live"')) == \
        "origin.builtin.mode: expected one of 'synthetic', 'ffmpeg', got 'live'"


def test_values_built_by_hand_break_the_same_rules() -> None:
    with pytest.raises(FieldError, match=r"^miss_burst: a limited rate \(miss_rate = 1/s\)") as info:
        LimitSettings(miss_rate=1, miss_burst=0)
    assert info.value.field == "miss_burst"
    with pytest.raises(ValueError, match=r"^max_object_bytes: must be at least 1 B, got 0$"):
        CacheSettings(max_object_bytes=0)
    with pytest.raises(ValueError, match=r"^addresses\.e: must not be empty$"):
        dataclasses.replace(load_demo().router, addresses={"e": ()})  # type: ignore[type-var]


def test_frozen_values_hold_no_dicts(tmp_path: Path) -> None:
    topo = load(write(tmp_path, MINIMAL))
    assert topo.router is not None
    for mapping in (topo.regions, topo.shields, topo.edges, topo.router.addresses):
        with pytest.raises(TypeError):
            mapping["x"] = None  # type: ignore[index]
    by_hand = dataclasses.replace(topo, edges={"e": topo.edges["e"]})
    with pytest.raises(TypeError):
        by_hand.edges["f"] = topo.edges["e"]  # type: ignore[index]
    assert list(by_hand.edges.values()) == [topo.edges["e"]] and by_hand.edges.get("e") is topo.edges["e"]


def load_demo() -> Topology:
    return load(DEMO_CONFIG)


def test_the_demo_topology_and_its_database_are_package_data() -> None:
    package = Path(livecdn.__file__).resolve().parent
    assert DEMO_CONFIG.parent == package
    topo = load_demo()
    assert topo.router is not None and Path(topo.router.database) == package / "demo-geo.mmdb"
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    shipped = {name.strip() for name in setup["options.package_data"]["livecdn"].split(",")}
    assert shipped == {DEMO_CONFIG.name, "demo-geo.mmdb"}
    for name in shipped:  # what operators read in configs/ is the same file
        assert (ROOT / "configs" / name).resolve() == package / name
