"""A node started on a bad disk (issue 11, item 5) serves from memory and says so.

A real `livecdn shield` process whose `disk_path` cannot be used: under a
file (not a directory; root cannot get past that), on a read-only tmpfs, on a
full one (both mounted in a private mount namespace, `unshare -m`, skipped
where that is not allowed). It must come up, log one line naming the path and
the reason (no traceback), report `"disk": "off: <reason>"` in /healthz, and
answer players from memory.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.cdn import ROOT, topology_toml
from tests.fakeorigin import FakeOrigin, body

# How long a shield process may take to answer /healthz (a cold Python start on a busy machine).
START_TIMEOUT = 30.0
SEGMENT = b"s" * 1000
# Start a shield process on this disk path, its command wrapped by a shell line: (player URL, admin URL, its log).
Start = Callable[..., Awaitable[tuple[str, str, Path]]]


def namespaces_allowed() -> bool:
    """Can this process mount a tmpfs in a mount namespace of its own (root, and unshare permitted)?"""
    with tempfile.TemporaryDirectory() as d:
        done = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(d)}"],
                              capture_output=True, check=False)
        return done.returncode == 0


@pytest.fixture
async def shield_of(origin: FakeOrigin, tmp_path: Path) -> AsyncIterator[Start]:
    """Start a shield process whose disk path is `disk`, in its own mount namespace after `setup` if given."""
    procs: list[asyncio.subprocess.Process] = []
    logs = tmp_path / "shield.log"

    async def start(disk: str, setup: str = "") -> tuple[str, str, Path]:
        text = topology_toml(origin=origin.url, shields=1, edges=1, router=False, cache={"disk_path": disk})
        config = tmp_path / "cdn.toml"
        config.write_text(text)
        shield = tomllib.loads(text)["shields"]["shield-1"]
        cmd = shlex.join([sys.executable, "-m", "livecdn", "shield", "--config", str(config), "--node", "shield-1",
                          "--log-level", "info"])
        shell = f"{setup} && exec {cmd}" if setup else f"exec {cmd}"
        argv = ["unshare", "-m", "sh", "-c", shell] if setup else ["sh", "-c", shell]
        with logs.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stdout=err, stderr=err)
        procs.append(proc)
        return f"http://{shield['listen']}", f"http://{shield['admin']}", logs

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def healthz(admin: str, logs: Path) -> dict[str, object]:
    """The node's /healthz once it answers; fails with its log if it died or never came up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
        while loop.time() < deadline:
            try:
                async with s.get(admin + "/healthz") as r:
                    return json.loads(await r.read())  # type: ignore[no-any-return]
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.1)
    raise AssertionError(f"the shield never answered /healthz:\n{logs.read_text()[-3000:]}")


async def get(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, s.get(url) as r:
        return r.status, r.headers.get("X-Cache", ""), await r.read()


async def check_memory_only(start: Start, origin: FakeOrigin, disk: str, reason: str, setup: str = "") -> None:
    origin.routes["/live/seg1.ts"] = body(SEGMENT)
    url, admin, logs = await start(disk, setup)
    health = await healthz(admin, logs)
    assert health["disk"] == f"off: {reason}", health
    # It serves, from memory: the second answer is a hit, and the origin was asked once.
    assert await get(url + "/live/seg1.ts") == (200, "MISS", SEGMENT)
    assert await get(url + "/live/seg1.ts") == (200, "HIT", SEGMENT)
    assert origin.hits["/live/seg1.ts"] == 1
    text = logs.read_text()
    assert "Traceback" not in text, text
    said = [line for line in text.splitlines() if disk in line]
    assert len(said) == 1 and reason in said[0] and "memory only" in said[0], text


@pytest.mark.parametrize("where", ["afile/sub", "afile"], ids=["under-a-file", "a-file"])
async def test_a_disk_path_that_is_or_is_under_a_file(origin: FakeOrigin, shield_of: Start, tmp_path: Path,
                                                      where: str) -> None:
    (tmp_path / "afile").write_text("not a directory")
    await check_memory_only(shield_of, origin, str(tmp_path / where), "Not a directory")


@pytest.mark.skipif(not namespaces_allowed(), reason="no private mount namespace (needs root and unshare)")
@pytest.mark.parametrize(("mount", "reason"), [
    ("mount -t tmpfs -o ro,size=64k tmpfs {d}", "Read-only file system"),
    ("mount -t tmpfs -o size=64k tmpfs {d} && mkdir {d}/cache && (dd if=/dev/zero of={d}/fill bs=4k 2>/dev/null;"
     " true)", "No space left on device"),
], ids=["read-only", "full"])
async def test_a_mounted_disk_that_cannot_be_written(origin: FakeOrigin, shield_of: Start, tmp_path: Path,
                                                    mount: str, reason: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    await check_memory_only(shield_of, origin, str(mnt / "cache"), reason, mount.format(d=shlex.quote(str(mnt))))


async def test_a_good_disk_says_ok(origin: FakeOrigin, shield_of: Start, tmp_path: Path) -> None:
    _, admin, logs = await shield_of(str(tmp_path / "disk"))
    assert (await healthz(admin, logs))["disk"] == "ok"
