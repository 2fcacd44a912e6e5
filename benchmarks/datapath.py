"""The data-path figures: coalescing under a slow origin, live viewers, edge memory.

    .venv/bin/python benchmarks/datapath.py [--quick]

Every node runs as an operator runs it (`livecdn ROLE --config FILE --node
NAME`) on loopback, from topology files written to a temp dir. Three figures:

1. coalescing: 200 concurrent GETs of one never-seen 1 MiB segment at an edge
   (edge → shield → a counting origin that answers after 0.3 s, then 6 s);
   origin requests, body integrity, client times. Same for nginx
   (`proxy_cache_lock`) in front of the same origin when nginx is installed.
2. viewers: 2 edges × 200 simulated players (viewers.py, one process per edge)
   following the built-in synthetic live stream through a counting
   pass-through; origin requests per segment and per playlist reload, stalls,
   segment latency, the load generator's own event-loop lag.
3. memory: one edge with a 128 MiB memory tier, written with twice that in
   distinct 1 MiB objects; its RSS against budget + 100 MiB.

Prints a table per figure and one final JSON line, also written to
benchmarks/results/datapath-<date>.json. Every process started is stopped
(process groups, SIGTERM then SIGKILL) on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from benchorigin import object_body
from report import save
from viewers import LIVE_SYNC_SEGMENTS, client_address, parse_master, parse_media, percentile

HERE = Path(__file__).resolve().parent
PY = sys.executable
LIVECDN = [PY, "-m", "livecdn"]
MIB = 1 << 20
OBJECT_BYTES = MIB
CLIENTS = 200
DELAYS = (0.3, 6.0)
VIEWERS_PER_EDGE = 200
TARGET_DURATION = 2
WINDOW = 6
MEMORY_BUDGET = 128 * MIB
MEMORY_SLACK = 100 * MIB
MEMORY_CONCURRENCY = 4
# Clients connect from their own loopback addresses, as distinct players would,
# so an edge's per-client limits see many clients, not one.
BURST_SOURCE = "127.100"
VIEWER_SOURCES = ("127.101", "127.102")
MEMORY_SOURCE = "127.103"
NO_PREFETCH = {"prefetch": False}  # figures 1 and 3 time and count exactly the requests they make
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Plan:
    """How much of each figure to run."""

    runs: int  # coalescing bursts per (system, delay)
    viewer_seconds: float


FULL = Plan(runs=5, viewer_seconds=60.0)
QUICK = Plan(runs=3, viewer_seconds=20.0)


# --- processes ----------------------------------------------------------------

def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Processes:
    """Every child this benchmark starts, each in its own process group, logs in `workdir`."""

    def __init__(self, workdir: Path, cwd: Path = HERE.parent) -> None:
        self.workdir = workdir
        self.cwd = cwd  # `python -m livecdn` runs the source tree found here
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.out", "wb") as out, open(self.workdir / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=self.cwd,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        self.running[name] = proc
        return proc

    def output(self, name: str) -> str:
        return (self.workdir / f"{name}.out").read_text()

    def log_tail(self, name: str, lines: int = 5) -> str:
        return "\n".join((self.workdir / f"{name}.err").read_text(errors="replace").splitlines()[-lines:])

    def check(self, name: str) -> None:
        """Raise if the child has exited."""
        proc = self.running[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{self.log_tail(name)}")

    def stop(self, names: Iterable[str]) -> None:
        """SIGTERM each child's process group, then SIGKILL what is left after STOP_TIMEOUT."""
        procs = [self.running.pop(n) for n in list(names) if n in self.running]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)  # before the leader is reaped: its group still exists
                proc.wait()

    def stop_all(self) -> None:
        self.stop(reversed(list(self.running)))


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


