"""`livecdn demo`: every node of a topology as child processes on this machine.

Each node runs exactly as an operator would run it (`livecdn ROLE --config
FILE --node NAME`), so the demo exercises the real thing. The router starts
once the other nodes answer (its checks would find edges still starting
"down"). Once every node
answers its health check (the router's once it sees every edge up) and the
play URL answers (through the router's 302 when the topology has a router,
else at the first edge), one line per node and the play URL are printed.
SIGINT or SIGTERM stops every child
gracefully; children also die with the demo if it is killed outright.

`--origin URL` puts the CDN in front of an existing origin: the URL of a
playlist (the play URL is that path through the router), or the origin's
base URL (the demo's play path when the origin has it; otherwise the demo is
ready once its nodes are and prints the router and edge URLs to put a stream's
path after). The origin is asked once before anything starts, so one that
cannot be reached or lacks the playlist is said at once, not after a wait.

Access lines go to a file the demo names (`--access-log -`: the terminal),
so the terminal keeps the play URL and the nodes' messages at `--log-level`.

With `--tls` the demo first makes a throwaway CA and one certificate for
every demo host (`livecdn.democerts`), runs a copy of the topology with a
TLS listener on every shield, edge and the router, and prints the CA file
(`"ca"`) and the https URLs (`"https"`: play and every node) as well.

The demo prints the admin token of the purge API (`"admin_token"` in
`--json`): the topology's (LIVECDN_ADMIN_TOKEN, else `[cdn] admin_token`),
or a random one when it has none, handed to every node in its environment.
With `--signed` edges need signed URLs, under a random key handed to the nodes
the same way (LIVECDN_SIGNING_KEYS, printed as `"signing_keys"`); the play URL
printed (`"play"`) is then signed. A topology with its own `[signing]` gets a
signed play URL too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from livecdn.config import ConfigError, SigningKey, SigningSettings, Topology, load
from livecdn.config.load import SIGNING_ENV, TOKEN_ENV
from livecdn.sign import signed_path

__all__ = ["run_demo", "DemoNode", "OriginProbe", "plan", "play_url", "probe_origin", "split_origin"]

# The built-in ffmpeg origin needs its first segments encoded before the
# stream plays; everything else is up in about a second.
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
PR_SET_PDEATHSIG = 1
# A demo's signed play URL outlives an afternoon of trying it (a topology's own [signing] ttl aside).
DEMO_TOKEN_TTL = 86400.0
DEMO_KEY_ID = "demo"
# The one request that asks an existing origin, before any node starts, whether it is there.
PROBE_TIMEOUT = 5.0
PLAYLISTS = (".m3u8", ".mpd")


@dataclass(frozen=True)
class DemoNode:
    role: str
    name: str
    url: str  # where players (or the tier below) reach it
    admin: str  # where its health and metrics are
    https: str | None = None  # where they reach it over HTTPS, when it serves TLS


def plan(topo: Topology) -> list[DemoNode]:
    """The nodes the demo starts, origin first so the tiers come up in order."""
    nodes = []
    if topo.origin is not None:
        url = topo.origin.listen.url
        nodes.append(DemoNode("origin", topo.origin.name, url, url))
    nodes += [DemoNode("shield", s.name, s.listen.url, s.admin.url, s.base_url if s.tls else None)
              for s in topo.shields.values()]
    nodes += [DemoNode("edge", e.name, e.listen.url, e.admin.url, e.base_url if e.tls else None)
              for e in topo.edges.values()]
    if (r := topo.router) is not None:
        # Last: it checks the edges' health, so it starts once they are on their way.
        nodes.append(DemoNode("geo", r.name, r.http.url, r.admin.url, r.tls.listen.https_url if r.tls else None))
    return nodes


def play_url(topo: Topology, path: str | None = None, https: bool = False) -> str | None:
    """Where a player starts: the router (it redirects to the nearest edge), else the first edge, then
    `path` (default: the play path; "": none), signed when the topology asks for tokens.

    With `https`: that place's https URL (None when it serves no TLS).
    """
    nodes = plan(topo)
    start = nodes[-1] if topo.router is not None else next(n for n in nodes if n.role == "edge")
    base = start.https if https else start.url
    if base is None:
        return None
    path = topo.play_path if path is None else path
    return base + (signed_path(topo, path) if topo.signing is not None and path else path)


def _signed(topo: Topology) -> tuple[Topology, str]:
    """The topology with a random signing key (the only one), and that key as LIVECDN_SIGNING_KEYS says it."""
    key = SigningKey(DEMO_KEY_ID, secrets.token_urlsafe(32))
    settings = topo.signing or SigningSettings((key,), ttl=DEMO_TOKEN_TTL)
    return dataclasses.replace(topo, signing=dataclasses.replace(settings, keys=(key,))), f"{key.id}:{key.secret}"


def split_origin(url: str) -> tuple[str, str | None]:
    """An `--origin` URL → (the origin's base URL, the playlist path to play or None for a base URL)."""
    parts = urllib.parse.urlsplit(url)
    if parts.path.lower().endswith(PLAYLISTS):
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", "")), path
    return url.rstrip("/") if parts.path not in ("", "/") else f"{parts.scheme}://{parts.netloc}", None


@dataclass(frozen=True)
class OriginProbe:
    """What one request to an existing origin found: the path to play (None: none known), or why not."""

    play_path: str | None
    problem: str | None = None  # set: the demo cannot start in front of this origin
    note: str = ""  # said beside the play line


def probe_origin(base: str, path: str | None, default_path: str) -> OriginProbe:
    """Ask the origin for the playlist given (or the demo's play path) once, before any node starts."""
    url = base + (path or default_path)
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return OriginProbe(None, f"cannot reach the origin: GET {url}: {reason}")
    if status == 200:
        return OriginProbe(path or default_path)
    if path is not None:
        return OriginProbe(None, f"the origin answered {status} to GET {url}")
    return OriginProbe(None, note=f"the origin answered {status} for {default_path}: put a stream's path after the "
                                  f"router URL (for an nginx-rtmp origin, /hls/NAME.m3u8)")


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _sees_every_edge(url: str) -> bool:
    """The router's /healthz says every edge passed its checks (before that, players would spill)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            body = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return isinstance(body, dict) and body.get("edges_up") == len(body.get("edges", ()))


def _in_front_of(args: argparse.Namespace, topo: Topology) -> tuple[Topology, OriginProbe]:
    """The topology with `--origin` (or `--mode`) applied, and what to play; ConfigError for a bad URL."""
    if not args.origin:
        if args.mode and topo.origin is not None:
            topo = dataclasses.replace(topo, origin=dataclasses.replace(topo.origin, mode=args.mode))
        return topo, OriginProbe(topo.play_path)
    base, path = split_origin(args.origin)
    try:
        topo = topo.with_origin(base)
    except ValueError as e:
        raise ConfigError(args.config, "--origin", str(e)) from None
    return topo, probe_origin(base, path, topo.play_path)


def _command(topo: Topology, node: DemoNode, args: argparse.Namespace, origin: str | None,
             access_log: str) -> list[str]:
    """The node's own command line, with only the options its role takes."""
    cmd = [sys.executable, "-m", "livecdn", node.role, "--config", topo.path, "--node", node.name,
           "--log-level", args.log_level]
    if origin and node.role in ("shield", "edge"):
        cmd += ["--origin", origin]
    elif args.mode and node.role == "origin":
        cmd += ["--mode", args.mode]
    if args.low_latency and node.role == "origin" and not origin:
        cmd.append("--low-latency")
    if access_log != "-" and node.role != "origin":
        cmd += ["--access-log", access_log]
    return cmd


def run_demo(args: argparse.Namespace, topo: Topology) -> int:
    """Start the CDN, print where it is, run until signalled; returns the exit status."""
    topo, found = _in_front_of(args, topo)
    if found.problem is not None:
        print(f"livecdn demo: {found.problem}", file=sys.stderr)
        return 1
    if not args.tls:
        return _run(args, topo, found, None)
    from livecdn.democerts import with_tls
    with tempfile.TemporaryDirectory(prefix="livecdn-demo-tls-") as work:
        config, ca = with_tls(topo, Path(work))
        return _run(args, load(config), found, ca)


def _run(args: argparse.Namespace, topo: Topology, found: OriginProbe, ca: Path | None) -> int:
    nodes = plan(topo)
    token = topo.admin_token or secrets.token_urlsafe(24)
    env = {**os.environ, TOKEN_ENV: token}
    if args.signed:
        topo, env[SIGNING_ENV] = _signed(topo)
    play = play_url(topo, found.play_path) if found.play_path is not None else None
    https = play_url(topo, found.play_path, https=True) if found.play_path is not None else None
    trust = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    access_log = args.access_log or os.path.join(tempfile.mkdtemp(prefix="livecdn-demo-"), "access.log")
    stop_requested = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        base = split_origin(args.origin)[0] if args.origin else None
        # The router last, once the edges answer: checks of edges still starting would warn they are down.
        tiers = [n for n in nodes if n.role != "geo"]
        for node in nodes:
            if node.role == "geo":
                status = _wait_ready(tiers, children, [], trust, lambda: stop_requested)
                if status is not None:
                    return status
            children[node.name] = subprocess.Popen(_command(topo, node, args, base, access_log),
                                                   start_new_session=True, preexec_fn=_die_with_parent, env=env)
        # The https play URL too when the demo made the CA (an operator's certificates: the system trusts them).
        plays = [u for u in (play, https if trust else None) if u is not None]
        status = _wait_ready(nodes, children, plays, trust, lambda: stop_requested)
        if status is not None:
            return status
        router = topo.router
        if args.json:
            info: dict[str, object] = {"play": play, "router": play_url(topo, ""), "nodes": [n.__dict__ for n in nodes],
                                       "admin_token": token, "access_log": access_log}
            if SIGNING_ENV in env:
                info["signing_keys"] = env[SIGNING_ENV]
            if router is not None:
                info.update(dns=str(router.dns), hostname=topo.hostname)
            if ca is not None:
                info.update(ca=str(ca), https={"play": https, "nodes": {n.name: n.https for n in nodes if n.https}})
            print(json.dumps(info), flush=True)
        else:
            for n in nodes:
                print(f"{n.role:<7} {n.name:<12} {n.url:<28} admin {n.admin}"
                      + (f"  https {n.https}" if n.https else ""), flush=True)
            if router is not None:
                print(f"\ndns:  dig @{router.dns.host} -p {router.dns.port} {topo.hostname}"
                      f"   (add -b 127.0.2.5 to ask from another region)", flush=True)
            print(f"\npurge: {TOKEN_ENV}={token} livecdn purge --config {topo.path} --prefix /live/", flush=True)
            if SIGNING_ENV in env:
                print(f"sign:  {SIGNING_ENV}={env[SIGNING_ENV]} livecdn sign --config {topo.path} "
                      f"{topo.play_path}   (unsigned requests get 403)", flush=True)
            if access_log != "-":
                print(f"\naccess log: {access_log}", flush=True)
            if play is not None:
                print(f"\nplay: {play}", flush=True)
            else:
                print(f"\nplay: {play_url(topo, '')}/PATH   ({found.note})", flush=True)
            if ca is not None and https is not None:
                print(f"https: {https}\nca:    {ca}   (curl --cacert {ca} {https})", flush=True)
            print("(Ctrl-C stops every node)", flush=True)
        while not stop_requested:
            for name, child in children.items():
                if child.poll() is not None:
                    print(f"livecdn demo: {name} exited with status {child.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.2)  # housekeeping tick of a supervisor, not a data-path wait
        return 0
    finally:
        _stop_all(children)
        for s, h in old.items():
            signal.signal(s, h)


def _wait_ready(nodes: list[DemoNode], children: dict[str, subprocess.Popen[bytes]], plays: list[str],
                trust: ssl.SSLContext | None, stopping: Callable[[], bool]) -> int | None:
    deadline = time.monotonic() + READY_TIMEOUT
    pending = {n.name: n.admin + "/healthz" for n in nodes}
    ready = {n.name: _sees_every_edge if n.role == "geo" else _answers for n in nodes}
    while time.monotonic() < deadline:
        if stopping():
            return 0
        for name, child in children.items():
            if child.poll() is not None:
                print(f"livecdn demo: {name} exited with status {child.returncode} while starting",
                      file=sys.stderr)
                return 1
        for name, url in list(pending.items()):
            if ready[name](url):
                del pending[name]
        if not pending and all(_answers(play, trust) for play in plays):
            return None
        time.sleep(0.2)
    waiting = ", ".join(pending) or f"the play URLs {' '.join(plays)}"
    print(f"livecdn demo: not ready after {READY_TIMEOUT:.0f}s: {waiting}", file=sys.stderr)
    return 1


def _stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    # Edges first, origin last: the reverse of the start order, so no tier
    # loses its upstream while it is still draining.
    for child in reversed(list(children.values())):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children.values():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
