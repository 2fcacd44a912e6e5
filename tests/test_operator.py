"""What an operator used to nginx or Varnish takes for granted (issue 14): real `livecdn` processes.

`--version`, `livecdn check` (nginx -t), `livecdn run` taking the role from
the file, one line naming file and key for an address or port this machine
cannot give, the demo in front of a packager's origin (a base URL or a
playlist URL), a quiet demo, access lines with the fields log pipelines
expect in a file reopened on SIGUSR1, and a restart that takes the port over
before the old process leaves.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from livecdn import __version__
from tests.cdn import ROOT, free_port, run_cdn, topology_toml, wait_until
from tests.fakeorigin import FileOrigin, in_thread

SYNTHETIC = {"mode": "synthetic", "target_duration": 1, "window": 4, "segment_bytes": 20_000}
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def livecdn(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livecdn", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def fetch(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def listen_of(text: str, table: str) -> str:
    m = re.search(rf'\[{re.escape(table)}\][^\[]*?listen = "([^"]+)"', text)
    assert m, table
    return "http://" + m.group(1)


def admin_of(text: str, table: str) -> str:
    m = re.search(rf'\[{re.escape(table)}\][^\[]*?admin = "([^"]+)"', text)
    assert m, table
    return "http://" + m.group(1)


# --- the command line ---


def test_version() -> None:
    result = livecdn("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"livecdn {__version__}"


def test_check_says_what_each_node_runs_and_ok(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC))
    result = livecdn("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == f"livecdn: {config}: ok"
    assert [ln.split()[:2] for ln in lines[:-1]] == [
        ["origin", "origin:"], ["shield", "shield-1:"], ["edge", "edge-1:"], ["edge", "edge-2:"], ["geo", "router:"]]
    assert "players on 127.0.1.1:" in lines[2] and "1 worker" in lines[2]


@pytest.mark.parametrize(("old", "new", "key", "problem"), [
    ('[shields.shield-1]\nlisten = "127.0.0.1:', '[shields.shield-1]\nlisten = "192.0.2.7:',
     "shields.shield-1.listen", "192.0.2.7 is not an address of this machine"),
    ('disk_path = ""', 'disk_path = "/proc/livecdn/{node}"',
     "shields.shield-1.cache.disk_path", "/proc/livecdn/shield-1"),
])
def test_check_of_a_node_this_machine_cannot_run(tmp_path: Path, old: str, new: str, key: str,
                                                  problem: str) -> None:
    good = topology_toml(origin=SYNTHETIC)
    assert old in good
    config = tmp_path / "cdn.toml"
    config.write_text(good.replace(old, new, 1))
    assert livecdn("check", "--config", str(config)).returncode == 0  # anywhere: nothing wrong
    result = livecdn("check", "--config", str(config), "--node", "shield-1")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"livecdn: {config}: {key}: {result.stderr.split(': ', 3)[3].strip()}"]
    assert problem in result.stderr


@pytest.mark.slow
def test_a_listen_address_not_of_this_machine_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    text = topology_toml(origin="http://127.0.0.1:9", edges=1, router=False)
    text = text.replace('[shields.shield-1]\nlisten = "127.0.0.1:', '[shields.shield-1]\nlisten = "192.0.2.7:', 1)
    config = tmp_path / "cdn.toml"
    config.write_text(text)
    result = livecdn("run", "--config", str(config), "--node", "shield-1")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"livecdn: {config}: shields.shield-1.listen: 192.0.2.7 is not an address of this machine"]


@pytest.mark.slow
def test_a_port_in_use_names_file_and_key(tmp_path: Path) -> None:
    text = topology_toml(origin="http://127.0.0.1:9", edges=1, router=False)
    config = tmp_path / "cdn.toml"
    config.write_text(text)
    host, port = listen_of(text, "edges.edge-1").removeprefix("http://").split(":")
    with socket.socket() as squatter:  # another program, without SO_REUSEPORT
        squatter.bind((host, int(port)))
        squatter.listen()
        result = livecdn("edge", "--config", str(config), "--node", "edge-1")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"livecdn: {config}: edges.edge-1.listen: TCP port {port} of {host} is in use by another program"]


@pytest.mark.slow
def test_run_takes_the_role_from_the_file_and_refuses_options_of_other_roles(tmp_path: Path) -> None:
    text = topology_toml(origin=SYNTHETIC, edges=1, router=False)
    config = tmp_path / "cdn.toml"
    config.write_text(text)
    result = livecdn("run", "--config", str(config), "--node", "origin", "--workers", "2")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"livecdn: {config}: --workers: node 'origin' is an origin node: --workers is "
                                     f"only for shield, edge nodes")
    # Options that mean nothing for a role are not offered by its command.
    assert livecdn("geo", "--config", str(config), "--node", "router", "--mode", "ffmpeg").returncode == 2
    assert "--mode" not in livecdn("edge", "--help").stdout
    proc = subprocess.Popen([sys.executable, "-m", "livecdn", "run", "--config", str(config), "--node", "origin",
                             "--log-level", "warning"], cwd=ROOT)
    try:
        origin = listen_of(text, "origin.builtin")
        assert wait_until(lambda: _status(origin + "/live/master.m3u8") == 200, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def _status(url: str) -> int:
    try:
        return fetch(url, timeout=2)[0]
    except OSError:
        return 0


# --- the demo in front of a packager's origin ---


@pytest.fixture
def rtmp_style(tmp_path: Path) -> Iterator[FileOrigin]:
    """What nginx-rtmp writes as the tutorials set it up: /hls/NAME.m3u8 and its segments, nothing else."""
    hls = tmp_path / "www" / "hls"
    hls.mkdir(parents=True)
    (hls / "stream.m3u8").write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n"
                                     "#EXT-X-MEDIA-SEQUENCE:7\n"
                                     + "".join(f"#EXTINF:2.000,\nstream-{i}.ts\n" for i in (7, 8, 9)))
    for i in (7, 8, 9):
        (hls / f"stream-{i}.ts").write_bytes(bytes([0x47]) + bytes(187) * 1)
    with in_thread(FileOrigin(str(tmp_path / "www"))) as origin:
        yield origin


@pytest.mark.slow
def test_demo_in_front_of_an_origin_base_url(tmp_path: Path, rtmp_style: FileOrigin) -> None:
    """Ready when its nodes are (the origin has no /live/master.m3u8); the router URL takes the stream's path."""
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC))
    with run_cdn(config, "--origin", rtmp_style.url, timeout=40) as info:
        assert info["play"] is None
        assert [n["role"] for n in info["nodes"]] == ["shield", "edge", "edge", "geo"]
        status, body = fetch(info["router"] + "/hls/stream.m3u8")
        assert status == 200 and b"stream-9.ts" in body
        assert fetch(info["router"] + "/hls/stream-8.ts")[0] == 200


