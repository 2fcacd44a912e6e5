"""`livecdn demo --tls`: a throwaway CA, one certificate for every demo host, and a topology that uses them.

The CA and the certificate come from `trustme` (a fake CA made for exactly
this: certificates for host names and IP addresses in a few calls, on the
`cryptography` package). They live in a temporary directory that goes with
the demo. The topology written beside them is the demo's own with a
`[*.tls]` table added to every shield, edge and the router: HTTPS on a
port of its own (the plain port + 363 when that is free, so 8080 gets 8443),
plain HTTP still served beside it, and the CA as the shields' `ca_file` so
edges verify the shields they fetch from.
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
import trustme

from livecdn.config import Address, Topology

__all__ = ["TLS_PORT_OFFSET", "with_tls"]

TLS_PORT_OFFSET = 363  # 8080 → 8443, 8000 → 8363: a TLS port near its node's plain one, when free


def _free_everywhere(hosts: list[str], port: int) -> bool:
    for host in hosts:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _tls_port(hosts: list[str], plain: int) -> int:
    """A port free on every one of `hosts` (edges share one port, each on its own address)."""
    if plain and plain + TLS_PORT_OFFSET < 65536 and _free_everywhere(hosts, plain + TLS_PORT_OFFSET):
        return plain + TLS_PORT_OFFSET
    for _ in range(100):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        if _free_everywhere(hosts, port):
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


def with_tls(topo: Topology, work: Path) -> tuple[Path, Path]:
    """Write `work`/ca.pem, a certificate and key for every demo host, and a TLS topology file.

    Returns:
        (the topology file to run, the CA file players trust).
    """
    with open(topo.path, "rb") as f:
        raw: dict[str, Any] = tomllib.load(f)
    hosts = {"127.0.0.1", "localhost", topo.hostname, *(s.listen.host for s in topo.shields.values()),
             *(e.listen.host for e in topo.edges.values())}
    if topo.router is not None:
        hosts |= {topo.router.http.host, *(a for addrs in topo.router.addresses.values() for a in addrs)}
    ca = trustme.CA(organization_name="livecdn demo")
    leaf = ca.issue_cert(*sorted(h for h in hosts if h not in ("0.0.0.0", "::")))
    ca_file, cert, key = work / "ca.pem", work / "cert.pem", work / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with open(cert, "wb") as out:
        for pem in leaf.cert_chain_pems:
            out.write(pem.bytes())
    leaf.private_key_pem.write_to_path(str(key))

    def table(listen: Address) -> dict[str, Any]:
        return {"listen": str(listen), "certificates": [{"cert": str(cert), "key": str(key)}], "ca_file": str(ca_file)}

    for name, shield in topo.shields.items():
        raw["shields"][name]["tls"] = table(Address(shield.listen.host, _tls_port([shield.listen.host],
                                                                                  shield.listen.port)))
    edge_port = _tls_port([e.listen.host for e in topo.edges.values()], next(iter(topo.edges.values())).listen.port)
    for name, edge in topo.edges.items():
        raw["edges"][name]["tls"] = table(Address(edge.listen.host, edge_port))
    if topo.router is not None:
        http = topo.router.http
        raw["router"]["tls"] = table(Address(http.host, _tls_port([http.host], http.port)))
        raw["router"]["database"] = topo.router.database  # absolute: the new file is elsewhere
    for route in topo.routes:  # CA files named relative to the old file
        if route.ca_file:
            where = raw["origin"] if route.name not in raw.get("origins", {}) else raw["origins"][route.name]
            where["ca_file"] = route.ca_file
    config = work / "demo-tls.toml"
    with open(config, "wb") as out:
        tomli_w.dump(raw, out)
    return config, ca_file
