"""What one memory hit costs the edge's Python, in-process: instructions (callgrind) and microseconds.

    .venv/bin/python benchmarks/hitpath.py [--also-tree PATH] [--quick]

`tools/hitloop.py` feeds one-request reads to a player connection of an edge
(engine, front, policy; no sockets, no access log) from a given source tree.
Instructions per hit come from two runs under `valgrind --tool=callgrind`
with different numbers of hits (their difference, so start-up cancels out):
they are the same whatever else the machine does, which makes a before/after
comparison of a few percent trustworthy on a noisy machine. Microseconds per
hit (median of passes, pinned to one core when `taskset` exists) are given
for scale. Needs Debian's valgrind for the instruction counts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lib.procs import ROOT
from lib.report import header, save
from lib.trees import add_also_tree, label, revision

BENCH = Path(__file__).resolve().parent
RUN_TIMEOUT = 600.0  # one pass under callgrind runs ~50x slower than without


def hitloop(tree: Path, hits: int, reps: int, *, callgrind: Path | None = None, signed: bool = False) -> dict[str, Any]:
    """`tools/hitloop.py` from `tree`; `signed`: every read carries a signed URL (`benchmarks/tokens.py`)."""
    # A fixed hash seed: dictionary work, and so the instruction count, is then the same run to run.
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{BENCH}", "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "tools.hitloop", "--hits", str(hits), "--reps", str(reps),
           *(["--signed"] if signed else [])]
    if callgrind is not None:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind}", *cmd]
    elif shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    out = subprocess.run(cmd, cwd=BENCH, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if callgrind is not None:
        collected = re.search(r"Collected : (\d+)", out.stderr)
        if collected is None:
            raise RuntimeError(f"callgrind said nothing of its count:\n{out.stderr[-2000:]}")
        result["instructions"] = int(collected.group(1))
    return result


def measure(tree: Path, quick: bool, work: Path, signed: bool = False) -> dict[str, Any]:
    few, many = (2_000, 12_000) if quick else (2_000, 22_000)
    out: dict[str, Any] = {"tree": str(tree), "revision": revision(tree)}
    wall = hitloop(tree, 20_000 if quick else 100_000, 3 if quick else 7, signed=signed)
    out["us_per_hit"] = wall["us_per_hit"]
    if shutil.which("valgrind"):
        a = hitloop(tree, few, 1, callgrind=work / "few.out", signed=signed)
        b = hitloop(tree, many, 1, callgrind=work / "many.out", signed=signed)
        out["instructions_per_hit"] = round((b["instructions"] - a["instructions"]) / (many - few))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer hits and passes")
    add_also_tree(p)
    args = p.parse_args()
    trees = {"livecdn": ROOT, **({label(args.also_tree): args.also_tree} if args.also_tree else {})}
    report = header(args.quick, trees={}, valgrind=bool(shutil.which("valgrind")))
    with tempfile.TemporaryDirectory(prefix="livecdn-hitpath-") as tmp:
        for name, tree in trees.items():
            report["trees"][name] = measure(tree, args.quick, Path(tmp))
    print(f"{'tree':24} {'instructions/hit':>17} {'us/hit':>8}")
    for name, r in report["trees"].items():
        print(f"{name:24} {r.get('instructions_per_hit', '-'):>17} {r['us_per_hit']:>8}")
    if args.also_tree and report["valgrind"]:
        ours, theirs = (report["trees"][n]["instructions_per_hit"] for n in trees)
        report["instructions_ratio"] = round(ours / theirs, 4)
        print(f"this checkout / {label(args.also_tree)}: {report['instructions_ratio']} of the instructions")
    save("hitpath", report, "-quick" if args.quick else "")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