@pytest.mark.slow
def test_demo_in_front_of_an_origin_playlist_url(tmp_path: Path, rtmp_style: FileOrigin) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC))
    with run_cdn(config, "--origin", rtmp_style.url + "/hls/stream.m3u8", timeout=40) as info:
        assert info["play"] == info["router"] + "/hls/stream.m3u8"
        status, body = fetch(info["play"])
        assert status == 200 and b"stream-7.ts" in body


@pytest.mark.slow
def test_demo_in_front_of_an_origin_that_is_not_there_fails_at_once(tmp_path: Path, rtmp_style: FileOrigin) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC))
    missing = rtmp_style.url + "/hls/other.m3u8"
    started = time.monotonic()
    result = livecdn("demo", "--config", str(config), "--origin", missing, timeout=20)
    assert result.returncode == 1 and time.monotonic() - started < 15
    assert result.stderr.strip() == f"livecdn demo: the origin answered 404 to GET {missing}"
    closed = f"http://127.0.0.1:{free_port()}"
    result = livecdn("demo", "--config", str(config), "--origin", closed, timeout=20)
    assert result.returncode == 1
    assert result.stderr.startswith(f"livecdn demo: cannot reach the origin: GET {closed}/live/master.m3u8: ")


# --- a quiet demo, and the access lines where they are asked for ---


