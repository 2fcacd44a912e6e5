"""Speed: livecdn's edge beside nginx (plain and tuned), Varnish and Traffic Server, serving hits.

    .venv/bin/python benchmarks/speed.py            # full: ~30 min
    .venv/bin/python benchmarks/speed.py --quick    # ~10 min (5 s runs, 2 of each)
    .venv/bin/python benchmarks/speed.py --pinned-only   # the one-core block alone (~12 min)

Every cache sits in front of the same origin (`benchmarks/speed/origin.py`, a
port of its own for each cache, so it counts each one's requests) as an HLS
edge: live playlists fresh 1 s (half the target duration), segments kept a
year. The anchors (`lib/anchors.py`, configs in `benchmarks/speed/`): nginx
with `proxy_cache` and `proxy_cache_lock`; "nginx-ofc", the same with
`open_file_cache max=10000 inactive=60s; open_file_cache_valid 1s;` (what
most nginx edges run); Varnish with malloc storage; Apache Traffic Server 9
with its RAM cache (`speed/trafficserver/`). livecdn's edge runs as shipped
(its policy on, the disk tier on, `--no-access-log`). Each server is pinned
to core 0 (`taskset -c 0`), wrk to core 1; caches are warmed; then, rotating
run by run so that ratios come from the same minute of this shared machine:

  (a) a 1 KiB live playlist          wrk -t1 -c64
  (b) a 1 MiB segment                wrk -t2 -c64
  (c) a viewer mix                   wrk -t1 -c64 -s speed/viewers.lua (512 KiB segments)

Each run records wrk's p99 latency and the origin requests the server made
meanwhile. Every ratio is livecdn ÷ that anchor, the median of per-run
ratios; "best" is, per object kind, the anchor that ratio is lowest against
(the strongest anchor run beside run: on a shared machine the highest
median can belong to an anchor that happened to run in a quieter minute).
Then the same with two worker processes per server and nothing pinned (and
livecdn with one worker, unpinned); then livecdn's scaling run: one worker
against two, nothing pinned, (a) with a pipelined client (speed/pipelined.lua)
that needs far less CPU per request than wrk's plain mode. Every run also
records the cores the server's processes and wrk kept busy (CPU seconds from
/proc and rusage over wall seconds). Steal time is read from /proc/stat
around every run; a run with more than HIGH_STEAL is run again.
Writes a dated section at the top of benchmarks/RESULTS.md, benchmarks/speed.png,
and the raw figures to benchmarks/results/speed-<date>.json.

With `--also-tree PATH`, a second livecdn ("livecdn@<dir name>", started from
that source tree) runs in the first two blocks beside this checkout's, same
core, same load, in turn: a refactor's before and after side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from lib import anchors
from lib.edges import Servers
from lib.procs import BENCH, ROOT, workspace
from lib.report import add_section, result_path, save
from lib.trees import add_also_tree
from lib.trees import label as tree_label

HERE = BENCH
SPEED = HERE / "speed"
# A run whose CPU time was more than this share stolen by the hypervisor is repeated.
HIGH_STEAL = 0.05
MAX_RETRIES = 2
SERVERS = ("livecdn", *anchors.ANCHORS)  # an --also-tree livecdn goes after this checkout's
NAMES = {"livecdn": "livecdn", "nginx": "nginx", "nginx-ofc": "nginx + open_file_cache", "varnish": "Varnish",
         "trafficserver": "Traffic Server"}
SCENARIOS: dict[str, dict[str, Any]] = {
    "playlist": {"path": "/static/live.m3u8", "threads": 1, "script": None,
                 "label": "(a) 1 KiB live playlist"},
    "segment": {"path": "/static/seg.ts", "threads": 2, "script": None, "label": "(b) 1 MiB segment"},
    "mix": {"path": "/live/master.m3u8", "threads": 1, "script": SPEED / "viewers.lua",
            "label": "(c) viewer mix"},
}
# The scaling run: livecdn with one worker and with two, nothing pinned, under
# a pipelined client that costs little per request (see speed/pipelined.lua).
SCALING = {"pipelined": {"path": "/static/live.m3u8", "threads": 1, "script": SPEED / "pipelined.lua",
                         "label": "1 KiB playlist, pipelined ×16"}}
CONNECTIONS = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")
OTHERS = re.compile(r"benchmarks/|wrk|dnsperf")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the machine -------------------------------------------------------------------

def ensure_tools() -> None:
    """The anchors and wrk from Debian, installed when missing."""
    anchors.ensure_installed(list(anchors.PACKAGES))


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} × {model or platform.processor()}, {mem:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def cpu_times() -> list[int]:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return [int(f) for f in fields]


def steal_between(before: list[int], after: list[int]) -> float:
    delta = [a - b for a, b in zip(after, before, strict=False)]
    total = sum(delta[:8])
    return delta[7] / total if total else 0.0


def group_cpu(pgid: int) -> float:
    """CPU seconds used so far by every process of a process group (a server and its workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])  # utime + stime, threads included
    return total / CLK_TCK


