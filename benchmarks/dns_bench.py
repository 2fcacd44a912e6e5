"""The router's figures: DNS queries per second beside gdnsd, and failover time.

    .venv/bin/python benchmarks/dns_bench.py [--quick] [--qps-only] [--also-tree PATH]
    # `make bench-dns` installs dnsperf, gdnsd, dig

A small CDN runs on loopback as operators run it (`livecdn ROLE --config FILE
--node NAME`): the built-in origin, one shield, edge-eu on 127.0.1.1 and
edge-us on 127.0.2.1 (same ports), and the router with configs/demo-geo.mmdb.
gdnsd 3 answers the same zone from the same database and edges with its
geoip plugin in city-auto-mode (nearest datacenter by coordinates) and HTTP
checks of each edge's /healthz (benchmarks/gdnsd/).

1. queries per second: dnsperf pinned to core 1, the server (router or
   gdnsd, one thread) pinned to core 0; one A question for the CDN host
   name, plain (placed by source address) and with ECS 127.0.2.0/24; runs
   interleaved, medians reported.
2. failover: an edge is killed (connections refused), then restarted; later
   hung (SIGSTOP: checks time out), then resumed. Seconds from the failure to
   the first answer without it, and from the restart to the first answer with
   it again, for the router (checks every 1 s, 3 failures) and gdnsd (every
   2 s, its minimum, 3 failures), polled every 50 ms from 127.0.2.5.

With `--also-tree PATH`, a second router ("router@<dir name>", from that
source tree, its own DNS port, the same edges) is measured in figure 1 beside
this checkout's, interleaved: a change's before and after in one run.
`--qps-only` skips figure 2.

Prints two tables and one JSON line; the report with every run goes to
benchmarks/results/dns-<date>[-quick].json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import string
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import psutil

from lib.ports import free_port, shared_port
from lib.procs import BENCH, LIVECDN, ROOT, Processes, signal_group, workspace
from lib.report import save
from lib.trees import label, source_tree

HOST = "live.demo.livecdn.test"
DATABASE = ROOT / "configs" / "demo-geo.mmdb"
EU, US = "127.0.1.1", "127.0.2.1"
US_CLIENT = "127.0.2.5"
ECS_US = "8:00011800" + "7f0002"  # family 1, source /24, scope 0, 127.0.2
SERVER_CORE, CLIENT_CORE = "0", "1"
POLL = 0.05
READY_TIMEOUT = 60.0
FAILOVER_TIMEOUT = 30.0
GOAL = 0.80  # the router's queries per second against gdnsd's, plain and ECS (issue 16)


def write_topology(path: Path, ports: dict[str, int], router: str = "") -> None:
    """The bench's topology; `router` picks the router's ports (`dns{router}`, ...: a second router's)."""
    path.write_text(f"""\
[cdn]
name = "bench"
hostname = "{HOST}"

[cache]
disk_path = ""

[origin.builtin]
listen = "127.0.0.1:{ports['origin']}"
mode = "synthetic"
target_duration = 2

[regions.eu]
location = [50.11, 8.68]
[regions.us]
location = [39.04, -77.49]

[shields.shield-1]
listen = "127.0.0.1:{ports['shield']}"
admin = "127.0.0.1:{ports['shield_admin']}"

[edges.edge-eu]
region = "eu"
listen = "{EU}:{ports['edge']}"
admin = "{EU}:{ports['edge_admin']}"
[edges.edge-us]
region = "us"
listen = "{US}:{ports['edge']}"
admin = "{US}:{ports['edge_admin']}"

[router]
name = "router"
dns = "127.0.0.1:{ports['dns' + router]}"
http = "127.0.0.1:{ports['http' + router]}"
admin = "127.0.0.1:{ports['router_admin' + router]}"
database = "{DATABASE}"
default_region = "eu"
ttl = 20
[router.health]
interval = 1
timeout = 1
failures = 3
rise = 2
""")


def render_gdnsd(workdir: Path, dns_port: int, admin_port: int) -> Path:
    conf = workdir / "gdnsd"
    (conf / "zones").mkdir(parents=True)
    template = string.Template((BENCH / "gdnsd" / "config.template").read_text())
    (conf / "config").write_text(template.substitute(dns_port=dns_port, admin_port=admin_port,
                                                     database=DATABASE))
    shutil.copy(BENCH / "gdnsd" / "zone.template", conf / "zones" / "demo.livecdn.test")
    return conf


def ask(port: int, source: str = "127.0.0.1", timeout: float = 0.5) -> list[str]:
    """The A records answered for the CDN host name, or [] on no answer."""
    q = dns.message.make_query(HOST, "A")
    try:
        r = dns.query.udp(q, "127.0.0.1", port=port, source=source, timeout=timeout)
    except (dns.exception.Timeout, OSError):
        return []
    return sorted(rr.address for rrset in r.answer for rr in rrset)


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)
    return time.monotonic() - started


