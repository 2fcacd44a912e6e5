"""Reading the topology file: TOML → the schema's values, then the topology's own meaning.

One reader, driven by the declared types as mitmproxy's `check_option_type` is,
turns each table into its dataclass (unknown keys rejected; the constructors
apply the bounds). Then what only the whole file says: `[cache]`, `[guard]`,
`[limits]` cascade under every node, `{node}` in a disk path, an edge's region
lends its location, and one `_check` follows every cross-reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

from livecdn.config.schema import (
    DEFAULT_ORIGIN,
    Address,
    Bytes,
    CacheSettings,
    CdnSettings,
    ConfigError,
    EdgeConfig,
    FieldError,
    GuardSettings,
    LimitSettings,
    OriginConfig,
    OriginRoute,
    Region,
    RouterConfig,
    ShieldConfig,
    SigningSettings,
    TlsSettings,
    Topology,
    dns_name,
    hints,
    optional,
    split,
)

__all__ = ["SIGNING_ENV", "TOKEN_ENV", "load", "parse_size"]

# The admin token from the environment wins over the file's `[cdn] admin_token`:
# a secret is better kept out of a file every node and operator reads.
TOKEN_ENV = "LIVECDN_ADMIN_TOKEN"
# Likewise the URL-signing keys, `ID:SECRET[,ID:SECRET...]`, the first signing: they replace
# `[signing]`'s keys, and turn signing on (with its defaults) for a file without that table.
SIGNING_ENV = "LIVECDN_SIGNING_KEYS"

T = TypeVar("T")

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?")
_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_TOP = ("cdn", "cache", "guard", "limits", "origin", "origins", "regions", "shields", "edges", "router",
        "signing")


def parse_size(value: Any) -> int:
    """`1048576`, `"1MiB"`, `"64 KiB"` → bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        return int(float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"expected a size such as 64MiB, got {value!r}")


# --- the reader: a value by its declared type ------------------------------------------


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _table(path: str, key: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(path, key, f"expected a table, got {raw!r}")
    return raw


_EXPECTED = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
_ACCEPTS: dict[type, type | tuple[type, ...]] = {bool: bool, int: int, float: (int, float), str: str}  # TOML's


def _scalar(base: Any, meta: tuple[Any, ...], raw: Any) -> Any:
    """A TOML scalar as the declared type `base`; ValueError says what was expected."""
    if Bytes in meta:
        return parse_size(raw)
    if get_origin(base) is Literal:
        if raw in get_args(base):
            return raw
        raise ValueError(f"expected one of {', '.join(map(repr, get_args(base)))}, got {raw!r}")
    if base in _EXPECTED:  # a bool is an int to Python, never to the file
        if isinstance(raw, _ACCEPTS[base]) and isinstance(raw, bool) == (base is bool):
            return base(raw)
        raise ValueError(f"expected {_EXPECTED[base]}, got {raw!r}")
    if isinstance(raw, str):
        return base.parse(raw)  # a value type the file writes as text (Address)
    raise ValueError(f"expected a string, got {raw!r}")


def _value(path: str, key: str, hint: Any, raw: Any, base: Any = None) -> Any:
    """`raw` from the file read as the declared type `hint`; `base`: what a nested table overrides."""
    if (given := optional(hint)) is not None:  # TOML has no null: a key given is a value
        return _value(path, key, given, raw, base)
    kind, meta = split(hint)
    args = get_args(kind)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind) and not hasattr(kind, "parse"):  # Address: text
        return _read(path, key, kind, raw, defaults=vars(base) if base is not None else {})
    if get_origin(kind) is Mapping:
        return MappingProxyType({k: _value(path, _join(key, k), args[1], v)
                                 for k, v in _table(path, key, raw).items()})
    if get_origin(kind) is tuple:
        if not isinstance(raw, list) or (args[-1] is not Ellipsis and len(raw) != len(args)):
            size = "an array" if args[-1] is Ellipsis else f"an array of {len(args)}"
            raise ConfigError(path, key, f"expected {size}, got {raw!r}")
        each = (args[0],) * len(raw) if args[-1] is Ellipsis else args
        return tuple(_value(path, f"{key}[{i}]", h, v) for i, (h, v) in enumerate(zip(each, raw, strict=False)))
    try:
        return _scalar(kind, meta, raw)
    except ValueError as e:
        raise ConfigError(path, key, str(e)) from None


