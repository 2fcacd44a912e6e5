"""Validators and byte ranges, as players send them."""

from __future__ import annotations

import pytest

from livecdn.front.negotiate import etag_matches, parse_range


@pytest.mark.parametrize(("header", "size", "expected"), [
    (None, 100, None),
    ("bytes=0-9", 100, (0, 10)),
    ("bytes=90-", 100, (90, 100)),
    ("bytes=90-200", 100, (90, 100)),  # clipped to the body
    ("bytes=-10", 100, (90, 100)),
    ("bytes=-200", 100, (0, 100)),
    ("bytes=100-", 100, False),  # starts past the end: 416
    ("bytes=100-120", 100, False),
    ("bytes=-0", 100, False),
    ("bytes=-5", 0, False),
    ("bytes=5-2", 100, None),  # invalid: ignored, whole body
    ("bytes=a-b", 100, None),
    ("items=0-9", 100, None),
    ("bytes=0-1,5-6", 100, None),  # several ranges: whole body
    ("bytes=5", 100, None),
])
def test_parse_range(header: str | None, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "etag", "expected"), [
    ('"a"', '"a"', True),
    ('W/"a"', '"a"', True),  # weak comparison
    ('"b", "a"', 'W/"a"', True),
    ("*", '"a"', True),
    ('"b"', '"a"', False),
    ('"a', '"a"', False),
])
def test_etag_matches(header: str, etag: str, expected: bool) -> None:
    assert etag_matches(header, etag) is expected