class Bench:
    """The CDN, the router and gdnsd, all started as children of this script."""

    def __init__(self, procs: Processes, also: Path | None = None) -> None:
        workdir = procs.workdir
        self.procs = procs
        self.also = also
        self.config = workdir / "cdn.toml"
        self.ports = {k: free_port() for k in ("origin", "shield", "shield_admin", "http", "router_admin",
                                               "http2", "router_admin2")}
        self.ports.update(dns=free_port(udp=True), dns2=free_port(udp=True), gdnsd=free_port(udp=True),
                          edge=shared_port([EU, US]), edge_admin=shared_port([EU, US]))
        write_topology(self.config, self.ports)
        self.also_config = workdir / "also.toml"
        write_topology(self.also_config, self.ports, router="2")
        self.gdnsd_conf = render_gdnsd(workdir, self.ports["gdnsd"], self.ports["edge_admin"])

    def pid(self, server: str) -> int:
        """The process of a measured server (a name of `servers`)."""
        return self.procs.running[{"router": "router", "gdnsd": "gdnsd"}.get(server, "router-also")].pid

    @property
    def servers(self) -> dict[str, int]:
        """The DNS servers measured: the router, the second tree's when there is one, gdnsd."""
        out = {"router": self.ports["dns"]}
        if self.also is not None:
            out[label(self.also).replace("livecdn", "router")] = self.ports["dns2"]
        return {**out, "gdnsd": self.ports["gdnsd"]}

    def node(self, role: str, name: str, pin: str | None = None) -> None:
        cmd = LIVECDN + [role, "--config", str(self.config), "--node", name, "--log-level", "warning"]
        if role != "origin":
            cmd.append("--no-access-log")
        self.procs.start(name, cmd, cpus=pin)

    def start(self) -> None:
        for role, name in (("origin", "origin"), ("shield", "shield-1"), ("edge", "edge-eu"), ("edge", "edge-us")):
            self.node(role, name)
        self.node("geo", "router", pin=SERVER_CORE)
        if self.also is not None:
            self.procs.start("router-also", LIVECDN + ["geo", "--config", str(self.also_config), "--node", "router",
                                                       "--log-level", "warning", "--no-access-log"],
                             tree=self.also, cpus=SERVER_CORE)
        self.procs.start("gdnsd", ["gdnsd", "-c", str(self.gdnsd_conf), "start"], cpus=SERVER_CORE)
        procs = dict(zip(self.servers, ["router", *(["router-also"] if self.also else []), "gdnsd"], strict=True))
        for name, port in self.servers.items():
            wait(lambda name=name, port=port: self._alive(procs[name]) and ask(port, US_CLIENT) == [US],
                 READY_TIMEOUT, f"{name} to answer")
        for name, port in self.servers.items():  # a reply lost on a busy machine is asked again
            wait(lambda port=port: ask(port) == [EU], READY_TIMEOUT, f"{name} to send 127.0.0.1 to the default "
                 "region, eu")

    def _alive(self, name: str) -> bool:
        self.procs.check(name)
        return True



# --- 1. queries per second ------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User and system CPU of a server process, its threads and children."""
    root = psutil.Process(pid)
    return sum(t.user + t.system for t in (p.cpu_times() for p in [root, *root.children(recursive=True)]))


