"""The topology's values: frozen dataclasses, each field's unit, bounds and default declared beside it.

Every room imports these; reading them from a file is `livecdn.config.load`. A
field's rules live in its `Annotated` metadata (`Annotated[int, Bytes, Min(1)]`)
and are applied by one function, `Checked.__post_init__`, whenever a value is
built, from the file or by hand. A broken rule raises `FieldError` naming the
field, which the loader turns into "file: key: problem". Mappings are stored as
read-only views, so a frozen value is frozen all the way down.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

__all__ = [
    "Above", "Address", "Below", "Bound", "Bytes", "CacheSettings", "CdnSettings", "Certificate", "Check", "Checked",
    "ConfigError",
    "DEFAULT_ORIGIN", "Degrees", "EdgeConfig", "FieldError", "GuardSettings", "HealthSettings", "LimitSettings", "Max",
    "Min", "NonEmpty", "OriginConfig", "OriginRoute", "PathRule", "PerSecond", "Region", "Rendition", "RouterConfig",
    "Seconds", "ShieldConfig", "SigningKey", "SigningSettings", "SteeringSettings", "TargetDuration", "TlsSettings",
    "Topology", "Unit", "Window", "YEAR", "dns_name", "hints", "match", "optional", "split",
]

Role = Literal["origin", "shield", "edge", "geo"]


class ConfigError(Exception):
    """A topology file value that cannot be used; names the file and key."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path, self.key, self.problem = str(path), key, problem


