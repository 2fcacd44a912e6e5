"""Several worker processes for one node, sharing its port with SO_REUSEPORT.

The parent forks the workers before any event loop exists, forwards signals to
them, restarts one that dies unexpectedly, and waits for all on the way out.
Each worker has its own memory tier; the disk tier and the metrics directory
are shared, so /metrics on any worker reports the whole node. Each worker has
a slot, 0 to N-1, that a replacement inherits: its siblings find it by slot
(`livecdn.node.siblings`), so a restart changes no other worker's view.

The parent's loop is three steps: reap one exit (`Supervisor.run`), decide
what it means (`decide`, a pure function), act on it (`Supervisor.act`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import time
from collections.abc import Callable

__all__ = ["Exit", "Supervisor", "decide", "supervise"]

log = logging.getLogger("livecdn.node.workers")

# A worker that dies sooner than this after its start is not restarted in a
# loop: something is wrong with the node, not with one process.
MIN_UPTIME = 2.0
# What the parent forwards to every worker; SIGTERM and SIGINT also mean "stopping".
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


class Exit(enum.Enum):
    """What one worker's exit asks of the parent."""

    EXPECTED = "expected"  # the node is stopping, or the pid is not a worker: nothing to do
    RESTART = "restart"  # it died after running a while: start another in its place
    GIVE_UP = "give up"  # it died right after its start: stop the whole node, exit 1


def decide(stopping: bool, uptime: float | None) -> Exit:
    """What the exit of a worker that ran `uptime` seconds (None: not ours) means."""
    if stopping or uptime is None:
        return Exit.EXPECTED
    return Exit.GIVE_UP if uptime < MIN_UPTIME else Exit.RESTART


class Supervisor:
    """The parent process of a node's workers.

    Args:
        workers: how many processes to keep running.
        child: what each worker runs, given its slot (it never returns into the parent's code).
    """

    __slots__ = ("workers", "child", "stopping", "status", "_started")

    def __init__(self, workers: int, child: Callable[[int], None]) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        self.workers = workers
        self.child = child
        self.stopping = False
        self.status = 0  # the node's exit status
        self._started: dict[int, tuple[float, int]] = {}  # pid -> (monotonic start time, slot)

    def run(self) -> int:
        """Fork the workers, supervise them until all have exited; returns the node's exit status."""
        from prometheus_client import multiprocess

        previous = {sig: signal.signal(sig, self.forward) for sig in FORWARDED}
        try:
            for slot in range(self.workers):
                self.spawn(slot)
            while self._started:
                try:
                    pid, code = os.wait()
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
                started = self._started.pop(pid, None)
                multiprocess.mark_process_dead(pid)
                uptime = None if started is None else time.monotonic() - started[0]
                self.act(pid, code, decide(self.stopping, uptime), -1 if started is None else started[1])
        finally:
            for sig, before in previous.items():
                signal.signal(sig, before)
        return self.status

    def act(self, pid: int, code: int, outcome: Exit, slot: int) -> None:
        """Carry out what the exit of the worker in `slot` asks for."""
        if outcome is Exit.EXPECTED:
            return
        log.error("worker %d exited with status %d", pid, os.waitstatus_to_exitcode(code))
        if outcome is Exit.RESTART:
            self.spawn(slot)
        else:
            self.status = 1
            self.forward(signal.SIGTERM, None)

    def spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            for sig in FORWARDED:
                signal.signal(sig, signal.SIG_DFL)
            status = 0
            try:
                self.child(slot)
            except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
                log.exception("worker failed")
                status = 1
            finally:
                os._exit(status)
        self._started[pid] = (time.monotonic(), slot)

    def forward(self, sig: int, _frame: object) -> None:
        """The parent's signal handler: pass `sig` on to every worker."""
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        for pid in list(self._started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def supervise(workers: int, child: Callable[[int], None]) -> int:
    """Fork `workers` processes running `child(slot)`; return the exit status for the node."""
    return Supervisor(workers, child).run()
