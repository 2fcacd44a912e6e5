"""The `livecdn` command: run one node from the topology file, or the whole demo CDN."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from livecdn.config import ConfigError, EdgeConfig, OriginConfig, RouterConfig, ShieldConfig, Topology, load
from livecdn.config.load import SIGNING_ENV, TOKEN_ENV

__all__ = ["main"]

DEMO_CONFIG = Path(__file__).resolve().parent / "demo.toml"  # package data; configs/demo.toml links to it
ROLES = ("origin", "shield", "edge", "geo")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livecdn",
                                description="Live video CDN: origin, shield and edge nodes, and the geo router.")
    sub = p.add_subparsers(dest="command", required=True)
    for role in ROLES:
        s = sub.add_parser(role, help=f"run one {role} node from the topology file")
        s.add_argument("--config", required=True, help="topology file (TOML)")
        s.add_argument("--node", required=True, help="this node's name in the topology file")
        _common(s)
        if role in ("shield", "edge"):
            s.add_argument("--workers", type=int, help="worker processes sharing the port (overrides the file)")
        if role != "origin":
            s.add_argument("--no-access-log", action="store_true", help="do not log each request")
    d = sub.add_parser("demo", help="start a whole CDN on loopback and print the URL a player opens")
    d.add_argument("--config", default=str(DEMO_CONFIG), help="topology file (default: the demo's, configs/demo.toml)")
    d.add_argument("--json", action="store_true", help="print the nodes and play URL as one JSON object")
    d.add_argument("--tls", action="store_true",
                   help="make a throwaway CA and certificates, serve players over HTTPS too (prints the CA file)")
    d.add_argument("--signed", action="store_true",
                   help="edges need signed URLs, under a random key; prints a signed play URL")
    _common(d)
    u = sub.add_parser("purge", help="drop objects from every shield and edge of the topology (shields first)",
                       description=f"The admin token is {TOKEN_ENV} from the environment, else [cdn] admin_token.")
    u.add_argument("--config", required=True, help="topology file (TOML)")
    what = u.add_mutually_exclusive_group(required=True)
    what.add_argument("path", nargs="?", metavar="PATH", help="one object (a path, or a URL: its host is ignored)")
    what.add_argument("--prefix", metavar="P", help="every object whose path starts with P")
    what.add_argument("--stream", metavar="S", help="a whole stream: the directory of playlist S, and all under it")
    u.add_argument("--json", action="store_true", help="print every node's answer as one JSON object")
    g = sub.add_parser("sign", help="print a signed URL for a path: its directory and all under it",
                       description=f"The keys are {SIGNING_ENV} from the environment, else [signing] keys; "
                                   f"the first signs.")
    g.add_argument("--config", required=True, help="topology file (TOML)")
    g.add_argument("path", metavar="PATH", help="a path such as /live/master.m3u8 (or a URL: its host is ignored)")
    g.add_argument("--ttl", type=float, metavar="S", help="seconds the URL is good for (default: [signing] ttl)")
    g.add_argument("--address", default="", metavar="IP", help="the one client address the URL is good for")
    g.add_argument("--scope", metavar="DIR", help="the directory the URL allows (default: PATH's directory)")
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--origin", metavar="URL", help="use this existing origin instead of the built-in one")
    p.add_argument("--mode", choices=("synthetic", "ffmpeg"), help="built-in origin mode (overrides the file)")
    p.add_argument("--low-latency", action="store_true",
                   help="built-in origin serves low-latency HLS (parts, blocking reloads; overrides the file)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def _topology(args: argparse.Namespace) -> Topology:
    topo = load(args.config)
    if args.origin:
        try:
            topo = topo.with_origin(args.origin)
        except ValueError as e:
            raise ConfigError(args.config, "--origin", str(e)) from None
    elif args.mode and topo.origin is not None:
        topo = dataclasses.replace(topo, origin=dataclasses.replace(topo.origin, mode=args.mode))
    if args.low_latency and topo.origin is not None and not topo.origin.low_latency:
        try:
            topo = dataclasses.replace(topo, origin=dataclasses.replace(topo.origin, low_latency=True))
        except ValueError as e:
            raise ConfigError(args.config, "--low-latency", str(e)) from None
    return topo


def _node_config(topo: Topology, role: str, name: str) -> OriginConfig | ShieldConfig | EdgeConfig | RouterConfig:
    actual, cfg = topo.node(name)
    if actual != role:
        raise ConfigError(topo.path, "--node", f"node {name!r} is a {actual} node, not {role}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "purge":
            from livecdn.purge import run_purge
            return run_purge(args, load(args.config))
        if args.command == "sign":
            from livecdn.sign import run_sign
            return run_sign(args, load(args.config))
        topo = _topology(args)
        if args.command == "demo":
            from livecdn.demo import run_demo
            return run_demo(args, topo)
        cfg = _node_config(topo, args.command, args.node)
        if isinstance(cfg, (ShieldConfig, EdgeConfig)) and args.workers is not None:
            if args.workers < 1:
                raise ConfigError(args.config, "--workers", f"must be at least 1, got {args.workers}")
            cfg = dataclasses.replace(cfg, workers=args.workers)
        if isinstance(cfg, RouterConfig):
            _check_tls(topo, cfg)  # a cache node's: in _run_cache_node, once its metrics directory is set
    except ConfigError as e:
        print(f"livecdn: {e}", file=sys.stderr)
        return 2
    level = getattr(logging, args.log_level.upper())
    from livecdn import logs
    logs.setup(cfg.name, level)
    if isinstance(cfg, OriginConfig):
        return _run_origin(cfg)
    if isinstance(cfg, RouterConfig):
        return _run_geo(args, topo, cfg)
    return _run_cache_node(args, topo, cfg)


def _check_tls(topo: Topology, cfg: OriginConfig | ShieldConfig | EdgeConfig | RouterConfig) -> None:
    """Read the node's certificates and upstream CA files now: a bad one is a config error, not a failed handshake."""
    if isinstance(cfg, RouterConfig):
        from geo import GeoNode
        GeoNode(topo, cfg).check_tls(topo)
    elif isinstance(cfg, (ShieldConfig, EdgeConfig)):
        from edge import EdgeNode
        from shield import ShieldNode
        (EdgeNode if isinstance(cfg, EdgeConfig) else ShieldNode)(topo, cfg).check_tls(topo)


