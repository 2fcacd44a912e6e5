"""Cached playlist hits per second, HTTP/1.1 and h2c: livecdn beside a tuned nginx (and another tree), one core each.

    .venv/bin/python benchmarks/hitspeed.py [--also-tree PATH] [--runs 3] [--duration 5]

speed.py's origin and servers, for the one figure issue 16 is about: the
1 KiB live playlist, cached. nginx is the tuned anchor (`proxy_cache` plus
`open_file_cache max=10000 inactive=60s; open_file_cache_valid 1s;`, as
nginx edges run it), one instance speaking HTTP/1.1 and one h2c (nginx's
cleartext `http2` listener speaks nothing else); livecdn's one listener
speaks both. Every server is pinned to core 0, the client to core 1
(wrk -t1 -c64; h2load -c32 -m10, as h2speed.py), runs rotate server by
server, and ratios are medians of per-round ratios. Needs nginx, wrk and
h2load (apt-get install -y nginx wrk nghttp2-client). Writes
benchmarks/results/hitspeed-<date>.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from typing import Any

from h2speed import h2load, wait_h2
from lib import anchors
from lib.edges import Servers
from lib.procs import BENCH, PY, ROOT, wait_http, workspace
from lib.report import header, save
from lib.trees import add_also_tree, label
from speed import log, parse_wrk

PLAYLIST = "/static/live.m3u8"
# The ceiling (`--bare`): tools/bareserver.py, taking a read that ends a head as a request, and parsing with httptools.
BARE = {"bare": (), "bare-httptools": ("--parse",)}


class TunedServers(Servers):
    """The speed servers; nginx tuned with open_file_cache (`lib.anchors`): `nginx` (HTTP/1.1), `nginx-h2` (h2c)."""

    def start(self, name: str, workers: int, cpus: str | None, *, wrap: tuple[str, ...] = (),
              ready_timeout: float = 30.0) -> None:
        if name in BARE:
            port, _ = self.place(name, workers)
            origin = f"http://127.0.0.1:{self.origin_ports[name]}{PLAYLIST}"
            cmd = [PY, "-m", "tools.bareserver", "--port", str(port), "--origin", origin, *BARE[name]]
            self.running[name] = self.procs.start(name, cmd, cpus=cpus, cwd=BENCH)
            wait_http(self.procs, name, self.url(name, PLAYLIST), ready_timeout)
            return
        if name not in ("nginx", "nginx-h2"):
            super().start(name, workers, cpus, wrap=wrap, ready_timeout=ready_timeout)
            return
        port, run = self.place(name, workers)
        cmd = anchors.command("nginx-ofc", run, port, self.origin_ports[name], workers, self.connections,
                              http2=name == "nginx-h2")
        self.running[name] = self.procs.start(name, cmd, cpus=cpus)
        if name == "nginx":
            wait_http(self.procs, name, self.url(name, PLAYLIST), ready_timeout)
        else:
            wait_h2(self, name, PLAYLIST, ready_timeout)


def wrk_run(url: str, duration: float) -> dict[str, float]:
    """One wrk run of the playlist, client on core 1."""
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{duration:g}s", "--latency", url],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    return parse_wrk(out) if "Requests/sec" in out else {"rps": 0.0, "non2xx": 0, "errors": 0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--bare", action="store_true",
                   help="also the Python ceiling: tools/bareserver.py, HTTP/1.1 only (without and with httptools)")
    add_also_tree(p)
    args = p.parse_args()
    trees = {"livecdn": ROOT, **({label(args.also_tree): args.also_tree} if args.also_tree else {})}
    bare = list(BARE) if args.bare else []
    names = {"http/1.1": [*trees, *bare, "nginx"], "h2c": [*trees, "nginx-h2"]}
    raw: dict[str, dict[str, list[dict[str, float]]]] = {p: {n: [] for n in ns} for p, ns in names.items()}
    with workspace("livecdn-hitspeed-") as procs:
        servers = TunedServers(procs, trees, [*trees, *bare, "nginx", "nginx-h2"])
        servers.start_origin()
        for name in {n for ns in names.values() for n in ns}:
            servers.start(name, 1, "0")
        for name in [*trees, *bare, "nginx"]:  # warm: cached, plans and heads built, both protocols' code paths run
            wrk_run(servers.url(name, PLAYLIST), 1.0)
            if name not in BARE:
                h2load(servers.url(name, PLAYLIST), 4, 4, None, requests=500)
        for run in range(args.runs):
            for protocol, ns in names.items():
                for name in ns:
                    url = servers.url(name, PLAYLIST)
                    r = h2load(url, 32, 10, args.duration) if protocol == "h2c" else wrk_run(url, args.duration)
                    raw[protocol][name].append(r)
                    log(f"run {run + 1}/{args.runs} {protocol:8} {name:24} {r['rps']:10.0f} req/s")
    summary: dict[str, Any] = {}
    for protocol, by_server in raw.items():
        anchor = names[protocol][-1]
        summary[protocol] = {
            "rps": {n: statistics.median(r["rps"] for r in rs) for n, rs in by_server.items()},
            "ratio_to_nginx": {n: round(statistics.median(a["rps"] / b["rps"] for a, b in
                                                          zip(by_server[n], by_server[anchor], strict=True)), 3)
                               for n in by_server if n != anchor},
            "bad": {n: sum(r.get("non2xx", 0) + r.get("errors", 0) + r.get("failed", 0) for r in rs)
                    for n, rs in by_server.items()}}
    data = {**header(False), "pinned": "server core 0, client core 1", "runs": args.runs, "duration": args.duration,
            "trees": {n: str(t) for n, t in trees.items()}, "summary": summary, "raw": raw}
    path = save("hitspeed", data)
    print(f"\nCached 1 KiB playlist, hits/s, median of {args.runs} × {args.duration:g} s ({path.name}):")
    for protocol, s in summary.items():
        cells = "  ".join(f"{n} {v:,.0f}" for n, v in s["rps"].items())
        ratios = "  ".join(f"{n} ÷ nginx {v}" for n, v in s["ratio_to_nginx"].items())
        print(f"{protocol:9} {cells}   ({ratios}; bad answers {s['bad']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