class FieldError(ValueError):
    """A value that breaks its field's rule; `field` is the field's name, with `.key` or `[i]` inside it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


# --- units and rules: the metadata of a field --------------------------------------


@dataclass(frozen=True)
class Unit:
    """What a number counts; `symbol` follows it in errors."""

    symbol: str


Bytes, Seconds, PerSecond, Degrees = Unit(" B"), Unit(" s"), Unit("/s"), Unit("°")  # bytes may be "64MiB"
_HOLDS = {"at least": operator.ge, "at most": operator.le, "above": operator.gt, "below": operator.lt}


@dataclass(frozen=True)
class Bound:
    """A number's limit: broken, it is named in words and in the field's unit."""

    words: str  # a key of _HOLDS
    limit: float

    def apply(self, value: Any, unit: Unit | None) -> Any:
        if not _HOLDS[self.words](value, self.limit):
            raise ValueError(f"must be {self.words} {self.limit}{unit.symbol if unit else ''}, got {value!r}")
        return value


Min, Max, Above, Below = (functools.partial(Bound, words) for words in _HOLDS)


@dataclass(frozen=True)
class Check:
    """Any other rule: `test` returns the value (perhaps canonical) or raises ValueError saying why not."""

    test: Callable[[Any], Any]

    def apply(self, value: Any, unit: Unit | None) -> Any:
        return self.test(value)


def match(pattern: str, what: str) -> Check:
    """A string that matches `pattern` whole; `what` says so in words."""
    def test(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(f"must be {what}, got {value!r}")
        return value
    return Check(test)


def _non_empty(value: Any) -> Any:
    if not value:
        raise ValueError("must not be empty")
    return value


_DNS_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def dns_name(text: str) -> str:
    """`"Demo.Test."` → `"demo.test"`; ValueError for what is no DNS name."""
    name = text.rstrip(".").lower()
    if not _DNS_NAME.fullmatch(name):
        raise ValueError(f"not a DNS name: {text!r}")
    return name


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL, got {text!r}")
    return text.rstrip("/")


NonEmpty = Check(_non_empty)
OptionalUrl = Annotated[str, Check(lambda text: _http_url(text) if text else text)]  # "": a default applies
DnsName = Annotated[str, Check(dns_name)]
IpAddress = Annotated[str, Check(lambda text: str(ipaddress.ip_address(text)))]
HttpUrl = Annotated[str, Check(_http_url)]


def _network(text: str) -> str:
    """`"10.0.0.0/8"`, `"127.0.0.1"` (one address), `"::1/128"` → canonical; ValueError says what is wrong."""
    try:
        return str(ipaddress.ip_network(text))
    except ValueError as e:
        raise ValueError(f"not an IP network (ADDRESS/PREFIX, no host bits set): {e}") from None


# Behind load balancers (livecdn/front/forwarded.py, proxyproto.py): the networks whose
# hops may name their client, and the header they write it in.
TrustedProxies = tuple[Annotated[str, Check(_network)], ...]
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]
Location = tuple[Annotated[float, Degrees, Min(-90), Max(90)], Annotated[float, Degrees, Min(-180), Max(180)]]
TargetDuration = Annotated[float, Seconds, Above(0)]  # the origin's and its timeline's
Window = Annotated[int, Min(1)]  # segments in a live media playlist
MAX_TTL = 3600  # seconds: DNS answers must stay short-lived, so players follow health changes
# A shorter admin token could be guessed by trying; 16 random characters cannot.
MIN_TOKEN_CHARS = 16


def _token(text: str) -> str:
    """An admin bearer token ("" when none): RFC 6750 token68 characters, long enough not to be guessed."""
    if text and not re.fullmatch(r"[A-Za-z0-9._~+/-]+=*", text):
        raise ValueError("must be letters, digits and -._~+/ (a bearer token), without spaces")
    if text and len(text) < MIN_TOKEN_CHARS:
        raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters, got {len(text)}")
    return text


AdminToken = Annotated[str, Check(_token)]
YEAR = 365 * 86400.0


def optional(hint: Any) -> Any:
    """`X | None` → X (a key the file may leave out, None meaning "not set"); anything else → None."""
    if get_origin(hint) in (Union, UnionType) and NoneType in (args := get_args(hint)) and len(args) == 2:
        return next(a for a in args if a is not NoneType)
    return None


def split(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """`Annotated[int, Bytes, Min(1)]` → (int, (Bytes, Min(1))); a plain type → (type, ())."""
    if get_origin(hint) is Annotated:
        return hint.__origin__, hint.__metadata__
    return hint, ()


@functools.cache
def hints(cls: Any) -> dict[str, Any]:
    """The declared type of each field of dataclass `cls`, metadata included."""
    every = get_type_hints(cls, include_extras=True)
    return {f.name: every[f.name] for f in dataclasses.fields(cls)}


def _apply(hint: Any, value: Any, at: str) -> Any:
    """`value` through the rules of `hint` and of its items (tuples, mappings); FieldError names where."""
    if (given := optional(hint)) is not None:
        return None if value is None else _apply(given, value, at)
    base, meta = split(hint)
    kind, args = get_origin(base), get_args(base)
    if kind is tuple and isinstance(value, tuple):
        each = (args[0],) * len(value) if args[-1] is Ellipsis else args
        value = tuple(_apply(h, v, f"{at}[{i}]") for i, (h, v) in enumerate(zip(each, value, strict=False)))
    elif kind is Mapping and isinstance(value, Mapping):
        value = MappingProxyType({k: _apply(args[1], v, f"{at}.{k}") for k, v in value.items()})
    unit = next((m for m in meta if isinstance(m, Unit)), None)
    for rule in meta:
        if isinstance(rule, (Bound, Check)):
            try:
                value = rule.apply(value, unit)
            except ValueError as e:
                raise FieldError(at, str(e)) from None
    return value


class Checked:
    """Base of the schema's dataclasses: every field through its declared rules when the value is built."""

    __slots__ = ()

    def __post_init__(self) -> None:
        for name, hint in hints(type(self)).items():  # type: ignore[arg-type]  # a class is hashable
            value = getattr(self, name)
            if (ruled := _apply(hint, value, name)) is not value:
                object.__setattr__(self, name, ruled)


