"""Issue #4 figures: the edge's guard, prefetch and per-client limits.

    .venv/bin/python benchmarks/guard.py [--quick] [--only attack,filter,prefetch] [--head | --tree DIR]

Three independent figures, each a script of its own that also runs alone:

1. attack (guard_attack.py): 100 viewers play through one edge while one
   client sends 100 000 random-name requests; origin cost, viewer stalls, a
   new stream's first request, with default limits and with the guard alone.
2. filter (guard_filter.py, in-process): false positives and filter memory
   of the guard fed a simulated 24 h stream.
3. prefetch (guard_prefetch.py): first viewer requests of new segments behind
   a slow origin, with and without `[guard] prefetch`.

Prints one table per figure, then one JSON line with every figure, also
written to benchmarks/results/guard-<date>[-quick][-partial].json. Every
process is started in its own process group and stopped on exit, error,
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import sys

import guard_attack
import guard_filter
import guard_prefetch
from lib.figures import main

FIGURES = [guard_attack.FIGURE, guard_filter.FIGURE, guard_prefetch.FIGURE]

if __name__ == "__main__":
    sys.exit(main("guard", FIGURES, "livecdn issue #4 figures: attack, guard filter, prefetch."))
