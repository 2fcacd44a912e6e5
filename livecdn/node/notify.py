"""systemd's readiness protocol (sd_notify): one datagram to $NOTIFY_SOCKET, no dependency.

With `Type=notify` systemd holds `systemctl start` (and units ordered after
this one) until the node says `READY=1`: its sockets are bound and it
answers. `STOPPING=1` says a drain has begun. Outside systemd (no
$NOTIFY_SOCKET) every call does nothing. Worker processes each say it; the
unit's `NotifyAccess=all` lets systemd hear them (the first is enough).
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "ready", "stopping"]


def notify(message: str) -> None:
    """Send `message` (e.g. "READY=1") to systemd, if it is listening; a failure to is not the node's."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path[0] == "@":  # an abstract socket
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            s.sendall(message.encode())
    except OSError:
        pass


def ready() -> None:
    notify("READY=1")


def stopping() -> None:
    notify("STOPPING=1")
