"""What checking signed URLs costs an edge per request, in microseconds (goal: at most 1 us per hit).

    .venv/bin/python benchmarks/tokens.py [--quick]

Three figures, each the median of several passes (pinned to one core when
`taskset` exists):
- the check alone on a hit: `TokenGate.unwrap` for a token verified before
  (the memo: one dict lookup and three comparisons);
- the check of a token not seen yet (a viewer's first request: parse, HMAC-SHA256,
  constant-time compare);
- a whole memory hit through the front and listener (`tools/hitloop.py`), with
  and without signed URLs: their difference is what tokens add to a hit, in
  microseconds and (under callgrind, as `hitpath.py` counts them; the same
  whatever else the machine does) in instructions, also converted to
  microseconds at the unsigned hit's own rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hitpath import measure
from lib.procs import ROOT
from lib.report import header, save


def _passes(run: Any, n: int, reps: int) -> float:
    """Median microseconds per call of `run(n)` over `reps` passes."""
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        run(n)
        out.append((time.perf_counter() - started) / n * 1e6)
    return round(statistics.median(out), 3)


def gate_figures(n: int, reps: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from edge.tokens import TokenGate
    from livecdn.config import SigningKey, SigningSettings
    from livecdn.front.request import Request
    from livecdn.signing import sign

    key = SigningKey("bench", "bench-secret-0123456789")
    gate = TokenGate(SigningSettings((key, SigningKey("old", "old-secret-0123456789ab"))))
    now = time.time()
    target = sign("/live/720p/index.m3u8", key.id, key.secret.encode(), int(now) + 3600)
    request = Request("GET", target, "1.1", {}, True)

    def remembered(count: int) -> None:
        unwrap = gate.unwrap
        for _ in range(count):
            request.target = target  # the shell hands each request its own target
            unwrap(request, "127.0.0.1", now)

    fresh = [sign("/live/720p/index.m3u8", key.id, key.secret.encode(), int(now) + 3600 + i) for i in range(n)]

    def first(count: int) -> None:
        gate._verified.clear()
        unwrap = gate.unwrap
        for i in range(count):
            request.target = fresh[i]
            unwrap(request, "127.0.0.1", now)

    return {"us_per_remembered_token": _passes(remembered, n, reps),
            "us_per_new_token": _passes(first, min(n, 20_000), reps)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer calls and passes")
    args = p.parse_args()
    n, reps = (50_000, 3) if args.quick else (200_000, 7)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})  # the in-process figures; hitloop pins its own runs
    report = header(args.quick, valgrind=bool(shutil.which("valgrind")))
    report.update(gate_figures(n, reps))
    with tempfile.TemporaryDirectory(prefix="livecdn-tokens-") as tmp:
        plain, signed = (measure(ROOT, args.quick, Path(tmp), extra=s) for s in ((), ("--signed",)))
    report.update(unsigned_hit=plain, signed_hit=signed,
                  us_added_per_hit=round(signed["us_per_hit"] - plain["us_per_hit"], 3))
    print(f"{'token check on a hit (remembered token)':44} {report['us_per_remembered_token']:>8} us")
    print(f"{'token check, first request (HMAC-SHA256)':44} {report['us_per_new_token']:>8} us")
    print(f"{'whole memory hit, no signed URLs':44} {plain['us_per_hit']:>8} us"
          f"  {plain.get('instructions_per_hit', '-'):>8} instructions")
    print(f"{'whole memory hit, signed URL':44} {signed['us_per_hit']:>8} us"
          f"  {signed.get('instructions_per_hit', '-'):>8} instructions")
    if "instructions_per_hit" in plain:
        added = signed["instructions_per_hit"] - plain["instructions_per_hit"]
        rate = plain["us_per_hit"] / plain["instructions_per_hit"]
        report.update(instructions_added_per_hit=added, us_added_per_hit_by_instructions=round(added * rate, 3))
        print(f"{'signed URL adds to a hit':44} {report['us_added_per_hit_by_instructions']:>8} us"
              f"  {added:>8} instructions (at the unsigned hit's us per instruction)")
    save("tokens", report, "-quick" if args.quick else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
