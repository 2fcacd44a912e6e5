"""Counting playlist parses: every text `m3u8.loads` is given, so a test can say how many there were."""

from __future__ import annotations

import m3u8
import pytest

__all__ = ["count_loads"]


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on (until the test ends), every text `m3u8` parses is appended to the returned list."""
    seen: list[str] = []
    real = m3u8.loads

    def counting(content: str, *args: object, **kwargs: object) -> m3u8.M3U8:
        seen.append(content)
        return real(content, *args, **kwargs)

    monkeypatch.setattr(m3u8, "loads", counting)
    return seen
