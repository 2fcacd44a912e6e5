"""Guard figure 2, in-process: the guard's false-positive rate and its filter memory over a day.

    .venv/bin/python benchmarks/guard_filter.py [--quick] [--head | --tree DIR]   # or guard.py --only filter

`edge.guard.Generations` at its fullest, and the real `StreamGuard.learn()`
path fed a simulated 24 h live stream, both imported from the measured tree.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from lib.figures import Figure, main
from lib.procs import Processes

__all__ = ["FIGURE"]

TARGET_DURATION = 2
WINDOW = 6
MASTER_EVERY = 30  # seconds: how often the simulated edge learns the master playlist again (its lifetime)
MEMORY_MARKS = {0, 1, 2, 3, 6, 12, 18, 24}  # hours at which the filters' size is read


@dataclass(frozen=True)
class Plan:
    fp_names: int
    hours: float


PLAN = Plan(1_000_000, 24.0)  # in-process and about a minute: --quick runs it whole too


def false_positives(contains: Callable[[str], bool], names: int, rng: random.Random,
                    directory: str) -> tuple[int, int]:
    """(hits, names tested): random never-announced names under `directory` that `contains` says it holds."""
    hits = 0
    for _ in range(names):
        if contains(f"{directory}{rng.getrandbits(64):016x}.ts"):
            hits += 1
    return hits, names


def filter_figure(plan: Plan) -> dict[str, Any]:
    """Run in-process, with the measured tree first on sys.path (lib/figures.py puts it there)."""
    from edge.guard import Generations, StreamGuard
    from livecdn.cache.freshness import Lifetime
    from livecdn.cache.stored import Stored
    from livecdn.config import GuardSettings, Rendition
    from livecdn.media.kinds import NameKind
    from livecdn.media.playlist import read
    from livecdn.origin.timeline import Timeline, master_playlist, media_playlist

    s = GuardSettings()
    rng = random.Random(4)
    started = time.monotonic()
    # Worst case: both generations at capacity (the next name rotates).
    g = Generations(s.names_per_generation, s.false_positive_rate)
    for i in range(2 * s.names_per_generation):
        g.add(f"/live/720p/seg{i}.ts")
    assert g.previous is not None and g.current.count == s.names_per_generation
    worst_hits, n = false_positives(g.__contains__, plan.fp_names, rng, "/live/720p/")

    # 24 h of a live stream through StreamGuard.learn(): 2 s segments, window 6, 2 renditions;
    # each media playlist learned once per target duration as each new segment appears, the
    # master every 30 s (its lifetime). An edge refreshes a live playlist about twice per target
    # duration; the extra refresh re-announces the same names, which a Bloom add leaves as is.
    guard = StreamGuard(s, None, "bench-guard")  # type: ignore[arg-type]  # learn() needs no engine
    renditions = (Rendition("720p", 2_000_000, 1280, 720), Rendition("360p", 600_000, 640, 360))
    timeline = Timeline(0.0, TARGET_DURATION, WINDOW)
    live = Lifetime(TARGET_DURATION / 2, 2.0, 30.0)
    master = master_playlist(renditions).encode()
    segments = int(plan.hours * 3600 / TARGET_DURATION)
    memory: list[dict[str, Any]] = []
    refused_window = 0
    learned = 0
    for seq in range(segments + 1):
        now = timeline.published_at(seq) + 0.01
        if seq * TARGET_DURATION % MASTER_EVERY == 0:
            guard.learn(Stored("/live/master.m3u8", 200, (), master, now, Lifetime(30, 2, 30), NameKind.PLAYLIST,
                               read("/live/master.m3u8", master)))
        for r in renditions:
            body = media_playlist(timeline, now)
            assert body is not None
            path, data = f"/live/{r.name}/index.m3u8", body.encode()
            guard.learn(Stored(path, 200, (), data, now, live, NameKind.PLAYLIST, read(path, data)))
            learned += 1
        hour = seq * TARGET_DURATION / 3600
        if hour in MEMORY_MARKS:
            streams = guard._streams  # noqa: SLF001 - the benchmark inspects the guard's state
            for r in renditions:  # the window just announced must never be refused
                names = streams[f"/live/{r.name}/"].names
                refused_window += sum(f"/live/{r.name}/seg{q}.ts" not in names
                                      for q in timeline.in_playlist(now))
            st = streams["/live/720p/"].names
            memory.append({"hour": int(hour), "bytes": guard.nbytes, "streams": guard.streams,
                           "generations": 2 if st.previous is not None else 1,
                           "current_names": st.current.count})
    stream = guard._streams["/live/720p/"].names  # noqa: SLF001
    real_hits, _ = false_positives(stream.__contains__, plan.fp_names, rng, "/live/720p/")
    rate = s.false_positive_rate
    return {
        "settings": {"false_positive_rate": rate, "names_per_generation": s.names_per_generation},
        "names_tested": n,
        "fp_worst": {"hits": worst_hits, "rate": worst_hits / n, "state": "both generations at capacity"},
        "fp_after_24h": {"hits": real_hits, "rate": real_hits / n,
                         "state": f"720p stream after {plan.hours:g} h ({stream.current.count} names in current "
                                  f"generation, previous {'full' if stream.previous is not None else 'none'})"},
        "goal_rate": 2 * rate,
        "memory": memory,
        "playlists_learned": learned,
        "window_names_refused": refused_window,
        "seconds": round(time.monotonic() - started, 1),
    }


def print_filter(fig: dict[str, Any]) -> None:
    goal = fig["goal_rate"]
    print(f"\n2. guard filter, in-process (default GuardSettings: fp rate "
          f"{fig['settings']['false_positive_rate']:g}/generation, "
          f"{fig['settings']['names_per_generation']} names/generation)")
    for label, key in (("false positives, worst case", "fp_worst"), ("false positives, after 24 h", "fp_after_24h")):
        f = fig[key]
        verdict = "ok" if f["rate"] <= goal else "OVER"
        print(f"  {label:<30} {f['hits']}/{fig['names_tested']} = {f['rate'] * 100:.4f}%   goal <= "
              f"{goal * 100:.2f}%: {verdict}   ({f['state']})")
    print(f"  filter memory over a simulated 24 h stream ({fig['playlists_learned']} media playlists learned, "
          f"{fig['seconds']:g} s):")
    print(f"  {'hour':>6} {'bytes':>9} {'streams':>8} {'720p generations':>17} {'names in current':>17}")
    for m in fig["memory"]:
        print(f"  {m['hour']:>6} {m['bytes']:>9} {m['streams']:>8} {m['generations']:>17} {m['current_names']:>17}")
    print(f"  window names refused at those marks: {fig['window_names_refused']} (must be 0); goal: memory flat")


async def run(_procs: Processes, _session: aiohttp.ClientSession, _quick: bool) -> dict[str, Any]:
    return filter_figure(PLAN)


FIGURE = Figure("filter", run, print_filter, details=())

if __name__ == "__main__":
    sys.exit(main("guard", [FIGURE], __doc__.splitlines()[0], whole=False))
