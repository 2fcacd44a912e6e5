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

from livecdn import __version__
from livecdn.config import ConfigError, EdgeConfig, OriginConfig, RouterConfig, ShieldConfig, Topology, load
from livecdn.config.load import SIGNING_ENV, TOKEN_ENV

__all__ = ["main"]

DEMO_CONFIG = Path(__file__).resolve().parent / "demo.toml"  # package data; configs/demo.toml links to it
ROLES = ("origin", "shield", "edge", "geo")
# The node options and the roles they mean something for (`run` takes them all and refuses the rest).
APPLIES = {"origin": ("shield", "edge"), "mode": ("origin",), "workers": ("shield", "edge"),
           "no_access_log": ("shield", "edge", "geo"), "access_log": ("shield", "edge", "geo"),
           "low_latency": ("origin",)}
LEVELS = ("debug", "info", "warning", "error")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livecdn",
                                description="Live video CDN: origin, shield and edge nodes, and the geo router.")
    p.add_argument("--version", action="version", version=f"livecdn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one node of the topology file, in the role the file gives it")
    _node_options(r, None)
    for role in ROLES:
        _node_options(sub.add_parser(role, help=f"run one {role} node from the topology file"), role)
    c = sub.add_parser("check", help="validate a topology file, as nginx -t does, and say what each node runs",
                       description="Prints what each node would run and 'ok', or one line per problem "
                                   "(file: key: problem) and exits 2. With --node, also that this machine "
                                   "can run it: its addresses are local and free, its disk tier usable.")
    c.add_argument("--config", required=True, help="topology file (TOML)")
    c.add_argument("--node", help="check this node for this machine too")
    d = sub.add_parser("demo", help="start a whole CDN on loopback and print the URL a player opens")
    d.add_argument("--config", default=str(DEMO_CONFIG), help="topology file (default: the demo's, configs/demo.toml)")
    d.add_argument("--json", action="store_true", help="print the nodes and play URL as one JSON object")
    d.add_argument("--origin", metavar="URL", help="an existing origin instead of the built-in one: its base "
                                                   "URL, or the URL of the playlist to play")
    d.add_argument("--mode", choices=("synthetic", "ffmpeg"), help="built-in origin mode (overrides the file)")
    d.add_argument("--low-latency", action="store_true",
                   help="built-in origin serves low-latency HLS (parts, blocking reloads; overrides the file)")
    d.add_argument("--tls", action="store_true",
                   help="make a throwaway CA and certificates, serve players over HTTPS too (prints the CA file)")
    d.add_argument("--signed", action="store_true",
                   help="edges need signed URLs, under a random key; prints a signed play URL")
    d.add_argument("--access-log", metavar="FILE", help="where the nodes' access lines go ('-': this terminal; "
                                                        "default: a file the demo names)")
    d.add_argument("--log-level", default="info", choices=LEVELS)
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


def _node_options(s: argparse.ArgumentParser, role: str | None) -> None:
    """The options of a node command: those that mean something for `role` (None: `run`, any role)."""
    def takes(option: str) -> bool:
        return role is None or role in APPLIES[option]

    s.add_argument("--config", required=True, help="topology file (TOML)")
    s.add_argument("--node", required=True, help="this node's name in the topology file")
    s.add_argument("--log-level", default="info", choices=LEVELS)
    if takes("origin"):
        s.add_argument("--origin", metavar="URL", help="fetch from this origin instead of the file's")
    if takes("mode"):
        s.add_argument("--mode", choices=("synthetic", "ffmpeg"), help="built-in origin mode (overrides the file)")
    if takes("workers"):
        s.add_argument("--workers", type=int, help="worker processes sharing the port (overrides the file)")
    if takes("no_access_log"):
        s.add_argument("--no-access-log", action="store_true", help="do not log each request")
    if takes("access_log"):
        s.add_argument("--access-log", metavar="FILE",
                       help="append access lines to FILE (reopened on SIGUSR1, for logrotate) instead of stderr")
    if takes("low_latency"):
        s.add_argument("--low-latency", action="store_true",
                       help="built-in origin serves low-latency HLS (parts, blocking reloads; overrides the file)")


def _topology(args: argparse.Namespace) -> Topology:
    topo = load(args.config)
    origin, mode = getattr(args, "origin", None), getattr(args, "mode", None)
    if origin:
        try:
            topo = topo.with_origin(origin)
        except ValueError as e:
            raise ConfigError(args.config, "--origin", str(e)) from None
    elif mode and topo.origin is not None:
        topo = dataclasses.replace(topo, origin=dataclasses.replace(topo.origin, mode=mode))
    if getattr(args, "low_latency", False) and topo.origin is not None and not topo.origin.low_latency:
        try:
            topo = dataclasses.replace(topo, origin=dataclasses.replace(topo.origin, low_latency=True))
        except ValueError as e:
            raise ConfigError(args.config, "--low-latency", str(e)) from None
    return topo


