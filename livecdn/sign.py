"""`livecdn sign`: a signed URL for a path, where players start (the router, else the first edge).

The keys are the topology's (`[signing]`, or LIVECDN_SIGNING_KEYS); the first
one signs. The URL allows the path's directory and everything under it, so a
master playlist's URL plays its whole stream.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import time
from urllib.parse import urlsplit

from livecdn.config import ConfigError, Topology
from livecdn.config.load import SIGNING_ENV
from livecdn.signing import sign

__all__ = ["base_url", "run_sign", "signed_path"]


def base_url(topo: Topology) -> str:
    """Where a player starts: the router (it redirects to the nearest edge), else the first edge."""
    if topo.router is not None:
        return topo.router.http.url
    return next(iter(topo.edges.values())).listen.url


def signed_path(topo: Topology, path: str, ttl: float | None = None, address: str = "", scope: str | None = None,
                now: float | None = None) -> str:
    """`path` (a path or URL: its host is ignored) signed with the topology's first key.

    Raises:
        ConfigError: the topology asks for no tokens, or the path or scope cannot be signed.
    """
    signing = topo.signing
    if signing is None:
        raise ConfigError(topo.path, "signing", f"this topology asks for no signed URLs: add a [signing] table "
                                                f"with keys, or set {SIGNING_ENV}")
    try:
        address = str(ipaddress.ip_address(address)) if address else ""  # as the edge spells its peer
    except ValueError as e:
        raise ConfigError(topo.path, "--address", str(e)) from None
    parts = urlsplit(path)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    expires = math.ceil((time.time() if now is None else now) + (signing.ttl if ttl is None else ttl))
    key = signing.keys[0]
    try:
        return sign(target, key.id, key.secret.encode(), expires, address, scope)
    except ValueError as e:
        raise ConfigError(topo.path, "PATH" if scope is None else "--scope", str(e)) from None


def run_sign(args: argparse.Namespace, topo: Topology) -> int:
    """Print the signed URL; returns the exit status."""
    if args.ttl is not None and not args.ttl > 0:
        raise ConfigError(topo.path, "--ttl", f"must be above 0 s, got {args.ttl:g}")
    print(base_url(topo) + signed_path(topo, args.path, args.ttl, args.address, args.scope))
    return 0
