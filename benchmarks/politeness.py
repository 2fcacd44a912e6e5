"""Origin politeness: origin requests per minute for 1, 10 and 100 live streams watched at one edge.

    .venv/bin/python benchmarks/politeness.py [--seconds 30] [--players 400] [--workers 1] [--edge-workers 1]
                                              [--no-shield] [--origin-ms 50] [--streams 1,10,100] [--tree DIR]

The built-in synthetic origin (target duration 2 s: a live media playlist
lives 1 s) behind a counting pass-through that holds each playlist answer
`--origin-ms` (tools/delayproxy.py: an origin a network trip away), one shield
with `--workers` processes, one edge with `--edge-workers`, the edge's
prefetch on as shipped (`--no-shield`: the edge alone, asking the origin
itself). For each stream count, one audience of `--players` simulated players
(spread evenly, at least one per rendition of every stream) polls the edge (its media playlist every half target
duration at a phase of its own, then the newest segment) for `--seconds`.
Printed per stream count: origin playlist requests per minute, per rendition
per minute beside the one-per-expiry ideal (60 / (target / 2)), the worst
rendition's requests per expiry, and segment requests per minute (one per new
segment per rendition is ideal). `--tree` runs the nodes from another source
tree (a before/after pair is two runs). Each run takes about `--seconds` plus
15 s of start-up per stream count.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from lib.ports import free_port, url
from lib.procs import Processes, workspace
from lib.report import header, save
from lib.topology import Node, origin_counts, start_builtin_origin, start_counting, start_nodes, write_topology
from lib.trees import revision, source_tree

TARGET = 2.0  # the origin's target duration: playlists expire every TARGET / 2
RENDITIONS = [{"name": "hi", "bandwidth": 1_000_000, "width": 640, "height": 360},
              {"name": "lo", "bandwidth": 300_000, "width": 320, "height": 180}]
SEGMENT_BYTES = 16 << 10  # small: the figure is requests, not bytes
STREAM_COUNTS = (1, 10, 100)
# Every player comes from this one process: no limits meant for one viewer's address, no guard budget
# for streams it has not seen (the guard learns them as the players' first requests pass).
OPEN_GUARD = {"unknown_rate": 0, "unknown_client_rate": 0}
NO_LIMITS = {"miss_rate": 0, "connections_per_client": 0}
FIRST_SEGMENT_WAIT = 30.0  # seconds for the origin to publish every stream's first segment


async def player(session: aiohttp.ClientSession, edge: str, media: str, until: float, errors: list[str]) -> None:
    """Reload `media` every half target duration (own phase, ±20 %), fetch its newest segment."""
    await asyncio.sleep(random.uniform(0, TARGET / 2))
    while time.monotonic() < until:
        try:
            async with session.get(edge + media) as r:
                text = await r.text()
            names = [line for line in text.splitlines() if line and not line.startswith("#")]
            if r.status == 200 and names:
                async with session.get(edge + media.rsplit("/", 1)[0] + "/" + names[-1]) as r:
                    await r.read()
            else:
                errors.append(f"{media}: {r.status}")
        except (aiohttp.ClientError, TimeoutError) as e:
            errors.append(f"{media}: {e!r}"[:200])
        await asyncio.sleep(TARGET / 2 * random.uniform(0.8, 1.2))


async def wait_published(session: aiohttp.ClientSession, origin: str, medias: list[str]) -> None:
    """Until every stream's playlists answer 200 at the origin itself (uncounted), so no 404 is cached."""
    deadline = time.monotonic() + FIRST_SEGMENT_WAIT
    for media in medias:
        while True:
            async with session.get(origin + media) as r:
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{media} was not published in {FIRST_SEGMENT_WAIT:.0f}s")
            await asyncio.sleep(0.2)