async def wait_ready(procs: Processes, name: str, probe: str, session: aiohttp.ClientSession) -> None:
    """Wait until `probe` answers 200 while child `name` is alive."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        procs.check(name)
        try:
            async with session.get(probe, timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return
        except (TimeoutError, aiohttp.ClientError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{name} not ready after {READY_TIMEOUT:.0f}s ({probe}):\n{procs.log_tail(name)}")


# --- topology files -----------------------------------------------------------

@dataclass(frozen=True)
class Node:
    """A shield or edge of a benchmark topology, on its own free ports."""

    kind: str  # shields | edges
    name: str
    port: int
    admin: int

    @classmethod
    def new(cls, kind: str, name: str) -> Node:
        return cls(kind, name, free_port(), free_port())

    @property
    def role(self) -> str:
        return self.kind.rstrip("s")


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and arrays of them read the same in TOML


def _table(name: str, values: dict[str, Any]) -> str:
    return "\n".join([f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items()), ""])


def write_topology(path: Path, origin_url: str, nodes: list[Node], cache: dict[str, Any],
                   guard: dict[str, Any] | None = None, builtin: dict[str, Any] | None = None) -> None:
    """A topology file: one region, these nodes, edges straight to the origin when there is no shield."""
    fallback = not any(n.kind == "shields" for n in nodes)
    parts = [_table("origin", {"url": origin_url}), _table("cache", cache), _table("guard", guard or {}),
             _table("regions.local", {"location": [50.11, 8.68]})]
    if builtin:
        parts.append(_table("origin.builtin", builtin))
    for n in nodes:
        values: dict[str, Any] = {"listen": f"127.0.0.1:{n.port}", "admin": f"127.0.0.1:{n.admin}"}
        if n.kind == "edges":
            values.update(region="local", origin_fallback=fallback)
        parts.append(_table(f"{n.kind}.{n.name}", values))
    path.write_text("\n".join(parts))


async def start_nodes(procs: Processes, session: aiohttp.ClientSession, config: Path, nodes: list[Node]) -> None:
    """Start shields then edges from `config`, each ready before the next tier."""
    for n in sorted(nodes, key=lambda n: n.kind != "shields"):
        procs.start(n.name, LIVECDN + [n.role, "--config", str(config), "--node", n.name,
                                       "--no-access-log", "--log-level", "warning"])
        await wait_ready(procs, n.name, url(n.admin) + "/healthz", session)


async def start_bench_origin(procs: Processes, session: aiohttp.ClientSession, name: str,
                             upstream: str | None = None) -> int:
    """Start benchorigin.py (synthetic, or counting pass-through to `upstream`); its port."""
    port = free_port()
    cmd = [PY, str(HERE / "benchorigin.py"), "--port", str(port), "--object-bytes", str(OBJECT_BYTES)]
    procs.start(name, cmd + (["--upstream", upstream] if upstream else []))
    await wait_ready(procs, name, url(port) + "/_ready", session)
    return port


async def origin_counts(session: aiohttp.ClientSession, port: int) -> dict[str, int]:
    async with session.get(url(port) + "/_counts") as r:
        return await r.json()


async def metric(session: aiohttp.ClientSession, admin: int, name: str) -> float:
    """Sum of every sample of one Prometheus metric of a node."""
    async with session.get(url(admin) + "/metrics") as r:
        text = await r.text()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def cache_results(session: aiohttp.ClientSession, admins: list[int]) -> dict[str, float]:
    """`livecdn_requests_total` of these nodes, summed by cache result (hit, miss, coalesced, ...)."""
    out: dict[str, float] = {}
    for admin in admins:
        async with session.get(url(admin) + "/metrics") as r:
            text = await r.text()
        for m in re.finditer(r'^livecdn_requests_total\{[^}]*cache="(\w+)"[^}]*\} (\S+)$', text, re.M):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


# --- figure 1: coalescing -----------------------------------------------------

@dataclass(frozen=True)
class Burst:
    """One burst of identical GETs of a new object, then one more of the same, now cached."""

    origin_requests: int
    identical: bool  # every body complete and byte-identical to the origin's
    complete: int  # clients that got a 200 with the whole, right body
    slowest_s: float
    median_s: float
    hit_slowest_s: float  # the same burst once the object is cached: the client + transfer floor


class OneGet(asyncio.Protocol):
    """One HTTP/1.1 GET on its own connection, the body kept as received.

    A bare protocol rather than aiohttp's client: receiving 200 × 1 MiB at
    once, aiohttp alone costs about 0.2 s more than this on this machine
    (measured against cached objects), which would hide the figure.
    """

    def __init__(self, request: bytes, done: asyncio.Future[None]) -> None:
        self.request = request
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.status = 0
        self.length: int | None = None  # None: until the connection closes
        self.chunks: list[bytes] = []
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self._parse_head(self.head[:end].decode("latin-1"))
            data = self.head[end + 4:]
        self.chunks.append(data)
        self.received += len(data)
        if self.length is not None and self.received >= self.length:
            self.finish()

    def _parse_head(self, head: str) -> None:
        lines = head.split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                self.length = int(value)

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def intact(self, digest: bytes) -> bool:
        """A 200 with the whole body announced, and that body has this sha256."""
        if self.status != 200 or self.received != self.length:
            return False
        sha = hashlib.sha256()
        for chunk in self.chunks:
            sha.update(chunk)
        return sha.digest() == digest


async def one_get(port: int, path: str, timeout: float, source: str) -> tuple[float, OneGet]:
    """Seconds to the last body byte (or to the failure) of one GET on a new connection from `source`."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    answer = OneGet(request, loop.create_future())
    try:
        await asyncio.wait_for(loop.create_connection(lambda: answer, "127.0.0.1", port,
                                                      local_addr=(source, 0)), timeout)
        await asyncio.wait_for(answer.done, timeout)
    except (TimeoutError, OSError):
        answer.finish()
    return time.monotonic() - started, answer


