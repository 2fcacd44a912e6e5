"""Can this machine run a node as the topology describes it? Asked before the node binds anything.

A node's listen address that is not one of this machine's, or a port another
program holds, is the operator's slip in the file: it is said as one line
naming the file and the key (`file: key: problem`), exit 2, like any other
config error, instead of a bind traceback from deep in the start. The same
checks serve `livecdn check --node`, which also tries the disk tier: a node
that *runs* on an unusable disk serves from memory (issue 11: a player keeps
playing through a bad disk), but a check says so before it is started.

Sockets are bound with SO_REUSEPORT, as the nodes bind theirs: a port that a
running livecdn holds (a restart taking over) is not "in use", one that
nginx holds is.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

from livecdn.config import Address, ConfigError, EdgeConfig, OriginConfig, RouterConfig, ShieldConfig, Topology

__all__ = ["NodeConfig", "addresses", "key_of", "preflight", "disk_problem"]

NodeConfig = OriginConfig | ShieldConfig | EdgeConfig | RouterConfig


def key_of(topo: Topology, cfg: NodeConfig) -> str:
    """The table of the file that describes `cfg`."""
    if isinstance(cfg, OriginConfig):
        return "origin.builtin"
    if isinstance(cfg, RouterConfig):
        return "router"
    return f"{'edges' if isinstance(cfg, EdgeConfig) else 'shields'}.{cfg.name}"


def addresses(cfg: NodeConfig) -> Iterator[tuple[str, Address, int]]:
    """Every address the node binds: (field, address, socket type); the router's DNS takes UDP and TCP."""
    for field, value in vars(cfg).items():
        if isinstance(value, Address):
            yield field, value, socket.SOCK_STREAM
            if isinstance(cfg, RouterConfig) and field == "dns":
                yield field, value, socket.SOCK_DGRAM


def _bind_problem(addr: Address, kind: int, port: bool) -> str | None:
    """Why `addr` cannot be bound here (with its port when `port`, else any port), or None."""
    try:
        infos = socket.getaddrinfo(addr.host, addr.port if port else 0, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"{addr.host}: cannot resolve ({e.strerror})"
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind(sockaddr)
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                return f"{addr.host} is not an address of this machine"
            if e.errno == errno.EADDRINUSE:
                proto = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
                return f"{proto} port {addr.port} of {addr.host} is in use by another program"
            if e.errno == errno.EACCES:
                return f"port {addr.port} needs privileges this process lacks (CAP_NET_BIND_SERVICE)"
            return f"{addr}: {e.strerror or e}"
    return None


def disk_problem(path: str) -> str | None:
    """Why the disk tier cannot live at `path` (it is created if missing, as the node would), or None."""
    probe = os.path.join(path, f".livecdn-check-{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    return None


def preflight(topo: Topology, cfg: NodeConfig, *, ports: bool = True, disk: bool = False) -> list[ConfigError]:
    """What stops `cfg` from running on this machine, each as a ConfigError naming file and key.

    Args:
        ports: also bind each address's own port (not only the address with port 0).
        disk: also try the disk tier's directory.
    """
    table = key_of(topo, cfg)
    problems = []
    for field, addr, kind in addresses(cfg):
        if problem := _bind_problem(addr, kind, ports and addr.port != 0):
            problems.append(ConfigError(topo.path, f"{table}.{field}", problem))
    if isinstance(cfg, RouterConfig):
        import maxminddb
        try:
            maxminddb.open_database(cfg.database).close()
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
            problems.append(ConfigError(topo.path, "router.database", f"{cfg.database}: {e}"))
    has_disk = isinstance(cfg, (ShieldConfig, EdgeConfig)) and bool(cfg.cache.disk_path and cfg.cache.disk_bytes)
    if disk and has_disk and (problem := disk_problem(cfg.cache.disk_path)):  # type: ignore[union-attr]
        problems.append(ConfigError(topo.path, f"{table}.cache.disk_path", problem))
    return problems
