"""Flow control for one connection: the transport's pause/resume callbacks as one small object.

Shaped like uvicorn's `FlowControl` and aiohttp's `BaseProtocol`, so that every
protocol of livecdn (the player listener, DNS over TCP)
writes back-pressure the same way:

- the protocol's `pause_writing()` / `resume_writing()` callbacks call the
  methods of the same name here; a writer awaits `drain()`, which returns at
  once while the transport's buffer is under its high-water mark and waits
  for it to drain otherwise, so a slow peer holds back only its own writer;
- `pause_reading()` / `resume_reading()` stop and restart reading; all four are
  idempotent, so callers need not track what they already asked for;
- the protocol's `connection_lost()` calls `connection_lost()` here: every
  writer waiting in `drain()` wakes with `ConnectionResetError` instead of
  hanging, and the transport is left alone from then on.

The waiting is an `asyncio.Event` (woken by the transport, never polled), so
any number of writers may wait at once and one that is cancelled does not
disturb the others.
"""

from __future__ import annotations

import asyncio

__all__ = ["FlowControl", "HIGH_WATER", "LINGER"]

# Bytes a transport may buffer for one player before writers wait for it
# to drain (aiohttp's StreamWriter LIMIT, uvicorn's HIGH_WATER_LIMIT): a slow
# player then falls behind in its own coroutine, holding an offset into the
# shared body rather than a copy of it. Both player protocols use it.
HIGH_WATER = 64 << 10
# How long a closing player connection reads and drops what its client still
# sends, after its last answer and a FIN: time for the client to read the
# answer (closing over unread bytes makes the kernel reset the connection,
# which can destroy the answer before it is read).
LINGER = 2.0


class FlowControl:
    """Back-pressure for one transport.

    Args:
        transport: the connection's transport (reading is paused and resumed on it).
    """

    __slots__ = ("_transport", "_writable", "reading_paused", "writing_paused", "lost")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        # Made when writing first pauses: most connections never wait, and an
        # Event costs about 900 bytes (idle connections must stay cheap).
        self._writable: asyncio.Event | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.lost = False

    def pause_writing(self) -> None:
        """The transport's buffer is over its high-water mark: writers wait from now on."""
        if not self.writing_paused and not self.lost:
            self.writing_paused = True
            if self._writable is None:
                self._writable = asyncio.Event()
            else:
                self._writable.clear()

    def resume_writing(self) -> None:
        """The buffer drained under its low-water mark: waiting writers go on."""
        if self.writing_paused:
            self.writing_paused = False
            if self._writable is not None:
                self._writable.set()

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.lost:
            self.reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.lost:
            self.reading_paused = False
            self._transport.resume_reading()

    async def drain(self) -> None:
        """Wait until the transport accepts more data.

        Raises:
            ConnectionResetError: the connection is lost, before or while waiting.
        """
        if not self.lost:
            if not self.writing_paused or self._writable is None:
                return
            await self._writable.wait()
        if self.lost:
            raise ConnectionResetError("the peer went away")

    def connection_lost(self) -> None:
        """The connection is gone: wake every writer (they raise) and never touch the transport again."""
        self.lost = True
        if self._writable is not None:
            self._writable.set()