async def gets(port: int, path: str, timeout: float) -> tuple[list[float], list[OneGet]]:
    """`CLIENTS` concurrent GETs of one path, one connection (and address) each: times and answers."""
    results = await asyncio.gather(*(one_get(port, path, timeout, client_address(BURST_SOURCE, i))
                                     for i in range(CLIENTS)))
    return [t for t, _ in results], [a for _, a in results]


async def burst(session: aiohttp.ClientSession, port: int, directory: str, origin_port: int, delay: float) -> Burst:
    """A burst of GETs of a new object at `port`, checked against the origin's body and count.

    Its playlist is fetched first, as a player would: an edge serves only announced names.
    """
    async with session.get(f"{url(port)}{directory}/n1.m3u8") as r:
        if r.status != 200:
            raise RuntimeError(f"playlist {directory}/n1.m3u8 at port {port}: status {r.status}")
    path = f"{directory}/seg0.ts"
    times, answers = await gets(port, path, delay + 60)
    digest = hashlib.sha256(object_body(path, OBJECT_BYTES)).digest()
    complete = sum(a.intact(digest) for a in answers)
    del answers  # 200 MiB: not held while the cached burst runs
    hit_times, _ = await gets(port, path, 60)
    counts = await origin_counts(session, origin_port)
    return Burst(counts.get(path, 0), complete == CLIENTS, complete, max(times), statistics.median(times),
                 max(hit_times))


def summarize_bursts(bursts: list[Burst]) -> dict[str, Any]:
    """Medians over runs (and the worst run's origin requests and slowest client)."""
    return {
        "runs": len(bursts),
        "origin_requests": statistics.median(b.origin_requests for b in bursts),
        "origin_requests_max": max(b.origin_requests for b in bursts),
        "identical_all_runs": all(b.identical for b in bursts),
        "complete_min": min(b.complete for b in bursts),
        "slowest_s": round(statistics.median(b.slowest_s for b in bursts), 3),
        "slowest_s_worst": round(max(b.slowest_s for b in bursts), 3),
        "median_s": round(statistics.median(b.median_s for b in bursts), 3),
        "hit_slowest_s": round(statistics.median(b.hit_slowest_s for b in bursts), 3),
        "bursts": [asdict(b) for b in bursts],
    }


def render_nginx(workdir: Path, listen: int, origin_port: int) -> Path:
    """benchmarks/nginx/cache.conf.template rendered into `workdir/nginx`; the config path."""
    prefix = workdir / "nginx"
    prefix.mkdir()
    text = (HERE / "nginx" / "cache.conf.template").read_text()
    for name, value in {"PREFIX": str(prefix), "LISTEN": f"127.0.0.1:{listen}",
                        "ORIGIN": f"127.0.0.1:{origin_port}"}.items():
        text = text.replace(f"@{name}@", value)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


