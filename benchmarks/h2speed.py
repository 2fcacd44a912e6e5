"""HTTP/2 hits per second: livecdn's edge beside nginx with `http2`, over h2c (prior knowledge), with h2load.

    .venv/bin/python benchmarks/h2speed.py            # 3 runs of 10 s per server and scenario
    .venv/bin/python benchmarks/h2speed.py --quick    # 2 runs of 5 s

The servers, origin and configs are speed.py's (nginx's template with its
listener made `http2`, the one change); each server is pinned to core 0
(`taskset -c 0`), h2load to core 1, caches warmed, runs interleaved so that
ratios come from the same minute of this shared machine:

  (a) the 1 KiB live playlist   h2load -c 32 -m 10 (32 connections, 10 streams each)
  (b) the 1 MiB segment         h2load -c 8 -m 4

Cleartext h2c: both servers skip TLS alike, and the figure is HTTP/2 framing,
HPACK and flow control. HTTP/2 over TLS (ALPN h2, as browsers speak it) is
measured by https.py beside its HTTP/1.1 figures, with `h2load_command()`.
Writes benchmarks/results/h2speed-<date>.json and prints a table.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from lib import anchors
from lib.nginx import nginx_binary
from lib.procs import READY_TIMEOUT, ROOT, workspace
from lib.report import header, save
from speed import Servers, log

SCENARIOS: dict[str, dict[str, Any]] = {
    "playlist": {"path": "/static/live.m3u8", "clients": 32, "streams": 10, "label": "(a) 1 KiB live playlist"},
    "segment": {"path": "/static/seg.ts", "clients": 8, "streams": 4, "label": "(b) 1 MiB segment"},
}
SERVERS = ("livecdn", "nginx")
# h2load's own bound on one run, past its duration: a server that stalls ends the run, not the benchmark.
RUN_SLACK = 30.0


class H2Servers(Servers):
    """speed.py's servers; nginx's listener speaks HTTP/2 (h2c, prior knowledge only, so it is probed so)."""

    def start(self, name: str, workers: int, cpus: str | None, *, wrap: tuple[str, ...] = (),
              ready_timeout: float = READY_TIMEOUT) -> None:
        if name != "nginx":
            super().start(name, workers, cpus, wrap=wrap, ready_timeout=ready_timeout)
            return
        port, run = self.place(name, workers)
        cmd = anchors.command("nginx", run, port, self.origin_ports[name], workers, self.connections, http2=True)
        self.running[name] = self.procs.start(name, cmd, cpus=cpus)
        wait_h2(self, name, "/static/live.m3u8", ready_timeout)


def wait_h2(servers: Servers, name: str, path: str, timeout: float) -> None:
    """Until server `name` answers one request over h2c (it speaks nothing else, so `wait_http` cannot ask)."""
    deadline = time.monotonic() + timeout
    while h2load(servers.url(name, path), 1, 1, None, requests=1)["succeeded"] < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer HTTP/2: {servers.procs.log_tail(name)}")
        time.sleep(0.2)


def h2load(url: str, clients: int, streams: int, duration: float | None, *, requests: int = 0,
           cpus: str | None = "1") -> dict[str, Any]:
    """One h2load run (for `duration` s, or `requests` requests): requests per second and how they ended."""
    cmd = h2load_command(url, clients, streams, duration, requests=requests)
    if cpus is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpus, *cmd]
    return h2load_figures(subprocess.run(cmd, capture_output=True, text=True,
                                         timeout=(duration or 10) + RUN_SLACK).stdout)


def h2load_command(url: str, clients: int, streams: int, duration: float | None, *,
                   requests: int = 0) -> list[str]:
    """h2load on one thread: `clients` connections of `streams` streams, for `duration` s or `requests` requests."""
    cmd = ["h2load", "-c", str(clients), "-m", str(streams), "-t", "1"]
    cmd += ["-D", f"{duration:g}"] if duration else ["-n", str(requests)]
    return [*cmd, url]


def h2load_figures(out: str) -> dict[str, Any]:
    """What h2load's report says: requests and bytes per second, how the requests ended, the ALPN protocol."""
    done = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s, ([\d.]+)([KMG]?B)/s", out)
    counts = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                       out)
    protocol = re.search(r"Application protocol: (\S+)", out)
    units = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    return {"rps": float(done.group(1)) if done else 0.0,
            "bytes_per_s": float(done.group(2)) * units[done.group(3)] if done else 0.0,
            "succeeded": int(counts.group(2)) if counts else 0,
            "failed": int(counts.group(3)) + int(counts.group(4)) if counts else 0,
            "protocol": protocol.group(1) if protocol else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 runs of 5 s")
    args = parser.parse_args()
    if not shutil.which("h2load") or nginx_binary() is None:
        log("h2load or nginx is missing: apt-get install -y nghttp2-client nginx")
        return 2
    runs, duration = (2, 5.0) if args.quick else (3, 10.0)
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {s: {n: [] for n in SERVERS} for s in SCENARIOS}
    with workspace("h2speed") as procs:
        servers = H2Servers(procs, {"livecdn": ROOT}, list(SERVERS))
        servers.start_origin()
        for name in SERVERS:
            servers.start(name, 1, "0")
            for scenario in SCENARIOS.values():  # warm: the objects cached, the connections' code paths run
                h2load(servers.url(name, scenario["path"]), 4, 4, None, requests=200)
        for run in range(runs):
            for key, scenario in SCENARIOS.items():
                for name in SERVERS:
                    r = h2load(servers.url(name, scenario["path"]), scenario["clients"], scenario["streams"],
                               duration)
                    raw[key][name].append(r)
                    log(f"run {run + 1}/{runs} {key:8} {name:8} {r['rps']:10.0f} req/s  "
                        f"{r['bytes_per_s'] / 2**20:8.1f} MiB/s  failed {r['failed']:.0f}")
    summary: dict[str, Any] = {}
    for key, by_server in raw.items():
        medians = {name: statistics.median(r["rps"] for r in runs_) for name, runs_ in by_server.items()}
        summary[key] = {"label": SCENARIOS[key]["label"], "rps": medians,
                        "ratio_livecdn_to_nginx": medians["livecdn"] / medians["nginx"] if medians["nginx"] else 0.0,
                        "failed": {name: sum(r["failed"] for r in runs_) for name, runs_ in by_server.items()}}
    data = {**header(args.quick), "transport": "h2c (prior knowledge, no TLS)", "pinned": "server core 0, h2load 1",
            "runs": runs, "duration": duration, "scenarios": SCENARIOS, "summary": summary, "raw": raw}
    path = save("h2speed", data)
    print(f"\nHTTP/2 (h2c) hits per second, median of {runs} × {duration:g} s, one pinned core each ({path.name}):")
    print(f"{'':28} {'livecdn':>10} {'nginx':>10} {'livecdn/nginx':>14}")
    for s in summary.values():
        print(f"{s['label']:28} {s['rps']['livecdn']:10.0f} {s['rps']['nginx']:10.0f} "
              f"{s['ratio_livecdn_to_nginx']:14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
