"""The router against hostile DNS clients (issue 12): its memory, and how long a valid query waits.

    .venv/bin/python benchmarks/dns_hostile.py [--quick]

The router of dns_bench.py's topology runs alone as operators run it
(`livecdn geo --config FILE --node router`); its edges are not started (every health check fails, and the
router still answers with the nearest). Each hostile phase runs in a child
process while this one probes, so neither shares an interpreter with the
other:

1. memory: the router's RSS before and after 2,000 unique 60 KB queries (each
   with padding of its own, sent one after another), then after 20,000
   ordinary queries from 20,000 source addresses (127.1.0.0/16, filling the
   reply memo to its byte bound);
2. waits: a valid query every 10 ms over UDP from 127.0.2.5, and over TCP
   (a new connection each) from 127.0.2.6 every 50 ms, each timed to its
   answer (1 s timeout), first alone, then behind each phase in turn, 8 s
   each: compression-pointer bombs (UDP, paced 1 ms apart, and TCP), names
   over 255 bytes, unique 60 KB queries (each sent when the last is
   answered), and 1,024 TCP connections from one address dripping a byte
   each every 0.5 s.

Every phase is bounded in count and time (`--quick` halves the times). Prints a
table, one JSON line, and writes benchmarks/results/dns-hostile-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import dns.message
import psutil

from dns_bench import EU, HOST, US, write_topology
from lib.ports import free_port, shared_port
from lib.procs import LIVECDN, Processes, workspace
from lib.report import header, save

PROBE_UDP, PROBE_TCP, DRIPPER = "127.0.2.5", "127.0.2.6", "127.0.0.9"
PROBE_EVERY, TCP_PROBE_EVERY, PROBE_TIMEOUT = 0.01, 0.05, 1.0
READY_TIMEOUT = 30.0
DRIP_EVERY = 0.5
PACE = 0.001  # between two datagrams a phase does not wait an answer for: the router's socket buffer holds ~3 bombs
PHASE_SECONDS = 8.0


# --- the messages ------------------------------------------------------------

def _name(text: str) -> bytes:
    return b"".join(len(part).to_bytes(1, "big") + part.encode() for part in text.split(".")) + b"\0"


def valid(qid: int) -> bytes:
    return bytes(dns.message.make_query(HOST, "A", id=qid).to_wire())


def padded(qid: int, fill: bytes) -> bytes:
    """One A question for the host name and an OPT record whose padding option (RFC 7830) is `fill`."""
    opt = b"\0" + struct.pack(">HHIHHH", 41, 1232, 0, 4 + len(fill), 12, len(fill))
    return struct.pack(">6H", qid, 0x0100, 1, 0, 0, 1) + _name(HOST) + b"\0\1\0\1" + opt + fill


def long_name(qid: int) -> bytes:
    """Issue 12 item 6: five 63-byte labels, 321 bytes of name."""
    return struct.pack(">6H", qid, 0x0100, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\0\0\1\0\1"


def bomb(qid: int) -> bytes:
    """Issue 12 item 7: 10,790 questions, all but the first a pointer back to its 127 labels."""
    first = b"\x01a" * 127 + b"\0\0\1\0\1"
    return struct.pack(">6H", qid, 0x0100, 10_790, 0, 0, 0) + first + b"\xc0\x0c\0\1\0\1" * 10_789


# --- the phases (each in a child process) -----------------------------------
# Each sends at most `count` messages and stops at `until` (monotonic), whichever comes first.

def send_udp(port: int, make: Callable[[int], bytes], count: int, until: float, wait_reply: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(PROBE_TIMEOUT)
        for i in range(count):
            if time.monotonic() > until:
                return
            s.sendto(make(i & 0xFFFF), ("127.0.0.1", port))
            if wait_reply:
                with contextlib.suppress(TimeoutError):
                    s.recv(65535)
            else:
                time.sleep(PACE)


def bombs(port: int, count: int, until: float) -> None:
    """Over UDP, paced; and every 20th a TCP connection carrying 4 more."""
    for _ in range(0, count, 20):
        if time.monotonic() > until:
            return
        send_udp(port, bomb, 16, until, wait_reply=False)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"".join(len(b).to_bytes(2, "big") + b for b in map(bomb, range(4))))
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass


def long_names(port: int, count: int, until: float) -> None:
    send_udp(port, long_name, count, until, wait_reply=True)


def unique_large(port: int, count: int, until: float) -> None:
    send_udp(port, lambda i: padded(i & 0xFFFF, i.to_bytes(4, "big") * 15_000), count, until, wait_reply=True)


def from_many_addresses(port: int, count: int, until: float) -> None:
    wire = valid(7)
    for i in range(count):
        if time.monotonic() > until:
            return
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((f"127.1.{i >> 8 & 255}.{i & 255}", 0))
            s.settimeout(PROBE_TIMEOUT)
            s.sendto(wire, ("127.0.0.1", port))
            with contextlib.suppress(TimeoutError):
                s.recv(4096)


def drip(port: int, count: int, until: float) -> None:
    """`count` connections from one address, each sent one byte of a query every `DRIP_EVERY` s."""
    held = []
    for _ in range(count):
        s = socket.socket()
        s.bind((DRIPPER, 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        held.append(s)
    wire = len(valid(9)).to_bytes(2, "big") + valid(9)
    sent = 0
    while time.monotonic() + DRIP_EVERY < until:
        time.sleep(DRIP_EVERY)
        byte = wire[sent % len(wire):sent % len(wire) + 1]
        for s in held:
            with contextlib.suppress(OSError):  # closed by the router
                s.send(byte)
        sent += 1
    for s in held:
        s.close()


def in_child(target: Callable[..., None], *args: Any) -> multiprocessing.Process:
    proc = multiprocessing.get_context("fork").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


# --- probing -----------------------------------------------------------------

class Prober:
    """Valid queries over UDP and TCP on threads of their own, each timed to its answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.udp: list[float] = []
        self.tcp: list[float] = []
        self.failed = {"udp": 0, "tcp": 0}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._udp, daemon=True),
                         threading.Thread(target=self._tcp, daemon=True)]

    def __enter__(self) -> Prober:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _udp(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((PROBE_UDP, 0))
            s.settimeout(PROBE_TIMEOUT)
            qid = 0
            while not self._stop.wait(PROBE_EVERY):
                qid = (qid + 1) & 0xFFFF
                wire = valid(qid)
                started = time.monotonic()
                s.sendto(wire, ("127.0.0.1", self.port))
                try:
                    while s.recv(4096)[:2] != wire[:2]:
                        pass  # a late answer to an earlier probe
                    self.udp.append(time.monotonic() - started)
                except TimeoutError:
                    self.failed["udp"] += 1

    def _tcp(self) -> None:
        while not self._stop.wait(TCP_PROBE_EVERY):
            wire = valid(1)
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=PROBE_TIMEOUT,
                                              source_address=(PROBE_TCP, 0)) as s:
                    s.sendall(len(wire).to_bytes(2, "big") + wire)
                    if len(s.recv(4096)) < 14:
                        raise ConnectionError("short answer")
                self.tcp.append(time.monotonic() - started)
            except OSError:
                self.failed["tcp"] += 1