async def start_nginx(procs: Processes, session: aiohttp.ClientSession, origin_port: int) -> int | None:
    """nginx caching the bench origin on a free port, or None when nginx is not installed."""
    binary = shutil.which("nginx", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")
    if binary is None:
        return None
    port = free_port()
    conf = render_nginx(procs.workdir, port, origin_port)
    procs.start("nginx", [binary, "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"])
    await wait_ready(procs, "nginx", url(port) + "/d0/nginx-ready/probe.ts", session)
    return port


async def coalescing(procs: Processes, session: aiohttp.ClientSession, plan: Plan) -> dict[str, Any]:
    """Figure 1: bursts of `CLIENTS` GETs of new objects from a slow origin, livecdn and nginx."""
    nodes = [Node.new("shields", "shield-1"), Node.new("edges", "edge-1")]
    stamp = int(time.time())
    try:
        origin = await start_bench_origin(procs, session, "slow-origin")
        config = procs.workdir / "coalescing.toml"
        write_topology(config, url(origin), nodes, {"memory_bytes": "256MiB", "disk_path": ""}, NO_PREFETCH)
        await start_nodes(procs, session, config, nodes)
        systems = {"livecdn": nodes[1].port}
        nginx = await start_nginx(procs, session, origin)
        if nginx is not None:
            systems["nginx"] = nginx
        for name, port in systems.items():  # first connections, first imports: not measured
            await burst(session, port, f"/d0/{name}-{stamp}-warmup", origin, 0)
        results: dict[str, dict[str, Any]] = {name: {} for name in systems}
        for delay in DELAYS:
            bursts: dict[str, list[Burst]] = {name: [] for name in systems}
            for run in range(plan.runs):
                for name, port in systems.items():  # interleaved, so machine noise hits both alike
                    directory = f"/d{round(delay * 1000)}/{name}-{stamp}-run{run}"
                    bursts[name].append(await burst(session, port, directory, origin, delay))
            for name in systems:
                results[name][f"{delay:g}s"] = summarize_bursts(bursts[name])
    finally:
        procs.stop(["nginx", "edge-1", "shield-1", "slow-origin"])
    return {"clients": CLIENTS, "object_bytes": OBJECT_BYTES,
            "nginx": "measured" if nginx else "not installed (apt-get install -y nginx)", "systems": results}


def print_coalescing(fig: dict[str, Any]) -> None:
    print(f"\n1. coalescing: {fig['clients']} concurrent GETs of one new {fig['object_bytes'] // MIB} MiB "
          f"segment, median of {fig['systems']['livecdn']['0.3s']['runs']} runs (nginx: {fig['nginx']})")
    print(f"  {'system':<8} {'delay':>5} {'origin req':>10} {'(max)':>5} {'identical':>11} "
          f"{'slowest s':>9} {'(worst)':>7} {'median s':>8} {'cached s':>8}")
    for name, by_delay in fig["systems"].items():
        for delay, s in by_delay.items():
            ident = f"{'yes' if s['identical_all_runs'] else 'NO'} {s['complete_min']}/{fig['clients']}"
            print(f"  {name:<8} {delay:>5} {s['origin_requests']:>10g} {s['origin_requests_max']:>5} {ident:>11} "
                  f"{s['slowest_s']:>9.3f} {s['slowest_s_worst']:>7.3f} {s['median_s']:>8.3f} "
                  f"{s['hit_slowest_s']:>8.3f}")
    print("  goal: 1 origin request, all identical, slowest <= delay + 0.1 s; "
          "cached s = slowest client of the same burst once cached (client and transfer floor)")


# --- figure 2: viewers --------------------------------------------------------

async def run_viewers(procs: Processes, edges: list[Node], seconds: float) -> list[dict[str, Any]]:
    """One viewers.py process per edge, run to completion; their results."""
    names = []
    for i, edge in enumerate(edges):
        name = f"viewers-{edge.name}"
        procs.start(name, [PY, str(HERE / "viewers.py"), url(edge.port) + "/live/master.m3u8",
                           "--viewers", str(VIEWERS_PER_EDGE), "--duration", str(seconds), "--seed", str(i + 1),
                           "--source", VIEWER_SOURCES[i]])
        names.append(name)
    deadline = time.monotonic() + seconds + 60
    while any(procs.running[n].poll() is None for n in names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"viewer processes still running {seconds + 60:.0f}s after start")
        await asyncio.sleep(0.2)
    for n in names:
        if procs.running[n].returncode != 0:
            raise RuntimeError(f"{n} failed:\n{procs.log_tail(n)}")
    results = [json.loads(procs.output(n)) for n in names]
    procs.stop(names)
    return results


def origin_figures(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, Any]:
    """Origin requests per distinct segment and playlist reloads per target duration, per rendition."""
    delta = {p: after[p] - before.get(p, 0) for p in after if after[p] > before.get(p, 0)}
    segments = {p: n for p, n in delta.items() if p.endswith(".ts")}
    playlists = {p: n for p, n in delta.items() if p.endswith("/index.m3u8")}
    durations = seconds / TARGET_DURATION
    return {
        "requests": sum(delta.values()),
        "segment_requests": sum(segments.values()),
        "distinct_segments": len(segments),
        "per_segment": round(sum(segments.values()) / len(segments), 3) if segments else None,
        "per_segment_max": max(segments.values(), default=0),
        "playlist_per_target_duration": {p.split("/")[-2]: round(n / durations, 2)
                                         for p, n in sorted(playlists.items())},
        "master_requests": sum(n for p, n in delta.items() if p.endswith("/master.m3u8")),
    }


async def wait_live(session: aiohttp.ClientSession, origin: str) -> None:
    """Wait (at the origin itself, uncounted) until every rendition lists the segments a joining player starts from."""
    master = origin + "/live/master.m3u8"
    deadline = time.monotonic() + READY_TIMEOUT
    async with session.get(master) as r:
        variants = parse_master(await r.text(), master)
    while time.monotonic() < deadline:
        listed = []
        for media in variants:
            async with session.get(media) as r:
                listed.append(len(parse_media(await r.text(), media).segments) if r.status == 200 else 0)
        if min(listed) >= LIVE_SYNC_SEGMENTS:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the origin's stream did not reach {LIVE_SYNC_SEGMENTS} segments in {READY_TIMEOUT:.0f}s")


async def viewers(procs: Processes, session: aiohttp.ClientSession, plan: Plan) -> dict[str, Any]:
    """Figure 2: 2 edges × `VIEWERS_PER_EDGE` players on the built-in synthetic live origin."""
    origin_port = free_port()
    shield = Node.new("shields", "shield-1")
    edges = [Node.new("edges", "edge-1"), Node.new("edges", "edge-2")]
    config = procs.workdir / "viewers.toml"
    builtin = {"listen": f"127.0.0.1:{origin_port}", "mode": "synthetic", "streams": ["live"],
               "target_duration": TARGET_DURATION, "window": WINDOW}
    try:
        proxy = await start_bench_origin(procs, session, "counting-proxy", url(origin_port))
        write_topology(config, url(proxy), [shield, *edges], {"memory_bytes": "256MiB", "disk_path": ""},
                       builtin=builtin)
        procs.start("origin", LIVECDN + ["origin", "--config", str(config), "--node", "origin",
                                         "--log-level", "warning"])
        await wait_ready(procs, "origin", url(origin_port) + "/healthz", session)
        await start_nodes(procs, session, config, [shield, *edges])
        await wait_live(session, url(origin_port))
        before = await origin_counts(session, proxy)
        upstream_before = await metric(session, shield.admin, "livecdn_upstream_requests_total")
        edge_before = await cache_results(session, [e.admin for e in edges])
        results = await run_viewers(procs, edges, plan.viewer_seconds)
        after = await origin_counts(session, proxy)
        upstream = await metric(session, shield.admin, "livecdn_upstream_requests_total") - upstream_before
        edge_after = await cache_results(session, [e.admin for e in edges])
    finally:
        procs.stop(["edge-2", "edge-1", "shield-1", "origin", "counting-proxy"])
    latencies = [ms for r in results for ms in r["segment_ms"]]
    origin = origin_figures(before, after, plan.viewer_seconds)
    origin["shield_upstream_requests"] = int(upstream)
    return {
        "seconds": plan.viewer_seconds, "edges": len(edges), "viewers": sum(r["viewers"] for r in results),
        "playing": sum(r["playing"] for r in results),
        "origin": origin,
        "stalls": sum(r["stalls"] for r in results),
        "stall_seconds": round(sum(r["stall_seconds"] for r in results), 3),
        "stalled_viewers": sum(r["stalled_viewers"] for r in results),
        "segments_fetched": len(latencies),
        "segment_ms": {"p50": round(percentile(latencies, 50), 1), "p99": round(percentile(latencies, 99), 1),
                       "max": round(max(latencies, default=0.0), 1)},
        "edge_answers": {c: int(n - edge_before.get(c, 0)) for c, n in edge_after.items()},
        "errors": sum(r["errors"] for r in results),
        "error_samples": [s for r in results for s in r["error_samples"]][:5],
        "client_loop_lag_ms": [r["loop_lag_ms"] for r in results],
    }


def print_viewers(fig: dict[str, Any]) -> None:
    o = fig["origin"]
    print(f"\n2. viewers: {fig['edges']} edges x {VIEWERS_PER_EDGE} viewers, {fig['seconds']:g}s, "
          f"synthetic live (target {TARGET_DURATION}s, window {WINDOW})")
    rows = [
        ("origin requests per segment", f"{o['per_segment']} (max {o['per_segment_max']}, "
                                        f"{o['segment_requests']} requests / {o['distinct_segments']} segments)",
         "1.00"),
        ("origin playlist requests per target duration",
         ", ".join(f"{r} {n}" for r, n in o["playlist_per_target_duration"].items()), ""),
        ("origin requests total (shield counter)", f"{o['requests']} ({o['shield_upstream_requests']})", ""),
        ("viewers playing", f"{fig['playing']}/{fig['viewers']}", ""),
        ("stalls (viewers, seconds)", f"{fig['stalls']} ({fig['stalled_viewers']}, {fig['stall_seconds']}s)", "0"),
        ("segment latency p50/p99/max ms",
         f"{fig['segment_ms']['p50']} / {fig['segment_ms']['p99']} / {fig['segment_ms']['max']}", ""),
        ("edge answers", ", ".join(f"{c} {n}" for c, n in fig["edge_answers"].items()), ""),
        ("viewer request errors", str(fig["errors"]), "0"),
        ("client event-loop lag p99/max ms",
         ", ".join(f"{lag['p99']}/{lag['max']}" for lag in fig["client_loop_lag_ms"]), ""),
    ]
    for label, value, goal in rows:
        print(f"  {label:<46} {value}" + (f"   goal {goal}" if goal else ""))


# --- figure 3: memory ---------------------------------------------------------

def rss_and_peak(pid: int) -> tuple[int, int]:
    """(RSS, peak RSS) of a process in bytes."""
    rss = psutil.Process(pid).memory_info().rss
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return rss, int(m.group(1)) * 1024 if m else rss


async def fill_edge(base: str, directory: str, count: int) -> int:
    """GET `count` distinct objects through the edge, `MEMORY_CONCURRENCY` at a time; bytes received.

    The playlist announcing them is fetched first (an edge serves only announced
    names); each worker is a client of its own, from its own address.
    """
    received = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal received
        while not queue.empty():
            i = queue.get_nowait()
            async with session.get(f"{base}{directory}/seg{i}.ts") as r:
                body = await r.read()
                if r.status != 200 or len(body) != OBJECT_BYTES:
                    raise RuntimeError(f"object {i}: status {r.status}, {len(body)} bytes: {body[:100]!r}")
                received += len(body)

    timeout = aiohttp.ClientTimeout(total=60)
    sessions = [aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(
        local_addr=(client_address(MEMORY_SOURCE, w), 0))) for w in range(MEMORY_CONCURRENCY)]
    try:
        async with sessions[0].get(f"{base}{directory}/n{count}.m3u8") as r:
            if r.status != 200:
                raise RuntimeError(f"playlist {directory}/n{count}.m3u8: status {r.status}")
        await asyncio.gather(*(worker(s) for s in sessions))
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return received


