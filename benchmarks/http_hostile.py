"""Issue 12 figures: an edge under hostile HTTP clients, bounded in time.

    .venv/bin/python benchmarks/http_hostile.py [--quick] [--idle N] [--pipelines N] [--fuzz N]

A built-in origin and one edge (two workers, so that 20,000 connections fit
the descriptors of this machine's processes) started as an operator starts
them, then three hostile loads in turn, each while a player fetches a cached
playlist and the router's probe fetches `/healthz`, both on new connections:

1. idle: N connections (20,000) from 42 loopback addresses, each under the
   per-address cap, that never send a byte (opened by 4 client processes:
   one process cannot hold them all);
2. pipelines: N connections (100) that each write 256 KiB of GETs and never
   read an answer; the player and `/healthz` are asked every 20 ms from the
   first pipelined byte on (the burst is what hurts), and the edge's CPU
   seconds meanwhile say how much work such clients buy;
3. fuzz: N requests (2,000), valid ones mutated with a fixed seed, each on
   its own connection, half-closed after sending; every answer is parsed and
   compared with what livecdn's own parser (`livecdn.front.http1`) makes of
   the same bytes: how many answers are owed, and which are a client's mistake.

Prints the edge's resident memory (all its processes) before and after each
load, the slowest player and `/healthz` answer meanwhile, the fuzz answers by
class, and checks the node is alive, no client's mistake got a 5xx and no
complete request went unanswered (exit status 1 otherwise). Goal (issue 12):
+≤ 50 MB for each load, players and /healthz answered within 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import random
import resource
import socket
import statistics
import sys
import time
from collections import Counter
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from lib.ports import free_port, url
from lib.procs import LIVECDN, Processes, wait_ready, workspace
from lib.report import header, save
from lib.topology import start_builtin_origin
from livecdn.front.http1 import NEED_DATA, ProtocolError, Request, ServerConnection

SOURCES = [f"127.0.{10 + i // 200}.{1 + i % 200}" for i in range(42)]  # the 42 addresses
CLIENTS = 4  # processes holding the idle connections
PIPELINE_BYTES = 256 << 10
PROBES = 5  # player and /healthz answers timed per load
WATCH, WATCH_EVERY = 3.0, 0.02  # pipelines: probes for this long from the start, this far apart
SEED = 12
WAIT = 5.0  # seconds any one answer may take before it counts as unanswered


def raise_nofile() -> int:
    """This process's descriptor limit raised to its hard limit (ulimit -n), which children inherit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def write_config(path: Path, origin: int, edge: int, admin: int) -> None:
    path.write_text(f"""
[cdn]
name = "hostile"
[origin]
[origin.builtin]
listen = "127.0.0.1:{origin}"
mode = "synthetic"
target_duration = 2
segment_bytes = 4096
[cache]
disk_path = ""
[limits]
miss_rate = 0
header_timeout = 300   # the idle connections must stand while they are measured
[regions.local]
location = [50.1, 8.7]
[edges.edge]
region = "local"
listen = "127.0.0.1:{edge}"
admin = "127.0.0.1:{admin}"
origin_fallback = true
workers = 2
""")


