"""Guard figure 1: the edge under a random-name attack, beside 100 viewers.

    .venv/bin/python benchmarks/guard_attack.py [--quick] [--head | --tree DIR]   # or guard.py --only attack

100 simulated viewers (viewers.py, from 127.101.0.x) play the built-in
synthetic live stream through one edge while an attacker process
(tools/attacker.py, from 127.0.0.9, 64 keep-alive connections, one request in
flight each) sends 100 000 (`--quick`: 20 000) requests for random names:
under the real stream (`/live/720p/<random>.ts`), elsewhere
(`/<random>/<random>.ts`) and random playlists (`/<random>/<random>.m3u8`).
Windows: before (no attack), attack, after (no attack, exactly as long as the
attack: the baseline the attack's upstream cost is measured against). Once
with the default limits, once with `[limits] miss_rate = 0` (the guard alone).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from lib.figures import Figure, main
from lib.guardcdn import CDN_PROCESSES, counters_window, snapshot, start_cdn, write_config
from lib.ports import url
from lib.procs import Processes
from lib.recording import playing, viewer_window
from lib.topology import start_bench_origin
from tools.attacker import CONNECTIONS

__all__ = ["FIGURE"]

ATTACK_VIEWERS = 100
VIEWER_SOURCE = "127.101"  # viewers connect from 127.101.0.1, .2, ...
PROBE_SOURCE = "127.0.0.20"
PROBE_STREAMS = 6  # extra streams of the origin nobody watches: a legitimate first request during the attack
PROBE_SPACING = 0.4  # seconds between two probes' first requests
PROBE_TIMEOUT = 10.0
ATTACKER_STARTUP = 0.5  # seconds for the attacker process to import and connect before the probes start
ATTACKER_GRACE = 30.0  # beyond its own time limit, before the attacker is taken for hung


@dataclass(frozen=True)
class Plan:
    attack_requests: int
    attack_runs: int  # per limit setting
    warmup: float  # viewers play this long before the first window
    before: float  # the no-attack window before the attack
    attack_timeout: float  # the attacker stops sending after this long, whatever is left


FULL = Plan(100_000, 3, 8.0, 20.0, 300.0)
QUICK = Plan(20_000, 1, 8.0, 10.0, 120.0)
ATTACK_CASES = (("default limits", None), ("miss_rate = 0 (guard alone)", {"miss_rate": 0}))


async def probe_new_streams(session: aiohttp.ClientSession, base: str, names: list[str],
                            spacing: float, attacking: Callable[[], bool]) -> list[int]:
    """A legitimate player's first request for streams the edge never saw, one every `spacing` s
    while `attacking()` is true."""
    statuses = []
    for name in names:
        if not attacking():
            break
        try:
            async with session.get(f"{base}/{name}/master.m3u8") as r:
                await r.read()
                statuses.append(r.status)
        except (TimeoutError, aiohttp.ClientError):
            statuses.append(0)
        await asyncio.sleep(spacing)
    return statuses


async def attack_run(procs: Processes, session: aiohttp.ClientSession, plan: Plan, case: str,
                     limits: dict[str, Any] | None, run: int) -> dict[str, Any]:
    streams = ["live"] + [f"probe{i}" for i in range(PROBE_STREAMS)]

    def config(origin_port: int, proxy: int, shield: Any, edge: Any) -> Path:
        path = procs.workdir / f"attack-{case}-{run}.toml"
        write_config(path, origin_port, proxy, shield, edge, streams=streams, limits=limits)
        return path

    async def counting_proxy(upstream: str) -> int:
        return await start_bench_origin(procs, session, "proxy", upstream=upstream)

    try:
        proxy, shield, edge = await start_cdn(procs, session, config, counting_proxy)
        base = url(edge.port)
        probe = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(PROBE_SOURCE, 0)),
                                      timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT))
        try:
            async with playing(base + "/live/master.m3u8", ATTACK_VIEWERS, VIEWER_SOURCE, run + 1) as rec:
                await asyncio.sleep(plan.warmup)
                s0 = await snapshot(session, proxy, edge, shield)
                await asyncio.sleep(plan.before)
                s1 = await snapshot(session, proxy, edge, shield)
                attacker = procs.start_tool("attacker", "attacker", [
                    "--port", str(edge.port), "--connections", str(CONNECTIONS),
                    "--requests", str(plan.attack_requests), "--seed", str(run + 1),
                    "--max-seconds", str(plan.attack_timeout)])
                await asyncio.sleep(ATTACKER_STARTUP)
                probing = asyncio.create_task(probe_new_streams(probe, base, streams[1:], PROBE_SPACING,
                                                                lambda: attacker.poll() is None))
                deadline = time.monotonic() + plan.attack_timeout + ATTACKER_GRACE
                while attacker.poll() is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError("attacker still running past its own time limit")
                    await asyncio.sleep(0.1)
                s2 = await snapshot(session, proxy, edge, shield)
                probes = await probing
                if attacker.returncode != 0:
                    raise RuntimeError(f"attacker failed:\n{procs.log_tail('attacker')}")
                result = json.loads(procs.output("attacker"))
                procs.stop(["attacker"])
                await asyncio.sleep(max(0.0, s2.t + (s2.t - s1.t) - time.monotonic()))
                s3 = await snapshot(session, proxy, edge, shield)
        finally:
            await probe.close()
    finally:
        procs.stop(["attacker", *CDN_PROCESSES])
    windows = {
        "before": {**counters_window(s0, s1), "viewers": viewer_window(rec, s0.t, s1.t)},
        "attack": {**counters_window(s1, s2), "viewers": viewer_window(rec, s1.t, s2.t)},
        "after": {**counters_window(s2, s3), "viewers": viewer_window(rec, s2.t, s3.t)},
    }
    a, b = windows["attack"], windows["after"]
    # The probes' few legitimate fetches (one per tier each) are not the attack's.
    caused = {k: (a[k] - a["origin_probe_requests"]) - (b[k] - b["origin_probe_requests"])
              for k in ("origin_requests", "shield_upstream", "edge_upstream")}
    caused["origin_attack_named"] = a["origin_attack_named"]
    return {"case": case, "run": run, "attacker": result, "windows": windows, "caused": caused,
            "probe_new_stream_statuses": probes,
            "viewers_playing": rec.result["playing"],
            "viewer_errors_total": rec.result["errors"],
            "viewer_error_samples": rec.result["error_samples"]}


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


def summarize_attack(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of the figures of one limit setting."""
    def med(get: Any) -> float:
        return _median([get(r) for r in runs])

    def med_map(get: Any) -> dict[str, float]:
        keys = sorted({k for r in runs for k in get(r)})
        return {k: med(lambda r, k=k: get(r).get(k, 0)) for k in keys}

    out: dict[str, Any] = {
        "runs": len(runs),
        "attack_requests": med(lambda r: r["attacker"]["answered"]),
        "attack_seconds": med(lambda r: r["attacker"]["seconds"]),
        "attack_per_second": med(lambda r: r["attacker"]["per_second"]),
        "attack_status": med_map(lambda r: r["attacker"]["status"]),
        "attack_latency_ms_p99": med(lambda r: r["attacker"]["latency_ms"]["p99"]),
        "caused": {k: med(lambda r, k=k: r["caused"][k]) for k in runs[0]["caused"]},
        "probe_new_stream_statuses": [r["probe_new_stream_statuses"] for r in runs],
        "viewers_playing": min(r["viewers_playing"] for r in runs),
        "windows": {},
    }
    for w in ("before", "attack", "after"):
        ws = [r["windows"][w] for r in runs]
        out["windows"][w] = {
            "seconds": _median([x["seconds"] for x in ws]),
            "origin_requests": _median([x["origin_requests"] for x in ws]),
            "origin_attack_named": _median([x["origin_attack_named"] for x in ws]),
            "origin_playlist_requests": _median([x["origin_playlist_requests"] for x in ws]),
            "origin_segment_requests": _median([x["origin_segment_requests"] for x in ws]),
            "shield_upstream": _median([x["shield_upstream"] for x in ws]),
            "edge_upstream": _median([x["edge_upstream"] for x in ws]),
            "guard_rejections": {k: _median([x["guard_rejections"].get(k, 0) for x in ws])
                                 for k in sorted({k for x in ws for k in x["guard_rejections"]})},
            "guard_refreshes": _median([x["guard_refreshes"] for x in ws]),
            "rate_limited": {k: _median([x["rate_limited"].get(k, 0) for x in ws])
                             for k in sorted({k for x in ws for k in x["rate_limited"]})},
            "viewer_segments": _median([x["viewers"]["segments"] for x in ws]),
            "viewer_p50_ms": _median([x["viewers"]["segment_ms"]["p50"] for x in ws]),
            "viewer_p99_ms": _median([x["viewers"]["segment_ms"]["p99"] for x in ws]),
            "viewer_max_ms": _median([x["viewers"]["segment_ms"]["max"] for x in ws]),
            "stalls": _median([x["viewers"]["stalls"] for x in ws]),
            "stalls_worst_run": max(x["viewers"]["stalls"] for x in ws),
            "stall_seconds": _median([x["viewers"]["stall_seconds"] for x in ws]),
            "viewer_errors": _median([x["viewers"]["errors"] for x in ws]),
            "loop_lag_ms_p99": _median([x["viewers"]["loop_lag_ms_p99"] for x in ws]),
        }
    return out


