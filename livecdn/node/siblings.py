"""A node's worker processes as one cache to its upstreams: the I/O half.

Each key has an owner among the workers (`livecdn.cache.upstreams.owner`),
which fetches it for the whole node; the others ask the owner. Here is each
worker's door for its siblings and its way to theirs: a Unix stream socket in
the node's directory named by the worker's slot (a replacement in the slot
binds the same name, so no other worker needs telling), served by a front
with no policy of its own (the asking worker applied its own to the player's
request) that takes the origin the asker names, as a shield does; and one
client session per sibling over that sibling's socket.

A dead sibling's name refuses at once (nothing listens behind it), a stopped
one accepts and never answers: both are what `Health` ejects, and the keys
it owns go to the node's upstreams directly meanwhile.
"""

from __future__ import annotations

import contextlib
import os

import aiohttp

from livecdn.cache.upstreams import Workers, worker_url
from livecdn.front.listener import Handler, PlayerServer

__all__ = ["Siblings"]

# Connections one worker keeps open to each sibling at most (requests for distinct keys at once).
SIBLING_CONNECTIONS = 256


class Siblings:
    """One worker's listener for its siblings, and its sessions to theirs.

    Args:
        directory: where the node's workers find each other (the parent process made it).
        workers: this worker's slot and how many there are.
        user_agent: what this worker says it is when it asks a sibling.
        read_size: what one read of a sibling's body may take in (as for any upstream).
    """

    def __init__(self, directory: str, workers: Workers, user_agent: str, read_size: int) -> None:
        self.directory = directory
        self.workers = workers
        self._user_agent = user_agent
        self._read_size = read_size
        self._server: PlayerServer | None = None
        self.sessions: dict[str, aiohttp.ClientSession] = {}  # a sibling's base URL → the session to it

    def path(self, slot: int) -> str:
        """The socket the worker in `slot` answers its siblings on."""
        return os.path.join(self.directory, f"{slot}.http")

    async def open(self, front: Handler) -> None:
        """Answer siblings with `front` on this worker's socket; make a session to each sibling's."""
        if self._server is not None:
            raise RuntimeError("Siblings.open() called twice")
        mine = self.path(self.workers.slot)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mine)  # left by the worker this one replaces
        server = PlayerServer(front, h2c=False)
        await server.start_unix(mine)
        self._server = server
        for slot in range(self.workers.count):
            if slot != self.workers.slot:
                self.sessions[worker_url(slot)] = aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(self.path(slot), limit=SIBLING_CONNECTIONS),
                    read_bufsize=self._read_size, headers={"User-Agent": self._user_agent})

    async def drain(self, timeout: float) -> None:
        """Stop answering siblings: answers in flight get `timeout`; the socket's name goes."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown(timeout)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(self.workers.slot))

    async def close(self) -> None:
        """Close the sessions to the siblings (after the engine's fetches are over)."""
        sessions, self.sessions = self.sessions, {}
        for session in sessions.values():
            await session.close()
