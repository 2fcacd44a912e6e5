"""`livecdn check`: a topology test, as `nginx -t` or `varnishd -C`, before anything is started or reloaded.

The file is loaded with every rule `livecdn run` applies; each node is then
said in one line (what it would run, where). With `--node`, the node is also
checked against this machine (`livecdn.node.preflight`): its addresses are
local and their ports free (a running livecdn's own SO_REUSEPORT ports count
as free: it is about to be replaced), its disk tier usable, its database
readable. Without `--node` only what holds anywhere is checked (the file
describes many machines, whose addresses are not this one's). Prints `ok`
and exits 0, or one `file: key: problem` line per problem and exits 2.
"""

from __future__ import annotations

import sys

from livecdn.config import ConfigError, EdgeConfig, OriginConfig, RouterConfig, Topology, load
from livecdn.node.preflight import NodeConfig, preflight

__all__ = ["describe", "run_check"]


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def describe(topo: Topology, cfg: NodeConfig) -> str:
    """One line: the node's role, name, and what it would run."""
    if isinstance(cfg, OriginConfig):
        return f"origin  {cfg.name}: built-in {cfg.mode} origin on {cfg.listen}, streams {', '.join(cfg.streams)}"
    if isinstance(cfg, RouterConfig):
        return (f"geo     {cfg.name}: DNS for {topo.hostname} on {cfg.dns} (UDP+TCP), HTTP on {cfg.http}, "
                f"admin on {cfg.admin}, {len(topo.edges)} edges, database {cfg.database}")
    role = "edge" if isinstance(cfg, EdgeConfig) else "shield"
    c = cfg.cache
    disk = f"disk {_size(c.disk_bytes)} at {c.disk_path}" if c.disk_path and c.disk_bytes else "no disk tier"
    workers = f"{cfg.workers} worker{'s' if cfg.workers > 1 else ''}"
    return (f"{role:<7} {cfg.name}: players on {cfg.listen}, admin on {cfg.admin}, {workers}, "
            f"memory {_size(c.memory_bytes)} each, {disk}")


def run_check(path: str, node: str | None) -> int:
    """Check `path` (and `node` on this machine); returns the exit status."""
    try:
        topo = load(path)
        names = [node] if node else _names(topo)
        nodes = [topo.node(n)[1] for n in names]
    except ConfigError as e:
        print(f"livecdn: {e}", file=sys.stderr)
        return 2
    problems = []
    for cfg in nodes:
        print(describe(topo, cfg))
        if node:
            problems += preflight(topo, cfg, disk=True)
    for p in problems:
        print(f"livecdn: {p}", file=sys.stderr)
    if problems:
        return 2
    print(f"livecdn: {path}: ok")
    return 0


def _names(topo: Topology) -> list[str]:
    names = [topo.origin.name] if topo.origin is not None else []
    names += [*topo.shields, *topo.edges]
    return names + ([topo.router.name] if topo.router is not None else [])