async def one_count(procs: Processes, session: aiohttp.ClientSession, streams: int, args: argparse.Namespace,
                    tree: Path | None) -> dict[str, Any]:
    origin_port = free_port()
    shield, edge = Node.new("shields", "shield-1", args.workers), Node.new("edges", "edge-1", args.edge_workers)
    nodes = [edge] if args.no_shield else [shield, edge]
    config = procs.workdir / f"politeness-{streams}.toml"
    names = [f"s{i}" for i in range(streams)]
    builtin = {"listen": f"127.0.0.1:{origin_port}", "mode": "synthetic", "streams": names,
               "target_duration": TARGET, "window": 4, "segment_bytes": SEGMENT_BYTES}
    medias = [f"/{s}/{r['name']}/index.m3u8" for s in names for r in RENDITIONS]
    try:
        proxy = await start_counting(procs, session, "counting-proxy", "delayproxy",
                                     ["--upstream", url(origin_port), "--playlist-delay-ms", str(args.origin_ms)])
        write_topology(config, url(proxy), nodes, {"memory_bytes": "256MiB", "disk_path": ""},
                       guard=OPEN_GUARD, limits=NO_LIMITS, builtin=builtin, renditions=RENDITIONS)
        await start_builtin_origin(procs, session, config, origin_port)
        await start_nodes(procs, session, config, nodes, tree)
        await wait_published(session, url(origin_port), medias)
        before = await origin_counts(session, proxy)
        errors: list[str] = []
        start = time.monotonic()
        each = max(1, args.players // len(medias))
        await asyncio.gather(*(player(session, url(edge.port), m, start + args.seconds, errors)
                               for m in medias for _ in range(each)))
        seconds = time.monotonic() - start
        after = await origin_counts(session, proxy)
    finally:
        procs.stop(["edge-1", "shield-1", "origin", "counting-proxy"])
    delta = {p: n - before.get(p, 0) for p, n in after.items() if n > before.get(p, 0)}
    playlists = [delta.get(m, 0) for m in medias]
    segments = sum(n for p, n in delta.items() if p.endswith(".ts"))
    per_minute = 60 / seconds
    expiries = seconds / (TARGET / 2)
    return {
        "streams": streams, "renditions": len(medias), "players": each * len(medias), "seconds": round(seconds, 1),
        "origin_playlist_per_min": round(sum(playlists) * per_minute, 1),
        "per_rendition_per_min": round(sum(playlists) / len(medias) * per_minute, 1),
        "ideal_per_rendition_per_min": round(60 / (TARGET / 2), 1),
        "worst_rendition_per_expiry": round(max(playlists) / expiries, 2),
        "origin_segment_per_min": round(segments * per_minute, 1),
        "origin_other_per_min": round(sum(n for p, n in delta.items()
                                          if p not in medias and not p.endswith(".ts")) * per_minute, 1),
        "player_errors": len(errors), "error_samples": errors[:3],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with workspace("politeness") as procs:
        tree = args.tree
        report = header(False, revision=revision(tree or procs.tree), origin_ms=args.origin_ms,
                        shield_workers=None if args.no_shield else args.workers,
                        edge_workers=args.edge_workers, target_duration=TARGET)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
            report["counts"] = []
            for streams in args.streams:
                fig = await one_count(procs, session, streams, args, tree)
                report["counts"].append(fig)
                print(f"{streams:>4} streams ({fig['renditions']} renditions, {fig['players']} players, "
                      f"{fig['seconds']:g} s): "
                      f"origin playlist requests {fig['origin_playlist_per_min']:g}/min, "
                      f"per rendition {fig['per_rendition_per_min']:g}/min "
                      f"(ideal {fig['ideal_per_rendition_per_min']:g}), "
                      f"worst rendition {fig['worst_rendition_per_expiry']:g} per expiry (goal <= 1); "
                      f"segments {fig['origin_segment_per_min']:g}/min, other {fig['origin_other_per_min']:g}/min; "
                      f"player errors {fig['player_errors']}", flush=True)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description="Origin requests per minute for live streams watched at one edge.")
    p.add_argument("--seconds", type=float, default=30.0, help="players' run per stream count")
    p.add_argument("--workers", type=int, default=1, help="the shield's worker processes")
    p.add_argument("--edge-workers", type=int, default=1, help="the edge's worker processes")
    p.add_argument("--players", type=int, default=400, help="the audience, spread over the streams' renditions")
    p.add_argument("--origin-ms", type=int, default=50, help="how long the origin takes to answer a playlist")
    p.add_argument("--no-shield", action="store_true", help="no shield: the edge asks the origin itself")
    p.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=list(STREAM_COUNTS),
                   help="stream counts, comma-separated (default 1,10,100)")
    p.add_argument("--tree", type=source_tree, help="run the nodes from this source tree")
    args = p.parse_args()
    report = asyncio.run(run(args))
    save("politeness", report, "-edge" if args.no_shield else f"-{args.workers}w")


if __name__ == "__main__":
    sys.exit(main())
