"""One process starter for every benchmark: each child in its own process group, logs in a work dir.

A child is started in a source tree (`cwd` and `PYTHONPATH`), so `python -m
livecdn` imports that tree's code, not the editable install: the default is
this checkout, a benchmark may pass another (an exported commit, or a second
tree measured beside this one). Children are stopped with SIGTERM to their
group, then SIGKILL; they also get SIGTERM if this process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import aiohttp

__all__ = ["BENCH", "LIVECDN", "PY", "ROOT", "Processes", "signal_group", "wait_http", "wait_ready", "workspace"]

BENCH = Path(__file__).resolve().parent.parent  # benchmarks/: tools run from here as `tools.NAME`
ROOT = BENCH.parent  # the checkout these benchmarks belong to
PY = sys.executable
LIVECDN = [PY, "-m", "livecdn"]  # the CLI: every tree has it, whatever its package layout
READY_TIMEOUT = 30.0  # a node starts in about a second; this is for a loaded machine
STOP_TIMEOUT = 10.0  # a node drains and exits well within this after SIGTERM
READY_POLL = 0.1
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the child's whole process group (a server and its workers), if it is still there."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


class Processes:
    """Every child a benchmark starts, by name; output in `workdir/NAME.out` and `.err`."""

    def __init__(self, workdir: Path, tree: Path = ROOT) -> None:
        self.workdir = workdir
        self.tree = tree  # the source tree children run from unless start() is given another
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str], *, tree: Path | None = None, cwd: Path | None = None,
              cpus: str | None = None) -> subprocess.Popen[bytes]:
        """Start `cmd` as `name` from `tree` (default `self.tree`), in `cwd` (default the tree), on `cpus`."""
        tree = tree or self.tree
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
        if cpus is not None:
            cmd = ["taskset", "-c", cpus, *cmd]
        with open(self.workdir / f"{name}.out", "wb") as out, open(self.workdir / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd or tree, env=env,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        self.running[name] = proc
        return proc

    def start_tool(self, name: str, tool: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Start benchmarks/tools/TOOL.py as `name` (as a module from benchmarks/, so it imports lib/)."""
        return self.start(name, [PY, "-m", f"tools.{tool}", *args], cwd=BENCH)

    def output(self, name: str) -> str:
        return (self.workdir / f"{name}.out").read_text()

    def log_tail(self, name: str, lines: int = 5) -> str:
        return "\n".join((self.workdir / f"{name}.err").read_text(errors="replace").splitlines()[-lines:])

    def check(self, name: str) -> None:
        """Raise if the child has exited."""
        proc = self.running[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{self.log_tail(name)}")

    def stop(self, names: Iterable[str]) -> None:
        """SIGTERM each child's process group, then SIGKILL what is left after STOP_TIMEOUT."""
        procs = [self.running.pop(n) for n in list(names) if n in self.running]
        for proc in procs:
            signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(proc, signal.SIGKILL)  # before the leader is reaped: its group still exists
                proc.wait()

    def stop_all(self) -> None:
        self.stop(reversed(list(self.running)))


async def wait_ready(procs: Processes, name: str, probe: str, session: aiohttp.ClientSession,
                     timeout: float = READY_TIMEOUT) -> None:
    """Wait until `probe` answers 200 while child `name` is alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check(name)
        try:
            async with session.get(probe, timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return
        except (TimeoutError, aiohttp.ClientError):
            pass
        await asyncio.sleep(READY_POLL)
    raise RuntimeError(f"{name} not ready after {timeout:.0f}s ({probe}):\n{procs.log_tail(name)}")


def wait_http(procs: Processes, name: str, probe: str, timeout: float = READY_TIMEOUT) -> None:
    """wait_ready() for scripts without an event loop: `probe` answers 200 while `name` is alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check(name)
        try:
            with urllib.request.urlopen(probe, timeout=2) as r:
                r.read()
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(READY_POLL)
    raise RuntimeError(f"{name} not ready after {timeout:.0f}s ({probe}):\n{procs.log_tail(name)}")


def _terminate(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def workspace(prefix: str, tree: Path = ROOT) -> Iterator[Processes]:
    """A temp dir and the children started in it: all stopped, and the dir removed, on the way out.

    SIGTERM becomes KeyboardInterrupt, so a benchmark that is killed stops its children too.
    """
    previous = signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix=f"livecdn-{prefix}-"))
    workdir.chmod(0o755)  # nginx workers and varnishd run as unprivileged users and read configs here
    procs = Processes(workdir, tree)
    try:
        yield procs
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