@pytest.mark.slow
def test_the_demo_keeps_access_lines_off_the_terminal_and_names_their_file(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin=SYNTHETIC))
    with run_cdn(config, "--log-level", "info") as info:
        for _ in range(5):
            assert fetch(info["play"], {"Referer": "https://player.example/", "X-Request-Id": "abc-1"})[0] == 200
        path = Path(info["access_log"])
        assert wait_until(lambda: path.exists() and b'"request_id":"abc-1"' in path.read_bytes(), 10)
        terminal = info["stderr"]()
    logged = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert {line["node"] for line in logged} >= {"router", "edge-1"}
    # Only the nodes' own messages on the terminal, none of them an edge "down" before it was up.
    messages = [json.loads(ln) for ln in terminal.splitlines() if ln.startswith("{")]
    assert messages and all("msg" in m for m in messages), terminal[-2000:]
    assert not [m for m in messages if "is down" in m["msg"]], terminal[-2000:]


@pytest.mark.slow
def test_access_lines_carry_what_log_pipelines_expect_and_reopen_on_sigusr1(tmp_path: Path) -> None:
    text = topology_toml(origin=SYNTHETIC, edges=1, router=False)
    config = tmp_path / "cdn.toml"
    config.write_text(text)
    log = tmp_path / "access.log"
    procs = [subprocess.Popen([sys.executable, "-m", "livecdn", "run", "--config", str(config), "--node", name,
                               "--log-level", "warning", *extra], cwd=ROOT)
             for name, extra in (("origin", []), ("shield-1", ["--no-access-log"]),
                                 ("edge-1", ["--access-log", str(log)]))]
    edge = listen_of(text, "edges.edge-1")
    try:
        assert wait_until(lambda: _status(edge + "/live/master.m3u8") == 200, 30)
        fetch(edge + "/live/master.m3u8", {"Referer": "https://p.example/", "Range": "bytes=0-9",
                                           "X-Request-Id": "given-1"})
        fetch(edge + "/live/master.m3u8")
        fetch(edge + "/live/master.m3u8", {"X-Request-Id": "last"})
        assert wait_until(lambda: log.exists() and '"request_id":"last"' in log.read_text(), 10)
        lines = [json.loads(ln) for ln in log.read_text().splitlines()]
        given = next(ln for ln in lines if ln["request_id"] == "given-1")
        assert ISO_MS.match(given["time"]), given
        assert (given["referer"], given["range"], given["protocol"], given["status"]) == (
            "https://p.example/", "bytes=0-9", "HTTP/1.1", 206)
        assert given["host"] == edge.removeprefix("http://")
        made = lines[-2]["request_id"]  # the request between: without an id, so one made for it
        assert made not in ("", "given-1", "last") and made != lines[-4]["request_id"]
        # logrotate: move the file away, signal, and the next lines go to a new file of the name.
        log.rename(tmp_path / "access.log.1")
        procs[2].send_signal(signal.SIGUSR1)
        assert wait_until(lambda: fetch(edge + "/live/master.m3u8", {"X-Request-Id": "after"})[0] == 200
                          and log.exists() and "after" in log.read_text(), 10)
        assert "after" not in (tmp_path / "access.log.1").read_text()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(20) for p in procs] == [0, 0, 0]


# --- restarts without a refused connection ---


@pytest.fixture
def migrating_accept_queue() -> Iterator[None]:
    """net.ipv4.tcp_migrate_req = 1 for the test (put back after): the kernel hands the connections
    waiting in a closing listener's accept queue to its SO_REUSEPORT sibling instead of resetting them.
    Without it no server can take a port over losing nothing (README "Restarts")."""
    knob = Path("/proc/sys/net/ipv4/tcp_migrate_req")
    try:
        before = knob.read_text()
        knob.write_text("1")
    except OSError as e:
        pytest.skip(f"cannot set {knob} ({e.strerror}): needs Linux 5.14+ and root")
    try:
        yield
    finally:
        knob.write_text(before)


