"""Starting real livecdn nodes for tests: in this process, or as the CLI's processes.

In-process stacks (`Stack`) run ShieldNode/EdgeNode objects on 127.0.0.1 port 0
in the test's own event loop, so a test can look inside them. Process stacks
(`run_cdn`) start `livecdn demo` exactly as a user would and read its JSON
line. Both always clean up.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge import EdgeNode
from livecdn.cache.keys import CacheKey, cache_key, origin_identity
from livecdn.config import (
    Address,
    CacheSettings,
    EdgeConfig,
    GuardSettings,
    LimitSettings,
    Region,
    ShieldConfig,
    SigningSettings,
    Topology,
)
from livecdn.config.load import load
from livecdn.config.schema import DEFAULT_ORIGIN, OriginRoute
from livecdn.demo import _wait_ready, plan, play_url
from shield import ShieldNode

__all__ = ["Stack", "free_dns_port", "free_port", "free_port_on", "run_cdn", "run_nodes", "sample", "topology_toml",
           "ROOT"]

ROOT = Path(__file__).resolve().parent.parent
# Data-path tests exercise the engine: names of streams never seen pass the
# guard freely and clients are not metered (the guard has its own tests).
OPEN_GUARD = GuardSettings(unknown_rate=0, unknown_client_rate=0, prefetch=False)
NO_LIMITS = LimitSettings(miss_rate=0, connections_per_client=0)


def sample(text: str, name: str, **labels: str) -> float:
    """Sum of the Prometheus samples named `name` whose labels include these values."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


# Ports handed out lately: a port is free again once its probe socket closes,
# so two probes in a row can get the same one (then a topology names one
# listener twice); never hand the same port out twice in a row of 512.
_GIVEN: collections.deque[int] = collections.deque(maxlen=512)


def free_port(host: str = "127.0.0.1") -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.append(port)
            return port
    raise RuntimeError(f"no fresh free port on {host}")


class Stack:
    """Shields and edges in this process in front of `origin_url`.

    Shields start first on port 0; the edges' topology is then built with the
    shields' real ports, as an operator's file would list them.
    """

    def __init__(self, origin_url: str, *, shields: int = 1, edges: int = 1,
                 cache: CacheSettings | None = None, origin_fallback: bool = False,
                 guard: GuardSettings = OPEN_GUARD, limits: LimitSettings = NO_LIMITS, origin_ca: str = "",
                 signing: SigningSettings | None = None) -> None:
        self.origin_url = origin_url
        self.origin_ca = origin_ca  # the origin's ca_file (an https origin's CA bundle)
        self.signing = signing
        self.cache = cache or CacheSettings(disk_path="", upstream_timeout=3.0)
        self.guard, self.limits = guard, limits
        self.n_shields, self.n_edges = shields, edges
        self.origin_fallback = origin_fallback
        self.shields: list[ShieldNode] = []
        self.edges: list[EdgeNode] = []

    def _topology(self, shields: dict[str, ShieldConfig], edges: dict[str, EdgeConfig]) -> Topology:
        origins = {DEFAULT_ORIGIN: OriginRoute(DEFAULT_ORIGIN, self.origin_url, ca_file=self.origin_ca)}
        return Topology("(test)", "test", "cdn.test", self.origin_url, None,
                        {"eu": Region("eu", (50.0, 8.0))}, shields, edges, origins=origins, signing=self.signing)

    async def start(self) -> Stack:
        local = Address("127.0.0.1", 0)
        for i in range(self.n_shields):
            cfg = ShieldConfig(f"shield-{i + 1}", local, local, cache=self._cache(f"shield-{i + 1}"))
            node = ShieldNode(self._topology({cfg.name: cfg}, {}), cfg, access_log=False)
            await node.start()
            self.shields.append(node)
        shields = {s.config.name: dataclasses.replace(s.config, listen=Address("127.0.0.1", s.port))
                   for s in self.shields}
        for i in range(self.n_edges):
            cfg = EdgeConfig(f"edge-{i + 1}", "eu", local, local, (50.0, 8.0),
                             origin_fallback=self.origin_fallback, cache=self._cache(f"edge-{i + 1}"),
                             guard=self.guard, limits=self.limits)
            node = EdgeNode(self._topology(shields, {cfg.name: cfg}), cfg, access_log=False)
            await node.start()
            self.edges.append(node)
        return self

    def _cache(self, name: str) -> CacheSettings:
        path = self.cache.disk_path.replace("{node}", name)
        return dataclasses.replace(self.cache, disk_path=path)

    def key(self, path: str) -> CacheKey:
        """The cache key a player's request for `path` has at these nodes (under their one origin)."""
        return cache_key(path, origin_identity(self._topology({}, {}).routes[0]))

    @property
    def edge(self) -> str:
        return f"http://127.0.0.1:{self.edges[0].port}"

    def edge_admin(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.edges[i].admin_port}"

    async def stop(self) -> None:
        for node in [*self.edges, *self.shields]:
            await node.stop(1.0)


def free_port_on(hosts: list[str]) -> int:
    """A port free on every one of `hosts` (edges share one port, each on its own address)."""
    for _ in range(100):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


def free_dns_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP, as a DNS listener needs."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = int(u.getsockname()[1])
            if port in _GIVEN:
                continue
            try:
                with socket.socket() as t:
                    t.bind((host, port))
            except OSError:
                continue
            _GIVEN.append(port)
            return port
    raise RuntimeError(f"no port free for UDP and TCP on {host}")


