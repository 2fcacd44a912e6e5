"""Where a cached playlist hit's time goes in a running edge: instructions per hit, and the top functions.

    .venv/bin/python benchmarks/hitprofile.py [--h2] [--duration S] [--also-tree PATH]

Starts speed.py's origin and a livecdn edge (one worker, as shipped,
`--no-access-log`), warms its cached 1 KiB live playlist, then, under a
bounded load (wrk -t1 -c8 for `--duration` s, or h2load -c8 -m10 with
`--h2`, the client pinned to core 1, the edge to core 0):

- instructions per hit: the edge runs under `valgrind --tool=callgrind`;
  its counters are zeroed once it is warm (`callgrind_control -z`), dumped
  after the load (`-d`), and the total is divided by the answers the client
  counted. The whole process is counted: Python, uvloop, httptools, the
  userland side of each syscall. The count does not depend on what else
  the machine does, so a before/after of a few percent shows.
- where the time goes: the same edge without valgrind under the same client,
  sampled by py-spy (`pip install -e .[bench]`); the top Python functions by
  samples in the function itself (self) and with what it calls (total), and
  the C functions callgrind counted most instructions in.

Each tree (`--also-tree` adds one) is measured in turn. Writes
benchmarks/results/hitprofile-<date>[-h2].json.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lib.edges import Servers
from lib.procs import ROOT, workspace
from lib.report import header, save
from lib.trees import add_also_tree, label

PLAYLIST = "/static/live.m3u8"
CONNECTIONS = 8
STREAMS = 10  # HTTP/2 streams per connection (--h2)
READY_UNDER_VALGRIND = 300.0  # Python's start-up runs ~50x slower under callgrind
TOP = 15
# py-spy comes with the bench extra, into the venv this runs from (which need not be on PATH).
PYSPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def load(url: str, duration: float, h2: bool) -> int:
    """Run the client on core 1 for `duration` s; the answers it got (non-2xx would be a failed benchmark)."""
    if h2:
        cmd = ["h2load", "-c", str(CONNECTIONS), "-m", str(STREAMS), "-t", "1", "-D", f"{duration:g}", url]
    else:
        cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration:g}s", url]
    out = subprocess.run(["taskset", "-c", "1", *cmd], capture_output=True, text=True, timeout=duration + 120,
                         check=True).stdout
    if h2:
        m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
        if m is None or int(m.group(2)):
            raise RuntimeError(f"h2load failed:\n{out[-1500:]}")
        return int(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    if m is None or "Non-2xx" in out:
        raise RuntimeError(f"wrk failed:\n{out[-1500:]}")
    return int(m.group(1))


def warm(url: str, h2: bool) -> None:
    """A few hundred hits: the playlist cached, its plans and serialized heads built."""
    cmd = ["h2load", "-n", "300", "-c", "1", url] if h2 else ["curl", "-sS", "-o", "/dev/null", *[url] * 300]
    subprocess.run(cmd, capture_output=True, timeout=600, check=True)


def instructions(servers: Servers, name: str, duration: float, h2: bool) -> dict[str, Any]:
    """The edge under callgrind: instructions per hit over one bounded load, and its top C functions."""
    out = servers.tmp / f"{name}.callgrind"
    servers.start(name, 1, "0", wrap=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
                  ready_timeout=READY_UNDER_VALGRIND)
    try:
        url = servers.url(name, PLAYLIST)
        warm(url, h2)
        pid = servers.running[name].pid  # valgrind's: taskset execs it
        subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True, timeout=60)
        hits = load(url, duration, h2)
        subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True, timeout=60)
        dumps = sorted(servers.tmp.glob(f"{name}.callgrind.*"), key=lambda p: p.stat().st_mtime)
        text = dumps[-1].read_text()
        total = int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))  # type: ignore[union-attr]
        annotate = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", str(dumps[-1])],
                                  capture_output=True, text=True, timeout=120).stdout
    finally:
        servers.stop(name)
    return {"hits": hits, "instructions": total, "instructions_per_hit": round(total / hits),
            "c_functions": c_functions(annotate, total, hits)}


def c_functions(annotate: str, total: int, hits: int) -> list[dict[str, Any]]:
    """callgrind_annotate's self counts: the TOP functions, instructions per hit and share.

    Only userland is counted (the kernel's side of each read and write is not)."""
    rows = []
    for line in annotate.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(\S.*)$", line)
        if m is None or "PROGRAM TOTALS" in line:
            continue
        n = int(m.group(1).replace(",", ""))
        if n >= total * 0.99:
            continue  # a frame open while counters were zeroed and dumped (the loop, main): no self cost to read
        where = m.group(2)
        fn = where.split(":", 1)[1] if ":" in where else where
        rows.append({"function": fn.split(" [")[0][:80], "per_hit": round(n / hits), "share": round(n / total, 4)})
        if len(rows) == TOP:
            break
    return rows


def sampled(servers: Servers, name: str, duration: float, h2: bool) -> dict[str, Any]:
    """The edge without valgrind, sampled by py-spy under the same load: top Python functions."""
    servers.start(name, 1, "0")
    raw = servers.tmp / f"{name}.pyspy"
    try:
        url = servers.url(name, PLAYLIST)
        warm(url, h2)
        spy = subprocess.Popen([PYSPY, "record", "--pid", str(servers.running[name].pid), "--rate", "1000",
                                "--duration", f"{duration + 1:g}", "--format", "raw", "--nonblocking",
                                "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        hits = load(url, duration, h2)
        spy.wait(timeout=duration + 60)
    finally:
        servers.stop(name)
    return {"hits_per_s": round(hits / duration), **python_functions(raw.read_text())}


def python_functions(raw: str) -> dict[str, Any]:
    """py-spy's collapsed stacks ("frame;frame;... count"): samples per function, self and total."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [frame_name(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    return {"samples": samples,
            "self": [{"function": f, "share": round(n / samples, 4)} for f, n in own.most_common(TOP)],
            "total": [{"function": f, "share": round(n / samples, 4)} for f, n in total.most_common(TOP + 10)]}


def frame_name(frame: str) -> str:
    """`answer_now (livecdn/front/answers.py:148)` -> `answer_now (front/answers.py)`: per function, not line."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if m is None:
        return frame
    fn, path = m.groups()
    parts = Path(path).parts
    return f"{fn} ({'/'.join(parts[-2:])})"


def show(name: str, r: dict[str, Any]) -> None:
    print(f"\n== {name}: {r['instructions_per_hit']:,} instructions per hit ({r['hits']:,} hits under callgrind); "
          f"{r['hits_per_s']:,} hits/s without it (with py-spy sampling, client on the other core)")
    print("(py-spy's self time of Runner.run is the loop's own C code: polling, uvloop's reads and writes; a"
          " function's self time includes the C functions it calls, transport.writelines' write() among them)")
    print(f"{'Python function (py-spy, self)':62} {'share':>6}")
    for row in r["self"]:
        print(f"{row['function'][:62]:62} {row['share']:6.1%}")
    print(f"\n{'Python function (py-spy, with callees)':62} {'share':>6}")
    for row in r["total"]:
        print(f"{row['function'][:62]:62} {row['share']:6.1%}")
    print(f"\n{'C function (callgrind, self)':62} {'per hit':>8} {'share':>6}")
    for row in r["c_functions"]:
        print(f"{row['function'][:62]:62} {row['per_hit']:8,} {row['share']:6.1%}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--h2", action="store_true", help="HTTP/2 over h2c (h2load) instead of HTTP/1.1 (wrk)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per measurement")
    add_also_tree(p)
    args = p.parse_args()
    for tool in ("valgrind", PYSPY, "wrk", "h2load", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (apt-get install valgrind wrk nghttp2-client; pip install py-spy)")
    trees = {"livecdn": ROOT, **({label(args.also_tree): args.also_tree} if args.also_tree else {})}
    report = header(False, protocol="h2c" if args.h2 else "HTTP/1.1", duration=args.duration,
                    connections=CONNECTIONS, trees={})
    with workspace("livecdn-hitprofile-") as procs:
        servers = Servers(procs, trees, list(trees))
        servers.start_origin()
        for name in trees:
            report["trees"][name] = {**instructions(servers, name, args.duration, args.h2),
                                     **sampled(servers, name, args.duration, args.h2)}
            show(name, report["trees"][name])
    save("hitprofile", report, "-h2" if args.h2 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