def waits(port: int, phase: Callable[..., None] | None, count: int, seconds: float) -> dict[str, Any]:
    with Prober(port) as prober:
        if phase is None:
            time.sleep(seconds)
        else:
            child = in_child(phase, port, count, time.monotonic() + seconds)
            child.join(seconds + 60)
            if child.is_alive():
                child.kill()
    return {
        "udp": {"probes": len(prober.udp), "failed": prober.failed["udp"],
                "worst_ms": round(max(prober.udp, default=0) * 1000, 2),
                "median_ms": round(statistics.median(prober.udp or [0]) * 1000, 3)},
        "tcp": {"probes": len(prober.tcp), "failed": prober.failed["tcp"],
                "worst_ms": round(max(prober.tcp, default=0) * 1000, 2)},
    }


def rss_mb(proc: psutil.Process) -> float:
    return round(proc.memory_info().rss / 2**20, 1)


def main() -> int:
    p = argparse.ArgumentParser(description="The router against hostile DNS clients: memory and waits.")
    p.add_argument("--quick", action="store_true", help="half of each phase")
    args = p.parse_args()
    scale = 2 if args.quick else 1
    ports = {k: free_port() for k in ("origin", "shield", "shield_admin", "http", "router_admin")}
    ports.update(dns=free_port(udp=True), edge=shared_port([EU, US]), edge_admin=shared_port([EU, US]))
    try:
        with workspace("dns-hostile") as procs:
            report = run(procs, ports, scale)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        return 130
    print(f"router RSS: {report['memory']['start_mb']} MB at start, {report['memory']['after_unique_large_mb']} MB "
          f"after 2,000 unique 60 KB queries, {report['memory']['after_many_addresses_mb']} MB after "
          f"{report['memory']['addresses']:,} source addresses")
    print(f"{'behind':<22}{'UDP probes':>11}{'failed':>8}{'worst ms':>10}{'median ms':>11}"
          f"{'TCP probes':>12}{'failed':>8}{'worst ms':>10}")
    for name, w in report["waits"].items():
        u, t = w["udp"], w["tcp"]
        print(f"{name:<22}{u['probes']:>11}{u['failed']:>8}{u['worst_ms']:>10}{u['median_ms']:>11}"
              f"{t['probes']:>12}{t['failed']:>8}{t['worst_ms']:>10}")
    save("dns-hostile", {**header(args.quick), **report}, "-quick" if args.quick else "")
    worst = max(max(w["udp"]["worst_ms"], w["tcp"]["worst_ms"]) for n, w in report["waits"].items() if n != "nothing")
    print(json.dumps({"rss_growth_mb": report["memory"]["growth_mb"], "worst_wait_ms": worst}), flush=True)
    return 0