def _run_origin(cfg: OriginConfig) -> int:
    from livecdn.node.serve import run, serve
    from livecdn.origin import OriginNode

    try:
        run(lambda: serve(OriginNode(cfg)))
    except RuntimeError as e:
        print(f"livecdn: origin {cfg.name}: {e}", file=sys.stderr)
        return 1
    return 0


def _run_geo(args: argparse.Namespace, topo: Topology, cfg: RouterConfig) -> int:
    from geo import GeoNode
    from livecdn.node.serve import run, serve

    node = GeoNode(topo, cfg, access_log=not args.no_access_log)
    try:
        node.open_database(topo).close()  # a bad database is a config error: say so before binding
    except (OSError, ValueError) as e:
        print(f"livecdn: {ConfigError(topo.path, 'router.database', f'{cfg.database}: {e}')}", file=sys.stderr)
        return 2

    def reload() -> Topology:
        return _topology(args)

    try:
        run(lambda: serve(node, reload))
    except OSError as e:
        print(f"livecdn: {cfg.name}: cannot listen: {e}", file=sys.stderr)
        return 1
    return 0


def _run_cache_node(args: argparse.Namespace, topo: Topology, cfg: ShieldConfig | EdgeConfig) -> int:
    workers = cfg.workers
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Must be set before prometheus_client is first imported (it picks its
        # value store at import), so every worker writes where /metrics reads.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"livecdn-metrics-{cfg.name}-")
    try:
        _check_tls(topo, cfg)  # after PROMETHEUS_MULTIPROC_DIR: the check imports the node, and so prometheus_client
    except ConfigError as e:
        print(f"livecdn: {e}", file=sys.stderr)
        return 2
    # Where the workers find each other to purge every memory tier (livecdn/node/broadcast.py).
    purge_dir = tempfile.mkdtemp(prefix=f"livecdn-purge-{cfg.name}-") if workers > 1 else None

    def child() -> None:
        from edge import EdgeNode
        from livecdn.node.serve import run, serve
        from shield import ShieldNode

        kind = EdgeNode if isinstance(cfg, EdgeConfig) else ShieldNode
        node = kind(topo, cfg, access_log=not args.no_access_log, reuse_port=workers > 1, purge_dir=purge_dir)

        def reload() -> Topology:
            return _topology(args)

        run(lambda: serve(node, reload))

    if workers == 1:
        try:
            child()
        except OSError as e:
            print(f"livecdn: {cfg.name}: cannot listen: {e}", file=sys.stderr)
            return 1
        return 0
    from livecdn.node.workers import supervise
    try:
        return supervise(workers, child)
    finally:
        assert purge_dir is not None
        shutil.rmtree(purge_dir, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
