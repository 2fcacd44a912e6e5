"""What finding a request's real client costs on the hit path (issue 13): microseconds and instructions.

    .venv/bin/python benchmarks/forwarded.py [--also-tree PATH] [--quick]

Two figures:

1. `ClientAddresses.resolve` alone, per call (median of passes, pinned to one
   core when `taskset` exists): an untrusted peer (what the listener skips
   altogether: it asks once per connection), a trusted balancer naming one
   client with X-Forwarded-For (the usual case; remembered addresses), the
   same with a Forwarded element, with a longer chain of hops (each header
   value is remembered with its client: a player sends the same one on every
   request), and with values never seen before (no memo: the walk itself).
2. The whole hit path (`tools/hitloop.py`, as `hitpath.py` runs it): a plain
   connection, and a trusted proxy's connection whose every request carries
   `X-Forwarded-For: PLAYER, HOP`; instructions per hit under callgrind when
   valgrind is there (the count does not move with the machine's load), and
   microseconds for scale. `--also-tree` adds a tree from before (its plain
   hit path only: it has no forwarding), so the cost of the check on plain
   connections shows too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hitpath import measure, print_hits
from lib.procs import ROOT
from lib.report import header, save
from lib.trees import add_also_tree, label

BENCH = Path(__file__).resolve().parent

# Each case: a peer, a header value; run in a child pinned to one core, this tree first on its path.
CASES = {
    "untrusted peer": ("198.51.100.9", "203.0.113.7"),
    "XFF, one client and a hop": ("10.0.0.1", "203.0.113.7, 10.0.0.2"),
    "Forwarded, one element": ("10.0.0.1", 'for=203.0.113.7;proto=https;by=10.0.0.1'),
    "XFF, four hops": ("10.0.0.1", "198.51.100.1, 203.0.113.7, 10.0.0.3, 10.0.0.2"),
    "XFF, IPv6 with a port": ("10.0.0.1", "[2001:db8::7]:4711, 10.0.0.2"),
}
CHILD = """
import json, statistics, sys, timeit
from livecdn.front.forwarded import FORWARDED, X_FORWARDED_FOR, ClientAddresses
cases, number, repeat = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
trusted = ["127.0.0.1/32", "10.0.0.0/8"]
xff, fwd = ClientAddresses(trusted, X_FORWARDED_FOR), ClientAddresses(trusted, FORWARDED)
out = {}
for name, (peer, value) in cases.items():
    addresses = fwd if value.startswith("for=") else xff
    times = timeit.repeat(lambda: addresses.resolve(peer, value), number=number, repeat=repeat)
    out[name] = {"us": round(statistics.median(times) / number * 1e6, 3), "client": addresses.resolve(peer, value)}
# Values never seen: every call walks and parses (the memos are cleared each time).
values = [f"203.0.{i // 250}.{i % 250}, 10.0.0.2" for i in range(number)]
def fresh():
    for v in values:
        xff._memo.clear()
        xff._named.clear()
        xff.resolve("10.0.0.1", v)
times = timeit.repeat(fresh, number=1, repeat=repeat)
out["XFF, values never seen (no memo)"] = {"us": round(statistics.median(times) / number * 1e6, 3),
                                              "client": xff.resolve("10.0.0.1", values[0])}
# For scale on a busy machine: one dictionary lookup, timed the same way.
lookup = {"10.0.0.1": 1}
times = timeit.repeat(lambda: lookup.get("10.0.0.1"), number=number, repeat=repeat)
out["(scale: one dict lookup in a lambda)"] = {"us": round(statistics.median(times) / number * 1e6, 3), "client": ""}
print(json.dumps(out))
"""


def resolve_costs(tree: Path, quick: bool) -> dict[str, Any]:
    number, repeat = (20_000, 3) if quick else (200_000, 7)
    cmd = [sys.executable, "-c", CHILD, json.dumps(CASES), str(number), str(repeat)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    out = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
                         capture_output=True, text=True, timeout=600, check=True)
    return dict(json.loads(out.stdout))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer calls, hits and passes")
    p.add_argument("--resolve-only", action="store_true", help="the per-call figures only (seconds, no valgrind)")
    add_also_tree(p)
    args = p.parse_args()
    report = header(args.quick, valgrind=bool(shutil.which("valgrind")))
    report["resolve"] = resolve_costs(ROOT, args.quick)
    print(f"{'ClientAddresses.resolve':44} {'us/call':>8}  client")
    for name, r in report["resolve"].items():
        print(f"{name:44} {r['us']:>8}  {r['client']}")
    hits: dict[str, Any] = {}
    if args.resolve_only:
        save("forwarded", report, "-resolve" + ("-quick" if args.quick else ""))
        print(json.dumps(report))
        return 0
    with tempfile.TemporaryDirectory(prefix="livecdn-forwarded-") as tmp:
        hits["plain connection"] = measure(ROOT, args.quick, Path(tmp))
        hits["trusted proxy, X-Forwarded-For"] = measure(ROOT, args.quick, Path(tmp), ("--forwarded",))
        if args.also_tree:
            hits[f"plain connection, {label(args.also_tree)}"] = measure(args.also_tree, args.quick, Path(tmp))
    report["hit_path"] = hits
    print()
    print_hits("hit path", hits, 44)
    save("forwarded", report, "-quick" if args.quick else "")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