def children_cpu() -> float:
    """CPU seconds used by this script's finished children (wrk, once waited for)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def others_running() -> list[str]:
    out = subprocess.run(["pgrep", "-af", OTHERS.pattern], capture_output=True, text=True).stdout
    mine = {str(os.getpid()), str(os.getppid())}
    return [ln for ln in out.splitlines()
            if ln.split()[0] not in mine and "pgrep" not in ln and "benchmarks/speed" not in ln]


def wait_for_quiet(limit: float) -> None:
    deadline = time.monotonic() + limit
    while (busy := others_running()) and time.monotonic() < deadline:
        log(f"waiting for other benchmarks to finish: {busy[0][:100]}")
        time.sleep(15)
    if busy:
        log(f"still running after {limit:.0f} s, measuring anyway: {busy}")


# --- measuring -------------------------------------------------------------------------

_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "KB": 2**10, "MB": 2**20, "GB": 2**30, "B": 1}


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", out)
    bps = float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)  # --latency's distribution
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {"rps": rps, "bytes_per_s": bps, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": sum(int(x) for x in errors.groups()) if errors else 0,
            "latency_ms": float(lat.group(1)) * scale[lat.group(2)] if lat else 0.0,
            "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0}


def wrk(url_base: str, scenario: dict[str, Any], duration: float, cpus: str | None,
        threads: int | None = None, server: int | None = None) -> dict[str, float]:
    """One wrk run; with `server` (a process group), also the cores it and wrk kept busy."""
    cmd = ["wrk", f"-t{threads or scenario['threads']}", f"-c{CONNECTIONS}", f"-d{duration:g}s", "--latency"]
    if scenario["script"] is not None:
        cmd += ["-s", str(scenario["script"])]
    cmd.append(url_base + scenario["path"])
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    before, client_before = cpu_times(), children_cpu()
    server_before = group_cpu(server) if server is not None else 0.0
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    elapsed = time.monotonic() - started
    result = parse_wrk(out)
    result["steal"] = steal_between(before, cpu_times())
    result["client_cores"] = (children_cpu() - client_before) / elapsed
    if server is not None:
        result["server_cores"] = (group_cpu(server) - server_before) / elapsed
    return result


def measure(servers: Servers, name: str, scenario: dict[str, Any], duration: float, cpus: str | None,
            threads: int | None = None) -> dict[str, float]:
    """One wrk run, with the origin requests made meanwhile; repeated (up to MAX_RETRIES times) while steal is high."""
    for attempt in range(MAX_RETRIES + 1):
        before = servers.origin_requests()[name]
        r = wrk(servers.url(name, ""), scenario, duration, cpus, threads, servers.running[name].pid)
        after = servers.origin_requests()[name]
        for kind in ("playlist", "segment"):
            r[f"origin_{kind}"] = after.get(kind, 0) - before.get(kind, 0)
        r["retries"] = attempt
        if r["steal"] <= HIGH_STEAL:
            break
        log(f"    {name}: steal {r['steal']:.1%} > {HIGH_STEAL:.0%}, running again")
    return r


def warm(servers: Servers, name: str, duration: float, cpus: str | None) -> None:
    for scenario in SCENARIOS.values():
        for _ in range(3):
            url = servers.url(name, scenario["path"])
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=10) as r:
                r.read()
        wrk(servers.url(name, ""), scenario, min(duration, 3), cpus)


def block(servers: Servers, names: list[tuple[str, str, int]], runs: int, duration: float,
          server_cpus: str | None, client_cpus: str | None, client_threads: int | None,
          scenarios: dict[str, dict[str, Any]] = SCENARIOS) -> dict[str, Any]:
    """Start each (label, server, workers), warm it, then interleave runs scenario by scenario."""
    results: dict[str, dict[str, list[dict[str, float]]]] = {s: {label: [] for label, _, _ in names}
                                                            for s in scenarios}
    for _label, name, _workers in names:
        if name in servers.running:
            servers.stop(name)
    started: dict[str, tuple[str, int]] = {}
    try:
        for sname, scenario in scenarios.items():
            for i in range(runs):
                for label, name, workers in names:
                    if started.get(name) != (label, workers):
                        servers.stop(name)
                        servers.start(name, workers, server_cpus)
                        warm(servers, name, duration, client_cpus)
                        started[name] = (label, workers)
                    r = measure(servers, name, scenario, duration, client_cpus, client_threads)
                    results[sname][label].append(r)
                    log(f"  {scenario['label']:<26} run {i + 1}  {label:<24} {r['rps']:>10,.0f} req/s "
                        f"{r['bytes_per_s'] / 1e9:6.2f} GB/s  p99 {r['p99_ms']:6.2f} ms  "
                        f"origin {r['origin_playlist']:.0f}+{r['origin_segment']:.0f}  steal {r['steal']:.1%}"
                        + (f"  non-2xx {r['non2xx']:.0f}" if r["non2xx"] else "")
                        + (f"  errors {r['errors']:.0f}" if r["errors"] else ""))
    finally:
        for name in list(servers.running):
            servers.stop(name)
    return results


def summarize(results: dict[str, Any], base: str, others: list[str]) -> dict[str, Any]:
    """Medians per server and scenario; ratios base ÷ other, per run (same minute), then their median."""
    out: dict[str, Any] = {}
    for sname, per_server in results.items():
        metric = "bytes_per_s" if sname == "segment" else "rps"
        row: dict[str, Any] = {"metric": metric}
        for label, runs in per_server.items():
            row[label] = {"median": statistics.median(r[metric] for r in runs) if runs else 0.0,
                          "rps": statistics.median(r["rps"] for r in runs) if runs else 0.0,
                          "bytes_per_s": statistics.median(r["bytes_per_s"] for r in runs) if runs else 0.0,
                          "runs": [r[metric] for r in runs], "steal": [round(r["steal"], 4) for r in runs],
                          "server_cores": statistics.median(r["server_cores"] for r in runs) if runs else 0.0,
                          "client_cores": statistics.median(r["client_cores"] for r in runs) if runs else 0.0,
                          "per_server_core": statistics.median(r["rps"] / r["server_cores"] for r in runs
                                                               if r["server_cores"]) if runs else 0.0,
                          "per_core": statistics.median(r[metric] / r["server_cores"] for r in runs
                                                        if r["server_cores"]) if runs else 0.0,
                          "p99_ms": statistics.median(r["p99_ms"] for r in runs) if runs else 0.0,
                          "origin_playlist": statistics.median(r["origin_playlist"] for r in runs) if runs else 0,
                          "origin_segment": statistics.median(r["origin_segment"] for r in runs) if runs else 0,
                          "non2xx": sum(r["non2xx"] for r in runs), "errors": sum(r["errors"] for r in runs)}
        for other in others:
            ratios = [a[metric] / b[metric] for a, b in zip(per_server[base], per_server[other], strict=False)
                      if b[metric]]
            row[f"ratio_{other}"] = statistics.median(ratios) if ratios else 0.0
            row[f"ratios_{other}"] = [round(x, 3) for x in ratios]
        anchor_labels = [label for label in others if not label.startswith("livecdn")]
        if anchor_labels:  # the anchor base fares worst against, run beside run: the bar to clear
            best = min(anchor_labels, key=lambda label: row[f"ratio_{label}"])
            row["best"], row["ratio_best"] = best, row[f"ratio_{best}"]
        out[sname] = row
    return out


# --- reporting -------------------------------------------------------------------------------

def fmt(value: float, metric: str) -> str:
    return f"{value / 1e9:.2f} GB/s" if metric == "bytes_per_s" else f"{value / 1e3:.1f}k req/s"


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = data["servers"]
    rows = [("one worker, server on core 0, wrk on core 1", data["pinned"], servers)]
    if "two_workers" in data:
        rows.append(("two workers, nothing pinned", data["two_workers"],
                     ["livecdn 1 worker", *[f"{s} 2 workers" for s in servers]]))
    scaled = "scaling" in data
    fig, axes = plt.subplots(len(rows) + scaled, 3, figsize=(15, 4 * (len(rows) + scaled)), squeeze=False)
    colors = {"livecdn": "#d62728", "nginx": "#2ca02c", "nginx-ofc": "#98df8a", "varnish": "#1f77b4",
              "trafficserver": "#ff7f0e"}
    also_color = "#9467bd"  # livecdn from another tree
    for row, (title, summary, labels) in enumerate(rows):
        for col, sname in enumerate(SCENARIOS):
            ax = axes[row][col]
            r = summary[sname]
            metric = r["metric"]
            scale = 1e9 if metric == "bytes_per_s" else 1e3
            values = [r[label]["median"] / scale for label in labels]
            bars = ax.bar(range(len(labels)), values, color=[colors.get(label.split()[0], also_color)
                                                               for label in labels])
            for i, label in enumerate(labels):
                if "1 worker" in label:
                    bars[i].set_alpha(0.45)
                for x in r[label]["runs"]:
                    ax.plot(i, x / scale, "k.", markersize=4)
            ax.set_xticks(range(len(labels)), [label.replace(" ", "\n", 1) for label in labels], fontsize=7)
            ax.set_ylabel("GB/s" if metric == "bytes_per_s" else "thousand req/s")
            ax.set_title(f"{SCENARIOS[sname]['label']}\n{title}", fontsize=9)
            for i, v in enumerate(values):
                ax.text(i, v, f"{v:.2f}" if metric == "bytes_per_s" else f"{v:.1f}", ha="center",
                        va="bottom", fontsize=8)
    if scaled:
        scaling = data["scaling"]["pipelined"]
        labels = ["livecdn 1 worker", "livecdn 2 workers"]
        for ax, field, unit, title in (
                (axes[-1][0], "rps", "thousand req/s", "livecdn, 1 KiB playlist, pipelined client:\nthroughput"),
                (axes[-1][1], "per_server_core", "thousand req/s per busy server core",
                 "the same runs: throughput per core\nthe server kept busy")):
            values = [scaling[label][field] / 1e3 for label in labels]
            ax.bar(range(2), values, color=["#f4a3a3", "#d62728"])
            for i, v in enumerate(values):
                ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
            ax.set_xticks(range(2), [label.replace(" ", "\n", 1) for label in labels], fontsize=8)
            ax.set_ylabel(unit)
            ax.set_title(title, fontsize=9)
        axes[-1][2].axis("off")
    fig.suptitle("Cached hits served per second: livecdn edge, nginx proxy_cache (plain, open_file_cache), "
                 "Varnish, Traffic Server (medians; dots = runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def name_of(label: str) -> str:
    """A server label ("nginx-ofc 2 workers") as the report names it ("nginx + open_file_cache 2 workers")."""
    server, _, rest = label.partition(" ")
    return f"{NAMES.get(server, server)} {rest}".strip()


def block_tables(summary: dict[str, Any], base: str, labels: list[str]) -> list[str]:
    """Throughput, ratios (base ÷ each anchor, ÷ the best), p99 and origin requests of one block."""
    anchors_ = [label for label in labels if label != base]
    lines = ["| scenario | " + " | ".join(name_of(label) for label in labels) + " | best anchor (lowest ratio) |",
             "|---|" + "---:|" * (len(labels) + 1)]
    for sname, r in summary.items():
        m = r["metric"]
        lines.append(f"| {SCENARIOS[sname]['label']} | " + " | ".join(fmt(r[label]["median"], m) for label in labels)
                     + f" | {name_of(r['best'])} |")
    lines += ["", f"Ratios, {name_of(base)} ÷ each (median of per-run ratios):", "",
              "| scenario | " + " | ".join(f"÷ {name_of(label)}" for label in anchors_) + " | **÷ best** |",
              "|---|" + "---:|" * (len(anchors_) + 1)]
    for sname, r in summary.items():
        ratios = " | ".join(f"{r[f'ratio_{label}']:.2f}" for label in anchors_)
        lines.append(f"| {SCENARIOS[sname]['label']} | {ratios} | **{r['ratio_best']:.2f}** ({name_of(r['best'])}) |")
    lines += ["", "wrk's p99 latency, throughput per core the server kept busy (its CPU seconds over wall seconds: "
              "this machine is shared, and a pinned server gets at most its core), and origin requests per run "
              "(playlist + segment; the origin counts each cache's requests on a port of its own); medians "
              "over runs:", "",
              "| scenario | " + " | ".join(name_of(label) for label in labels) + " |",
              "|---|" + "---:|" * len(labels)]
    for sname, r in summary.items():
        for what, cell in (("p99", lambda x: f"{x['p99_ms']:.2f} ms"),
                           ("per busy core", lambda x, m=r["metric"]: fmt(x["per_core"], m)),
                           ("origin requests", lambda x: f"{x['origin_playlist']:.0f} + {x['origin_segment']:.0f}")):
            lines.append(f"| {SCENARIOS[sname]['label']}, {what} | " + " | ".join(cell(r[label]) for label in labels)
                         + " |")
    lines += ["", "Per-run ratios: " + "; ".join(
        f"{sname} " + ", ".join(f"÷ {name_of(label)} {r[f'ratios_{label}']}" for label in anchors_)
        for sname, r in summary.items()) + "."]
    return lines


def report(data: dict[str, Any], path: Path) -> None:
    """The run's dated section at the top of RESULTS.md (older sections stay below it)."""
    pinned, v = data["pinned"], data["versions"]
    anchor_labels = [s for s in data["servers"] if s not in data["also"] and s != "livecdn"]
    lines = [
        f"Measured by `benchmarks/speed.py{' --quick' if data['quick'] else ''}"
        f"{' --pinned-only' if 'two_workers' not in data else ''}` "
        f"({data['runs']} rotating rounds of {data['duration']:g} s per server and scenario).",
        "",
        f"Machine: {data['machine']}. {v['nginx']}; {v['varnish']}; {v['trafficserver']}; {v['wrk']}.",
        "",
        "Every server is an HLS edge in front of the same origin (`benchmarks/speed/origin.py`): live "
        "playlists fresh 1 s, segments kept long; nginx `proxy_cache` with `proxy_cache_lock` and "
        "`use_stale updating` + `background_update` (files, sendfile); nginx + open_file_cache, the same with "
        "`open_file_cache max=10000 inactive=60s; open_file_cache_valid 1s;`; Varnish malloc storage; "
        "Traffic Server 9 with its RAM cache, `cache.config` freshness (`ttl-in-cache`: playlists 1 s, "
        "segments a year), read-while-writer and stale-on-write-lock-failure (`benchmarks/speed/trafficserver/`); "
        "livecdn's edge as shipped (policy on, disk tier on, `--no-access-log`). wrk: 64 connections; one thread "
        "for (a) and (c), two for (b). (c) is `benchmarks/speed/viewers.lua`: sessions of master playlist, "
        "media playlist, the three newest 512 KiB segments, three more playlist reloads each followed by any "
        "new segment.",
        "",
        "### One worker, server pinned to core 0, wrk to core 1",
        "",
        *block_tables(pinned, "livecdn", ["livecdn", *anchor_labels]),
        "",
    ]
    if "two_workers" in data:
        two = data["two_workers"]
        lines += ["### Two workers, nothing pinned (wrk, two threads, shares the two cores)", "",
                  "livecdn 1 worker beside them: " + "; ".join(
                      f"{SCENARIOS[sname]['label']} {fmt(r['livecdn 1 worker']['median'], r['metric'])} "
                      f"(2 workers ÷ 1: {r['livecdn 2 workers']['median'] / r['livecdn 1 worker']['median']:.2f})"
                      for sname, r in two.items() if r["livecdn 1 worker"]["median"]) + ".", "",
                  *block_tables(two, "livecdn 2 workers", ["livecdn 2 workers",
                                                           *[f"{s} 2 workers" for s in anchor_labels]]), ""]
    if "scaling" in data:
        sc = data["scaling"]["pipelined"]
        one, both = sc["livecdn 1 worker"], sc["livecdn 2 workers"]
        efficiency = both["per_server_core"] / one["per_server_core"] if one["per_server_core"] else 0.0
        lines += ["### Scaling: livecdn with two workers against one (pipelined client, nothing pinned)", "",
                  "wrk, one thread, sends 16 pipelined requests per write (`benchmarks/speed/pipelined.lua`), "
                  "so it needs much less CPU per request than the server. Cores busy are CPU seconds over "
                  "wall seconds, read from /proc for the server's process group and from wrk's rusage.", "",
                  "| | 1 worker | 2 workers | 2w ÷ 1w |", "|---|---:|---:|---:|",
                  f"| 1 KiB playlist, req/s | {one['rps'] / 1e3:.1f}k | {both['rps'] / 1e3:.1f}k | "
                  f"**{both['rps'] / one['rps'] if one['rps'] else 0:.2f}** (per run "
                  f"{sc['ratios_livecdn 1 worker']}) |",
                  f"| server cores busy | {one['server_cores']:.2f} | {both['server_cores']:.2f} | |",
                  f"| wrk cores busy | {one['client_cores']:.2f} | {both['client_cores']:.2f} | |",
                  f"| req/s per busy server core | {one['per_server_core'] / 1e3:.1f}k | "
                  f"{both['per_server_core'] / 1e3:.1f}k | {efficiency:.2f} |",
                  "", "With two workers the server and wrk together kept "
                  f"{both['server_cores'] + both['client_cores']:.2f} "
                  f"of this machine's {os.cpu_count()} cores busy, and the two workers had "
                  f"{both['server_cores']:.2f} cores between them: the throughput ratio is bounded by the cores "
                  f"the workers got. Per busy server core two workers serve {efficiency:.2f}× what one does.", ""]
    for other in data["also"]:
        lines += [f"### This checkout against {other} (another source tree, same runs)", "",
                  f"`--also-tree`: {other} ran from `{data['trees'][other]}`, in turn with this checkout's "
                  "livecdn, on the same core and under the same load.", "",
                  f"| scenario | livecdn, 1 worker pinned | {other} | ÷ |", "|---|---:|---:|---:|"]
        for sname, r in pinned.items():
            lines.append(f"| {SCENARIOS[sname]['label']} | {fmt(r['livecdn']['median'], r['metric'])} | "
                         f"{fmt(r[other]['median'], r['metric'])} | **{r[f'ratio_{other}']:.2f}** |")
        lines.append("")
    blocks = [data[k] for k in ("pinned", "two_workers", "scaling") if k in data]
    steals = [s for block_ in blocks for r in block_.values() for k, v in r.items()
              if isinstance(v, dict) for s in v["steal"]]
    bad = [k for block_ in blocks for r in block_.values() for k, v in r.items()
           if isinstance(v, dict) and (v["non2xx"] or v["errors"])]
    lines += [f"Steal: median {statistics.median(steals):.1%}, worst {max(steals):.1%} of CPU time over the "
              f"kept runs (a run above {HIGH_STEAL:.0%} is run again, up to {MAX_RETRIES} times). "
              + (f"Runs with non-2xx answers or socket errors: {sorted(set(bad))}." if bad else
                 "No run had non-2xx answers or socket errors."),
              "", "![chart](speed.png)", "",
              f"Raw figures: `{data['json']}`."]
    if data.get("notes"):
        lines += ["", "#### Notes", "", *data["notes"]]
    add_section(path, f"Speed: livecdn edge beside nginx, nginx + open_file_cache, Varnish and Traffic Server, "
                      f"{data['date']}", "\n".join(lines))


