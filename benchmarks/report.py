"""Where every benchmark keeps its figures: benchmarks/results/NAME-DATE[SUFFIX].json."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

__all__ = ["save"]

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, report: dict[str, Any], suffix: str = "") -> Path:
    """Write `report` as JSON, say where, and return the path."""
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    path = RESULTS / f"{name}-{stamp}{suffix}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten to {path.relative_to(RESULTS.parent.parent)}")
    return path