def topology_toml(*, origin: str | dict[str, Any], shields: int = 1, edges: int = 2,
                  workers: int = 1, cache: dict[str, Any] | None = None, router: bool = True,
                  steering_ttl: int | None = None, shield_workers: int = 1) -> str:
    """A topology file with free loopback ports; edges on 127.0.N.1 like the demo.

    As in the demo, every edge listens on the same port of its own address (so
    a DNS answer, an address, is all a player needs), and the router places
    127.0.1.0/24 in eu and 127.0.2.0/24 in us (configs/demo-geo.mmdb).
    `steering_ttl` turns content steering on with that TTL. `workers` is each edge's worker
    processes, `shield_workers` each shield's.
    """
    lines = ['[cdn]', 'name = "test"', 'play_path = "/live/master.m3u8"', "", "[cache]"]
    for k, v in {"disk_path": "", "upstream_timeout": 5, **(cache or {})}.items():
        lines.append(f"{k} = {json.dumps(v)}")
    lines += ["", "[origin]"]
    if isinstance(origin, str):
        lines.append(f'url = "{origin}"')
    else:
        lines.append("[origin.builtin]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in {"listen": f"127.0.0.1:{free_port()}", **origin}.items()]
    lines += ["", "[regions.eu]", "location = [50.1, 8.7]", "[regions.us]", "location = [39.0, -77.5]"]
    for i in range(1, shields + 1):
        lines += [f"[shields.shield-{i}]", f'listen = "127.0.0.1:{free_port()}"',
                  f'admin = "127.0.0.1:{free_port()}"', f"workers = {shield_workers}"]
    hosts = [f"127.0.{i}.1" for i in range(1, edges + 1)]
    port = free_port_on(hosts)
    for i, host in enumerate(hosts, 1):
        region = "eu" if i % 2 else "us"
        lines += [f"[edges.edge-{i}]", f'region = "{region}"', f'listen = "{host}:{port}"',
                  f'admin = "{host}:{free_port(host)}"', f"workers = {workers}"]
    if router:
        lines += ["", "[router]", 'name = "router"', f'dns = "127.0.0.1:{free_dns_port()}"',
                  f'http = "127.0.0.1:{free_port()}"', f'admin = "127.0.0.1:{free_port()}"',
                  f'database = "{ROOT / "configs" / "demo-geo.mmdb"}"', 'default_region = "eu"', "ttl = 5",
                  "[router.health]", "interval = 0.5", "timeout = 1", "failures = 3", "rise = 2"]
        if steering_ttl is not None:
            lines += ["[router.steering]", "enabled = true", f"ttl = {steering_ttl}"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def run_cdn(config: Path, *args: str, timeout: float = 90.0, livecdn: list[str] | None = None,
            cwd: Path = ROOT, env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """`livecdn demo --json` with this topology; yields its JSON, then stops it with SIGTERM.

    `livecdn` is the command (this tree's by default; an installed one for tests/test_install.py).
    Its stderr (access lines, logs) goes to a file, never a pipe nobody reads:
    a full pipe would block the nodes mid-test. `info["stderr"]` reads it so far.
    """
    err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    command = livecdn or [sys.executable, "-m", "livecdn"]
    proc = subprocess.Popen([*command, "demo", "--config", str(config), "--json", "--log-level", "warning", *args],
                            stdout=subprocess.PIPE, stderr=err, cwd=cwd, env=env, start_new_session=True)

    def stderr() -> str:
        err.seek(0)
        return err.read().decode(errors="replace")

    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else b""
        if not line:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"livecdn demo did not come up: {stderr()[-2000:]}")
        info = json.loads(line)
        info["process"] = proc
        info["stderr"] = stderr
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            _reap(proc)
        err.close()


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a process told to stop; past 30 s its whole group is killed."""
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def run_nodes(config: Path) -> Iterator[dict[str, Any]]:
    """Every node of the topology as its own `livecdn ROLE` process, as `livecdn demo` starts them, but with
    no supervisor: a test may kill or SIGSTOP one node and the others go on (the demo stops them all).

    Yields the demo's JSON shape (`play`, `nodes`) plus `procs` (node name → Popen) and `stderr()`.
    """
    topo = load(config)
    nodes, play = plan(topo), play_url(topo)
    err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def stderr() -> str:
        err.seek(0)
        return err.read().decode(errors="replace")

    try:
        for n in nodes:
            procs[n.name] = subprocess.Popen(
                [sys.executable, "-m", "livecdn", n.role, "--config", str(config), "--node", n.name,
                 "--log-level", "warning"], stdout=err, stderr=err, cwd=ROOT, start_new_session=True)
        # The demo's own readiness wait: every node healthy, the router seeing every edge, the play URL answering.
        if _wait_ready(nodes, procs, [play], None, lambda: False) is not None:
            raise AssertionError(f"the nodes did not come up: {stderr()[-2000:]}")
        yield {"play": play, "nodes": [n.__dict__ for n in nodes], "procs": procs, "stderr": stderr}
    finally:
        for proc in reversed(procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped node cannot drain
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            _reap(proc)
        err.close()


def wait_until(predicate: Any, timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll a condition in a test (never in livecdn code)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
