"""The disk tier's records: what an object keeps across processes, and records of older versions."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from livecdn.cache.disk import FILE_THRESHOLD, DiskStore
from livecdn.cache.freshness import Lifetime
from livecdn.cache.stored import Stored
from livecdn.media.kinds import NameKind
from livecdn.media.playlist import read

LIFETIME = Lifetime(3600.0, 2.0, 30.0)  # long enough that diskcache keeps the record for the test
PLAYLIST = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nseg7.ts\n"


@pytest.fixture
async def disk(tmp_path: Path) -> AsyncIterator[DiskStore]:
    store = DiskStore(str(tmp_path / "disk"), 64 << 20)
    try:
        yield store
    finally:
        store.close()


async def test_a_playlist_comes_back_with_its_kind_and_without_its_manifest(disk: DiskStore) -> None:
    obj = Stored("/live/master.m3u8", 200, (("etag", '"m"'),), PLAYLIST, time.time(), LIFETIME, NameKind.PLAYLIST,
                 read("/live/master.m3u8", PLAYLIST))
    await disk.put(obj)
    hit = await disk.get(obj.key)
    assert hit is not None and hit.file is None
    back = hit.obj
    assert (back.key, back.status, back.headers, back.body, back.born, back.lifetime, back.kind) == (
        obj.key, obj.status, obj.headers, obj.body, obj.born, obj.lifetime, NameKind.PLAYLIST)
    assert back.manifest is None  # not kept: the fill that revalidates it reads it again


async def test_a_large_body_comes_back_as_a_file(disk: DiskStore) -> None:
    body = b"x" * FILE_THRESHOLD
    obj = Stored("/live/seg1.ts", 200, (), body, time.time(), LIFETIME, NameKind.MEDIA)
    await disk.put(obj)
    hit = await disk.get(obj.key)
    assert hit is not None and hit.file is not None
    try:
        assert hit.obj.body == b"" and hit.obj.size == len(body) and hit.obj.kind is NameKind.MEDIA
        assert hit.file.read() == body
    finally:
        hit.file.close()


def _record(disk: DiskStore, key: str, kind: str) -> None:
    """A record as an earlier version wrote it: the kind a playlist's body said, not its name's."""
    lt = LIFETIME
    meta = {"status": 200, "headers": [["ETag", '"old"']], "born": time.time(), "kind": kind, "size": len(PLAYLIST),
            "lifetime": [lt.fresh, lt.stale_while_revalidate, lt.stale_if_error, lt.store]}
    disk._cache.set(key, PLAYLIST, expire=3600, tag=json.dumps(meta))  # noqa: SLF001 - writing an old format


@pytest.mark.parametrize(("written", "read_as"), [
    ("master", NameKind.PLAYLIST), ("live", NameKind.PLAYLIST), ("ended", NameKind.PLAYLIST),
    ("media", NameKind.MEDIA), ("other", NameKind.OTHER),
    ("playlist", NameKind.PLAYLIST),  # as this version writes it
])
async def test_records_of_earlier_versions_stay_readable(disk: DiskStore, written: str, read_as: NameKind) -> None:
    _record(disk, "/live/a.m3u8", written)
    hit = await disk.get("/live/a.m3u8")
    assert hit is not None and hit.obj.kind is read_as and hit.obj.body == PLAYLIST


async def test_a_record_of_an_unknown_kind_is_an_error_the_engine_counts_as_a_miss(disk: DiskStore) -> None:
    _record(disk, "/live/a.m3u8", "hologram")
    with pytest.raises(ValueError, match="hologram"):
        await disk.get("/live/a.m3u8")


async def test_a_drop_removes_what_it_matches_and_counts_it(disk: DiskStore) -> None:
    small = b"x" * 100
    large = b"y" * (FILE_THRESHOLD + 1)  # a body kept as its own file goes too
    for key, body in (("/a/1.ts", small), ("/a/2.ts", large), ("/b/1.ts", small)):
        await disk.put(Stored(key, 200, (), body, time.time(), LIFETIME, NameKind.MEDIA))
    assert await disk.drop(lambda k: k.startswith("/a/")) == 2
    assert await disk.get("/a/1.ts") is None and await disk.get("/a/2.ts") is None
    assert await disk.get("/b/1.ts") is not None
    assert await disk.drop(lambda k: k.startswith("/a/")) == 0  # nothing left to count twice