async def memory(procs: Processes, session: aiohttp.ClientSession) -> dict[str, Any]:
    """Figure 3: an edge's RSS after twice its memory budget went through it."""
    edge = Node.new("edges", "edge-1")
    config = procs.workdir / "memory.toml"
    try:
        origin = await start_bench_origin(procs, session, "object-origin")
        write_topology(config, url(origin), [edge], {"memory_bytes": MEMORY_BUDGET, "disk_path": ""}, NO_PREFETCH)
        await start_nodes(procs, session, config, [edge])
        pid = procs.running[edge.name].pid
        rss_start, _ = rss_and_peak(pid)
        written = await fill_edge(url(edge.port), f"/d0/mem-{int(time.time())}", 2 * MEMORY_BUDGET // OBJECT_BYTES)
        await asyncio.sleep(1.0)
        rss_after, peak = rss_and_peak(pid)
        async with session.get(url(edge.admin) + "/healthz") as r:
            tier = (await r.json())["memory_bytes"]
    finally:
        procs.stop([edge.name, "object-origin"])
    limit = MEMORY_BUDGET + MEMORY_SLACK
    return {"budget_bytes": MEMORY_BUDGET, "written_bytes": written, "memory_tier_bytes": tier,
            "rss_start_bytes": rss_start, "rss_after_bytes": rss_after, "rss_peak_bytes": peak,
            "limit_bytes": limit, "under_limit": rss_after <= limit}


def print_memory(fig: dict[str, Any]) -> None:
    def mib(n: int) -> str:
        return f"{n / MIB:.1f} MiB"

    print(f"\n3. memory: one edge, memory tier {mib(fig['budget_bytes'])}, disk off, "
          f"{mib(fig['written_bytes'])} of distinct 1 MiB objects written through it")
    print(f"  RSS after start     {mib(fig['rss_start_bytes'])}")
    print(f"  RSS after writing   {mib(fig['rss_after_bytes'])}   (peak {mib(fig['rss_peak_bytes'])}, "
          f"memory tier holds {mib(fig['memory_tier_bytes'])})")
    verdict = "under" if fig["under_limit"] else "OVER"
    print(f"  goal: RSS under budget + 100 MiB = {mib(fig['limit_bytes'])}: {verdict}")


# --- main ---------------------------------------------------------------------

def _compact(report: dict[str, Any]) -> dict[str, Any]:
    """The report without per-burst details, for the final line."""
    out = json.loads(json.dumps(report))
    for by_delay in out["coalescing"]["systems"].values():
        for s in by_delay.values():
            s.pop("bursts")
    return out


async def run_all(procs: Processes, plan: Plan, quick: bool) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        report: dict[str, Any] = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                                  "quick": quick, "cpus": os.cpu_count()}
        report["coalescing"] = await coalescing(procs, session, plan)
        print_coalescing(report["coalescing"])
        report["viewers"] = await viewers(procs, session, plan)
        print_viewers(report["viewers"])
        report["memory"] = await memory(procs, session)
        print_memory(report["memory"])
    return report


def _terminate(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    p = argparse.ArgumentParser(description="livecdn data-path figures: coalescing, viewers, memory.")
    p.add_argument("--quick", action="store_true", help="fewer runs and a 20 s viewer test (under ~2 min)")
    args = p.parse_args()
    plan = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="livecdn-datapath-"))
    workdir.chmod(0o755)  # nginx workers run as an unprivileged user
    procs = Processes(workdir)
    try:
        report = asyncio.run(run_all(procs, plan, args.quick))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    save("datapath", report, '-quick' if args.quick else '')
    print(json.dumps(_compact(report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