# --- main ------------------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 s runs, 2 of each")
    p.add_argument("--runs", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--pinned-only", action="store_true", help="the one-worker pinned block alone")
    p.add_argument("--wait", type=float, default=600, help="seconds to wait for other benchmarks to finish")
    add_also_tree(p)
    args = p.parse_args()
    runs = args.runs or (2 if args.quick else 3)
    duration = args.duration or (5.0 if args.quick else 10.0)
    if (os.cpu_count() or 1) < 2:
        log("speed.py needs two cores: one for the server, one for wrk")
        return 2
    ensure_tools()
    wait_for_quiet(args.wait)
    trees = {"livecdn": ROOT} | ({tree_label(args.also_tree): args.also_tree} if args.also_tree else {})
    also = list(trees)[1:]
    names = [SERVERS[0], *also, *SERVERS[1:]]
    anchor_names = list(SERVERS[1:])
    raw: dict[str, Any] = {}
    try:
        with workspace("speed") as procs:
            servers = Servers(procs, trees, names)
            servers.start_origin()
            log("one worker each, servers on core 0, wrk on core 1")
            raw["pinned"] = block(servers, [(s, s, 1) for s in names], runs, duration, "0", "1", None)
            if not args.pinned_only:
                log("two workers each, nothing pinned")
                raw["two_workers"] = block(servers, [("livecdn 1 worker", "livecdn", 1),
                                                     *[(f"{s} 2 workers", s, 2) for s in names]],
                                           runs, duration, None, None, 2)
                log("livecdn, one worker against two, nothing pinned, pipelined client")
                raw["scaling"] = block(servers, [("livecdn 1 worker", "livecdn", 1),
                                                 ("livecdn 2 workers", "livecdn", 2)],
                                       runs, duration, None, None, 1, SCALING)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    now = dt.datetime.now().astimezone()
    json_path = result_path("speed", "-quick" if args.quick else "")
    data: dict[str, Any] = {
        "date": now.strftime("%Y-%m-%d %H:%M %Z"), "quick": args.quick, "runs": runs, "duration": duration,
        "machine": machine(), "versions": anchors.versions(), "json": str(json_path.relative_to(ROOT)),
        "servers": names, "also": also, "trees": {name: str(tree) for name, tree in trees.items()},
        "pinned": summarize(raw["pinned"], "livecdn", [*anchor_names, *also]),
        "raw": raw,
    }
    if "two_workers" in raw:
        data["two_workers"] = summarize(raw["two_workers"], "livecdn 2 workers",
                                        [*[f"{s} 2 workers" for s in anchor_names],
                                         *[f"{s} 2 workers" for s in also]])
        data["scaling"] = summarize(raw["scaling"], "livecdn 2 workers", ["livecdn 1 worker"])
    save("speed", data, path=json_path)
    report(data, HERE / "RESULTS.md")
    chart(data, HERE / "speed.png")
    print(json.dumps({k: {s: {kk: vv for kk, vv in r.items() if kk.startswith("ratio_") or kk in ("metric", "best")}
                          for s, r in data[k].items()} for k in ("pinned", "two_workers", "scaling") if k in data}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