@pytest.mark.slow
def test_a_new_process_takes_the_port_over_before_the_old_one_leaves(tmp_path: Path,
                                                                      migrating_accept_queue: None) -> None:
    """SO_REUSEPORT with one worker too: start the new edge, stop the old, no request fails (under load).

    A connection the old process accepted as its sockets closed, or that had sent nothing yet, is
    answered once, not closed unread (1-2 of ~7,500 requests were lost that way)."""
    text = topology_toml(origin=SYNTHETIC, edges=1, router=False)
    config = tmp_path / "cdn.toml"
    config.write_text(text)
    edge, admin = listen_of(text, "edges.edge-1"), admin_of(text, "edges.edge-1")

    def start(role: str, name: str) -> subprocess.Popen[bytes]:
        quiet = [] if name == "origin" else ["--no-access-log"]
        return subprocess.Popen([sys.executable, "-m", "livecdn", role, "--config", str(config), "--node", name,
                                 "--log-level", "warning", *quiet], cwd=ROOT)

    upstream = [start("origin", "origin"), start("shield", "shield-1")]
    old = start("edge", "edge-1")
    new = None
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def viewer() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                status, _ = fetch(edge + "/live/master.m3u8", timeout=5)
                if status != 200:
                    failures.append(str(status))
                answered += 1
            except OSError as e:
                failures.append(repr(e))

    try:
        assert wait_until(lambda: _status(edge + "/live/master.m3u8") == 200, 30)
        old_pid = json.loads(fetch(admin + "/healthz")[1])["pid"]
        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(viewer)
            time.sleep(1)
            new = start("edge", "edge-1")
            assert wait_until(lambda: _pid(admin) not in (None, old_pid) or new.poll() is not None, 30)
            assert new.poll() is None, "the second process could not bind beside the first"
            old.send_signal(signal.SIGTERM)
            assert old.wait(20) == 0
            time.sleep(1)
            stop.set()
        assert failures == [] and answered > 50, (failures[:5], answered)
        assert _pid(admin) == new.pid
    finally:
        stop.set()
        for p in [old, *upstream, *([new] if new else [])]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [old, *upstream, *([new] if new else [])]:
            p.wait(20)


def _pid(admin: str) -> int | None:
    try:
        return int(json.loads(fetch(admin + "/healthz", timeout=2)[1])["pid"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_the_drain_timeout_is_a_setting(tmp_path: Path) -> None:
    """[cdn] drain_timeout bounds how long a stop waits for an answer in flight (a slow download here)."""
    text = topology_toml(origin=SYNTHETIC, edges=1, router=False).replace("[cdn]\n", "[cdn]\ndrain_timeout = 1\n")
    config = tmp_path / "cdn.toml"
    config.write_text(text)
    procs = [subprocess.Popen([sys.executable, "-m", "livecdn", "run", "--config", str(config), "--node", name,
                               "--log-level", "warning"], cwd=ROOT) for name in ("origin", "shield-1", "edge-1")]
    edge = listen_of(text, "edges.edge-1")
    try:
        assert wait_until(lambda: _status(edge + "/live/master.m3u8") == 200, 30)
        host, port = edge.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            # A segment read by a player that stops reading: its answer stays in flight.
            names: list[str] = []
            assert wait_until(lambda: bool(names.extend(ln for ln in fetch(edge + "/live/720p/index.m3u8")[1]
                                                        .decode().splitlines() if ln.endswith(".ts")) or names), 15)
            segment = names[0]
            s.sendall(f"GET /live/720p/{segment} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 200)
            time.sleep(0.5)
            started = time.monotonic()
            procs[2].send_signal(signal.SIGTERM)
            assert procs[2].wait(20) == 0
            took = time.monotonic() - started
        assert 0.8 < took < 6, took  # default 10 s; the file's 1 s
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(20)