def rss_mb(proc: Any) -> float:
    """Resident memory of a process and its children (the edge's supervisor and workers), in MB."""
    p = psutil.Process(proc.pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 1e6


def cpu_s(proc: Any) -> float:
    """CPU seconds (user + system) a process and its children have used so far."""
    p = psutil.Process(proc.pid)
    return sum(sum(q.cpu_times()[:2]) for q in [p, *p.children(recursive=True)])


async def timed_get(host: str, port: int, target: str) -> tuple[int, float]:
    """One GET on a new connection: (status, milliseconds); status 0 when not answered within WAIT."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), WAIT)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), WAIT)
        writer.close()
        return int(data.split(b" ", 2)[1]), (time.perf_counter() - started) * 1000
    except (OSError, TimeoutError, IndexError, ValueError):
        return 0, (time.perf_counter() - started) * 1000


async def watch(seconds: float, edge: int, admin: int) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """A player GET and a /healthz check, each on a new connection, every WATCH_EVERY s for `seconds`."""
    players: list[tuple[int, float]] = []
    checks: list[tuple[int, float]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        players.append(await timed_get("127.0.0.1", edge, "/live/720p/index.m3u8"))
        checks.append(await timed_get("127.0.0.1", admin, "/healthz"))
        await asyncio.sleep(WATCH_EVERY)
    return players, checks


async def probe(edge: int, admin: int) -> dict[str, Any]:
    """The slowest of PROBES player GETs and /healthz checks, and their statuses."""
    players, checks = [], []
    for _ in range(PROBES):
        players.append(await timed_get("127.0.0.1", edge, "/live/720p/index.m3u8"))
        checks.append(await timed_get("127.0.0.1", admin, "/healthz"))
        await asyncio.sleep(0.05)
    return {"player_ms": round(max(ms for _, ms in players), 1), "player_status": sorted({s for s, _ in players}),
            "healthz_ms": round(max(ms for _, ms in checks), 1), "healthz_status": sorted({s for s, _ in checks})}


# --- 1. idle connections, from client processes -------------------------------------------

def hold_idle(port: int, sources: list[str], per_source: int, pipe: Pipe) -> None:
    """A client process: `per_source` idle connections from each address; report, hold, close on a word."""
    raise_nofile()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(256)
        socks: list[socket.socket] = []

        async def one(source: str) -> None:
            s = socket.socket()
            s.setblocking(False)
            s.bind((source, 0))
            async with gate:
                try:
                    await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), WAIT)
                    socks.append(s)
                except (OSError, TimeoutError):
                    s.close()
        await asyncio.gather(*(one(src) for src in sources for _ in range(per_source)))
        pipe.send(len(socks))
        await loop.run_in_executor(None, pipe.recv)  # hold until told
        open_ = 0
        for s in socks:  # the edge may have refused some past its bound (a 503, then closed)
            with contextlib.suppress(OSError):
                if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    continue
            open_ += 1
        for s in socks:
            s.close()
        pipe.send(open_)
    asyncio.run(main())


async def idle_load(n: int, edge: int, admin: int, proc: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    per_source = -(-n // len(SOURCES))
    share = [SOURCES[i::CLIENTS] for i in range(CLIENTS)]
    pipes, workers = [], []
    for sources in share:
        here, there = ctx.Pipe()
        w = ctx.Process(target=hold_idle, args=(edge, sources, per_source, there), daemon=True)
        w.start()
        pipes.append(here)
        workers.append(w)
    loop = asyncio.get_running_loop()
    opened = sum([await loop.run_in_executor(None, p.recv) for p in pipes])
    await asyncio.sleep(1.0)
    figures = {"attempted": per_source * len(SOURCES), "connected": opened, "rss_mb": round(rss_mb(proc), 1),
               **await probe(edge, admin)}
    for p in pipes:
        p.send("close")
    figures["still_open"] = sum([await loop.run_in_executor(None, p.recv) for p in pipes])
    for w in workers:
        w.join(10)
    return figures


# --- 2. unread pipelines ---------------------------------------------------------------------

async def pipeline_load(n: int, edge: int, admin: int, proc: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = b"GET /live/master.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n"  # a memory hit: answers as fast as they come
    payload = request * (PIPELINE_BYTES // len(request))
    socks, sent = [], 0
    cpu_before = cpu_s(proc)

    async def one() -> None:
        nonlocal sent
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing, a small window
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", edge))
        socks.append(s)
        view = memoryview(payload)
        deadline = time.monotonic() + WAIT
        while view and time.monotonic() < deadline:  # the edge stops reading once its bound is reached
            try:
                k = s.send(view)
                view, sent = view[k:], sent + k
            except BlockingIOError:
                await asyncio.sleep(0.05)
    senders = asyncio.gather(*(one() for _ in range(n)))
    players, checks = await watch(WATCH, edge, admin)  # from the first pipelined byte on: the burst is what hurts
    await senders
    figures = {"connections": n, "sent_kib": sent >> 10, "rss_mb": round(rss_mb(proc), 1),
               "edge_cpu_s": round(cpu_s(proc) - cpu_before, 2), "probes": len(players),
               "player_ms": round(max(ms for _, ms in players), 1),
               "player_p90_ms": round(statistics.quantiles([ms for _, ms in players], n=10, method="inclusive")[-1], 1),
               "healthz_ms": round(max(ms for _, ms in checks), 1),
               "healthz_p90_ms": round(statistics.quantiles([ms for _, ms in checks], n=10, method="inclusive")[-1], 1),
               "player_status": sorted({s for s, _ in players}), "healthz_status": sorted({s for s, _ in checks})}
    for s in socks:
        s.close()
    return figures


# --- 3. fuzz -----------------------------------------------------------------------------------

VALID = [b"GET /live/master.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n",
         b"GET /live/720p/index.m3u8 HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
         b"HEAD /live/360p/index.m3u8?_HLS_msn=3 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n",
         b"GET /live/720p/index.m3u8 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
         b"OPTIONS /live/master.m3u8 HTTP/1.1\r\nHost: x\r\nOrigin: http://a\r\n\r\n",
         b"GET /live/720p/index.m3u8 HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n"]
PIECES = [b"\r\n", b"\n", b"\x00", b" ", b":", b"\xff", b"%00", b"%2f", b"/..", b"HTTP/2.0", b"HTTP/1.2", b"RTSP/1.0",
          b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n", b"Content-Length: -1\r\n", b"Expect: x\r\n",
          b"Upgrade: h2c\r\nConnection: upgrade\r\n", b"If-Modified-Since: Mon, 01 Jan 99999999999 00:00:00 GMT\r\n",
          b"?_HLS_msn=%D9%A3", b"\r\n\r\n", b"Host: a\r\nHost: b\r\n", b"X: " + b"v" * 9000 + b"\r\n"]


def fuzzed(rng: random.Random) -> bytes:
    data = bytearray(b"".join(rng.choice(VALID) for _ in range(rng.randint(1, 4))))
    for _ in range(rng.randint(0, 6)):
        at = rng.randint(0, len(data))
        piece = rng.choice(PIECES) if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 6))
        kind = rng.choice(("insert", "delete", "replace"))
        width = 0 if kind == "insert" else len(piece)  # insert, or delete / replace that much
        data[at:at + width] = b"" if kind == "delete" else piece
    return bytes(data)


def owed(sent: bytes) -> tuple[list[str], bool]:
    """What livecdn's parser makes of `sent`: the methods of the requests owed an answer (an error
    counts as one, "-"), and whether the last is a client's mistake."""
    conn = ServerConnection(max_pending=1 << 20)
    conn.receive_data(sent)
    methods: list[str] = []
    while (event := conn.next_event()) is not NEED_DATA:
        if isinstance(event, ProtocolError):
            return [*methods, "-"], True
        assert isinstance(event, Request)
        methods.append(event.method)
        if not event.keep_alive:
            break
    return methods, False