async def attack_figure(procs: Processes, session: aiohttp.ClientSession, quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in ATTACK_CASES}
    for run in range(plan.attack_runs):
        for i, (name, limits) in enumerate(ATTACK_CASES):  # interleaved: noise hits both alike
            r = await attack_run(procs, session, plan, f"c{i}", limits, run)
            runs[name].append(r)
            a = r["attacker"]
            print(f"  [attack {name}, run {run + 1}/{plan.attack_runs}: {a['answered']} answered in "
                  f"{a['seconds']:.1f}s, caused origin {r['caused']['origin_requests']}, "
                  f"stalls {r['windows']['attack']['viewers']['stalls']}]", flush=True)
    return {"viewers": ATTACK_VIEWERS, "requests": plan.attack_requests, "connections": CONNECTIONS,
            "cases": {name: summarize_attack(rs) for name, rs in runs.items()},
            "runs": {name: rs for name, rs in runs.items()}}


def print_attack(fig: dict[str, Any]) -> None:
    print(f"\n1. attack: {fig['viewers']} viewers + {fig['requests']} random-name requests from one client "
          f"({fig['connections']} keep-alive connections), median of "
          f"{next(iter(fig['cases'].values()))['runs']} run(s)")
    for name, c in fig["cases"].items():
        w = c["windows"]
        b, a, f = w["before"], w["attack"], w["after"]
        print(f"  -- {name}")
        print(f"  {'attack requests answered / seconds / per s':<46} {c['attack_requests']:g} / "
              f"{c['attack_seconds']:g} s / {c['attack_per_second']:g}")
        print(f"  {'attack status mix':<46} " + ", ".join(f"{k}: {v:g}" for k, v in c["attack_status"].items()))
        print(f"  {'window':<46} {'before':>10} {'attack':>10} {'after':>10}")
        rows = [("seconds", "seconds"), ("origin requests", "origin_requests"),
                ("  of which attack-named paths", "origin_attack_named"),
                ("  viewer playlists / segments", None),
                ("shield upstream requests", "shield_upstream"), ("edge upstream requests", "edge_upstream"),
                ("guard refreshes", "guard_refreshes"),
                ("viewer segments fetched", "viewer_segments"), ("viewer segment p50 ms", "viewer_p50_ms"),
                ("viewer segment p99 ms", "viewer_p99_ms"), ("viewer segment max ms", "viewer_max_ms"),
                ("viewer stalls (worst run)", "stalls"), ("viewer request errors", "viewer_errors"),
                ("viewer event-loop lag p99 ms", "loop_lag_ms_p99")]
        for label, key in rows:
            if key is None:
                vals = [f"{x['origin_playlist_requests']:g}/{x['origin_segment_requests']:g}" for x in (b, a, f)]
            elif key == "stalls":
                vals = [f"{x['stalls']:g} ({x['stalls_worst_run']})" for x in (b, a, f)]
            else:
                vals = [f"{x[key]:g}" for x in (b, a, f)]
            print(f"  {label:<46} {vals[0]:>10} {vals[1]:>10} {vals[2]:>10}")
        for label, key in (("guard rejections by reason", "guard_rejections"), ("rate limited (429) by limit",
                                                                                "rate_limited")):
            keys = sorted(set(b[key]) | set(a[key]) | set(f[key]))
            for k in keys or ["-"]:
                vals = [f"{x[key].get(k, 0):g}" for x in (b, a, f)]
                print(f"  {(label + ': ' + k):<46} {vals[0]:>10} {vals[1]:>10} {vals[2]:>10}")
        cz = c["caused"]
        print(f"  {'CAUSED by the attack (attack - after window)':<46} origin {cz['origin_requests']:g}, "
              f"shield upstream {cz['shield_upstream']:g}, edge upstream {cz['edge_upstream']:g}; "
              f"attack-named paths at origin {cz['origin_attack_named']:g}")
        print(f"  {'legit first request of a new stream in attack':<46} statuses {c['probe_new_stream_statuses']}")
    print("  goal: viewer stalls 0; 'after' = no-attack baseline of the attack's length, same viewers")


FIGURE = Figure("attack", attack_figure, print_attack)

if __name__ == "__main__":
    sys.exit(main("guard", [FIGURE], __doc__.splitlines()[0], whole=False))
