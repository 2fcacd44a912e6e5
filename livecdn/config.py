"""The topology file: one TOML document describing the whole deployment.

It is loaded once into frozen dataclasses. Every value is checked here, so a
node never starts on a half-understood file: a bad value raises `ConfigError`
naming the file, the key and the problem, and the CLI turns that into one line
and exit status 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "Address",
    "CacheSettings",
    "ConfigError",
    "EdgeConfig",
    "GuardSettings",
    "HealthSettings",
    "LimitSettings",
    "OriginConfig",
    "Region",
    "Rendition",
    "RouterConfig",
    "ShieldConfig",
    "Topology",
    "load",
]

Role = Literal["origin", "shield", "edge", "geo"]
T = TypeVar("T")


class ConfigError(Exception):
    """A topology file value that cannot be used; names the file and key."""

    def __init__(self, path: str | Path, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = str(path)
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class Address:
    """A listening address, `HOST:PORT` or `[V6]:PORT` in the file."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
        if not m:
            raise ValueError(f"expected HOST:PORT or [IPV6]:PORT, got {text!r}")
        host = m.group(1) or m.group(3)
        port = int(m.group(2) or m.group(4))
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0..65535")
        return cls(host, port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url.removeprefix("http://")


@dataclass(frozen=True)
class CacheSettings:
    """Bounds and lifetimes of one node's cache engine."""

    memory_bytes: int = 256 << 20
    disk_bytes: int = 2 << 30
    disk_path: str = ""  # empty: no disk tier
    max_object_bytes: int = 64 << 20
    stale_while_revalidate: float = 2.0
    stale_if_error: float = 30.0
    negative_ttl: float = 1.0
    upstream_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "disk_bytes", "max_object_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_object_bytes == 0:
            raise ValueError("max_object_bytes must be positive")
        for name in ("stale_while_revalidate", "stale_if_error", "negative_ttl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.upstream_timeout <= 0:
            raise ValueError("upstream_timeout must be positive")


@dataclass(frozen=True)
class GuardSettings:
    """The edge's knowledge of its streams: Bloom-filter guard and prefetch (a rate of 0: unlimited)."""

    false_positive_rate: float = 0.0001  # per filter generation; two generations are checked
    names_per_generation: int = 4096  # a stream's filter rotates after this many names
    refresh_interval: float = 1.0  # at most one guard-triggered playlist refresh per stream this often
    unknown_rate: float = 10.0  # upstream tries per second for names of streams never seen
    unknown_burst: int = 20
    unknown_client_rate: float = 2.0  # the share of those tries one client address may take
    unknown_client_burst: int = 5
    max_streams: int = 10_000  # streams remembered (least recently used are forgotten)
    prefetch: bool = True
    prefetch_concurrency: int = 4
    viewer_idle: float = 30.0  # a stream nobody asked for in this long gets no prefetch

    def __post_init__(self) -> None:
        if not 0 < self.false_positive_rate < 0.5:
            raise ValueError(f"false_positive_rate must be in (0, 0.5), got {self.false_positive_rate}")
        if self.names_per_generation < 16:
            raise ValueError("names_per_generation must be at least 16")
        if self.max_streams < 1 or self.prefetch_concurrency < 1:
            raise ValueError("max_streams and prefetch_concurrency must be at least 1")
        if min(self.refresh_interval, self.unknown_rate, self.unknown_client_rate, self.viewer_idle) < 0:
            raise ValueError("intervals and rates must not be negative")


@dataclass(frozen=True)
class LimitSettings:
    """Per-client limits at an edge; a rate of 0 means unlimited."""

    miss_rate: float = 50.0  # requests per second per client address that miss the memory tier
    miss_burst: int = 200
    request_rate: float = 0.0  # every request, hits included (off by default: hits are cheap)
    request_burst: int = 0
    connections_per_client: int = 512  # open connections per client address (0: unlimited)
    max_clients: int = 100_000  # client addresses tracked (least recently seen are forgotten)

    def __post_init__(self) -> None:
        if self.miss_rate < 0 or self.request_rate < 0:
            raise ValueError("rates must not be negative")
        if (self.miss_rate and self.miss_burst < 1) or (self.request_rate and self.request_burst < 1):
            raise ValueError("a limited rate needs a burst of at least 1")
        if self.max_clients < 1:
            raise ValueError("max_clients must be at least 1")


@dataclass(frozen=True)
class Rendition:
    """One variant of the built-in origin's stream."""

    name: str
    bandwidth: int
    width: int
    height: int


@dataclass(frozen=True)
class OriginConfig:
    """The built-in live origin (demo and tests)."""

    name: str
    listen: Address
    mode: Literal["synthetic", "ffmpeg"] = "synthetic"
    streams: tuple[str, ...] = ("live",)
    target_duration: float = 2.0
    window: int = 6
    segment_bytes: int = 64 << 10  # synthetic mode: bytes per segment
    renditions: tuple[Rendition, ...] = (
        Rendition("720p", 2_000_000, 1280, 720),
        Rendition("360p", 600_000, 640, 360),
    )
    work_dir: str = ""  # ffmpeg mode: where segments are written; empty: a temp dir


@dataclass(frozen=True)
class Region:
    name: str
    location: tuple[float, float]


@dataclass(frozen=True)
class ShieldConfig:
    name: str
    listen: Address
    admin: Address
    workers: int = 1
    cache: CacheSettings = field(default_factory=CacheSettings)


@dataclass(frozen=True)
class EdgeConfig:
    name: str
    region: str
    listen: Address
    admin: Address
    location: tuple[float, float]
    capacity: int = 10_000  # concurrent player requests before the node reports overload
    workers: int = 1
    origin_fallback: bool = False  # go to the origin directly when every shield fails
    cache: CacheSettings = field(default_factory=CacheSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)


@dataclass(frozen=True)
class HealthSettings:
    """How the router checks edges: an edge that fails leaves its answers within
    about `interval * (failures - 1) + timeout` seconds."""

    interval: float = 1.0
    timeout: float = 1.0
    failures: int = 3  # failed checks in a row that take an edge out
    rise: int = 2  # good checks in a row that bring it back

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        if self.failures < 1 or self.rise < 1:
            raise ValueError("failures and rise must be at least 1")


@dataclass(frozen=True)
class RouterConfig:
    """The geo router: DNS and HTTP answers naming the nearest healthy edge."""

    name: str
    dns: Address  # UDP and TCP
    http: Address  # 302 to the chosen edge; /route
    admin: Address  # /healthz, /metrics, /route
    database: str  # City-type MaxMind DB (absolute path)
    default_region: str  # where addresses the database does not know are placed
    zone: str  # the DNS zone answered; [cdn] hostname lies inside it
    ttl: int = 20  # seconds: short, so players follow health changes
    nameservers: tuple[str, ...] = ()  # NS names of the zone
    addresses: dict[str, tuple[str, ...]] = field(default_factory=dict)  # edge → addresses players reach it at
    health: HealthSettings = field(default_factory=HealthSettings)


@dataclass(frozen=True)
class Topology:
    path: str
    name: str
    hostname: str
    origin_url: str
    origin: OriginConfig | None
    regions: dict[str, Region]
    shields: dict[str, ShieldConfig]
    edges: dict[str, EdgeConfig]
    play_path: str = "/live/master.m3u8"
    router: RouterConfig | None = None

    def node(self, name: str) -> tuple[Role, OriginConfig | ShieldConfig | EdgeConfig | RouterConfig]:
        """Find a node by name; raises ConfigError when the file has no such node."""
        if self.origin is not None and self.origin.name == name:
            return "origin", self.origin
        if name in self.shields:
            return "shield", self.shields[name]
        if name in self.edges:
            return "edge", self.edges[name]
        if self.router is not None and self.router.name == name:
            return "geo", self.router
        known = sorted([*self.shields, *self.edges] + ([self.origin.name] if self.origin else [])
                       + ([self.router.name] if self.router else []))
        raise ConfigError(self.path, "--node", f"no node named {name!r} (known: {', '.join(known)})")

    def with_origin(self, url: str) -> Topology:
        """The same CDN in front of an existing origin instead of the built-in one."""
        return dataclasses.replace(self, origin_url=_origin_url(url), origin=None)


# --- parsing ---------------------------------------------------------------

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?")
_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(value: Any) -> int:
    """`1048576`, `"1MiB"`, `"64 KiB"` → bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        return int(float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"expected a size such as 64MiB, got {value!r}")


def _origin_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL, got {url!r}")
    return url.rstrip("/")


def _location(value: Any) -> tuple[float, float]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"expected [latitude, longitude], got {value!r}")
    lat, lon = float(value[0]), float(value[1])
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"latitude/longitude out of range: {value!r}")
    return lat, lon


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number of seconds, got {value!r}")
    return float(value)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


class _Table:
    """A TOML table being read: every key must be used, every value checked."""

    def __init__(self, path: str, key: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, key, f"expected a table, got {data!r}")
        self.path, self.key, self.data = path, key, dict(data)

    def _name(self, key: str) -> str:
        return f"{self.key}.{key}" if self.key else key

    def get(self, key: str, convert: Callable[[Any], T], default: T | None = None) -> T:
        if key not in self.data:
            if default is None:
                raise ConfigError(self.path, self._name(key), "is required")
            return default
        try:
            return convert(self.data.pop(key))
        except (ValueError, TypeError) as e:
            raise ConfigError(self.path, self._name(key), str(e)) from None

    def table(self, key: str) -> _Table:
        return _Table(self.path, self._name(key), self.data.pop(key, {}))

    def tables(self, key: str) -> dict[str, _Table]:
        section = self.table(key)
        names = list(section.data)
        return {n: section.table(n) for n in names}

    def done(self) -> None:
        if self.data:
            raise ConfigError(self.path, self._name(next(iter(self.data))), "unknown key")


S = TypeVar("S", CacheSettings, GuardSettings, LimitSettings)


def _settings(t: _Table, base: S, node: str) -> S:
    """`base` with the values this table overrides, each read by its field's type."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(base):
        if f.name not in t.data:
            continue
        if f.name.endswith("_bytes"):
            values[f.name] = t.get(f.name, parse_size)
        elif f.type in ("str", str):
            values[f.name] = t.get(f.name, _string)
        elif f.type in ("bool", bool):
            values[f.name] = t.get(f.name, _bool)
        elif f.type in ("int", int):
            values[f.name] = t.get(f.name, _count)
        else:
            values[f.name] = t.get(f.name, _number)
    t.done()
    try:
        result = dataclasses.replace(base, **values)
    except ValueError as e:
        raise ConfigError(t.path, t.key, str(e)) from None
    if isinstance(result, CacheSettings) and "{node}" in result.disk_path:
        result = dataclasses.replace(result, disk_path=result.disk_path.replace("{node}", node))
    return result


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number, got {value!r}")
    return value


def _rendition(t: _Table) -> Rendition:
    r = Rendition(t.get("name", _string), t.get("bandwidth", _positive_int),
                  t.get("width", _positive_int), t.get("height", _positive_int))
    t.done()
    return r


def _origin(t: _Table, name: str) -> OriginConfig:
    default = OriginConfig(name=name, listen=Address("127.0.0.1", 0))
    mode = t.get("mode", _string, default.mode)
    if mode not in ("synthetic", "ffmpeg"):
        raise ConfigError(t.path, f"{t.key}.mode", f"expected 'synthetic' or 'ffmpeg', got {mode!r}")
    renditions = default.renditions
    if "renditions" in t.data:
        raw = t.data.pop("renditions")
        if not isinstance(raw, list) or not raw:
            raise ConfigError(t.path, f"{t.key}.renditions", "expected a non-empty array of tables")
        renditions = tuple(_rendition(_Table(t.path, f"{t.key}.renditions[{i}]", r))
                           for i, r in enumerate(raw))
    streams = t.get("streams", lambda v: tuple(_string(s) for s in v), default.streams)
    for s in streams:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", s):
            raise ConfigError(t.path, f"{t.key}.streams", f"stream name {s!r} must be [A-Za-z0-9_-]+")
    origin = OriginConfig(
        name=name,
        listen=t.get("listen", Address.parse),
        mode=mode,  # type: ignore[arg-type]
        streams=streams,
        target_duration=t.get("target_duration", _number, default.target_duration),
        window=t.get("window", _positive_int, default.window),
        segment_bytes=t.get("segment_bytes", parse_size, default.segment_bytes),
        renditions=renditions,
        work_dir=t.get("work_dir", _string, default.work_dir),
    )
    if origin.target_duration <= 0:
        raise ConfigError(t.path, f"{t.key}.target_duration", "must be positive")
    t.done()
    return origin


def load(path: str | Path) -> Topology:
    """Read and check a topology file.

    Raises:
        ConfigError: the file is missing, is not TOML, or has a bad value.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, "(file)", e.strerror or str(e)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "(syntax)", str(e)) from None

    top = _Table(path, "", raw)
    cdn = top.table("cdn")
    name = cdn.get("name", _string, "livecdn")
    hostname = cdn.get("hostname", _string, "cdn.livecdn.test")
    play_path = cdn.get("play_path", _string, "/live/master.m3u8")
    if not play_path.startswith("/"):
        raise ConfigError(path, "cdn.play_path", f"must start with '/', got {play_path!r}")
    cdn.done()

    cache_defaults = _settings(top.table("cache"), CacheSettings(), "{node}")
    guard_defaults = _settings(top.table("guard"), GuardSettings(), "")
    limit_defaults = _settings(top.table("limits"), LimitSettings(), "")

    origin_t = top.table("origin")
    builtin = None
    if "builtin" in origin_t.data:
        builtin = _origin(origin_t.table("builtin"), "origin")
    origin_url = origin_t.get("url", _origin_url, builtin.listen.url if builtin else None)
    origin_t.done()

    regions = {}
    for rname, t in top.tables("regions").items():
        regions[rname] = Region(rname, t.get("location", _location))
        t.done()

    shields = {}
    for sname, t in top.tables("shields").items():
        shields[sname] = ShieldConfig(
            name=sname,
            listen=t.get("listen", Address.parse),
            admin=t.get("admin", Address.parse),
            workers=t.get("workers", _positive_int, 1),
            cache=_settings(t.table("cache"), cache_defaults, sname),
        )
        t.done()

    edges = {}
    for ename, t in top.tables("edges").items():
        region = t.get("region", _string)
        if region not in regions:
            raise ConfigError(path, f"edges.{ename}.region",
                              f"no region {region!r} in [regions] (known: {', '.join(sorted(regions))})")
        edges[ename] = EdgeConfig(
            name=ename,
            region=region,
            listen=t.get("listen", Address.parse),
            admin=t.get("admin", Address.parse),
            location=t.get("location", _location, regions[region].location),
            capacity=t.get("capacity", _positive_int, 10_000),
            workers=t.get("workers", _positive_int, 1),
            origin_fallback=t.get("origin_fallback", _bool, False),
            cache=_settings(t.table("cache"), cache_defaults, ename),
            guard=_settings(t.table("guard"), guard_defaults, ename),
            limits=_settings(t.table("limits"), limit_defaults, ename),
        )
        t.done()
    router = _router(top.table("router"), hostname, regions, edges) if "router" in top.data else None
    top.done()

    if not edges:
        raise ConfigError(path, "edges", "at least one edge is required")
    if not shields and not all(e.origin_fallback for e in edges.values()):
        raise ConfigError(path, "shields", "no shields: every edge then needs origin_fallback = true")
    names = [*shields, *edges] + ([builtin.name] if builtin else []) + ([router.name] if router else [])
    if len(set(names)) != len(names):
        raise ConfigError(path, "(nodes)", "node names must be unique across origin, shields, edges and router")
    _check_unique_listeners(path, builtin, shields, edges, router)
    return Topology(path, name, hostname, origin_url, builtin, regions, shields, edges, play_path, router)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _check_unique_listeners(path: str, origin: OriginConfig | None,
                            shields: dict[str, ShieldConfig], edges: dict[str, EdgeConfig],
                            router: RouterConfig | None = None) -> None:
    seen: dict[Address, str] = {}
    pairs: list[tuple[str, Address]] = []
    if origin:
        pairs.append(("origin.builtin.listen", origin.listen))
    if router:
        pairs += [("router.dns", router.dns), ("router.http", router.http), ("router.admin", router.admin)]
    for kind, nodes in (("shields", shields), ("edges", edges)):
        for n in nodes.values():
            pairs += [(f"{kind}.{n.name}.listen", n.listen), (f"{kind}.{n.name}.admin", n.admin)]
    for key, addr in pairs:
        if addr.port == 0 or addr.host in ("0.0.0.0", "::"):
            continue  # any free port, or every address of a node's own machine
        if addr in seen:
            raise ConfigError(path, key, f"{addr} is already used by {seen[addr]}")
        seen[addr] = key


# --- the router ---------------------------------------------------------------

_DNS_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _dns_name(value: Any) -> str:
    name = _string(value).rstrip(".").lower()
    if not _DNS_NAME.fullmatch(name):
        raise ValueError(f"not a DNS name: {value!r}")
    return name


def _ip(value: Any) -> str:
    return str(ipaddress.ip_address(_string(value)))


def _router(t: _Table, hostname: str, regions: dict[str, Region], edges: dict[str, EdgeConfig]) -> RouterConfig:
    """The [router] table; every edge must end up with an address players can reach."""
    try:
        host = _dns_name(hostname)
    except ValueError as e:
        raise ConfigError(t.path, "cdn.hostname", str(e)) from None
    zone = t.get("zone", _dns_name, host.split(".", 1)[1] if "." in host else host)
    if host != zone and not host.endswith("." + zone):
        raise ConfigError(t.path, "router.zone", f"the CDN host name {host!r} is not inside zone {zone!r}")
    default_region = t.get("default_region", _string)
    if default_region not in regions:
        raise ConfigError(t.path, "router.default_region",
                          f"no region {default_region!r} in [regions] (known: {', '.join(sorted(regions))})")
    database = t.get("database", _string)
    if not Path(database).is_absolute():
        database = str(Path(t.path).resolve().parent / database)
    ttl = t.get("ttl", _positive_int, 20)
    if ttl > 3600:
        raise ConfigError(t.path, "router.ttl", f"answers must be short-lived: at most 3600 s, got {ttl}")
    nameservers = t.get("nameservers", lambda v: tuple(_dns_name(n) for n in v), (f"ns1.{zone}",))
    if not nameservers:
        raise ConfigError(t.path, "router.nameservers", "needs at least one name")
    given = {}
    for ename, at in t.table("addresses").data.items():
        key = f"router.addresses.{ename}"
        if ename not in edges:
            raise ConfigError(t.path, key, f"no edge named {ename!r}")
        if not isinstance(at, list) or not at:
            raise ConfigError(t.path, key, f"expected a non-empty array of IP addresses, got {at!r}")
        try:
            given[ename] = tuple(_ip(a) for a in at)
        except ValueError as e:
            raise ConfigError(t.path, key, str(e)) from None
    addresses = {}
    for e in edges.values():
        if e.name in given:
            addresses[e.name] = given[e.name]
            continue
        try:
            ip = ipaddress.ip_address(e.listen.host)
        except ValueError:
            ip = None
        if ip is None or ip.is_unspecified:
            raise ConfigError(t.path, f"router.addresses.{e.name}",
                              f"edge listens on {e.listen.host!r}: give the addresses players reach it at")
        addresses[e.name] = (str(ip),)
    router = RouterConfig(
        name=t.get("name", _string, "router"),
        dns=t.get("dns", Address.parse),
        http=t.get("http", Address.parse),
        admin=t.get("admin", Address.parse),
        database=database,
        default_region=default_region,
        zone=zone,
        ttl=ttl,
        nameservers=nameservers,
        addresses=addresses,
        health=_settings(t.table("health"), HealthSettings(), ""),
    )
    t.done()
    return router