def run(procs: Processes, ports: dict[str, int], scale: int) -> dict[str, Any]:
    """Only the router of dns_bench.py's topology runs: its edges, down, are still the nearest."""
    config = procs.workdir / "cdn.toml"
    write_topology(config, ports)
    dns_port = ports["dns"]
    router = procs.start("router", [*LIVECDN, "geo", "--config", str(config), "--node", "router",
                                    "--log-level", "error"])
    deadline = time.monotonic() + READY_TIMEOUT
    while waits_ready(dns_port) is False:
        procs.check("router")
        if time.monotonic() > deadline:
            raise RuntimeError(f"router not answering after {READY_TIMEOUT:.0f}s:\n{procs.log_tail('router')}")
    proc = psutil.Process(router.pid)
    start = rss_mb(proc)
    unique_large(dns_port, 2000, float("inf"))
    after_large = rss_mb(proc)
    addresses = 20_000 // scale
    from_many_addresses(dns_port, addresses, float("inf"))
    memory = {"start_mb": start, "after_unique_large_mb": after_large, "growth_mb": round(after_large - start, 1),
              "addresses": addresses, "after_many_addresses_mb": rss_mb(proc)}
    seconds = PHASE_SECONDS / scale
    phases: dict[str, tuple[Callable[..., None] | None, int]] = {
        "nothing": (None, 0),
        "pointer bombs": (bombs, 4000),
        "names over 255 bytes": (long_names, 100_000),
        "unique 60 KB queries": (unique_large, 20_000),
        "1,024 dripping TCP": (drip, 1024),
    }
    report = {"memory": memory, "seconds_per_phase": seconds,
              "waits": {name: waits(dns_port, fn, count, seconds) for name, (fn, count) in phases.items()}}
    procs.check("router")
    return report


def waits_ready(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(valid(1), ("127.0.0.1", port))
        try:
            return len(s.recv(4096)) > 12
        except OSError:
            time.sleep(0.1)
            return False


if __name__ == "__main__":
    sys.exit(main())
