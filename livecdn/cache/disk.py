"""The disk tier: `diskcache`, bounded in bytes, shared by a node's worker processes.

One diskcache row per object: the body is the value (diskcache keeps bodies of
32 KiB and more as plain files, which the front sends with sendfile) and the
metadata rides in the row's tag, so body and metadata are written and evicted
together. Every call blocks, so each runs on the store's own thread pool,
never on the event loop.

The metadata keeps an object's kind by name; a playlist's manifest is not kept
(the fill that revalidates a copy read back from here reads it again, once).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import diskcache

from livecdn.cache.freshness import Lifetime
from livecdn.cache.stored import Stored
from livecdn.media.kinds import ManifestKind, NameKind

__all__ = ["DiskStore", "DiskHit", "DiskUnusable"]

# Bodies at least this large live in their own files and are served with
# sendfile; smaller ones sit in SQLite and come back as bytes.
FILE_THRESHOLD = 32 << 10
# Threads doing disk work: enough to overlap a few slow reads with writes,
# few enough that a burst of misses cannot starve the machine.
DISK_THREADS = 4
# Records written before kinds by name and by body were told apart give a
# playlist's body kind (master, live, ended): still a playlist, still readable.
_BODY_KINDS = frozenset(k.value for k in ManifestKind)
# Bytes written and removed when the store opens: a disk that is full, read-only
# or not ours fails this small write with a clear reason, rather than SQLite
# later with "unable to open database file".
PROBE_BYTES = 4096


class DiskUnusable(Exception):
    """The disk tier's directory cannot be used (the message says why, without the path)."""


class DiskHit:
    """A disk lookup result: the metadata, plus an open file for large bodies."""

    __slots__ = ("obj", "file")

    def __init__(self, obj: Stored, file: BinaryIO | None) -> None:
        self.obj = obj
        self.file = file


class DiskStore:
    """Async facade over one diskcache directory, created if missing.

    Raises:
        DiskUnusable: the directory cannot be created, written or opened (read-only,
            not a directory, no permission, full); the node then runs on memory alone.
    """

    def __init__(self, directory: str, size_limit: int) -> None:
        try:
            os.makedirs(directory, exist_ok=True)
            _probe(directory)
            self._cache = diskcache.Cache(directory, size_limit=size_limit,
                                          eviction_policy="least-recently-stored",
                                          disk_min_file_size=FILE_THRESHOLD)
        except FileExistsError as e:  # the path itself is a file: makedirs says only "File exists"
            raise DiskUnusable("Not a directory") from e
        except OSError as e:
            raise DiskUnusable(e.strerror or _first_line(e)) from e
        except sqlite3.Error as e:
            raise DiskUnusable(f"database: {_first_line(e)}") from e
        self._pool = ThreadPoolExecutor(DISK_THREADS, thread_name_prefix="livecdn-disk")

    async def get(self, key: str) -> DiskHit | None:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._get, key)

    async def put(self, obj: Stored) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._put, obj)

    async def drop(self, match: Callable[[str], bool]) -> int:
        """Remove every object whose key `match` accepts; returns how many (a scan of every key, off the loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._drop, match)

    def volume(self) -> int:
        """Bytes the tier holds, as diskcache counts them (its database and files); blocking."""
        return int(self._cache.volume())

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._cache.close()

    def _get(self, key: str) -> DiskHit | None:
        value, tag = self._cache.get(key, read=True, tag=True)
        if value is None or tag is None:
            return None
        meta = json.loads(tag)
        lt = Lifetime(*meta["lifetime"])
        if isinstance(value, (bytes, bytearray)):
            return DiskHit(_stored(key, meta, bytes(value), lt), None)
        return DiskHit(_stored(key, meta, b"", lt), value)

    def _drop(self, match: Callable[[str], bool]) -> int:
        # Another worker may delete the same key meanwhile: only what this call removed counts.
        return sum(1 for k in list(self._cache.iterkeys()) if isinstance(k, str) and match(k) and self._cache.delete(k))

    def _put(self, obj: Stored) -> None:
        meta = json.dumps({
            "status": obj.status, "headers": obj.headers, "born": obj.born, "kind": obj.kind.value,
            "size": obj.size, "lifetime": [obj.lifetime.fresh, obj.lifetime.stale_while_revalidate,
                                           obj.lifetime.stale_if_error, obj.lifetime.store],
        })
        self._cache.set(obj.key, obj.body, expire=max(1.0, obj.keep_until() - time.time()), tag=meta)


def _probe(directory: str) -> None:
    """Write and remove a small file in `directory` (raises OSError with the reason it cannot)."""
    path = os.path.join(directory, f".livecdn-probe-{os.getpid()}")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"\0" * PROBE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)


def _first_line(e: BaseException) -> str:
    return (str(e) or type(e).__name__).splitlines()[0][:200]


def _stored(key: str, meta: dict, body: bytes, lt: Lifetime) -> Stored:
    # Records written before names were kept lower-case spell them canonically.
    return Stored(key, meta["status"], tuple((name.lower(), value) for name, value in meta["headers"]), body,
                  meta["born"], lt, _name_kind(meta["kind"]), size=meta["size"])


def _name_kind(value: str) -> NameKind:
    """The kind a record gives; an unknown one raises ValueError (the engine treats it as a miss)."""
    return NameKind.PLAYLIST if value in _BODY_KINDS else NameKind(value)
