"""`livecdn demo`: every node of a topology as child processes on this machine.

Each node runs exactly as an operator would run it (`livecdn ROLE --config
FILE --node NAME`), so the demo exercises the real thing. Once every node
answers its health check (the router's once it sees every edge up) and the
play URL answers (through the router's 302 when the topology has a router,
else at the first edge), one line per node and the play URL are printed.
SIGINT or SIGTERM stops every child
gracefully; children also die with the demo if it is killed outright.

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
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from livecdn.config import SigningKey, SigningSettings, Topology, load
from livecdn.config.load import SIGNING_ENV, TOKEN_ENV
from livecdn.sign import signed_path

__all__ = ["run_demo", "DemoNode", "plan", "play_url"]

# The built-in ffmpeg origin needs its first segments encoded before the
# stream plays; everything else is up in about a second.
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
PR_SET_PDEATHSIG = 1
# A demo's signed play URL outlives an afternoon of trying it (a topology's own [signing] ttl aside).
DEMO_TOKEN_TTL = 86400.0
DEMO_KEY_ID = "demo"


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


def play_url(topo: Topology, https: bool = False) -> str | None:
    """Where a player starts: the router (it redirects to the nearest edge), else the first edge; signed
    when the topology asks for tokens.

    With `https`: that place's https URL (None when it serves no TLS).
    """
    nodes = plan(topo)
    start = nodes[-1] if topo.router is not None else next(n for n in nodes if n.role == "edge")
    base = start.https if https else start.url
    if base is None:
        return None
    return base + (topo.play_path if topo.signing is None else signed_path(topo, topo.play_path))


def _signed(topo: Topology) -> tuple[Topology, str]:
    """The topology with a random signing key (the only one), and that key as LIVECDN_SIGNING_KEYS says it."""
    key = SigningKey(DEMO_KEY_ID, secrets.token_urlsafe(32))
    settings = topo.signing or SigningSettings((key,), ttl=DEMO_TOKEN_TTL)
    return dataclasses.replace(topo, signing=dataclasses.replace(settings, keys=(key,))), f"{key.id}:{key.secret}"


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


def run_demo(args: argparse.Namespace, topo: Topology) -> int:
    """Start the CDN, print where it is, run until signalled; returns the exit status."""
    if not args.tls:
        return _run(args, topo, None)
    from livecdn.democerts import with_tls
    with tempfile.TemporaryDirectory(prefix="livecdn-demo-tls-") as work:
        config, ca = with_tls(topo, Path(work))
        return _run(args, load(config), ca)


def _run(args: argparse.Namespace, topo: Topology, ca: Path | None) -> int:
    nodes = plan(topo)
    token = topo.admin_token or secrets.token_urlsafe(24)
    env = {**os.environ, TOKEN_ENV: token}
    if args.signed:
        topo, env[SIGNING_ENV] = _signed(topo)
    play = play_url(topo)
    assert play is not None
    https = play_url(topo, https=True)
    trust = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    stop_requested = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for node in nodes:
            cmd = [sys.executable, "-m", "livecdn", node.role, "--config", topo.path, "--node", node.name,
                   "--log-level", args.log_level]
            if args.origin:
                cmd += ["--origin", args.origin]
            elif args.mode and node.role == "origin":
                cmd += ["--mode", args.mode]
            if args.low_latency and node.role == "origin" and not args.origin:
                cmd.append("--low-latency")
            children[node.name] = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, env=env)
        # The https play URL too when the demo made the CA (an operator's certificates: the system trusts them).
        plays = [play, https] if https and trust else [play]
        status = _wait_ready(nodes, children, plays, trust, lambda: stop_requested)
        if status is not None:
            return status
        router = topo.router
        if args.json:
            info: dict[str, object] = {"play": play, "nodes": [n.__dict__ for n in nodes], "admin_token": token}
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
            print(f"\nplay: {play}", flush=True)
            if ca is not None:
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
