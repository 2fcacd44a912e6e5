"""A benchmark made of figure scripts: each runs alone, or with its siblings from one driver.

    SCRIPT [--quick] [--only a,b] [--head | --tree DIR]

Nodes run from this checkout, from its last commit exported into the temp
dir (`--head`: one consistent revision while the working tree is edited), or
from any other tree (`--tree`); the revision is in the report. Prints one
table per figure, then one JSON line (without per-run details), and writes
the whole report to benchmarks/results/BENCH-<date>[-quick][-partial].json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from lib.procs import Processes, workspace
from lib.report import header, save, without
from lib.trees import export_head, revision, source_tree

__all__ = ["Figure", "main"]


@dataclass(frozen=True)
class Figure:
    """One figure: how to run it (quick or not), how to print it, which keys are per-run details."""

    name: str
    run: Callable[[Processes, aiohttp.ClientSession, bool], Awaitable[dict[str, Any]]]
    show: Callable[[dict[str, Any]], None]
    details: tuple[str, ...] = ("runs",)  # left out of the final line, kept in the file


async def _run(procs: Processes, figures: list[Figure], quick: bool) -> dict[str, Any]:
    report = header(quick, revision=revision(procs.tree), load_at_start=os.getloadavg())
    async with aiohttp.ClientSession() as session:
        for fig in figures:
            report[fig.name] = await fig.run(procs, session, quick)
            fig.show(report[fig.name])
    return report


def main(bench: str, figures: list[Figure], description: str, whole: bool = True) -> int:
    """Parse the command line, run the chosen figures, save; `whole`: `figures` are all of `bench`'s."""
    names = [f.name for f in figures]
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="shorter runs, one of each")
    p.add_argument("--only", default=",".join(names), help=f"comma-separated subset of {','.join(names)}")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--head", action="store_true",
                     help="run the nodes from the last commit (git archive HEAD into the temp dir), "
                          "not the working tree others may be editing")
    src.add_argument("--tree", type=source_tree, help="run the nodes from this source tree")
    args = p.parse_args()
    only = args.only.split(",")
    unknown = sorted(set(only) - set(names))
    if unknown:
        p.error(f"--only {args.only!r}: no figure {', '.join(unknown)} (figures: {', '.join(names)})")
    chosen = [f for f in figures if f.name in only]
    try:
        with workspace(bench) as procs:
            if args.tree:
                procs.tree = args.tree
            elif args.head:
                procs.tree = export_head(procs.workdir)
            sys.path.insert(0, str(procs.tree))  # in-process figures import the measured tree's code
            report = asyncio.run(_run(procs, chosen, args.quick))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        return 130
    partial = not whole or len(chosen) < len(figures)
    save(bench, report, ("-quick" if args.quick else "") + ("-partial" if partial else ""))
    print(json.dumps(without(report, [(f.name, d) for f in chosen for d in f.details])), flush=True)
    return 0
