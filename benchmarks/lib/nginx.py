"""nginx started from a template of benchmarks/nginx/, rendered into the work dir, as an anchor beside livecdn."""

from __future__ import annotations

import os
import shutil

import aiohttp

from lib.ports import free_port, url
from lib.procs import BENCH, Processes, wait_ready

__all__ = ["nginx_binary", "start_nginx"]


def nginx_binary() -> str | None:
    """The nginx binary (Debian puts it in /usr/sbin, often not on PATH), or None when not installed."""
    return shutil.which("nginx", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")


async def start_nginx(procs: Processes, session: aiohttp.ClientSession, name: str, template: str,
                      origin_port: int, probe: str) -> int:
    """nginx as `name` from benchmarks/nginx/TEMPLATE (@PREFIX@, @LISTEN@, @ORIGIN@), ready when `probe` answers."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install -y nginx)")
    port = free_port()
    prefix = procs.workdir / name
    prefix.mkdir()
    text = (BENCH / "nginx" / template).read_text()
    for key, value in {"PREFIX": str(prefix), "LISTEN": f"127.0.0.1:{port}",
                       "ORIGIN": f"127.0.0.1:{origin_port}"}.items():
        text = text.replace(f"@{key}@", value)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    procs.start(name, [binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"])
    await wait_ready(procs, name, url(port) + probe, session)
    return port
