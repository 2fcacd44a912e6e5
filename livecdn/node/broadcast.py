"""Carrying a purge to every worker process of a node: the I/O half (`livecdn.node.purge` is the pure one).

A purge request reaches one worker (the workers share the admin port with
SO_REUSEPORT), but each worker has its own memory tier. That worker drops the
shared disk tier and then its own memory, then asks every sibling to drop its
memory and waits, bounded, for their answers, which it adds up.

Siblings find each other in a directory the node's parent process creates for
them (`livecdn/cli.py`, removed when the node stops): each worker binds a Unix
datagram socket there named by its pid, and removes it when it stops. A
datagram arrives whole or not at all, so concurrent purges from several
workers never interleave, and an answer is delivered the moment it is sent:
nothing polls, and nothing accumulates (no journal to trim). A socket left by
a worker that died refuses datagrams and is removed by the first purge that
finds it.

A purge applies to objects stored before it: fetches in flight are not cut,
and what they store was asked of the upstream after the purge began.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time

from livecdn.cache.engine import Engine
from livecdn.node.purge import MAX_MESSAGE, Ask, BadMessage, Purged, Selector, Tally, Told, decode

__all__ = ["ANSWER_TIMEOUT", "Busy", "MAX_PENDING", "Purges"]

log = logging.getLogger("livecdn.node.broadcast")

# How long the worker that took a purge waits for its siblings. Dropping a
# memory tier takes milliseconds; a sibling silent this long is stuck or dying,
# and the purge is reported incomplete rather than held open.
ANSWER_TIMEOUT = 5.0
# Purges one worker runs at once: each holds a request open (and scans the
# disk tier) until its siblings answer, so a runaway script cannot pile them up.
MAX_PENDING = 16


class Busy(Exception):
    """MAX_PENDING purges are already in progress on this worker; answered with a 503."""


class Purges:
    """One worker's part in purging its node.

    Args:
        engine: this worker's cache engine (its memory tier; the disk tier it shares).
        directory: where the node's workers find each other (None: this process is the node's only worker).
        timeout: how long a purge waits for the siblings' answers.
    """

    def __init__(self, engine: Engine, directory: str | None, timeout: float = ANSWER_TIMEOUT) -> None:
        self.engine = engine
        self.directory = directory
        self.timeout = timeout
        self._pid = os.getpid()
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[str, tuple[Tally, asyncio.Future[None]]] = {}
        self._running = 0  # purges this worker is carrying out
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str | None:
        """This worker's socket, where siblings ask it (None: no siblings)."""
        return None if self.directory is None else os.path.join(self.directory, f"{self._pid}.sock")

    def open(self) -> None:
        """Take this worker's place in the directory; raises RuntimeError when already open."""
        if self._sock is not None:
            raise RuntimeError("Purges.open() called twice")
        if self.address is None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)  # left by a dead process that had this pid
            sock.bind(self.address)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        asyncio.get_running_loop().add_reader(sock.fileno(), self._receive)
        self._sock = sock

    async def close(self) -> None:
        """Leave the directory; purges still waiting end as they are. Closing twice is harmless."""
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address or "")
        for _, waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_result(None)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def purge(self, selector: Selector) -> Purged:
        """Drop what `selector` names from the disk tier and from the memory tier of every worker.

        Returns:
            What each worker and the disk dropped; `Purged.complete` is false
            when a sibling failed or did not answer in time.

        Raises:
            Busy: MAX_PENDING purges are already in progress on this worker.
            OSError, sqlite3.Error: the disk tier could not be purged (nothing was asked of the siblings).
        """
        if self._running >= MAX_PENDING:
            raise Busy(f"{MAX_PENDING} purges are already in progress on this worker")
        self._running += 1
        try:
            return await self._purge(selector)
        finally:
            self._running -= 1

    def tell(self, selector: Selector) -> None:
        """Ask every sibling to drop what `selector` names from its memory, without waiting for answers.

        For what this worker found out itself (a stream restarted): its own
        memory and the disk tier are already being dropped, and a sibling's
        answer would change nothing here. Each sibling drops the run as if it
        had found the restart itself (`Engine.drop_run`), its disk reads of
        the run misses until the disk holds none of it.
        """
        self._send(Ask(f"{self._pid}.{next(self._ids)}", selector, restart=True))

    async def _purge(self, selector: Selector) -> Purged:
        started = time.monotonic()
        # Disk and this worker first, siblings after: a sibling's memory miss
        # must find the disk copy already gone, or it would read it back.
        mine, disk = await self.engine.purge(selector.matches)
        ask = Ask(f"{self._pid}.{next(self._ids)}", selector)
        tally = Tally(self._send(ask))
        if not tally.done:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting[ask.id] = (tally, waiter)
            try:
                await asyncio.wait([waiter], timeout=self.timeout)
            finally:
                del self._waiting[ask.id]
        return Purged(selector, {self._pid: mine, **tally.memory}, disk, time.monotonic() - started,
                      tuple(sorted(tally.waiting)), tally.errors)

    def _siblings(self) -> list[tuple[int, str]]:
        assert self.directory is not None
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [(int(n[:-5]), os.path.join(self.directory, n)) for n in names
                if n.endswith(".sock") and n[:-5].isdigit() and int(n[:-5]) != self._pid]

    def _send(self, ask: Ask) -> list[int]:
        """Send `ask` to every sibling; returns the pids that received it."""
        if self._sock is None:
            return []
        data, sent = ask.encode(), []
        for pid, path in self._siblings():
            try:
                self._sock.sendto(data, path)
            except (ConnectionRefusedError, FileNotFoundError):
                # No process reads this socket any more: a worker that died.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            except OSError as e:  # its queue is full (BlockingIOError): it is stuck, the purge says so
                log.warning("purge: cannot reach worker %d: %s", pid, e)
                sent.append(pid)
            else:
                sent.append(pid)
        return sent

    def _receive(self) -> None:
        """The socket is readable: handle every datagram queued."""
        while self._sock is not None:
            try:
                data, sender = self._sock.recvfrom(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            try:
                message = decode(data)
            except BadMessage as e:
                log.warning("purge: %s", e)
                continue
            if isinstance(message, Ask):
                task = asyncio.ensure_future(self._answer(message, sender))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif (waiting := self._waiting.get(message.id)) is not None:
                tally, waiter = waiting
                tally.told(message)
                if tally.done and not waiter.done():
                    waiter.set_result(None)

    async def _answer(self, ask: Ask, sender: str) -> None:
        try:
            if ask.restart:
                mine = self.engine.drop_run(ask.selector.matches)
            else:
                mine, _ = await self.engine.purge(ask.selector.matches, disk=False)
            answer = Told(ask.id, self._pid, mine)
        except Exception as e:  # noqa: BLE001 - the asking worker reports it; this one keeps serving
            log.exception("purge %s failed in this worker", ask.selector.to_json())
            answer = Told(ask.id, self._pid, error=str(e) or type(e).__name__)
        if self._sock is None:
            return
        try:
            self._sock.sendto(answer.encode(), sender)
        except OSError as e:  # the asking worker stopped, or gave up and is gone
            log.warning("purge: cannot answer worker %s: %s", sender, e)