# --- the values ------------------------------------------------------------------------


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
        port = int(m.group(2) or m.group(4))
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0..65535")
        return cls(m.group(1) or m.group(3), port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def https_url(self) -> str:
        return "https" + self.url.removeprefix("http")

    def __str__(self) -> str:
        return self.url.removeprefix("http://")


@dataclass(frozen=True)
class PathRule(Checked):
    """An operator's say over the paths a manifest cannot speak for (`[[cache.rules]]`; the first match wins).

    `path` is a prefix, or a glob when it holds `*` (any characters but "/"),
    `**` (any characters) or `?` (one character but "/"), matched against the
    whole normalized path. A field left out keeps what the node decides
    without the rule; a stricter origin Cache-Control still wins.
    """

    path: Annotated[str, match(r"/.*", "a path starting with '/'")]
    ttl: Annotated[float, Seconds, Min(0)] | None = None  # fresh seconds of a 200
    negative_ttl: Annotated[float, Seconds, Min(0)] | None = None  # fresh seconds of a 404/410
    store: bool = True  # false: never stored, every request goes upstream (as no-store)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.store and (self.ttl is not None or self.negative_ttl is not None):
            raise FieldError("store", "a rule that stores nothing cannot also set ttl or negative_ttl")
        if self.store and self.ttl is None and self.negative_ttl is None:
            raise FieldError("ttl", f"the rule for {self.path!r} sets nothing: give ttl, negative_ttl or store = false")


@dataclass(frozen=True)
class CacheSettings(Checked):
    """Bounds and lifetimes of one node's cache engine (the lifetimes are `freshness.Rules`)."""

    memory_bytes: Annotated[int, Bytes, Min(0)] = 256 << 20
    disk_bytes: Annotated[int, Bytes, Min(0)] = 2 << 30
    disk_path: str = ""  # empty: no disk tier; "{node}" is the node's name
    max_object_bytes: Annotated[int, Bytes, Min(1)] = 64 << 20
    stale_while_revalidate: Annotated[float, Seconds, Min(0)] = 2.0
    stale_if_error: Annotated[float, Seconds, Min(0)] = 30.0
    negative_ttl: Annotated[float, Seconds, Min(0)] = 1.0  # 404/410: absorbs a burst, short for a live edge
    # Upstream waits: to connect; from sending a request to its status line, connecting included (a
    # blocking LL-HLS request waits 3 target durations more, the playlist's own hold); between body reads.
    # `upstream_timeout` caps all three (files from before they existed keep meaning what they said), the
    # blocking wait excepted.
    connect_timeout: Annotated[float, Seconds, Above(0)] = 1.0
    first_byte_timeout: Annotated[float, Seconds, Above(0)] = 1.5
    read_timeout: Annotated[float, Seconds, Above(0)] = 5.0
    # Passive upstream health (livecdn/cache/health.py): this many connect failures or timeouts in a row take an
    # upstream out of every key's list for eject_backoff seconds, doubled per ejection in a row up to
    # eject_max_backoff; then one real request probes it. As nginx's max_fails = 1: a timeout costs a wait.
    eject_after: Annotated[int, Min(1)] = 1
    eject_backoff: Annotated[float, Seconds, Above(0)] = 1.0
    eject_max_backoff: Annotated[float, Seconds, Above(0)] = 30.0
    upstream_timeout: Annotated[float, Seconds, Above(0)] = 10.0
    # A slow upstream does not hold a request that has a stale copy (within stale_if_error) for long: the copy
    # is served after this wait while the fetch goes on (what it gets is stored). Live playlists wait
    # `stale_after_targets` of their target duration (a player reloads about once a target duration); the rest
    # `stale_after` seconds.
    stale_after: Annotated[float, Seconds, Min(0)] = 1.0
    stale_after_targets: Annotated[float, Min(0)] = 0.5
    # A failed fetch (5xx, timeout, malformed playlist) is remembered this long: the key's requests get the
    # stale copy or the same error, so an error storm costs the tier above one request per key per error_ttl.
    error_ttl: Annotated[float, Seconds, Min(0)] = 1.0
    master_ttl: Annotated[float, Seconds, Min(0)] = 30.0  # master playlists change only with the ladder
    # ENDLIST playlists (and static MPDs): at most this, and never longer than one target duration, since an
    # ended stream can start again under the same URL; then revalidated (a 304 when nothing changed).
    ended_ttl: Annotated[float, Seconds, Min(0)] = 60.0
    media_ttl: Annotated[float, Seconds, Min(0)] = YEAR  # segments, parts, init sections never change
    other_ttl: Annotated[float, Seconds, Min(0)] = 60.0  # anything else without Cache-Control
    rules: tuple[PathRule, ...] = ()  # per-path lifetimes, first match wins; a node's own list replaces this one

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eject_backoff > self.eject_max_backoff:
            raise FieldError("eject_backoff", f"{self.eject_backoff:g} s is longer than eject_max_backoff "
                                              f"({self.eject_max_backoff:g} s)")

    @property
    def waits(self) -> tuple[float, float, float]:
        """(connect, first byte, between body reads) in seconds, each capped by `upstream_timeout`."""
        cap = self.upstream_timeout
        return min(self.connect_timeout, cap), min(self.first_byte_timeout, cap), min(self.read_timeout, cap)


@dataclass(frozen=True)
class GuardSettings(Checked):
    """The edge's knowledge of its streams: Bloom-filter guard and prefetch (a rate of 0: unlimited)."""

    false_positive_rate: Annotated[float, Above(0), Below(0.5)] = 0.0001  # per generation; two are checked
    names_per_generation: Annotated[int, Min(16)] = 4096  # a stream's filter rotates after this many names
    refresh_interval: Annotated[float, Seconds, Min(0)] = 1.0  # one guard-triggered refresh per stream this often
    unknown_rate: Annotated[float, PerSecond, Min(0)] = 10.0  # upstream tries for names of streams never seen
    unknown_burst: Annotated[int, Min(0)] = 20
    unknown_client_rate: Annotated[float, PerSecond, Min(0)] = 2.0  # the share of those one client may take
    unknown_client_burst: Annotated[int, Min(0)] = 5
    # Once those tries are spent, names of unknown streams are asked of the shield only-if-cached
    # (a lookup there, never an origin fetch), so a stream anyone watches is never refused.
    unknown_probe_rate: Annotated[float, PerSecond, Min(0)] = 100.0
    unknown_probe_burst: Annotated[int, Min(0)] = 200
    max_streams: Annotated[int, Min(1)] = 10_000  # streams remembered (least recently used are forgotten)
    prefetch: bool = True
    prefetch_concurrency: Annotated[int, Min(1)] = 4
    viewer_idle: Annotated[float, Seconds, Min(0)] = 30.0  # a stream nobody asked for this long: no prefetch


@dataclass(frozen=True)
class LimitSettings(Checked):
    """Per-client limits at an edge; a rate of 0 means unlimited."""

    miss_rate: Annotated[float, PerSecond, Min(0)] = 50.0  # requests per client address that miss memory
    miss_burst: Annotated[int, Min(0)] = 200
    request_rate: Annotated[float, PerSecond, Min(0)] = 0.0  # every request, hits included (off: hits are cheap)
    request_burst: Annotated[int, Min(0)] = 0
    connections_per_client: Annotated[int, Min(0)] = 512  # open connections per client address (0: unlimited)
    max_clients: Annotated[int, Min(1)] = 100_000  # client addresses tracked (least recently seen are forgotten)
    # Open player connections for the whole node, its workers' shares together (0: what each process's
    # RLIMIT_NOFILE allows, less room for upstream sockets, disk files and the admin listener).
    max_connections: Annotated[int, Min(0)] = 0
    # From a request head's first byte to its blank line (then a 408), and from a connection's start to
    # its first byte (then it closes): players send a head in one packet; slowloris sends it for ever.
    header_timeout: Annotated[float, Seconds, Above(0)] = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for rate, burst in (("miss_rate", "miss_burst"), ("request_rate", "request_burst")):
            if getattr(self, rate) and getattr(self, burst) < 1:
                raise FieldError(burst, f"a limited rate ({rate} = {getattr(self, rate):g}/s) needs a burst "
                                        f"of at least 1, got {getattr(self, burst)}")


@dataclass(frozen=True)
class HealthSettings(Checked):
    """How the router checks edges: an edge that hangs or fails is behind the others in its answers
    within about `interval + slow` seconds (suspect), and is down after `interval * (failures - 1) + timeout`."""

    interval: Annotated[float, Seconds, Above(0)] = 1.0
    timeout: Annotated[float, Seconds, Above(0)] = 1.0
    failures: Annotated[int, Min(1)] = 3  # failed checks in a row that take an edge out
    rise: Annotated[int, Min(1)] = 2  # good checks in a row that bring it back
    # A check not answered this soon makes its edge suspect: players go elsewhere first.
    slow: Annotated[float, Seconds, Above(0)] = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.slow >= self.timeout:
            raise FieldError("slow", f"must be below timeout ({self.timeout:g} s), got {self.slow:g}")


@dataclass(frozen=True)
class SteeringSettings(Checked):
    """Content Steering (HLS Content Steering spec, DASH-IF content steering): when enabled, edges name
    the router's steering manifests in the master playlists and MPDs they serve, so players move to
    another edge without waiting for DNS or a redirect."""

    enabled: bool = False
    # Seconds a player keeps a steering manifest: how long a dead edge can stay first in its list.
    ttl: Annotated[int, Seconds, Min(1), Max(MAX_TTL)] = 10
    # The router's base URL as players reach it; empty: its `http` listen address.
    url: OptionalUrl = ""


@dataclass(frozen=True)
class Rendition(Checked):
    """One variant of the built-in origin's stream."""

    name: str
    bandwidth: Annotated[int, Min(1)]
    width: Annotated[int, Min(1)]
    height: Annotated[int, Min(1)]


@dataclass(frozen=True)
class OriginConfig(Checked):
    """The built-in live origin (demo and tests)."""

    name: str
    listen: Address
    mode: Literal["synthetic", "ffmpeg"] = "synthetic"
    streams: Annotated[tuple[Annotated[str, match(r"[A-Za-z0-9_-]+", "letters, digits, '_' or '-'")], ...],
                       NonEmpty] = ("live",)
    target_duration: TargetDuration = 2.0
    window: Window = 6
    segment_bytes: Annotated[int, Bytes, Min(1)] = 64 << 10  # synthetic mode: bytes per segment
    renditions: Annotated[tuple[Rendition, ...], NonEmpty] = (
        Rendition("720p", 2_000_000, 1280, 720),
        Rendition("360p", 600_000, 640, 360),
    )
    work_dir: str = ""  # ffmpeg mode: where segments are written; empty: a temp dir
    # Low-latency HLS (livecdn/origin/lowlatency.py): parts of `part_target` seconds, a whole number of them
    # per segment, blocking reloads, preload hints, delta updates, rendition reports.
    low_latency: bool = False
    part_target: Annotated[float, Seconds, Above(0)] = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.low_latency:
            per = self.target_duration / self.part_target
            if per < 2 or abs(per - round(per)) > 1e-6:
                raise FieldError("part_target", f"{self.part_target:g} s does not divide target_duration "
                                                f"({self.target_duration:g} s) into two or more whole parts")


def _prefix(text: str) -> str:
    if text and not (text.startswith("/") and text.endswith("/")):
        raise ValueError(f"must start and end with '/' (a whole directory), got {text!r}")
    return text


@dataclass(frozen=True)
class OriginRoute(Checked):
    """One origin the CDN fronts, and which requests are its: by the player's Host and/or a path prefix.

    An origin with neither `hosts` nor `prefix` is the catch-all (the default
    origin); a request is routed by its normalized path and its Host without
    the port, case-insensitively: rules naming its Host first, then
    prefix-only rules, then the catch-all.
    """

    name: Annotated[str, match(r"[A-Za-z0-9_-]+", "letters, digits, '_' or '-'")]  # no '/': it leads storage keys
    url: HttpUrl
    hosts: tuple[DnsName, ...] = ()
    prefix: Annotated[str, Check(_prefix)] = ""  # empty: any path
    host_header: Annotated[str, match(r"[A-Za-z0-9._:\[\]-]*", "a host name, with a port if need be")] = ""
    # PEM CA bundle an https origin's certificate is verified against ("": the system's CAs); in the file,
    # relative to the file. Never "don't verify": an untrusted certificate fails the fetch (a 502 saying so).
    ca_file: str = ""

    @property
    def catch_all(self) -> bool:
        return not self.hosts and not self.prefix

    def overlaps(self, other: OriginRoute) -> bool:
        """Could one request be routed to both at the same precedence?

        A rule naming hosts comes before every prefix-only rule, and the
        catch-all takes what is left; two rules of one level overlap when they
        share a host (or both name none) and one prefix contains the other.
        """
        if self.catch_all or other.catch_all or bool(self.hosts) != bool(other.hosts):
            return False
        if self.hosts and not set(self.hosts) & set(other.hosts):
            return False
        return self.prefix.startswith(other.prefix) or other.prefix.startswith(self.prefix)


DEFAULT_ORIGIN = "default"  # the name of the origin `[origin]` describes


@dataclass(frozen=True)
class Certificate(Checked):
    """One certificate of a TLS listener: PEM files (in the file, relative to the file).

    `names` are the host names (SNI) it is chosen for; empty: the DNS names of
    its subjectAltName. A name may be a wildcard (`*.example.com`, one label).
    """

    cert: Annotated[str, NonEmpty]  # the leaf first, then its intermediates
    key: Annotated[str, NonEmpty]  # unencrypted PEM private key matching `cert`
    names: tuple[Annotated[str, match(r"(\*\.)?[A-Za-z0-9_.-]+", "a host name or *.domain")], ...] = ()


@dataclass(frozen=True)
class TlsSettings(Checked):
    """A node's HTTPS player listener (`[edges.NAME.tls]`, `[shields.NAME.tls]`, `[router.tls]`).

    The first certificate is the default: for clients that send no SNI, or a
    name no certificate is for. `plain` is what the node's plain `listen`
    (router: `http`) address does beside it: serve as over HTTPS, redirect
    there (301, 308 for methods other than GET and HEAD), or not listen at all.
    Certificates are re-read on SIGHUP; open connections keep theirs.
    """

    listen: Address
    certificates: Annotated[tuple[Certificate, ...], NonEmpty]
    plain: Literal["serve", "redirect", "off"] = "serve"
    # A shield's: the PEM CA bundle edges verify its certificate against ("": the system's CAs).
    ca_file: str = ""


@dataclass(frozen=True)
class Region(Checked):
    name: str
    location: Location


class _PlayerListener:
    """What shields and edges share: a plain listener, and perhaps a TLS one."""

    __slots__ = ()
    listen: Address
    tls: TlsSettings | None

    @property
    def base_url(self) -> str:
        """Where the tier below (players, edges) reaches it: over HTTPS when it has TLS."""
        return self.tls.listen.https_url if self.tls is not None else self.listen.url


@dataclass(frozen=True)
class ShieldConfig(_PlayerListener, Checked):
    name: str
    listen: Address
    admin: Address
    workers: Annotated[int, Min(1)] = 1
    tls: TlsSettings | None = None  # an HTTPS player listener beside (or instead of) `listen`
    cache: CacheSettings = field(default_factory=CacheSettings)


@dataclass(frozen=True)
class EdgeConfig(_PlayerListener, Checked):
    name: str
    region: str
    listen: Address
    admin: Address
    location: Location  # in the file, its region's by default
    capacity: Annotated[int, Min(1)] = 10_000  # concurrent player requests before the node reports overload
    workers: Annotated[int, Min(1)] = 1
    origin_fallback: bool = False  # go to the origin directly when every shield fails
    # HTTP/2 with prior knowledge on the plain listener (a connection that opens with the HTTP/2 preface)
    h2c: bool = True
    tls: TlsSettings | None = None  # an HTTPS player listener beside (or instead of) `listen`
    cache: CacheSettings = field(default_factory=CacheSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    # Real client addresses: in the file, [cdn]'s trusted_proxies and forwarded_header by default.
    trusted_proxies: TrustedProxies = ()
    forwarded_header: ForwardedHeader = "x-forwarded-for"
    proxy_protocol: bool = False  # every connection to `listen` begins with a PROXY header (v1/v2)


@dataclass(frozen=True, kw_only=True)
class RouterConfig(Checked):
    """The geo router: DNS and HTTP answers naming the nearest healthy edge."""

    name: str = "router"
    dns: Address  # UDP and TCP
    http: Address  # 302 to the chosen edge; /route
    admin: Address  # /healthz, /metrics, /route
    database: str  # City-type MaxMind DB; in the file, relative to the file
    default_region: str  # where addresses the database does not know are placed
    zone: DnsName  # the DNS zone answered; in the file, the parent of [cdn] hostname by default
    ttl: Annotated[int, Seconds, Min(1), Max(MAX_TTL)] = 20  # short, so players follow health changes
    nameservers: Annotated[tuple[DnsName, ...], NonEmpty]  # NS names of the zone; in the file, ns1.ZONE
    # edge → the addresses players reach it at; in the file, its listen address by default
    addresses: Mapping[str, Annotated[tuple[IpAddress, ...], NonEmpty]] = field(default_factory=dict)
    health: HealthSettings = field(default_factory=HealthSettings)
    tls: TlsSettings | None = None  # an HTTPS listener beside (or instead of) `http`
    steering: SteeringSettings = field(default_factory=SteeringSettings)
    # As an edge's, for the `http` listener (its 302s go by the client's location).
    trusted_proxies: TrustedProxies = ()
    forwarded_header: ForwardedHeader = "x-forwarded-for"
    proxy_protocol: bool = False

    @property
    def steering_url(self) -> str:
        """Where players fetch steering manifests: `steering.url`, else the router's HTTPS listener when it
        has one (an https page cannot load an http manifest), else its HTTP listener."""
        return self.steering.url or (self.tls.listen.https_url if self.tls is not None else self.http.url)


@dataclass(frozen=True)
class CdnSettings(Checked):
    """The `[cdn]` table: what the whole deployment is called and where players start."""

    name: str = "livecdn"
    hostname: str = "cdn.livecdn.test"  # the name players resolve (the router answers for it)
    play_path: Annotated[str, match(r"/.*", "a path starting with '/'")] = "/live/master.m3u8"
    admin_token: AdminToken = ""  # bearer token of the purge API on every admin listener ("": purge disabled)
    trusted_proxies: TrustedProxies = ()  # every edge's and the router's, unless a node gives its own
    forwarded_header: ForwardedHeader = "x-forwarded-for"
    # On SIGTERM, how long answers in flight (a player's segment) may take before they are cut.
    drain_timeout: Annotated[float, Seconds, Min(0)] = 10.0


# A shorter signing secret could be found by trying keys against one signed URL.
MIN_SIGNING_SECRET_CHARS = 16


def _secret(text: str) -> str:
    if len(text) < MIN_SIGNING_SECRET_CHARS:
        raise ValueError(f"must be at least {MIN_SIGNING_SECRET_CHARS} characters, got {len(text)}")
    return text


@dataclass(frozen=True)
class SigningKey(Checked):
    """One key signed URLs are checked with: its id (named in every token it signs) and its secret."""

    id: Annotated[str, match(r"[A-Za-z0-9_-]{1,32}", "1 to 32 letters, digits, '_' or '-'")]
    secret: Annotated[str, Check(_secret)] = field(repr=False)  # in the file: `secret`, or `file` holding it


@dataclass(frozen=True)
class SigningSettings(Checked):
    """`[signing]`: edges answer 403 to requests under `prefixes` without a valid token (livecdn/signing.py).

    Every key listed is accepted; the first signs (`livecdn sign`, the demo),
    so a rotation lists the new key first and drops the old one a TTL later.
    """

    keys: Annotated[tuple[SigningKey, ...], NonEmpty]
    prefixes: Annotated[tuple[Annotated[str, Check(_prefix)], ...], NonEmpty] = ("/",)  # paths that need a token
    ttl: Annotated[float, Seconds, Above(0)] = 3600.0  # how long a URL `livecdn sign` prints is good for

    def __post_init__(self) -> None:
        super().__post_init__()
        ids = [k.id for k in self.keys]
        if dup := next((i for n, i in enumerate(ids) if i in ids[:n]), None):
            raise FieldError("keys", f"key id {dup!r} is given twice")
        if "" in self.prefixes:
            raise FieldError("prefixes", "an empty prefix: write \"/\" for every path")


@dataclass(frozen=True)
class Topology(Checked):
    path: str
    name: str
    hostname: str
    origin_url: HttpUrl
    origin: OriginConfig | None
    regions: Mapping[str, Region]
    shields: Mapping[str, ShieldConfig]
    edges: Mapping[str, EdgeConfig]
    play_path: str = CdnSettings.play_path
    router: RouterConfig | None = None
    # Every origin by name when the file names several ([origins.NAME]); empty:
    # one origin, `origin_url`. Either way `origin_url` is the catch-all's URL.
    origins: Mapping[str, OriginRoute] = field(default_factory=dict)
    admin_token: AdminToken = ""  # [cdn] admin_token, or LIVECDN_ADMIN_TOKEN from the environment (it wins)
    signing: SigningSettings | None = None  # [signing], or LIVECDN_SIGNING_KEYS (its keys win); None: no tokens
    drain_timeout: float = CdnSettings.drain_timeout

    def __post_init__(self) -> None:
        super().__post_init__()
        routes = list(self.origins.values())
        for i, route in enumerate(routes):
            if other := next((o for o in routes[:i] if o.overlaps(route)), None):
                raise FieldError(f"origins.{route.name}", f"its hosts and prefix overlap those of origin "
                                                           f"{other.name!r}: a request could be either's")
        catch_all = [r.name for r in routes if r.catch_all]
        if routes and len(catch_all) != 1:
            problem = ("no default origin: one origin needs neither hosts nor prefix (or give [origin] url)"
                       if not catch_all else f"one default origin at most, got {', '.join(catch_all)} "
                                             f"(give all but one hosts or a prefix)")
            raise FieldError("origins", problem)
        if routes and self.origins[catch_all[0]].url != self.origin_url:
            raise FieldError("origins", f"the default origin's URL must be origin_url {self.origin_url!r}")

    @property
    def routes(self) -> tuple[OriginRoute, ...]:
        """Every origin, the catch-all among them."""
        return tuple(self.origins.values()) or (OriginRoute(DEFAULT_ORIGIN, self.origin_url),)

    def edge_url(self, name: str) -> str:
        """An edge's base URL as players reach it (its first router address, its listen or TLS port)."""
        addresses = self.router.addresses.get(name) if self.router is not None else None
        edge = self.edges[name]
        # Over HTTPS (its TLS port) when it serves TLS: an https page cannot load http media.
        listen = edge.tls.listen if edge.tls is not None else edge.listen
        base = Address(addresses[0], listen.port) if addresses else listen
        return base.https_url if edge.tls is not None else base.url

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
        """The same CDN with its default origin at `url` (instead of the built-in one); ValueError for a bad URL.

        The new URL is a new cache identity: nothing stored for the old origin is served for this one.
        """
        try:
            default = next((r for r in self.origins.values() if r.catch_all), None)
            origins = {**self.origins, default.name: dataclasses.replace(default, url=url)} if default else {}
            return dataclasses.replace(self, origin_url=url, origin=None, origins=origins)
        except FieldError as e:
            raise ValueError(e.problem) from None