def dnsperf(port: int, seconds: float, qfile: Path, ecs: bool, pid: int) -> dict[str, float]:
    """One dnsperf run; with the CPU the server (`pid`) spent meanwhile, its queries per CPU second.

    On a machine whose cores others share too, queries per second follow their load; the server's
    own CPU per query does not, or far less: `per_cpu_s` is the steadier figure.
    """
    cmd = ["taskset", "-c", CLIENT_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
           "-l", str(seconds), "-c", "4", "-q", "256"]
    if ecs:
        cmd += ["-E", ECS_US]
    cpu = cpu_seconds(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    cpu = cpu_seconds(pid) - cpu
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    if not qps or not lost or not done:
        raise RuntimeError(f"dnsperf said:\n{out}")
    return {"qps": float(qps.group(1)), "lost_pct": float(lost.group(1)),
            "per_cpu_s": int(done.group(1)) / cpu if cpu else 0.0}


def throughput(bench: Bench, runs: int, seconds: float) -> dict[str, Any]:
    qfile = bench.procs.workdir / "queries.txt"
    qfile.write_text(f"{HOST} A\n")
    servers = bench.servers
    raw: dict[str, dict[str, list[dict[str, float]]]] = {s: {"plain": [], "ecs": []} for s in servers}
    for _ in range(runs):
        for mode in ("plain", "ecs"):
            for server, port in servers.items():  # interleaved: both see the same machine noise
                raw[server][mode].append(dnsperf(port, seconds, qfile, mode == "ecs", bench.pid(server)))
    modes = ("plain", "ecs")

    def medians(field: str) -> dict[str, dict[str, float]]:
        return {s: {m: statistics.median(r[field] for r in raw[s][m]) for m in modes} for s in servers}

    def ratios(of: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        return {s: {m: of[s][m] / of["gdnsd"][m] for m in modes} for s in servers if s != "gdnsd"}

    qps, per_cpu = medians("qps"), medians("per_cpu_s")
    by_qps, by_cpu = ratios(qps), ratios(per_cpu)
    return {"runs": runs, "seconds": seconds, "median_qps": qps, "median_per_cpu_s": per_cpu,
            "router_to_gdnsd": by_qps["router"], "router_to_gdnsd_per_cpu": by_cpu["router"],
            "also_to_gdnsd": {s: r for s, r in by_qps.items() if s != "router"},
            "also_to_gdnsd_per_cpu": {s: r for s, r in by_cpu.items() if s != "router"}, "raw": raw}


def print_throughput(fig: dict[str, Any]) -> None:
    m, r = fig["median_qps"], fig["router_to_gdnsd"]
    print(f"\nDNS queries per second: dnsperf on core {CLIENT_CORE}, server on core {SERVER_CORE}; "
          f"median of {fig['runs']} runs of {fig['seconds']:g} s")
    c, rc = fig["median_per_cpu_s"], fig["router_to_gdnsd_per_cpu"]
    width = max(18, *(len(s) + len(" / gdnsd") + 2 for s in m))
    print(f"{'':<{width}}{'plain':>12}{'ECS /24':>12}{'per CPU s':>14}{'ECS':>12}")
    for s, qps in m.items():
        name = {"router": "livecdn router", "gdnsd": "gdnsd 3.8"}.get(s, s)
        print(f"{name:<{width}}{qps['plain']:>12,.0f}{qps['ecs']:>12,.0f}{c[s]['plain']:>14,.0f}{c[s]['ecs']:>12,.0f}")
    print(f"{'router / gdnsd':<{width}}{r['plain']:>12.2f}{r['ecs']:>12.2f}{rc['plain']:>14.2f}{rc['ecs']:>12.2f}"
          f"   (goal: >= {GOAL:.2f})")
    for s, ratio in fig["also_to_gdnsd"].items():
        per = fig["also_to_gdnsd_per_cpu"][s]
        print(f"{s + ' / gdnsd':<{width}}{ratio['plain']:>12.2f}{ratio['ecs']:>12.2f}{per['plain']:>14.2f}"
              f"{per['ecs']:>12.2f}")
    print("(per CPU s: queries answered per second of the server's own CPU, which others' load on the "
          "shared cores moves far less than queries per second)")


# --- 2. failover -------------------------------------------------------------------

def failover(bench: Bench, runs: int) -> dict[str, Any]:
    servers = {"router": bench.ports["dns"], "gdnsd": bench.ports["gdnsd"]}
    raw: dict[str, dict[str, list[float]]] = {s: {"killed": [], "killed_back": [], "hung": [], "hung_back": []}
                                             for s in servers}
    for _ in range(runs):
        for how in ("killed", "hung"):
            proc = bench.procs.running["edge-us"]
            signal_group(proc, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
            raw_out = _race(servers, lambda p: ask(p, US_CLIENT) == [EU], "edge-us to leave the answers")
            if how == "killed":
                proc.wait()
                bench.node("edge", "edge-us")
            else:
                signal_group(proc, signal.SIGCONT)
            raw_back = _race(servers, lambda p: ask(p, US_CLIENT) == [US], "edge-us to come back")
            for s in servers:
                raw[s][how].append(raw_out[s])
                raw[s][f"{how}_back"].append(raw_back[s])
            time.sleep(3)  # every checker sees a steady state before the next failure
    summary = {s: {k: {"median": statistics.median(v), "max": max(v)} for k, v in per.items()}
               for s, per in raw.items()}
    return {"runs": runs, "summary": summary, "raw": raw}


def _race(servers: dict[str, int], done: Callable[[int], bool], what: str) -> dict[str, float]:
    """Seconds until each server's answers satisfy `done`, all watched together from now."""
    started = time.monotonic()
    times: dict[str, float] = {}
    while len(times) < len(servers):
        for name, port in servers.items():
            if name not in times and done(port):
                times[name] = time.monotonic() - started
        if time.monotonic() - started > FAILOVER_TIMEOUT:
            raise RuntimeError(f"{', '.join(set(servers) - set(times))}: timed out waiting for {what}")
        time.sleep(POLL)
    return times


def print_failover(fig: dict[str, Any]) -> None:
    print(f"\nFailover of edge-us, seconds (median / max of {fig['runs']} runs), asked from {US_CLIENT}")
    print(f"{'':<18}{'killed: out':>14}{'restarted: in':>16}{'hung: out':>12}{'resumed: in':>14}")
    for s, per in fig["summary"].items():
        cells = [f"{per[k]['median']:.1f} / {per[k]['max']:.1f}"
                 for k in ("killed", "killed_back", "hung", "hung_back")]
        print(f"{'livecdn router' if s == 'router' else 'gdnsd 3.8':<18}{cells[0]:>14}{cells[1]:>16}"
              f"{cells[2]:>12}{cells[3]:>14}")
    print("(restarted: in includes the edge process starting again)")


# --- main --------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description="livecdn router figures: DNS queries per second beside gdnsd, failover.")
    p.add_argument("--quick", action="store_true", help="3 runs of 3 s and 2 failover rounds (about 1.5 min)")
    p.add_argument("--qps-only", action="store_true", help="figure 1 only (no failover rounds)")
    p.add_argument("--also-tree", type=source_tree, metavar="PATH",
                   help="also measure a router from this source tree beside this checkout's (before vs after)")
    args = p.parse_args()
    missing = [t for t in ("dnsperf", "gdnsd", "taskset") if shutil.which(t) is None]
    if missing:
        print(f"missing {', '.join(missing)}: `make bench-dns` installs them", file=sys.stderr)
        return 2
    runs, seconds, rounds = (3, 3.0, 2) if args.quick else (5, 5.0, 3)
    try:
        with workspace("dns") as procs:
            bench = Bench(procs, args.also_tree)
            bench.start()
            report = {"throughput": throughput(bench, runs, seconds)}
            if not args.qps_only:
                report["failover"] = failover(bench, rounds)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        return 130
    print_throughput(report["throughput"])
    if "failover" in report:
        print_failover(report["failover"])
    save("dns", report, ('-quick' if args.quick else '') + ('-qps' if args.qps_only else ''))
    compact = {"qps": report["throughput"]["median_qps"], "router_to_gdnsd": report["throughput"]["router_to_gdnsd"],
               "failover": report["failover"]["summary"] if "failover" in report else None}
    print(json.dumps(compact), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
