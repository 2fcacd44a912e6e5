"""One lifecycle for every node process: start, serve, drain, stop.

`Lifecycle` is the small base that `CacheNode`, `GeoNode` and `OriginNode`
share, shaped like aiohttp's `BaseRunner`: a subclass writes `_start()` (open
what it owns, in order) and `_stop(timeout)` (release it in reverse, draining
answers in flight under `timeout`); the base keeps the state and fails loudly
on misuse, so no node hand-writes its own state machine:

    NEW --start()--> STARTING --> RUNNING --stop()--> STOPPING --> STOPPED
                        |  (start failed: what it opened is released)  ^
                        +----------------------------------------------+

`stop()` is safe to call twice, before `start()` and after a failed start.
`livecdn/node/serve.py` is what serves one between the two, until a signal.
Background work goes through `spawn()`: every task is tracked (a done-callback
discards it, as uvicorn's `ServerState.tasks`), a task that dies is logged
with its traceback instead of "Task exception was never retrieved", and
whatever still runs at `stop()` is cancelled before `_stop()` releases what it
might use.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["FAILED_START_TIMEOUT", "STOP_TIMEOUT", "Lifecycle", "State"]

from livecdn.logs import report_death

log = logging.getLogger("livecdn.node.lifecycle")

# A start that failed has no answers worth draining, but a child process it
# launched (the origin's ffmpeg) gets this long to exit before it is killed.
FAILED_START_TIMEOUT = 2.0
# How long `stop()` lets answers in flight finish when the caller names no
# bound: a segment to a slow player, not a whole stream.
STOP_TIMEOUT = 10.0


class State(enum.Enum):
    """Where a node is in its life; it only ever moves forward."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Lifecycle:
    """The base of a node: `await start()`, serve, `await stop(timeout)`.

    Args:
        name: the node's name, for log lines and error messages.
    """

    __slots__ = ("name", "_state", "_tasks", "_releasing")

    def __init__(self, name: str) -> None:
        self.name = name
        self._state = State.NEW
        self._tasks: set[asyncio.Task[Any]] = set()
        # Resolved when the stop() releasing the node right now ends, however it ends.
        self._releasing: asyncio.Future[None] | None = None

    # --- what a node kind writes ---

    async def _start(self) -> None:
        """Open what the node owns, in order. On an exception `_stop()` runs at once."""
        raise NotImplementedError

    async def _stop(self, timeout: float) -> None:
        """Release what `_start()` opened, in reverse, draining for up to `timeout` seconds.

        It may run on a node that started only part-way, and again after a
        stop that was cancelled part-way (a forced stop runs it again with
        `timeout=0`): forget each resource once it is released, so that the
        second run releases what the first did not finish, and nothing twice.
        """
        raise NotImplementedError

    # --- the shape every node shares ---

    @property
    def state(self) -> State:
        return self._state

    def require_running(self) -> None:
        """Raise unless the node is running (bound ports exist only then).

        Raises:
            RuntimeError: naming the node and its state.
        """
        if self._state is not State.RUNNING:
            raise RuntimeError(f"{self.name} is not running (it is {self._state.value})")

    async def start(self) -> None:
        """Open everything, then serve until `stop()`.

        Raises:
            RuntimeError: called a second time (a node starts once), or what
                `_start()` raised; the node is then stopped.
        """
        if self._state is not State.NEW:
            raise RuntimeError(f"{self.name}: start() called when {self._state.value}; a node starts once")
        self._state = State.STARTING
        try:
            await self._start()
        except BaseException:
            await self._release(FAILED_START_TIMEOUT)
            raise
        self._state = State.RUNNING

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Cancel background tasks, then release everything, draining answers for up to `timeout`.

        Harmless twice, before `start()` and after a failed start. A stop that
        was cancelled part-way (a forced shutdown) is finished by calling
        `stop()` again, for instance with `timeout=0`. A call made while
        another is releasing waits for that one.

        Raises:
            RuntimeError: called while `start()` is still running.
        """
        while self._releasing is not None:
            await asyncio.shield(self._releasing)
        if self._state in (State.NEW, State.STOPPED):
            self._state = State.STOPPED
            return
        if self._state is State.STARTING:
            raise RuntimeError(f"{self.name}: stop() called while it is still starting")
        await self._release(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` in the background for as long as the node runs.

        Raises:
            RuntimeError: the node is not starting or running (nothing would cancel the task).
        """
        if self._state not in (State.STARTING, State.RUNNING):
            coro.close()
            raise RuntimeError(f"{self.name}: spawn({name!r}) called when {self._state.value}")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(report_death(log, f"{self.name}: {name}"))
        return task

    # --- private ---

    async def _release(self, timeout: float) -> None:
        self._state = State.STOPPING
        releasing = self._releasing = asyncio.get_running_loop().create_future()
        try:
            await self._cancel_tasks()
            await self._stop(timeout)
        finally:
            self._releasing = None
            releasing.set_result(None)
        self._state = State.STOPPED

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        if not tasks:
            return
        log.debug("%s: cancelling %d background task(s)", self.name, len(tasks))
        for task in tasks:
            task.cancel()
        # gather(return_exceptions=True): one task's error must not leave the
        # others un-awaited; a death was already logged (report_death).
        await asyncio.gather(*tasks, return_exceptions=True)