def _read(path: str, key: str, cls: type[T], raw: Any, fixed: Mapping[str, Any] = MappingProxyType({}),
          defaults: Mapping[str, Any] = MappingProxyType({})) -> T:
    """Table `raw` as dataclass `cls`: every key one of its fields, read by that field's declared type.

    Args:
        fixed: fields the file does not write (a node's name is its table's key).
        defaults: fields the file may write, with the topology's defaults rather than the dataclass's.
    """
    table, types = _table(path, key, raw), hints(cls)  # type: ignore[arg-type]  # a class is hashable
    for name in table:
        if name not in types or name in fixed:
            raise ConfigError(path, _join(key, name), "unknown key")
    given = {n: _value(path, _join(key, n), types[n], v, defaults.get(n)) for n, v in table.items()}
    values = {**fixed, **defaults, **given}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in values and f.default is f.default_factory is dataclasses.MISSING:
            raise ConfigError(path, _join(key, f.name), "is required")
    try:
        return cls(**values)
    except FieldError as e:
        raise ConfigError(path, _join(key, e.field), e.problem) from None


# --- the topology's own meaning ---------------------------------------------------------


def load(path: str | Path) -> Topology:
    """Read and check a topology file.

    Raises:
        ConfigError: the file is missing, is not TOML, or has a bad value.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            top = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, "(file)", e.strerror or str(e)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "(syntax)", str(e)) from None
    if unknown := next((k for k in top if k not in _TOP), None):
        raise ConfigError(path, unknown, "unknown key")
    cdn = _read(path, "cdn", CdnSettings, top.get("cdn", {}))
    cache = _read(path, "cache", CacheSettings, top.get("cache", {}))
    under = {"cache": cache, "guard": _read(path, "guard", GuardSettings, top.get("guard", {})),
             "limits": _read(path, "limits", LimitSettings, top.get("limits", {}))}

    builtin, origins = _origins(path, top)
    url = next((o.url for o in origins.values() if o.catch_all), next(iter(origins.values())).url)

    regions = {n: _read(path, f"regions.{n}", Region, t, fixed={"name": n}) for n, t in _tables(path, top, "regions")}
    shields = {n: _node(path, f"shields.{n}", ShieldConfig, t, n, {"cache": cache})
               for n, t in _tables(path, top, "shields")}
    edges = {}
    for n, t in _tables(path, top, "edges"):
        # An unknown region lends no location; `_check` then names the region as the fault.
        place = next((r.location for r in regions.values() if r.name == t.get("region")), None)
        edges[n] = _node(path, f"edges.{n}", EdgeConfig, t, n, {"location": place, **under, **_proxies(cdn)})
    router = _router(path, top["router"], cdn, edges) if "router" in top else None
    try:
        topology = Topology(path, cdn.name, cdn.hostname, url, builtin, regions, shields, edges, cdn.play_path, router,
                            origins, admin_token=os.environ.get(TOKEN_ENV) or cdn.admin_token,
                            signing=_signing(path, top.get("signing"), os.environ.get(SIGNING_ENV)),
                            drain_timeout=cdn.drain_timeout)
    except FieldError as e:  # the origins are the topology's own rules; [cdn] checked the file's token already
        key = f"{TOKEN_ENV} (environment)" if e.field == "admin_token" else e.field
        raise ConfigError(path, key, e.problem) from None
    _check(topology)
    return topology


def _signing(path: str, raw: Any, env: str | None) -> SigningSettings | None:
    """`[signing]`, its keys' `file`s read (relative to the topology file), or SIGNING_ENV's keys."""
    if raw is None and not env:
        return None
    table = dict(_table(path, "signing", raw if raw is not None else {}))
    if not env:
        if isinstance(keys := table.get("keys"), list):
            table["keys"] = [_key_file(path, f"signing.keys[{i}]", k) for i, k in enumerate(keys)]
        return _read(path, "signing", SigningSettings, table)
    items = [item.strip().partition(":") for item in env.split(",")]
    if (bad := next((i for i, (_, colon, _) in enumerate(items) if not colon), None)) is not None:
        raise ConfigError(path, f"{SIGNING_ENV} (environment)", f"item {bad + 1} is not ID:SECRET")
    table["keys"] = [{"id": kid, "secret": secret} for kid, _, secret in items]
    try:
        return _read(path, "signing", SigningSettings, table)
    except ConfigError as e:
        if not e.key.startswith("signing.keys"):
            raise
        raise ConfigError(path, f"{SIGNING_ENV} (environment)", f"{e.key.removeprefix('signing.')}: {e.problem}") \
            from None


def _key_file(path: str, key: str, raw: Any) -> Any:
    """A `[[signing.keys]]` table with `file` replaced by the secret it holds (trailing newline dropped)."""
    if not isinstance(raw, dict) or "file" not in raw:
        return raw
    if "secret" in raw:
        raise ConfigError(path, f"{key}.file", "give secret or file, not both")
    where = Path(path).resolve().parent / str(raw["file"])
    try:
        secret = where.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, f"{key}.file", f"{where}: {getattr(e, 'strerror', None) or e}") from None
    return {k: v for k, v in raw.items() if k != "file"} | {"secret": secret}


def _origins(path: str, top: dict[str, Any]) -> tuple[OriginConfig | None, dict[str, OriginRoute]]:
    """`[origin]` (the default origin: `url`, or the built-in one) and `[origins.NAME]`, every origin by name."""
    origin = _table(path, "origin", top.get("origin", {}))
    if unknown := next((k for k in origin if k not in ("url", "builtin", "host_header", "ca_file")), None):
        raise ConfigError(path, f"origin.{unknown}", "unknown key")
    builtin = (_read(path, "origin.builtin", OriginConfig, origin["builtin"], fixed={"name": "origin"})
               if "builtin" in origin else None)
    named = {n: _beside(path, _read(path, f"origins.{n}", OriginRoute, t, fixed={"name": n}))
             for n, t in _tables(path, top, "origins")}
    if "url" not in origin and builtin is None:
        if not named:
            raise ConfigError(path, "origin.url", "is required (or [origins.NAME] tables)")
        if "host_header" in origin:
            raise ConfigError(path, "origin.host_header", "there is no [origin] url or builtin to send it to")
        return None, named
    if DEFAULT_ORIGIN in named:
        raise ConfigError(path, f"origins.{DEFAULT_ORIGIN}", "that name is [origin]'s: choose another")
    table = {k: origin[k] for k in ("url", "host_header", "ca_file") if k in origin}
    table.setdefault("url", builtin.listen.url if builtin is not None else "")
    default = _beside(path, _read(path, "origin", OriginRoute, table, fixed={"name": DEFAULT_ORIGIN}))
    return builtin, {DEFAULT_ORIGIN: default, **named}


def _tables(path: str, top: dict[str, Any], key: str) -> list[tuple[str, dict[str, Any]]]:
    """The named tables under `[key]` (`[edges.NAME]`), each checked to be a table."""
    return [(n, _table(path, f"{key}.{n}", t)) for n, t in _table(path, key, top.get(key, {})).items()]


def _node(path: str, key: str, cls: type[T], table: dict[str, Any], name: str, defaults: dict[str, Any]) -> T:
    """A shield or edge: named by its table, under the top-level tables, `{node}` in its disk path."""
    node = _read(path, key, cls, table, fixed={"name": name}, defaults=defaults)
    cache: CacheSettings = node.cache  # type: ignore[attr-defined]
    return dataclasses.replace(node, cache=dataclasses.replace(  # type: ignore[type-var]
        cache, disk_path=cache.disk_path.replace("{node}", name)), tls=_tls_beside(path, node.tls))  # type: ignore


T2 = TypeVar("T2", OriginRoute, TlsSettings)


def _beside(path: str, value: T2) -> T2:
    """`value`'s CA file relative to the topology file, as the router's database is (an absolute one stays)."""
    if not value.ca_file:
        return value
    return dataclasses.replace(value, ca_file=str(Path(path).resolve().parent / value.ca_file))


def _tls_beside(path: str, tls: TlsSettings | None) -> TlsSettings | None:
    """A TLS listener's certificate, key and CA files relative to the topology file."""
    if tls is None:
        return None
    here = Path(path).resolve().parent
    certs = tuple(dataclasses.replace(c, cert=str(here / c.cert), key=str(here / c.key)) for c in tls.certificates)
    return _beside(path, dataclasses.replace(tls, certificates=certs))