def _node_config(topo: Topology, args: argparse.Namespace) -> OriginConfig | ShieldConfig | EdgeConfig | RouterConfig:
    """The node `--node` names; its role is the file's (`run`) or must be the command's."""
    actual, cfg = topo.node(args.node)
    if args.command != "run" and actual != args.command:
        raise ConfigError(topo.path, "--node", f"node {args.node!r} is a {actual} node, not {args.command}")
    for option, roles in APPLIES.items():
        if getattr(args, option, None) not in (None, False) and actual not in roles:
            flag = "--" + option.replace("_", "-")
            article = "an" if actual[0] in "aeiou" else "a"
            raise ConfigError(topo.path, flag, f"node {args.node!r} is {article} {actual} node: {flag} is only "
                                               f"for {', '.join(roles)} nodes")
    if isinstance(cfg, (ShieldConfig, EdgeConfig)) and args.workers is not None:
        if args.workers < 1:
            raise ConfigError(args.config, "--workers", f"must be at least 1, got {args.workers}")
        cfg = dataclasses.replace(cfg, workers=args.workers)
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
        if args.command == "check":
            from livecdn.check import run_check
            return run_check(args.config, args.node)
        if args.command == "demo":
            from livecdn.demo import run_demo
            return run_demo(args, load(args.config))  # the demo reads --origin (a base or a playlist URL)
        topo = _topology(args)
        cfg = _node_config(topo, args)
        from livecdn.node.preflight import preflight
        if problems := preflight(topo, cfg):
            raise problems[0]
        if isinstance(cfg, RouterConfig):
            _check_tls(topo, cfg)  # a cache node's: in _run_cache_node, once its metrics directory is set
        access_file = getattr(args, "access_log", None)
        if access_file:
            _check_writable(access_file)
    except ConfigError as e:
        print(f"livecdn: {e}", file=sys.stderr)
        return 2
    level = getattr(logging, args.log_level.upper())
    from livecdn import logs
    logs.setup(cfg.name, level, access_file=access_file)
    if isinstance(cfg, OriginConfig):
        return _run_origin(cfg, topo.drain_timeout)
    if isinstance(cfg, RouterConfig):
        return _run_geo(args, topo, cfg)
    return _run_cache_node(args, topo, cfg)


def _check_writable(path: str) -> None:
    """An access log the node could not open is one line before it starts, not a traceback from a worker."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640))
    except OSError as e:
        raise ConfigError(path, "--access-log", f"cannot open for writing: {e.strerror}") from None


def _check_tls(topo: Topology, cfg: OriginConfig | ShieldConfig | EdgeConfig | RouterConfig) -> None:
    """Read the node's certificates and upstream CA files now: a bad one is a config error, not a failed handshake."""
    if isinstance(cfg, RouterConfig):
        from geo import GeoNode
        GeoNode(topo, cfg).check_tls(topo)
    elif isinstance(cfg, (ShieldConfig, EdgeConfig)):
        from edge import EdgeNode
        from shield import ShieldNode
        (EdgeNode if isinstance(cfg, EdgeConfig) else ShieldNode)(topo, cfg).check_tls(topo)


def _run_origin(cfg: OriginConfig, drain_timeout: float) -> int:
    from livecdn.node.serve import run, serve
    from livecdn.origin import OriginNode

    try:
        run(lambda: serve(OriginNode(cfg), drain_timeout=drain_timeout))
    except RuntimeError as e:
        print(f"livecdn: origin {cfg.name}: {e}", file=sys.stderr)
        return 1
    return 0


def _run_geo(args: argparse.Namespace, topo: Topology, cfg: RouterConfig) -> int:
    from geo import GeoNode
    from livecdn.node.serve import run, serve

    node = GeoNode(topo, cfg, access_log=not args.no_access_log)

    def reload() -> Topology:
        return _topology(args)

    try:
        run(lambda: serve(node, reload, drain_timeout=topo.drain_timeout))
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
    # Where the workers find each other: to purge every memory tier (livecdn/node/broadcast.py), to ask
    # the owner of a key (livecdn/node/siblings.py).
    workers_dir = tempfile.mkdtemp(prefix=f"livecdn-workers-{cfg.name}-") if workers > 1 else None

    def child(slot: int = 0) -> None:
        from edge import EdgeNode
        from livecdn.node.serve import run, serve
        from shield import ShieldNode

        kind = EdgeNode if isinstance(cfg, EdgeConfig) else ShieldNode
        # SO_REUSEPORT with one worker too: a new process can take the port over before this one drains.
        node = kind(topo, cfg, access_log=not args.no_access_log, reuse_port=True, workers_dir=workers_dir,
                    slot=slot)

        def reload() -> Topology:
            return _topology(args)

        run(lambda: serve(node, reload, drain_timeout=topo.drain_timeout))

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
        assert workers_dir is not None
        shutil.rmtree(workers_dir, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
