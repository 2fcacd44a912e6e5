"""Where every benchmark keeps its figures (benchmarks/results/NAME-DATE[SUFFIX].json),
and what each report starts with."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from lib.procs import BENCH

__all__ = ["RESULTS", "add_section", "header", "result_path", "save", "without"]

RESULTS = BENCH / "results"


def result_path(name: str, suffix: str = "") -> Path:
    """benchmarks/results/NAME-<now>SUFFIX.json (not written yet: a report may quote its own path)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    return RESULTS / f"{name}-{stamp}{suffix}.json"


def save(name: str, report: dict[str, Any], suffix: str = "", path: Path | None = None) -> Path:
    """Write `report` as JSON (to `path`, or a new result_path()), say where, and return the path."""
    path = path or result_path(name, suffix)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten to {path.relative_to(BENCH.parent)}")
    return path


def add_section(path: Path, title: str, body: str) -> None:
    """Put `## title` and `body` at the top of the Markdown file `path` (under its `#` preamble).

    RESULTS.md keeps every run's dated section, newest first; one of the same title is replaced (and moves up).
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    preamble, *sections = text.split("\n## ")
    sections = [s for s in sections if s.split("\n", 1)[0] != title]
    path.write_text("\n## ".join([preamble.rstrip("\n") + "\n", f"{title}\n\n{body.strip()}\n", *sections]))


def header(quick: bool, **extra: Any) -> dict[str, Any]:
    """The fields every report starts with: when, how much, on how many cores, and the caller's own."""
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "quick": quick, "cpus": os.cpu_count(),
            **extra}


def without(report: dict[str, Any], paths: list[tuple[str, ...]]) -> dict[str, Any]:
    """A copy of `report` without the per-run details at `paths` ("*" = every key), for the one-line summary."""
    out = json.loads(json.dumps(report))

    def drop(node: Any, path: tuple[str, ...]) -> None:
        if not isinstance(node, dict) or not path:
            return
        head, rest = path[0], path[1:]
        for key in (list(node) if head == "*" else [head]):
            if not rest:
                node.pop(key, None)
            else:
                drop(node.get(key), rest)

    for p in paths:
        drop(out, p)
    return out