def _proxies(cdn: CdnSettings) -> dict[str, Any]:
    """What `[cdn]` says of load balancers, for every edge and the router that says nothing itself."""
    return {"trusted_proxies": cdn.trusted_proxies, "forwarded_header": cdn.forwarded_header}


def _router(path: str, table: Any, cdn: CdnSettings, edges: dict[str, EdgeConfig]) -> RouterConfig:
    """`[router]`: its zone, name servers and edge addresses default from the rest of the file."""
    table = _table(path, "router", table)
    hostname = cdn.hostname
    try:
        parent = dns_name(hostname).split(".", 1)[-1]
    except ValueError as e:
        raise ConfigError(path, "cdn.hostname", str(e)) from None
    zone = table.get("zone", parent)  # read (and so checked) with the rest of the table
    router = _read(path, "router", RouterConfig, table,
                   defaults={"zone": parent, "nameservers": (f"ns1.{zone}",), **_proxies(cdn)})
    database = str(Path(path).resolve().parent / router.database)  # an absolute one stays as it is
    router = dataclasses.replace(router, tls=_tls_beside(path, router.tls))
    addresses = dict(router.addresses)
    for edge in edges.values():
        with contextlib.suppress(ValueError):  # a host name: players may not reach it by that; `_check` says so
            if edge.name not in addresses and not (ip := ipaddress.ip_address(edge.listen.host)).is_unspecified:
                addresses[edge.name] = (str(ip),)
    return dataclasses.replace(router, database=database, addresses=addresses)


