"""HTTPS: livecdn's edge beside nginx over TLS, hits per second and handshakes per second, on this machine.

    .venv/bin/python benchmarks/https.py               # 2 runs of 5 s per figure: about 3 min
    .venv/bin/python benchmarks/https.py --runs 3 --duration 10

Side by side in one run: the origin (speed/origin.py, core 1) behind livecdn's
edge (one worker, a TLS listener, `--no-access-log`) and nginx (one worker,
https/nginx.conf.template: speed's proxy_cache over TLS), each pinned to core
0, measured in turn; every client pinned to core 1. Both serve one throwaway
certificate (trustme's ECDSA P-256) with TLS 1.2 and 1.3 and the same TLS 1.2
suites (livecdn.front.tls.TLS12_CIPHERS); the suite each negotiates is read
back with openssl s_client and printed beside the figures.

Figures (SCENARIOS; medians of the runs):
  playlist   wrk -t1 -c64, HTTP/1.1 over TLS, kept alive: the 1 KiB live playlist, hits/s
  segment    the same for the 1 MiB segment
  full-1.3   openssl s_time -new -tls1_3: full handshakes/s (a new session per connection)
  resumed-1.3, full-1.2, resumed-1.2: the same with -reuse (session resumption) and TLS 1.2
  h2-playlist  h2load -c32 -m10 over TLS, ALPN h2 (as browsers get HTTP/2): the playlist, hits/s
  h2-segment   h2load -c8 -m4: the segment (h2speed.py's loads, there over h2c)

Both listeners offer h2 and http/1.1 by ALPN (nginx: `listen ... ssl http2`), so
wrk keeps HTTP/1.1 and h2load gets HTTP/2 from the same server. To add a
figure, add a `Scenario` to SCENARIOS: its command for a server's port and a
parser of that command's output.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from h2speed import h2load_command, h2load_figures
from lib.ports import free_port
from lib.procs import BENCH, LIVECDN, PY, Processes, wait_http, workspace
from lib.report import header, save
from livecdn.front.tls import TLS12_CIPHERS
from speed import SPEED, machine, parse_wrk

SERVER_CPU, CLIENT_CPU = "0", "1"
CONNECTIONS = 64
WARM_SECONDS = 2  # one wrk run per path before measuring: every answer after it is a cache hit
TOOLS = ("nginx", "wrk", "openssl", "h2load")


@dataclass(frozen=True)
class Scenario:
    """One figure: a client command against a port for some seconds, and what its output says per second."""

    label: str
    unit: str
    command: Callable[[int, float], list[str]]
    parse: Callable[[str], float]


def _wrk(path: str) -> Callable[[int, float], list[str]]:
    return lambda port, seconds: ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s",
                                  f"https://127.0.0.1:{port}{path}"]


def _s_time(mode: str, version: str) -> Callable[[int, float], list[str]]:
    return lambda port, seconds: ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", mode, version,
                                  "-time", f"{seconds:g}"]


def _hits(out: str) -> float:
    result = parse_wrk(out)
    if result["non2xx"] or result["errors"]:
        raise RuntimeError(f"wrk saw errors or non-2xx answers:\n{out}")
    return result["rps"]


def _h2load(path: str, clients: int, streams: int) -> Callable[[int, float], list[str]]:
    return lambda port, seconds: h2load_command(f"https://127.0.0.1:{port}{path}", clients, streams, seconds)


def _h2_hits(out: str) -> float:
    result = h2load_figures(out)
    if result["protocol"] != "h2" or result["failed"] or not result["succeeded"]:
        raise RuntimeError(f"h2load did not get every answer over h2 (ALPN {result['protocol'] or 'none'}):\n{out}")
    return result["rps"]


def _handshakes(out: str) -> float:
    m = re.search(r"(\d+) connections in (\d+) real seconds", out)
    if m is None or int(m.group(2)) == 0:
        raise RuntimeError(f"openssl s_time said nothing measurable:\n{out}")
    return int(m.group(1)) / int(m.group(2))


SCENARIOS = {
    "playlist": Scenario("1 KiB playlist, HTTP/1.1 TLS (wrk)", "hits/s", _wrk("/static/live.m3u8"), _hits),
    "segment": Scenario("1 MiB segment, HTTP/1.1 TLS (wrk)", "hits/s", _wrk("/static/seg.ts"), _hits),
    "h2-playlist": Scenario("1 KiB playlist, HTTP/2 TLS (h2load)", "hits/s", _h2load("/static/live.m3u8", 32, 10),
                            _h2_hits),
    "h2-segment": Scenario("1 MiB segment, HTTP/2 TLS (h2load)", "hits/s", _h2load("/static/seg.ts", 8, 4), _h2_hits),
    "full-1.3": Scenario("TLS 1.3 full handshakes (s_time -new)", "/s", _s_time("-new", "-tls1_3"), _handshakes),
    "resumed-1.3": Scenario("TLS 1.3 resumed handshakes (s_time -reuse)", "/s", _s_time("-reuse", "-tls1_3"),
                            _handshakes),
    "full-1.2": Scenario("TLS 1.2 full handshakes (s_time -new)", "/s", _s_time("-new", "-tls1_2"), _handshakes),
    "resumed-1.2": Scenario("TLS 1.2 resumed handshakes (s_time -reuse)", "/s", _s_time("-reuse", "-tls1_2"),
                            _handshakes),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def certificate(where: Path) -> tuple[Path, Path]:
    leaf = trustme.CA().issue_cert("127.0.0.1")
    cert, key = where / "cert.pem", where / "key.pem"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def start_livecdn(procs: Processes, origin: int, cert: Path, key: Path) -> int:
    port, run = free_port(), procs.workdir / "livecdn"
    run.mkdir()
    config = run / "cdn.toml"
    config.write_text(
        '[cdn]\nname = "https"\n\n[cache]\nmemory_bytes = "512MiB"\ndisk_path = ""\n\n'
        f'[origin]\nurl = "http://127.0.0.1:{origin}"\n\n[regions.eu]\nlocation = [50.1, 8.7]\n\n'
        f'[edges.edge-1]\nregion = "eu"\nlisten = "127.0.0.1:{free_port()}"\nadmin = "127.0.0.1:{free_port()}"\n'
        'origin_fallback = true\n'
        f'[edges.edge-1.tls]\nlisten = "127.0.0.1:{port}"\nplain = "off"\n'
        f'certificates = [{{cert = "{cert}", key = "{key}"}}]\n')
    procs.start("livecdn", LIVECDN + ["edge", "--config", str(config), "--node", "edge-1", "--no-access-log",
                                      "--log-level", "warning"], cpus=SERVER_CPU)
    return port


def start_nginx(procs: Processes, origin: int, cert: Path, key: Path) -> int:
    port, run = free_port(), procs.workdir / "nginx"
    run.mkdir(mode=0o755)
    conf = run / "nginx.conf"
    conf.write_text((BENCH / "https" / "nginx.conf.template").read_text().format(
        tmp=run, port=port, origin_port=origin, cert=cert, key=key, ciphers=TLS12_CIPHERS))
    procs.start("nginx", ["nginx", "-c", str(conf), "-p", str(run), "-e", str(run / "nginx-error.log")],
                cpus=SERVER_CPU)
    return port


def negotiated(port: int, where: Path) -> dict[str, str]:
    """The suite each TLS version gets from the server at `port`, and whether its session resumes (s_client)."""
    out = {}
    def s_client(version: str, *args: str) -> str:
        return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", version, *args],
                              input="GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                              capture_output=True, text=True, timeout=20).stdout

    for version in ("-tls1_3", "-tls1_2"):
        first = s_client(version, "-ign_eof", "-sess_out", str(where / "session.pem"))
        m = re.search(r"Cipher is (\S+)", first)
        again = s_client(version, "-sess_in", str(where / "session.pem"))
        out[version.lstrip("-")] = (m.group(1) if m else "?") + (", resumes" if "Reused," in again else
                                                                  ", does NOT resume")
    return out


def run(procs: Processes, ports: dict[str, int], runs: int, seconds: float) -> dict[str, dict[str, list[float]]]:
    figures: dict[str, dict[str, list[float]]] = {s: {n: [] for n in ports} for s in SCENARIOS}
    for i in range(runs):
        for name, scenario in SCENARIOS.items():
            for server, port in ports.items():  # in turn, the same minute of the machine for both
                procs.check(server)
                cmd = ["taskset", "-c", CLIENT_CPU, *scenario.command(port, seconds)]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
                figures[name][server].append(scenario.parse(out))
                log(f"run {i + 1}/{runs} {name:<12} {server:<8} {figures[name][server][-1]:>10.0f} {scenario.unit}")
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per figure and run")
    args = p.parse_args()
    if missing := [t for t in TOOLS if shutil.which(t, path="/usr/sbin:/usr/bin:/bin") is None]:
        log(f"missing {', '.join(missing)}: apt-get install -y nginx wrk openssl nghttp2-client")
        return 2
    with workspace("https") as procs:
        cert, key = certificate(procs.workdir)
        origin = free_port()
        procs.start("origin", [PY, str(SPEED / "origin.py"), "--port", str(origin)], cpus=CLIENT_CPU)
        wait_http(procs, "origin", f"http://127.0.0.1:{origin}/static/live.m3u8")
        ports = {"livecdn": start_livecdn(procs, origin, cert, key), "nginx": start_nginx(procs, origin, cert, key)}
        for server, port in ports.items():
            procs.check(server)
            for path in ("/static/live.m3u8", "/static/seg.ts"):
                subprocess.run(["curl", "-sk", "--retry", "30", "--retry-connrefused", "--retry-delay", "1",
                                "-o", "/dev/null", f"https://127.0.0.1:{port}{path}"], check=True, timeout=60)
                subprocess.run(["taskset", "-c", CLIENT_CPU, *_wrk(path)(port, WARM_SECONDS)],
                               capture_output=True, timeout=60)
        suites = {server: negotiated(port, procs.workdir) for server, port in ports.items()}
        figures = run(procs, ports, args.runs, args.duration)
    medians = {s: {n: statistics.median(v) for n, v in by.items()} for s, by in figures.items()}
    data: dict[str, Any] = {**header(False, runs=args.runs, duration=args.duration), "machine": machine(),
                            "suites": suites, "medians": medians, "raw": figures}
    print(f"\n{'figure':<44} {'livecdn':>10} {'nginx':>10} {'ratio':>6}")
    for name, scenario in SCENARIOS.items():
        m = medians[name]
        print(f"{scenario.label:<44} {m['livecdn']:>10.0f} {m['nginx']:>10.0f} {m['livecdn'] / m['nginx']:>6.2f}")
    print(f"suites: {json.dumps(suites)}")
    save("https", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
