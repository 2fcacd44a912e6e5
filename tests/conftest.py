"""Shared fixtures: a fake origin and in-process CDN stacks, always cleaned up."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin

pytest_plugins = ["tests.playbook"]


@pytest.fixture
async def origin() -> AsyncIterator[FakeOrigin]:
    o = FakeOrigin()
    await o.start()
    try:
        yield o
    finally:
        await o.stop()


@pytest.fixture
async def stack(origin: FakeOrigin) -> AsyncIterator[Stack]:
    """One shield and one edge in front of the fake origin."""
    s = Stack(origin.url)
    try:
        yield await s.start()
    finally:
        await s.stop()
