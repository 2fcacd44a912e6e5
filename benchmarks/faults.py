"""Faults: what live viewers see when a shield or the origin hangs, or the origin errs (issue 11's figures).

    .venv/bin/python benchmarks/faults.py [--quick] [--only shield,origin,storm,nginx] [--head | --tree DIR]

Real processes on loopback: the built-in synthetic origin (2 s segments) →
tools/errorproxy.py (counts requests per path; answers 500 for a window when
told) → two shields → one edge, and 60 viewers (`--quick`: 30) through the
edge (viewers.py's players, run in this process). Each figure starts its own
CDN, plays a warm-up, injects its fault for a fixed time (30 s; `--quick`
10 s), plays on after it, and stops by itself:

- shield: one of the two shield processes SIGSTOPped (a hung host: its
  kernel still accepts connections), then SIGCONT. Detection = first moment
  the edge's `/healthz` reports it `ejected`; stalls and viewer errors after
  that moment (goal 0 and 0; detection ≤ 2 s).
- origin: the origin process SIGSTOPped. The slowest playlist answer asked
  during the hang (goal ≤ ½ target duration + 0.2 s) and the 5xx count while
  the stale copy is in bound (asked within `stale_if_error` of the hang; goal 0).
- storm: the proxy answers 500 to everything for 10 s. Origin requests per
  key per second during the storm (goal ≤ 1), beside the same-length window before.
- nginx: the origin figure again with nginx `proxy_cache` +
  `proxy_cache_use_stale updating error timeout` + `proxy_cache_background_update
  on` (benchmarks/nginx/stale.conf.template) in place of shields and edge.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from lib.figures import Figure, main
from lib.nginx import start_nginx
from lib.ports import free_port, url
from lib.procs import Processes, signal_group
from lib.recording import Recorder, playing, viewer_window
from lib.topology import (
    Node,
    origin_counts,
    start_builtin_origin,
    start_counting,
    start_nodes,
    wait_live,
    write_topology,
)
from viewers import percentile

__all__ = ["FIGURES"]

TARGET_DURATION = 2.0
WINDOW = 6
STALE_IF_ERROR = 30.0  # the edge's and shields' `[cache] stale_if_error` (the default, written out)
PLAYLIST_GOAL = TARGET_DURATION / 2 + 0.2  # the bound on a playlist answer while the origin hangs
DETECTION_GOAL = 2.0
HEALTH_POLL = 0.05  # how often the edge's /healthz is read while a shield hangs: the detection's resolution
STORM_SECONDS = 10.0  # the storm, also under --quick (it is short already)
SOURCE = "127.101"  # viewers connect from 127.101.0.1, ...
STOPPED = ("edge-1", "nginx", "shield-1", "shield-2", "origin", "proxy")  # in the order they are stopped


@dataclass(frozen=True)
class Plan:
    viewers: int
    warmup: float  # seconds of play before the fault
    fault: float  # seconds the fault lasts
    after: float  # seconds of play after it


FULL = Plan(60, 10.0, 30.0, 10.0)
QUICK = Plan(30, 8.0, 10.0, 6.0)


@dataclass(frozen=True)
class Cdn:
    proxy: int  # tools/errorproxy.py, where every tier in front gets the origin
    player: int  # where viewers connect: the edge, or nginx
    shields: tuple[Node, ...]
    edge: Node | None


@asynccontextmanager
async def cdn(procs: Processes, session: aiohttp.ClientSession, name: str, nginx: bool = False) -> AsyncIterator[Cdn]:
    """Origin → error proxy → two shields → edge (or → nginx), started and ready; stopped on the way out."""
    origin = free_port()
    try:
        proxy = await start_counting(procs, session, "proxy", "errorproxy", ["--upstream", url(origin)])
        shields = (Node.new("shields", "shield-1"), Node.new("shields", "shield-2"))
        edge = Node.new("edges", "edge-1")
        config = procs.workdir / f"{name}.toml"
        builtin = {"listen": f"127.0.0.1:{origin}", "mode": "synthetic", "streams": ["live"],
                   "target_duration": TARGET_DURATION, "window": WINDOW}
        # A topology lists an edge even when nginx plays it: the origin reads the same file.
        write_topology(config, url(proxy), [*shields, edge],
                       {"memory_bytes": "256MiB", "disk_path": "", "stale_if_error": STALE_IF_ERROR},
                       builtin=builtin)
        await start_builtin_origin(procs, session, config, origin)
        if nginx:
            player = await start_nginx(procs, session, "nginx", "stale.conf.template", proxy, "/live/master.m3u8")
            started = Cdn(proxy, player, (), None)
        else:
            await start_nodes(procs, session, config, [*shields, edge])
            started = Cdn(proxy, edge.port, shields, edge)
        await wait_live(session, url(origin))
        yield started
    finally:
        _resume_all(procs)
        procs.stop([n for n in STOPPED if n in procs.running])


def _resume_all(procs: Processes) -> None:
    """SIGCONT every child: one left stopped by an interrupted fault would not see its SIGTERM."""
    for proc in procs.running.values():
        signal_group(proc, signal.SIGCONT)


@asynccontextmanager
async def stopped(procs: Processes, name: str) -> AsyncIterator[float]:
    """`name`'s process group SIGSTOPped for the block (a hung host), then SIGCONT; the moment it stopped."""
    proc = procs.running[name]
    signal_group(proc, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        signal_group(proc, signal.SIGCONT)


Fault = Callable[[Cdn, Recorder], Awaitable[dict[str, Any]]]  # runs the fault window; what it measured


async def play(procs: Processes, session: aiohttp.ClientSession, name: str, quick: bool, fault: Fault,
               nginx: bool = False) -> tuple[dict[str, Any], Recorder, float]:
    """A CDN, the viewers through it: warm-up, `fault` (which sleeps its window), after; (fault's, record, start)."""
    plan = QUICK if quick else FULL
    load = os.getloadavg()
    async with cdn(procs, session, name, nginx) as c, \
            playing(url(c.player) + "/live/master.m3u8", plan.viewers, SOURCE, 1) as rec:
        t0 = time.monotonic()
        await asyncio.sleep(plan.warmup)
        measured = await fault(c, rec)
        await asyncio.sleep(plan.after)
        end = time.monotonic()
    measured.update(viewers=plan.viewers, fault_seconds=plan.fault, load_before=[round(x, 2) for x in load],
                    load_after=[round(x, 2) for x in os.getloadavg()],
                    before=viewer_window(rec, t0 + 2.0, t0 + plan.warmup),  # the ramp's own first loads left out
                    whole=viewer_window(rec, t0, end), viewer_error_samples=rec.result.get("error_samples", []))
    return measured, rec, t0


async def healthz(session: aiohttp.ClientSession, admin: int) -> dict[str, Any]:
    async with session.get(url(admin) + "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
        data: dict[str, Any] = await r.json(content_type=None)
        return data


async def hung_shield(procs: Processes, session: aiohttp.ClientSession, quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL

    async def fault(c: Cdn, rec: Recorder) -> dict[str, Any]:
        assert c.edge is not None
        hung = c.shields[0]
        upstream = url(hung.port)
        detected: float | None = None
        async with stopped(procs, hung.name) as since:
            end = since + plan.fault
            while time.monotonic() < end:
                if detected is None:
                    state = (await healthz(session, c.edge.admin))["upstreams"].get(upstream, {})
                    if state.get("state") == "ejected":
                        detected = time.monotonic()
                await asyncio.sleep(HEALTH_POLL)
        return {"since": since, "detected": detected, "resumed": time.monotonic(), "shield": hung.name}

    m, rec, _ = await play(procs, session, "shield", quick, fault)
    since, detected, resumed = m.pop("since"), m.pop("detected"), m.pop("resumed")
    end = resumed + plan.after
    m["detection_s"] = None if detected is None else round(detected - since, 3)
    m["until_detection"] = viewer_window(rec, since, detected or resumed)
    m["after_detection"] = viewer_window(rec, detected or resumed, end)  # the hang's rest and the recovery
    m["during_hang"] = viewer_window(rec, since, resumed)
    m["slowest_answer_during_hang_s"] = round(max((r.end - r.start for r in rec.requests if since <= r.start < resumed),
                                                  default=0.0), 3)
    m["goals"] = {"detection_s": DETECTION_GOAL, "stalls_after_detection": 0, "errors_after_detection": 0}
    return m


def playlist_answers(rec: Recorder, t0: float, t1: float, bound: float) -> dict[str, Any]:
    """The viewers' playlist requests asked between t0 and t1: slowest answer, 5xx (within `bound` s of t0), X-Cache."""
    asked = [r for r in rec.requests if r.url.endswith(".m3u8") and t0 <= r.start < t1]
    seconds = [r.end - r.start for r in asked]
    return {
        "playlist_requests": len(asked),
        "slowest_s": round(max(seconds, default=0.0), 3),
        "p99_s": round(percentile(seconds, 99), 3),
        "p50_s": round(percentile(seconds, 50), 3),
        "over_goal": sum(s > PLAYLIST_GOAL for s in seconds),
        "5xx": sum(r.status >= 500 for r in asked),
        "5xx_in_bound": sum(r.status >= 500 and r.start < t0 + bound for r in asked),
        "failed": sum(r.status == 0 for r in asked),
        "statuses": dict(sorted(Counter(str(r.status) for r in asked).items())),
        "x_cache": dict(sorted(Counter(r.x_cache or "-" for r in asked).items())),
        "slowest_s_by_x_cache": {xc: round(max(r.end - r.start for r in asked if (r.x_cache or "-") == xc), 3)
                                 for xc in sorted({r.x_cache or "-" for r in asked})},
    }


async def hung_origin_run(procs: Processes, session: aiohttp.ClientSession, quick: bool,
                          nginx: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL

    async def fault(c: Cdn, rec: Recorder) -> dict[str, Any]:
        async with stopped(procs, "origin") as since:
            await asyncio.sleep(plan.fault)
        return {"since": since, "resumed": time.monotonic()}

    m, rec, _ = await play(procs, session, "nginx" if nginx else "origin", quick, fault, nginx=nginx)
    since, resumed = m.pop("since"), m.pop("resumed")
    m["during_hang"] = playlist_answers(rec, since, resumed, STALE_IF_ERROR)
    m["after_resume"] = playlist_answers(rec, resumed, resumed + plan.after, 0.0)
    m["viewers_during_hang"] = viewer_window(rec, since, resumed)
    m["goals"] = {"slowest_playlist_s": PLAYLIST_GOAL, "5xx_in_bound": 0, "stale_if_error_s": STALE_IF_ERROR}
    return m


async def hung_origin(procs: Processes, session: aiohttp.ClientSession, quick: bool) -> dict[str, Any]:
    return await hung_origin_run(procs, session, quick, nginx=False)


async def hung_origin_nginx(procs: Processes, session: aiohttp.ClientSession, quick: bool) -> dict[str, Any]:
    return await hung_origin_run(procs, session, quick, nginx=True)


def per_key(a: dict[str, int], b: dict[str, int], seconds: float) -> dict[str, Any]:
    """Origin requests per path between two /_counts snapshots, as per-key rates."""
    delta = {p: n - a.get(p, 0) for p, n in b.items() if n > a.get(p, 0)}
    worst = max(delta, key=lambda p: delta[p], default="")
    return {"seconds": round(seconds, 2), "requests": sum(delta.values()), "keys": len(delta),
            "max_per_key_per_s": round(delta.get(worst, 0) / seconds, 2) if seconds > 0 else None,
            "worst_key": worst, "per_key": dict(sorted(delta.items()))}


async def storm(procs: Processes, session: aiohttp.ClientSession, quick: bool) -> dict[str, Any]:
    async def fault(c: Cdn, rec: Recorder) -> dict[str, Any]:
        a = await origin_counts(session, c.proxy)
        await asyncio.sleep(STORM_SECONDS)  # the window before, as long as the storm
        b = await origin_counts(session, c.proxy)
        since = time.monotonic()
        async with session.get(url(c.proxy) + f"/_fail?seconds={STORM_SECONDS}") as r:
            r.raise_for_status()
        await asyncio.sleep(STORM_SECONDS)
        d = await origin_counts(session, c.proxy)
        ended = time.monotonic()
        return {"since": since, "ended": ended, "before_storm": per_key(a, b, STORM_SECONDS),
                "storm": per_key(b, d, ended - since)}

    m, rec, _ = await play(procs, session, "storm", quick, fault)
    since, ended = m.pop("since"), m.pop("ended")
    m["per_key"] = {"before_storm": m["before_storm"].pop("per_key"), "storm": m["storm"].pop("per_key")}
    m["viewers_during_storm"] = viewer_window(rec, since, ended)
    m["viewer_5xx_during_storm"] = sum(r.status >= 500 and since <= r.end < ended for r in rec.requests)
    m["goals"] = {"max_per_key_per_s": 1.0}
    return m


def _w(w: dict[str, Any]) -> str:
    return f"stalls {w['stalls']} ({w['stall_seconds']} s), errors {w['errors']}"


def show_shield(f: dict[str, Any]) -> None:
    det = "never" if f["detection_s"] is None else f"{f['detection_s']:.2f} s"
    print(f"1. hung shield {f['fault_seconds']:.0f} s, {f['viewers']} viewers: detection {det} "
          f"(goal ≤ {DETECTION_GOAL:g}); after detection {_w(f['after_detection'])} (goal 0, 0); "
          f"before it {_w(f['until_detection'])}; slowest viewer answer during the hang "
          f"{f['slowest_answer_during_hang_s']:.3f} s", flush=True)


def _hang_line(label: str, f: dict[str, Any]) -> str:
    h = f["during_hang"]
    return (f"{label} {f['fault_seconds']:.0f} s, {f['viewers']} viewers: slowest playlist answer "
            f"{h['slowest_s']:.3f} s (goal ≤ {PLAYLIST_GOAL:g}; p99 {h['p99_s']:.3f}, {h['over_goal']} of "
            f"{h['playlist_requests']} over), 5xx {h['5xx']} ({h['5xx_in_bound']} in bound, goal 0), "
            f"failed {h['failed']}; X-Cache {h['x_cache']}, slowest by X-Cache {h['slowest_s_by_x_cache']}")


def show_origin(f: dict[str, Any]) -> None:
    print("2. " + _hang_line("hung origin, livecdn", f), flush=True)


def show_nginx(f: dict[str, Any]) -> None:
    print("4. " + _hang_line("hung origin, nginx use_stale", f), flush=True)


def show_storm(f: dict[str, Any]) -> None:
    s, b = f["storm"], f["before_storm"]
    print(f"3. origin 500 storm {s['seconds']:.0f} s, {f['viewers']} viewers: origin requests per key per s "
          f"max {s['max_per_key_per_s']} ({s['worst_key']}; goal ≤ 1), {s['requests']} over {s['keys']} keys "
          f"(before: max {b['max_per_key_per_s']}, {b['requests']} over {b['keys']}); viewer 5xx "
          f"{f['viewer_5xx_during_storm']}, {_w(f['viewers_during_storm'])}", flush=True)


FIGURES = [Figure("shield", hung_shield, show_shield, details=()),
           Figure("origin", hung_origin, show_origin, details=()),
           Figure("storm", storm, show_storm, details=("per_key",)),
           Figure("nginx", hung_origin_nginx, show_nginx, details=())]

if __name__ == "__main__":
    sys.exit(main("faults", FIGURES, __doc__.splitlines()[0]))
