"""The servers the speed figures measure: the origin (benchmarks/speed/origin.py) and the caches in front of it.

livecdn's edge (from each source tree under test, as shipped: policy on, disk
tier on, `--no-access-log`) and the anchors of `lib/anchors.py`, each on a
free loopback port, each with an origin port of its own (so the origin's
`/_counts` tells each cache's requests apart), in the work dir of a
`Processes`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

from lib import anchors
from lib.ports import free_port
from lib.procs import BENCH, LIVECDN, PY, READY_TIMEOUT, Processes, wait_http

__all__ = ["Servers"]

SPEED = BENCH / "speed"


class Servers:
    """The origin and the caches in front of it (livecdn from each tree, the anchors), in a temp dir."""

    def __init__(self, procs: Processes, trees: dict[str, Path], names: list[str], connections: int = 4096) -> None:
        self.procs, self.tmp = procs, procs.workdir
        self.trees = trees  # livecdn server name -> the source tree it runs from
        self.origin_ports = {name: free_port() for name in names}  # the origin's port for each cache
        self.connections = connections  # client connections an anchor's worker may hold
        self.ports: dict[str, int] = {}
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start_origin(self, segment_bytes: int | None = None) -> None:
        """The origin on core 1, a port for each cache; `segment_bytes` sizes its /live/ segments."""
        args = [arg for port in self.origin_ports.values() for arg in ("--port", str(port))]
        if segment_bytes is not None:
            args += ["--segment-bytes", str(segment_bytes)]
        self.procs.start("origin", [PY, str(SPEED / "origin.py"), *args], cpus="1")
        first = next(iter(self.origin_ports.values()))
        wait_http(self.procs, "origin", f"http://127.0.0.1:{first}/static/live.m3u8")

    def origin_requests(self) -> dict[str, dict[str, int]]:
        """Requests the origin has had from each cache so far: {name: {"playlist": n, "segment": n}}."""
        first = next(iter(self.origin_ports.values()))
        with urllib.request.urlopen(f"http://127.0.0.1:{first}/_counts", timeout=10) as r:
            counts = json.load(r)
        return {name: counts.get(str(port), {}) for name, port in self.origin_ports.items()}

    def start(self, name: str, workers: int, cpus: str | None, *, wrap: tuple[str, ...] = (),
              ready_timeout: float = READY_TIMEOUT) -> None:
        """Start server `name` (livecdn's edge from its tree, or an anchor) and wait until it answers.

        `wrap`: a command livecdn's edge runs under (valgrind), its readiness waited for `ready_timeout`.
        """
        port, run = self.place(name, workers)
        tree = self.trees.get(name)
        origin_port = self.origin_ports[name]
        if tree is not None:
            config = run / "cdn.toml"
            config.write_text(
                '[cdn]\nname = "speed"\nplay_path = "/live/master.m3u8"\n\n'
                f'[cache]\nmemory_bytes = "512MiB"\ndisk_bytes = "1GiB"\ndisk_path = "{run}/disk-{{node}}"\n\n'
                f'[origin]\nurl = "http://127.0.0.1:{origin_port}"\n\n'
                '[regions.eu]\nlocation = [50.1, 8.7]\n\n'
                f'[edges.edge-1]\nregion = "eu"\nlisten = "127.0.0.1:{port}"\n'
                f'admin = "127.0.0.1:{free_port()}"\norigin_fallback = true\nworkers = {workers}\n')
            cmd = LIVECDN + ["edge", "--config", str(config), "--node", "edge-1",
                             "--no-access-log", "--log-level", "warning"]
        else:
            cmd = anchors.command(name, run, port, origin_port, workers, self.connections)
        self.running[name] = self.procs.start(name, [*wrap, *cmd] if tree is not None else cmd, tree=tree, cpus=cpus)
        wait_http(self.procs, name, self.url(name, "/static/live.m3u8"), ready_timeout)

    def place(self, name: str, workers: int) -> tuple[int, Path]:
        """A free port for server `name` (remembered for `url`) and an empty run dir of its own."""
        port = self.ports[name] = free_port()
        run = self.tmp / f"{name}-{workers}w"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(mode=0o755)
        return port, run

    def stop(self, name: str) -> None:
        if self.running.pop(name, None) is not None:
            self.procs.stop([name])

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"