def statuses(data: bytes, methods: list[str]) -> list[int]:
    """The statuses of the complete answers in `data`, read in order as answers to `methods`."""
    out, at = [], 0
    for method in methods:
        end = data.find(b"\r\n\r\n", at)
        if end < 0:
            break
        head = data[at:end].split(b"\r\n")
        try:
            status = int(head[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            break
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in head[1:])}
        at = end + 4
        if method == "HEAD" or status in (204, 304):
            pass
        elif b"content-length" in fields:
            at += int(fields[b"content-length"])
        elif fields.get(b"transfer-encoding") == b"chunked":
            while (line := data.find(b"\r\n", at)) >= 0:
                size = int(data[at:line].split(b";")[0], 16)
                at = line + 2 + size + 2
                if size == 0:
                    break
        else:
            at = len(data)  # delimited by the connection's end
        if at > len(data):
            break  # cut short
        out.append(status)
    return out


async def send_fuzzed(edge: int, sent: bytes, methods: list[str]) -> list[int]:
    """Send, half-close, read to the end: the statuses answered."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", edge), WAIT)
    writer.write(sent)
    writer.write_eof()
    try:
        data = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
    return statuses(data, methods)


async def fuzz_load(n: int, edge: int, admin: int) -> dict[str, Any]:
    rng = random.Random(SEED)
    cases = [fuzzed(rng) for _ in range(n)]
    gate = asyncio.Semaphore(32)
    classes: Counter[str] = Counter()
    mistakes_5xx, unanswered, samples = 0, 0, []

    async def one(sent: bytes) -> None:
        nonlocal mistakes_5xx, unanswered
        methods, mistake = owed(sent)
        async with gate:
            try:
                answered = await send_fuzzed(edge, sent, methods)
            except (OSError, TimeoutError):
                answered = []
        for s in answered:
            classes[str(s) if s >= 500 else f"{s // 100}xx"] += 1  # each 5xx by its status
        if len(answered) < len(methods):
            unanswered += len(methods) - len(answered)
            samples.append(sent[:160])
        if mistake and len(answered) == len(methods) and answered[-1] >= 500 and answered[-1] != 505:
            mistakes_5xx += 1
            samples.append(sent[:160])
    await asyncio.gather(*(one(c) for c in cases))
    return {"requests": n, "answers": dict(sorted(classes.items())), "mistakes_answered_5xx": mistakes_5xx,
            "unanswered": unanswered, "samples": [repr(s) for s in samples[:5]], **await probe(edge, admin)}


async def run(args: argparse.Namespace, procs: Processes) -> dict[str, Any]:
    origin, edge, admin = free_port(), free_port(), free_port()
    config = procs.workdir / "cdn.toml"
    write_config(config, origin, edge, admin)
    async with aiohttp.ClientSession() as session:
        await start_builtin_origin(procs, session, config, origin)
        proc = procs.start("edge", LIVECDN + ["edge", "--config", str(config), "--node", "edge", "--no-access-log",
                                              "--log-level", "warning"])
        await wait_ready(procs, "edge", url(admin) + "/healthz", session)
        async with session.get(url(admin) + "/healthz") as r:
            bound = (await r.json())["max_connections"]
    await timed_get("127.0.0.1", edge, "/live/720p/index.m3u8")  # cached: what the player probes ask for
    await asyncio.sleep(1.0)
    report: dict[str, Any] = {"max_connections_per_worker": bound}
    for name, load in (("idle", lambda: idle_load(args.idle, edge, admin, proc)),
                       ("pipelines", lambda: pipeline_load(args.pipelines, edge, admin, proc)),
                       ("fuzz", lambda: fuzz_load(args.fuzz, edge, admin))):
        before = rss_mb(proc)
        figures = await load()
        procs.check("edge")
        figures["rss_before_mb"] = round(before, 1)
        if "rss_mb" in figures:
            figures["rss_added_mb"] = round(figures["rss_mb"] - before, 1)
        report[name] = figures
        print(f"{name:10} {figures}")
        await asyncio.sleep(2.0)  # the closed connections' lingering ends
    procs.check("edge")
    report["alive"] = True
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 idle, 20 pipelines, 300 fuzzed requests")
    parser.add_argument("--idle", type=int)
    parser.add_argument("--pipelines", type=int)
    parser.add_argument("--fuzz", type=int)
    args = parser.parse_args()
    args.idle = args.idle or (5000 if args.quick else 20_000)
    args.pipelines = args.pipelines or (20 if args.quick else 100)
    args.fuzz = args.fuzz or (300 if args.quick else 2000)
    nofile = raise_nofile()
    with workspace("hostile") as procs:
        report = {**header(args.quick, nofile=nofile), **asyncio.run(run(args, procs))}
    ok = (report["fuzz"]["mistakes_answered_5xx"] == 0 and report["fuzz"]["unanswered"] == 0
          and all(0 not in report[k]["player_status"] and 0 not in report[k]["healthz_status"]
                  for k in ("idle", "pipelines", "fuzz")))
    report["ok"] = ok
    print("\n| load | edge RSS added | slowest player answer | slowest /healthz |\n|---|---|---|---|")
    for k in ("idle", "pipelines"):
        f = report[k]
        print(f"| {k} | {f['rss_added_mb']} MB | {f['player_ms']} ms {f['player_status']} | "
              f"{f['healthz_ms']} ms {f['healthz_status']} |")
    f = report["fuzz"]
    print(f"\nfuzz: {f['requests']} requests, answers {f['answers']}, 5xx for a client's mistake "
          f"{f['mistakes_answered_5xx']}, unanswered {f['unanswered']}")
    save("http_hostile", report, "-quick" if args.quick else "")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
