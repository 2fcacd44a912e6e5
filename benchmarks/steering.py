"""Issue 15's failover figures: hls.js through router and edge-1, edge-1 killed or SIGSTOPped mid-play.

    .venv/bin/python benchmarks/steering.py [--runs N] [--only steer-kill,steer-stop,plain-kill] [--ttl S] [--phase S]

Each run starts a fresh CDN (built-in ffmpeg origin, 2 s segments, one shield,
two edges, the router; every node its own process, `tests/cdn.py run_nodes`),
plays the router's play URL in headless Chromium with hls.js for 12 s, fails
edge-1 (`kill -KILL` or `kill -STOP`; with `--phase S`, S seconds after the
player's next steering reload), plays 24 s more, and reports what the
viewer saw after the failure: the time to the first segment from another
edge, the longest stall, the media buffered ahead when the edge failed,
network errors (and those in the first 3 s); then the median of each case.
`plain-kill` is the before-state: the same CDN without steering. The harness
and the figures are the tests' own (`tests/failover.py`), so the script
measures exactly what the tests pin. Nothing in the harness needs steering:
copied into a checkout of old main, `--only plain-kill` runs there too. Bounded: one player at a time, at most
`MAX_RUNS` runs per case (about 70 s each).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' harness, from this checkout

from lib.report import header, save  # noqa: E402
from tests.cdn import run_nodes, topology_toml  # noqa: E402
from tests.failover import failover_figures, play_through_failure  # noqa: E402

CASES = {"steer-kill": (True, "KILL"), "steer-stop": (True, "STOP"), "plain-kill": (False, "KILL")}
MAX_RUNS = 5  # each run is a CDN start and a 36 s play: a shared 2-core machine's patience


def median(values: Iterable[float | None]) -> float | None:
    """The median, a run that never switched (None) counting as the longest."""
    known = list(values)
    if not known:
        return None
    ordered = sorted(known, key=lambda v: float("inf") if v is None else v)
    return ordered[len(ordered) // 2]


def run(case: str, ttl: int, phase: float | None) -> dict[str, Any]:
    steer, how = CASES[case]
    with tempfile.TemporaryDirectory(prefix="livecdn-steering-") as tmp:
        config = Path(tmp) / "cdn.toml"
        config.write_text(topology_toml(origin={"mode": "ffmpeg", "target_duration": 2, "window": 6},
                                        steering_ttl=ttl if steer else None))
        with run_nodes(config) as cdn:
            edge1 = next(n for n in cdn["nodes"] if n["name"] == "edge-1")
            r = play_through_failure(cdn, f"kill -{how} {cdn['procs']['edge-1'].pid}", Path(tmp), phase)
        return failover_figures(r, urllib.parse.urlsplit(edge1["url"]).netloc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1, help=f"runs per case (1..{MAX_RUNS})")
    ap.add_argument("--only", default=",".join(CASES), help="cases, comma-separated")
    ap.add_argument("--ttl", type=int, default=4, help="steering TTL, seconds")
    ap.add_argument("--phase", type=float, default=None,
                    help="fail edge-1 this many seconds after a steering reload (default: after 12 s of play, "
                         "wherever that falls in the TTL)")
    args = ap.parse_args()
    cases = args.only.split(",")
    if not 1 <= args.runs <= MAX_RUNS or not set(cases) <= set(CASES) or args.ttl < 1 \
            or not 0 <= (args.phase or 0) < args.ttl:
        ap.error(f"--runs 1..{MAX_RUNS}, --only of {', '.join(CASES)}, --ttl >= 1, --phase 0..ttl")
    rows = []
    for case in cases:
        for i in range(args.runs):
            figures = run(case, args.ttl, args.phase)
            rows.append({"case": case, "run": i + 1, **figures})
            print(f"{case:<11} run {i + 1}: switch {figures['switch_s']} s, longest stall "
                  f"{figures['longest_stall_s']} s (buffer ahead {figures['buffer_ahead_s']} s), network errors "
                  f"{figures['network_errors']} ({figures['errors_first_3s']} in the first 3 s), fatal "
                  f"{figures['fatal'] or 'none'}", flush=True)
    medians = {case: {k: median(r[k] for r in rows if r["case"] == case)
                      for k in ("switch_s", "longest_stall_s", "buffer_ahead_s")} for case in cases}
    for case, m in medians.items():
        print(f"{case:<11} median of {args.runs}: switch {m['switch_s']} s, longest stall {m['longest_stall_s']} s, "
              f"buffer ahead {m['buffer_ahead_s']} s")
    report = {**header(False, ttl=args.ttl, phase_s=args.phase, segment_s=2, played_before_s=12, played_after_s=24),
              "runs": rows,
              "medians": medians}
    save("steering", report)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
