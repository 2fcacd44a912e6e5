"""Shared fixtures: a fake origin and in-process CDN stacks, always cleaned up."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.cdn import Stack
from tests.fakeorigin import FakeOrigin
from tests.h2client import H2Client

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


@pytest.fixture
async def h2_client(stack: Stack) -> AsyncIterator[H2Client]:
    """A raw HTTP/2 client (prior knowledge) connected to the stack's edge."""
    c = await H2Client().connect(stack.edges[0].port)
    try:
        yield c
    finally:
        await c.close()
