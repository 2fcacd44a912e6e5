"""The one node lifecycle, the shutdown path of serve(), the worker supervisor's decisions, FlowControl."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from livecdn.config import Address, CacheSettings, ConfigError, Region, ShieldConfig, Topology
from livecdn.front.flow import FlowControl
from livecdn.node import serve as serve_module
from livecdn.node.collector import timed_collections
from livecdn.node.lifecycle import Lifecycle, State
from livecdn.node.serve import captured_signals, serve
from livecdn.node.workers import MIN_UPTIME, Exit, decide
from shield import ShieldNode

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Recorder(Lifecycle):
    """A node that opens nothing and writes down what the lifecycle asked of it."""

    def __init__(self, *, fail_start: bool = False) -> None:
        super().__init__("recorder")
        self.fail_start = fail_start
        self.calls: list[str] = []
        self.release = asyncio.Event()  # _stop waits for it unless the timeout is 0
        self.release.set()

    async def _start(self) -> None:
        self.calls.append("start")
        if self.fail_start:
            raise OSError("address in use")

    async def _stop(self, timeout: float) -> None:
        self.calls.append(f"stop {timeout}")
        if timeout:
            await self.release.wait()
        self.calls.append("stopped")


# --- the lifecycle ----------------------------------------------------------

async def test_misuse_raises_runtime_error() -> None:
    node = Recorder()
    with pytest.raises(RuntimeError, match="recorder is not running"):
        node.require_running()
    await node.start()
    node.require_running()
    with pytest.raises(RuntimeError, match="start\\(\\) called when running"):
        await node.start()
    await node.stop(1.0)
    with pytest.raises(RuntimeError, match="start\\(\\) called when stopped"):
        await node.start()
    with pytest.raises(RuntimeError, match="spawn"):
        node.spawn(asyncio.sleep(0), "late")
    assert node.calls == ["start", "stop 1.0", "stopped"]


async def test_stop_twice_and_before_start_is_harmless() -> None:
    never = Recorder()
    await never.stop()
    await never.stop()
    assert never.state is State.STOPPED and never.calls == []
    node = Recorder()
    await node.start()
    await node.stop(1.0)
    await node.stop(1.0)
    assert node.state is State.STOPPED and node.calls == ["start", "stop 1.0", "stopped"]


async def test_a_failed_start_releases_what_it_opened_and_reraises() -> None:
    node = Recorder(fail_start=True)
    with pytest.raises(OSError, match="address in use"):
        await node.start()
    assert node.state is State.STOPPED and node.calls == ["start", "stop 2.0", "stopped"]
    await node.stop()  # still harmless
    assert node.calls == ["start", "stop 2.0", "stopped"]


async def test_stop_while_starting_is_misuse() -> None:
    class Slow(Recorder):
        async def _start(self) -> None:
            await asyncio.sleep(10)

    node = Slow()
    starting = asyncio.ensure_future(node.start())
    await asyncio.sleep(0)
    assert node.state is State.STARTING
    with pytest.raises(RuntimeError, match="still starting"):
        await node.stop()
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert node.state is State.STOPPED  # the cancelled start released what it had


async def test_a_second_stop_waits_for_the_first_and_stop_runs_once() -> None:
    node = Recorder()
    await node.start()
    node.release.clear()
    first = asyncio.ensure_future(node.stop(5.0))
    second = asyncio.ensure_future(node.stop(5.0))
    await asyncio.sleep(0.01)
    assert node.state is State.STOPPING and not second.done()
    node.release.set()
    await asyncio.gather(first, second)
    assert node.calls == ["start", "stop 5.0", "stopped"]


async def test_a_cancelled_stop_is_finished_by_the_next() -> None:
    """The forced shutdown: the draining stop is cancelled, stop(0) releases the rest."""
    node = Recorder()
    await node.start()
    node.release.clear()
    draining = asyncio.ensure_future(node.stop(5.0))
    await asyncio.sleep(0.01)
    draining.cancel()
    await asyncio.gather(draining, return_exceptions=True)
    assert node.state is State.STOPPING
    await node.stop(0)
    assert node.state is State.STOPPED
    assert node.calls == ["start", "stop 5.0", "stop 0", "stopped"]


async def test_a_background_task_that_dies_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    node = Recorder()
    await node.start()

    async def broken() -> None:
        await asyncio.sleep(0)
        raise ValueError("the counter broke")

    task = node.spawn(broken(), "count hits")
    with caplog.at_level(logging.ERROR, logger="livecdn.node.lifecycle"):
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done-callbacks run on the next turn of the loop
    (record,) = [r for r in caplog.records if r.name == "livecdn.node.lifecycle"]
    assert "recorder: count hits" in record.getMessage() and "died" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert "Traceback" in caplog.text and "the counter broke" in caplog.text and "in broken" in caplog.text
    await node.stop()


async def test_stop_cancels_background_tasks_before_releasing(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    class Watching(Recorder):
        async def _stop(self, timeout: float) -> None:
            seen.append("cancelled" if forever.cancelled() else "still running")
            await super()._stop(timeout)

    node = Watching()
    await node.start()
    forever = node.spawn(asyncio.sleep(3600), "tick")
    with caplog.at_level(logging.ERROR, logger="livecdn.node.lifecycle"):
        await node.stop(1.0)
    assert seen == ["cancelled"]
    assert not [r for r in caplog.records if r.name == "livecdn.node.lifecycle"]  # a cancel is not a death


async def test_a_cache_node_has_ports_only_while_running() -> None:
    local = Address("127.0.0.1", 0)
    cfg = ShieldConfig("shield-1", local, local, cache=CacheSettings(disk_path=""))
    topo = Topology("(test)", "test", "cdn.test", "http://127.0.0.1:9", None, {"eu": Region("eu", (50.0, 8.0))},
                    {cfg.name: cfg}, {})
    node = ShieldNode(topo, cfg, access_log=False)
    with pytest.raises(RuntimeError, match="shield-1 is not running"):
        _ = node.port
    with pytest.raises(RuntimeError, match="not running"):
        node.reload(topo)
    await node.start()
    try:
        assert node.port > 0 and node.admin_port > 0 and node.port != node.admin_port
        reader, writer = await asyncio.open_connection("127.0.0.1", node.admin_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
        with pytest.raises(RuntimeError, match="called when running"):
            await node.start()
    finally:
        await node.stop(1.0)
        await node.stop(1.0)
    assert node.state is State.STOPPED
    with pytest.raises(RuntimeError, match="shield-1 is not running"):
        _ = node.admin_port


# --- serve() and its signals -------------------------------------------------

@pytest.fixture
def sentinels() -> Iterator[dict[signal.Signals, Any]]:
    """Python-level handlers of our own on the three signals serve() captures; the originals come back after."""
    def handler(sig: int, frame: object) -> None:
        raise AssertionError(f"signal {sig} reached the sentinel handler")

    originals = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, handler)
    try:
        yield {sig: handler for sig in SIGNALS}
    finally:
        for sig, before in originals.items():
            signal.signal(sig, before)


class Served(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.reloads: list[object] = []

    def reload(self, topology: object) -> None:
        self.reloads.append(topology)


async def test_serve_drains_on_sigterm_and_restores_the_handlers(sentinels: dict[signal.Signals, Any]) -> None:
    node = Served()
    loop = asyncio.get_running_loop()

    def ready() -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)

    await asyncio.wait_for(serve(node, reload=lambda: "new topology", on_ready=ready), 10)  # type: ignore[arg-type,return-value]
    assert node.reloads == ["new topology"]
    assert node.calls == ["start", f"stop {serve_module.DRAIN_TIMEOUT}", "stopped"]
    for sig in SIGNALS:
        assert signal.getsignal(sig) is sentinels[sig], sig


async def test_a_bad_file_on_sighup_keeps_the_running_config(sentinels: dict[signal.Signals, Any],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    node = Served()
    loop = asyncio.get_running_loop()

    def bad() -> Topology:
        raise ConfigError("cdn.toml", "edges.eu.capacity", "must be at least 1")

    def ready() -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)

    with caplog.at_level(logging.ERROR, logger="livecdn.node.serve"):
        await asyncio.wait_for(serve(node, reload=bad, on_ready=ready), 10)
    assert node.reloads == []
    assert "keeping the running config: cdn.toml: edges.eu.capacity: must be at least 1" in caplog.text
    assert node.calls == ["start", f"stop {serve_module.DRAIN_TIMEOUT}", "stopped"]


async def test_a_second_sigint_forces_the_stop(sentinels: dict[signal.Signals, Any]) -> None:
    node = Served()
    node.release.clear()  # the drain would never end on its own
    loop = asyncio.get_running_loop()

    def ready() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGINT)

    await asyncio.wait_for(serve(node, on_ready=ready), 10)
    assert node.calls == ["start", f"stop {serve_module.DRAIN_TIMEOUT}", "stop 0", "stopped"]
    for sig in SIGNALS:
        assert signal.getsignal(sig) is sentinels[sig], sig


async def test_handlers_are_restored_when_start_fails(sentinels: dict[signal.Signals, Any]) -> None:
    with pytest.raises(OSError, match="address in use"):
        await serve(Recorder(fail_start=True))
    for sig in SIGNALS:
        assert signal.getsignal(sig) is sentinels[sig], sig


async def test_captured_signals_reach_the_loop_inside_only(sentinels: dict[signal.Signals, Any]) -> None:
    got = asyncio.Event()
    with captured_signals({signal.SIGHUP: got.set}):
        assert signal.getsignal(signal.SIGHUP) is not sentinels[signal.SIGHUP]
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(got.wait(), 5)
    assert signal.getsignal(signal.SIGHUP) is sentinels[signal.SIGHUP]


# --- the worker supervisor ---------------------------------------------------

@pytest.mark.parametrize(("stopping", "uptime", "outcome"), [
    (True, 100.0, Exit.EXPECTED),  # the node is stopping: every exit is expected
    (True, 0.1, Exit.EXPECTED),
    (False, None, Exit.EXPECTED),  # not one of our workers
    (False, MIN_UPTIME + 1, Exit.RESTART),  # ran a while, then died: replace it
    (False, MIN_UPTIME - 1, Exit.GIVE_UP),  # died right after its start: the node is broken
])
def test_what_a_worker_exit_means(stopping: bool, uptime: float | None, outcome: Exit) -> None:
    assert decide(stopping, uptime) is outcome


# --- FlowControl -------------------------------------------------------------

class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")


def flow() -> tuple[FlowControl, FakeTransport]:
    transport = FakeTransport()
    return FlowControl(transport), transport  # type: ignore[arg-type]


async def test_flow_reading_pause_and_resume_are_idempotent() -> None:
    fc, transport = flow()
    fc.pause_reading()
    fc.pause_reading()
    assert fc.reading_paused and transport.calls == ["pause_reading"]
    fc.resume_reading()
    fc.resume_reading()
    assert not fc.reading_paused and transport.calls == ["pause_reading", "resume_reading"]


async def test_flow_drain_returns_at_once_while_writable() -> None:
    fc, _ = flow()
    await asyncio.wait_for(fc.drain(), 0.5)
    fc.pause_writing()
    fc.resume_writing()
    await asyncio.wait_for(fc.drain(), 0.5)


async def test_flow_drain_waits_while_paused_and_every_writer_resumes() -> None:
    fc, transport = flow()
    fc.pause_writing()
    fc.pause_writing()  # idempotent: one resume is enough
    writers = [asyncio.ensure_future(fc.drain()) for _ in range(3)]
    cancelled = asyncio.ensure_future(fc.drain())
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in writers)
    cancelled.cancel()  # one writer giving up does not disturb the others
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in writers)
    fc.resume_writing()
    await asyncio.wait_for(asyncio.gather(*writers), 0.5)
    assert transport.calls == []  # writing back-pressure alone never touches reading


async def test_flow_connection_lost_wakes_writers_with_an_error_and_leaves_the_transport() -> None:
    fc, transport = flow()
    fc.pause_writing()
    waiting = asyncio.ensure_future(fc.drain())
    await asyncio.sleep(0.01)
    fc.connection_lost()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(waiting, 0.5)
    with pytest.raises(ConnectionResetError):
        await fc.drain()  # and every later drain
    fc.pause_writing()  # a late callback must not make the next drain hang
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(fc.drain(), 0.5)
    fc.pause_reading()
    fc.resume_reading()
    assert transport.calls == []


async def test_whole_heap_collections_run_on_a_timer_and_the_collector_is_put_back() -> None:
    """Seen: an edge under 1,000 LL viewers scanned its whole heap 12 times in 30 s, up to 122 ms each."""
    before = gc.get_threshold()

    class Cycle:
        me: object

    async with timed_collections(0.2):
        assert gc.get_freeze_count() > 0  # what ran before is out of the collector's sight
        assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] > 10 ** 8
        cycle = Cycle()
        cycle.me = cycle
        gone = weakref.ref(cycle)
        gc.collect(1)  # it survives the young passes alive: it is old now
        del cycle
        for _ in range(3):
            gc.collect(1)  # young passes (what allocations set off) leave the old garbage alone
        assert gone() is not None
        deadline = asyncio.get_running_loop().time() + 5
        while gone() is not None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert gone() is None  # the timer's whole-heap pass took it
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
