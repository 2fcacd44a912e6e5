"""Loopback ports and URLs for the processes a benchmark starts."""

from __future__ import annotations

import socket

__all__ = ["free_port", "shared_port", "url"]


def free_port(host: str = "127.0.0.1", udp: bool = False) -> int:
    """A TCP port free on `host` right now (and free for UDP too when asked)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if not udp:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, port))
            return port
        except OSError:
            continue


def shared_port(hosts: list[str]) -> int:
    """A TCP port free on every one of `hosts`: nodes listening on one port, each on its own address."""
    while True:
        port = free_port(hosts[0])
        try:
            for h in hosts[1:]:
                with socket.socket() as s:
                    s.bind((h, port))
            return port
        except OSError:
            continue


def url(port: int, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}"
