"""Source trees the nodes run from: this checkout, its last commit exported, or another checkout.

A tree is a directory with a `livecdn` package; children started from it
(lib/procs.py) import its code. Only the CLI (`python -m livecdn ROLE ...`)
is assumed, which every layout of the package has.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from lib.procs import ROOT

__all__ = ["add_also_tree", "export_head", "label", "revision", "source_tree"]

GIT_TIMEOUT = 10.0  # git answers these locally, in milliseconds


def source_tree(path: str) -> Path:
    """`path` resolved, if it is a tree `python -m livecdn` can run from (an argparse type)."""
    tree = Path(path).resolve()
    if not (tree / "livecdn" / "__main__.py").is_file():
        raise argparse.ArgumentTypeError(f"{path!r} is not a livecdn source tree (no livecdn/__main__.py)")
    return tree


def label(tree: Path) -> str:
    """How a second tree's server is named in figures: livecdn@<directory name>."""
    return f"livecdn@{tree.name}"


def add_also_tree(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--also-tree", type=source_tree, metavar="PATH",
                        help="also measure livecdn from this source tree, as 'livecdn@<dir name>', beside this "
                             "checkout, same load, in turn (before vs after a change)")


def _git(args: list[str], cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          timeout=GIT_TIMEOUT).stdout.strip()


def export_head(workdir: Path) -> Path:
    """The checkout's last commit (`git archive HEAD`) unpacked under `workdir`: one revision, whatever is edited."""
    rev = _git(["rev-parse", "--short", "HEAD"], ROOT)
    tree = workdir / f"head-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def revision(tree: Path) -> str:
    """The commit a tree runs ('+dirty' when its code differs from it), for the report."""
    if not (tree / ".git").exists():  # a checkout or worktree has one; an export has none
        return f"{tree.name} (exported tree)"
    try:
        rev = _git(["rev-parse", "--short", "HEAD"], tree)
        dirty = _git(["status", "--porcelain", "--", "edge", "livecdn", "shield"], tree)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")