def _check(t: Topology) -> None:
    """Every cross-reference of the file, after every value has been read."""
    for e in t.edges.values():
        _known(t.path, f"edges.{e.name}.region", e.region, t.regions, "region")
    if not t.edges:
        raise ConfigError(t.path, "edges", "at least one edge is required")
    if not t.shields and not all(e.origin_fallback for e in t.edges.values()):
        raise ConfigError(t.path, "shields", "no shields: every edge then needs origin_fallback = true")
    names = [node.name for _, node in _nodes(t)]
    if len(set(names)) != len(names):
        raise ConfigError(t.path, "(nodes)", "node names must be unique across origin, shields, edges and router")
    _check_unique_listeners(t)
    if (r := t.router) is not None:
        host = dns_name(t.hostname)  # `_router` has said if it is none
        if host != r.zone and not host.endswith("." + r.zone):
            raise ConfigError(t.path, "router.zone", f"the CDN host name {host!r} is not inside zone {r.zone!r}")
        _known(t.path, "router.default_region", r.default_region, t.regions, "region")
        for name in r.addresses:
            _known(t.path, f"router.addresses.{name}", name, t.edges, "edge")
        for e in t.edges.values():
            if e.name not in r.addresses:
                raise ConfigError(t.path, f"router.addresses.{e.name}",
                                  f"edge listens on {e.listen.host!r}: give the addresses players reach it at")
        if r.steering.enabled:
            _check_steering(t, r)


# What the HLS Content Steering spec allows in a Pathway ID: edges are pathways under their own names.
PATHWAY_ID = re.compile(r"[A-Za-z0-9._-]+")


def _check_steering(t: Topology, r: RouterConfig) -> None:
    """Steering needs edge names that are Pathway IDs, one player port (clones replace the host only)
    and a router URL players can reach."""
    for e in t.edges.values():
        if not PATHWAY_ID.fullmatch(e.name):
            raise ConfigError(t.path, f"edges.{e.name}", "with router.steering on, an edge's name is its Pathway ID:"
                                                         " letters, digits, '.', '-' or '_' only")
    ports = {e.listen.port for e in t.edges.values()}
    if len(ports) > 1:
        raise ConfigError(t.path, "router.steering.enabled",
                          f"edges listen on ports {sorted(ports)}: steering clones a pathway by its host name"
                          " alone, so players must reach every edge on one port")
    host = urlsplit(r.steering_url).hostname or ""
    if host in ("0.0.0.0", "::"):
        raise ConfigError(t.path, "router.steering.url", f"router.http listens on {host}: give the URL"
                                                           " players reach the router at")


def _known(path: str, key: str, name: str, table: Mapping[str, Any], what: str) -> None:
    if name not in table:
        raise ConfigError(path, key, f"no {what} {name!r} in [{what}s] (known: {', '.join(sorted(table))})")


def _nodes(t: Topology) -> list[tuple[str, Any]]:
    """Every node's config with the table it came from."""
    return ([("origin.builtin", t.origin)] if t.origin else []) + ([("router", t.router)] if t.router else []) \
        + [(f"shields.{n}", s) for n, s in t.shields.items()] + [(f"edges.{n}", e) for n, e in t.edges.items()]


def _check_unique_listeners(t: Topology) -> None:
    seen: dict[Address, str] = {}
    for table, node in _nodes(t):
        tls = getattr(node, "tls", None)
        listeners = [(f.name, getattr(node, f.name)) for f in dataclasses.fields(node)]
        for name, addr in listeners + ([("tls.listen", tls.listen)] if tls is not None else []):
            # Every Address of a node is one of its listeners (its TLS one too).
            if not isinstance(addr, Address) or addr.port == 0 or addr.host in ("0.0.0.0", "::"):
                continue  # any free port, or every address of a node's own machine
            if addr in seen:
                raise ConfigError(t.path, f"{table}.{name}", f"{addr} is already used by {seen[addr]}")
            seen[addr] = f"{table}.{name}"
