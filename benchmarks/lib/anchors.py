"""The caches livecdn is measured against, started from the configs in benchmarks/speed/.

nginx `proxy_cache` (plain, and "nginx-ofc" with the `open_file_cache` most
nginx edges run), Varnish (malloc storage) and Apache Traffic Server (RAM
cache over a cache file), each a caching reverse proxy of one origin with the
same freshness: live playlists half the target duration (1 s), segments a
year. `command()` renders a server's configs into its run dir and returns the
command line that runs it in the foreground; the caller starts it (pinned or
not) and stops its process group.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from lib.procs import BENCH

__all__ = ["ANCHORS", "OPEN_FILE_CACHE", "PACKAGES", "binary", "command", "ensure_installed", "versions"]

SPEED = BENCH / "speed"
ANCHORS = ("nginx", "nginx-ofc", "varnish", "trafficserver")
# The tuning that makes "nginx-ofc": cached descriptors of the cache files, checked once a second.
OPEN_FILE_CACHE = "    open_file_cache max=10000 inactive=60s;\n    open_file_cache_valid 1s;\n"
# Each anchor's binary and the Debian package it comes in (wrk drives the load).
PACKAGES = {"nginx": "nginx", "varnishd": "varnish", "traffic_server": "trafficserver", "wrk": "wrk"}
# Files ATS 9 reads at start that these benchmarks leave empty (no plugins, parents, TLS, logs).
ATS_EMPTY = ("plugin.config", "hosting.config", "volume.config", "parent.config", "splitdns.config", "socks.config",
             "sni.yaml", "strategies.yaml", "ssl_multicert.config", "logging.yaml")


def binary(tool: str) -> str | None:
    """The tool's path (Debian puts servers in /usr/sbin, often not on PATH), or None when not installed."""
    return shutil.which(tool, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")


def ensure_installed(tools: list[str]) -> None:
    """Install the Debian packages of the `tools` that are missing (apt-get, as root or through sudo)."""
    missing = [PACKAGES[t] for t in tools if binary(t) is None]
    if not missing:
        return
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
    subprocess.run([*apt, "update", "-qq"], check=True)
    subprocess.run([*apt, "install", "-y", "-qq", *missing], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def versions() -> dict[str, str]:
    """Each anchor's (and wrk's) version line, for the report."""
    def first(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except OSError:
            return "?"
        text = (out.stdout + out.stderr).strip()
        return text.splitlines()[0] if text else "?"
    return {"nginx": first(["nginx", "-v"]), "varnish": first([binary("varnishd") or "varnishd", "-V"]),
            "trafficserver": first([binary("traffic_server") or "traffic_server", "-V"]).split(" - (build")[0],
            "wrk": first(["wrk", "-v"])}


def command(name: str, run: Path, port: int, origin_port: int, workers: int = 1,
            connections: int = 4096, *, http2: bool = False) -> list[str]:
    """Render anchor `name`'s configs into `run` (an empty dir) and return its foreground command.

    `workers` is nginx's worker processes, Varnish's thread pools, ATS's exec threads;
    `connections` the client connections each worker may hold; `http2`: nginx's listener speaks
    h2c (prior knowledge, and nothing else: nginx's cleartext `http2` does not also take HTTP/1.1).
    """
    if name in ("nginx", "nginx-ofc"):
        conf = run / "nginx.conf"
        text = (SPEED / "nginx.conf.template").read_text().format(
            workers=workers, tmp=run, port=port, origin_port=origin_port, connections=connections,
            nofile=connections * 2 + 64, tuning=OPEN_FILE_CACHE if name == "nginx-ofc" else "")
        if http2:
            listen = f"listen 127.0.0.1:{port} "
            assert listen in text, "speed/nginx.conf.template's listen line changed"
            text = text.replace(listen, f"{listen}http2 ", 1)
        conf.write_text(text)
        return [binary("nginx") or "nginx", "-c", str(conf), "-p", str(run), "-e", str(run / "nginx-error.log")]
    if name == "varnish":
        vcl = run / "edge.vcl"
        vcl.write_text((SPEED / "varnish.vcl.template").read_text().format(origin_port=origin_port))
        vcl.chmod(0o644)
        return [binary("varnishd") or "varnishd", "-F", "-a", f"127.0.0.1:{port}", "-f", str(vcl),
                "-s", "malloc,1G", "-n", str(run / "varnish"), "-p", f"thread_pools={workers}",
                "-p", "thread_pool_min=50"]
    if name == "trafficserver":
        return _trafficserver(run, port, origin_port, workers)
    raise ValueError(f"no anchor named {name!r}")


def _trafficserver(run: Path, port: int, origin_port: int, workers: int) -> list[str]:
    """ATS from a run root of its own: configs from speed/trafficserver/, state, logs and cache in `run`."""
    etc = run / "etc"
    for sub in (etc, run / "run", run / "log", run / "cache"):
        sub.mkdir(parents=True, exist_ok=True)
    values = {"RUN": str(run), "PORT": str(port), "ORIGIN_PORT": str(origin_port), "WORKERS": str(workers)}
    for template in sorted((SPEED / "trafficserver").iterdir()):
        text = template.read_text()
        for key, value in values.items():
            text = text.replace(f"@{key}@", value)
        (run if template.name == "runroot.yaml" else etc).joinpath(template.name).write_text(text)
    for empty in ATS_EMPTY:
        (etc / empty).touch()
    return [binary("traffic_server") or "traffic_server", f"--run-root={run / 'runroot.yaml'}"]
