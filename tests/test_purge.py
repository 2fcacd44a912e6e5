"""Purge (#10): an authenticated admin API on every cache node, and `livecdn purge` for the whole topology.

The process tests run real `livecdn` processes (2 edges x 2 workers + 1
shield, disk tiers under tmp_path) in front of a FakeOrigin whose bytes change
before the purge, so an old copy served afterwards is told apart.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from livecdn.cache.keys import cache_key
from livecdn.config import ConfigError, load
from livecdn.node.broadcast import ANSWER_TIMEOUT
from livecdn.node.purge import Ask, BadMessage, BadSelector, Selector, Tally, Told, authorized, decode
from tests.cdn import ROOT, Stack, free_port, run_cdn, topology_toml, wait_until
from tests.fakeorigin import FakeOrigin, body, in_thread

TOKEN = "purge-test-token-0123456789"
LADDER = ("720p", "360p")
SEGMENTS = 3
# Requests per name and edge, each on a new connection: SO_REUSEPORT spreads
# them over both workers, so each worker holds every name (a worker missing
# one has probability 2**-19).
SPREAD = 20
# Storage keys start with their origin's identity; a purge selects by path, whichever origin.
ORIGIN = "packager.0123abcd"
# A variant stored for an origin that varies on Accept-Language.
VARIANT = cache_key("/live/720p/index.m3u8", ORIGIN).varied(("accept-language",), {b"accept-language": b"en"}).key


# --- the pure parts ------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "given", "keys", "others"), [
    ("url", "/live/720p/index.m3u8", ["/live/720p/index.m3u8", "/live/720p/index.m3u8?_HLS_msn=3",
                                      VARIANT],
     ["/live/720p/index.m3u8x", "/live/720p/seg_0.ts"]),
    ("url", "http://cdn.example/live//720p/./seg_0.ts?token=x", ["/live/720p/seg_0.ts"], ["/live/720p/seg_00.ts"]),
    ("prefix", "/live/720p/seg_1", ["/live/720p/seg_1.ts", "/live/720p/seg_10.ts"], ["/live/720p/seg_2.ts"]),
    ("prefix", "/live/", ["/live/master.m3u8", "/live/720p/seg_0.ts"], ["/live2/master.m3u8", "/other/live/a.ts"]),
    ("prefix", "/", ["/live/master.m3u8", "/other/a.ts"], []),
    ("stream", "/live/master.m3u8", ["/live/master.m3u8", "/live/720p/index.m3u8", "/live/360p/seg_1.ts"],
     ["/live2/master.m3u8", "/other/seg_1.ts"]),
    ("stream", "/live", ["/live/master.m3u8"], ["/live2/master.m3u8", "/live.m3u8"]),
    ("stream", "/live/720p/index.m3u8", ["/live/720p/seg_0.ts"], ["/live/master.m3u8", "/live/360p/seg_0.ts"]),
])
def test_a_selector_drops_what_it_names_and_nothing_else(kind: str, given: str, keys: list[str],
                                                         others: list[str]) -> None:
    selector = Selector.from_json(json.dumps({kind: given}).encode())
    stored = [k if k == VARIANT else cache_key(k, ORIGIN).key for k in keys]
    assert [k for k in stored if not selector.matches(k)] == []
    assert [k for k in others if selector.matches(cache_key(k, ORIGIN).key)] == []
    assert all(selector.matches(k) for k in keys)  # and keys of a bare engine (no origin identity)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"prefix=/live/", "not JSON"),
    (b'{"prefix": "/live/", "url": "/a.ts"}', "exactly one"),
    (b'["/live/"]', "exactly one"),
    (b'{"path": "/live/"}', "unknown selector 'path'"),
    (b'{"prefix": "live/"}', "must start with '/'"),
    (b'{"prefix": ""}', "non-empty string"),
    (b'{"url": 7}', "non-empty string"),
    (b'{"stream": "/live/../etc/"}', "'..' in path"),
    (b'{"url": "/a%2Fb.ts"}', "encoded slash"),
])
def test_a_bad_selector_says_why(raw: bytes, reason: str) -> None:
    with pytest.raises(BadSelector, match=reason):
        Selector.from_json(raw)


def test_only_the_bearer_token_itself_is_authorized() -> None:
    assert authorized(f"Bearer {TOKEN}", TOKEN)
    assert authorized(f"bearer  {TOKEN} ", TOKEN)  # the scheme is case-insensitive (RFC 9110 11.1)
    assert not authorized(None, TOKEN)
    assert not authorized(f"Basic {TOKEN}", TOKEN)
    assert not authorized(f"Bearer {TOKEN[:-1]}", TOKEN)
    assert not authorized(f"Bearer {TOKEN}x", TOKEN)
    assert not authorized("Bearer ", "")  # no token configured: nothing is authorized


def test_messages_between_workers_and_their_tally() -> None:
    ask = Ask("12.1", Selector("stream", "/live/master.m3u8"))
    assert decode(ask.encode()) == ask
    tally = Tally([21, 22])
    for told in (Told("12.1", 21, 5), Told("12.1", 99, 7), Told("12.1", 21, 6)):  # a stranger, a repeat
        tally.told(decode(told.encode()))  # type: ignore[arg-type]
    assert not tally.done and tally.memory == {21: 5} and tally.waiting == {22}
    tally.told(Told("12.1", 22, error="boom"))
    assert tally.done and tally.errors == {22: "boom"}
    with pytest.raises(BadMessage):
        decode(b'{"ask": "1", "selector": {"prefix": "nope"}}')


def test_the_token_from_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(with_token(topology_toml(origin="http://127.0.0.1:9"), TOKEN))
    monkeypatch.delenv("LIVECDN_ADMIN_TOKEN", raising=False)
    assert load(config).admin_token == TOKEN
    monkeypatch.setenv("LIVECDN_ADMIN_TOKEN", "from-the-environment-42")
    assert load(config).admin_token == "from-the-environment-42"
    monkeypatch.setenv("LIVECDN_ADMIN_TOKEN", "short")
    with pytest.raises(ConfigError, match="LIVECDN_ADMIN_TOKEN.*at least 16"):
        load(config)
    monkeypatch.delenv("LIVECDN_ADMIN_TOKEN")
    config.write_text(with_token(topology_toml(origin="http://127.0.0.1:9"), "has spaces in it, so no"))
    with pytest.raises(ConfigError, match="cdn.admin_token"):
        load(config)


# --- real processes ------------------------------------------------------------------


def with_token(toml: str, token: str) -> str:
    return toml.replace("[cdn]\n", f'[cdn]\nadmin_token = "{token}"\n', 1)


def publish(origin: FakeOrigin, run: str) -> None:
    """An ended HLS stream under /live/ (master, renditions, segments) and one under /other/; bytes name `run`."""
    # Ended playlists stay fresh one target duration: 20 s keeps every one on the disk tier
    # (DISK_MIN_LIFETIME) and fresh for the whole test, so only the purge makes them go.
    ended = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:20\n#EXT-X-MEDIA-SEQUENCE:0\n"
    segs = "".join(f"#EXTINF:20.0,\nseg_{i}.ts\n" for i in range(SEGMENTS))
    master = "#EXTM3U\n" + "".join(f"#EXT-X-STREAM-INF:BANDWIDTH={1000 * (i + 1)}\n{r}/index.m3u8\n"
                                   for i, r in enumerate(LADDER))
    hls = "application/vnd.apple.mpegurl"
    origin.routes["/live/master.m3u8"] = body(f"{master}# {run}\n".encode(), hls)
    for r in LADDER:
        origin.routes[f"/live/{r}/index.m3u8"] = body(f"{ended}{segs}#EXT-X-ENDLIST\n# {run}\n".encode(), hls)
        for i in range(SEGMENTS):
            origin.routes[f"/live/{r}/seg_{i}.ts"] = body(f"{run} {r} {i} ".encode() * 500)
    other = f"{ended}#EXTINF:20.0,\nseg_0.ts\n#EXT-X-ENDLIST\n# {run}\n"
    origin.routes["/other/index.m3u8"] = body(other.encode(), hls)
    origin.routes["/other/seg_0.ts"] = body(f"{run} other ".encode() * 500)


def purged_names() -> list[str]:
    return ["/live/master.m3u8", *(f"/live/{r}/{n}" for r in LADDER
                                   for n in ("index.m3u8", *(f"seg_{i}.ts" for i in range(SEGMENTS))))]


KEPT = ["/other/index.m3u8", "/other/seg_0.ts"]


def get(base: str, path: str, headers: dict[str, str] | None = None, method: str = "GET",
        data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (so SO_REUSEPORT may pick either worker)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def purge_cmd(config: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LIVECDN_ADMIN_TOKEN"}
    if token is not None:
        env["LIVECDN_ADMIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "livecdn", "purge", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def cdn_toml(origin: FakeOrigin, tmp_path: Path, *, edges: int, workers: int) -> str:
    toml = topology_toml(origin=origin.url, shields=1, edges=edges, workers=workers, router=False,
                         cache={"disk_path": str(tmp_path / "disk-{node}")})
    # Every name is announced by a playlist, but each worker's guard learns on its own: keep it out of the way.
    return toml + "\n[guard]\nunknown_rate = 0\nunknown_client_rate = 0\nprefetch = false\n"


def workers_holding(admin: str, count: int) -> bool:
    """Asked over new connections, `count` different workers report objects in their memory tier."""
    held = set()
    for _ in range(40):
        health = json.loads(get(admin, "/healthz")[2])
        if health["memory_bytes"] > 0:
            held.add(health["pid"])
    return len(held) >= count


@pytest.mark.slow
def test_purge_of_a_prefix_reaches_every_worker_and_disk_of_every_node(tmp_path: Path) -> None:
    with in_thread(FakeOrigin()) as origin:
        publish(origin, "old")
        config = tmp_path / "cdn.toml"
        config.write_text(with_token(cdn_toml(origin, tmp_path, edges=2, workers=2), TOKEN))
        with run_cdn(config) as info:
            assert info["admin_token"] == TOKEN
            edges = [n for n in info["nodes"] if n["role"] == "edge"]
            for edge in edges:
                for path in purged_names() + KEPT:
                    for _ in range(SPREAD):
                        status, _, got = get(edge["url"], path)
                        assert status == 200 and b"old" in got, (edge["name"], path, status)
                assert workers_holding(edge["admin"], 2)
            publish(origin, "new")  # the origin changed behind the cache's back
            fetched_before = sum(origin.hits.values())

            started = time.monotonic()
            result = purge_cmd(config, "--prefix", "/live/", "--json", token=TOKEN)
            seconds = time.monotonic() - started
            assert result.returncode == 0, result.stdout + result.stderr
            report = json.loads(result.stdout)
            nodes = {n["name"]: n for n in report["nodes"]}
            assert [n["role"] for n in report["nodes"]] == ["shield", "edge", "edge"]  # shields first
            names = len(purged_names())
            shield = nodes["shield-1"]["answer"]
            assert shield["disk"] == names and list(shield["memory"].values()) == [names]
            for edge in edges:
                answer = nodes[edge["name"]]["answer"]
                assert answer["disk"] == names, answer
                # Each of the two workers dropped its own copy of every name.
                assert len(answer["memory"]) == 2 and set(answer["memory"].values()) == {names}, answer
            assert report["dropped"] == 2 * names + 2 * 3 * names
            print(f"\nFIGURE purge --prefix /live/ across 2 edges x 2 workers + 1 shield: "
                  f"{report['dropped']} objects dropped in {report['seconds']:.3f} s (the command's requests; "
                  f"{seconds:.2f} s with its start), "
                  + ", ".join(f"{n['name']} {n['answer']['ms']} ms" for n in report["nodes"]))

            for edge in edges:
                for path in purged_names():
                    results = [get(edge["url"], path) for _ in range(SPREAD)]
                    assert all(s == 200 and b"new" in b and b"old" not in b for s, _, b in results), path
                    assert results[0][1]["X-Cache"] == "MISS", (edge["name"], path, results[0][1])
                for path in KEPT:
                    status, headers, got = get(edge["url"], path)
                    assert status == 200 and b"old" in got and headers["X-Cache"] == "HIT", (path, headers)
            # Each purged name was fetched from the origin again, once (the shield coalesces both edges).
            assert sum(origin.hits.values()) - fetched_before == names


@pytest.mark.slow
def test_the_purge_api_wants_the_token_and_a_valid_selector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIVECDN_ADMIN_TOKEN", raising=False)
    with in_thread(FakeOrigin()) as origin:
        publish(origin, "old")
        config = tmp_path / "cdn.toml"
        config.write_text(cdn_toml(origin, tmp_path, edges=1, workers=1))  # no token in the file
        assert purge_cmd(config, "--prefix", "/live/").returncode == 2  # nowhere to take a token from
        with run_cdn(config) as info:
            token = info["admin_token"]  # the demo made one up
            assert len(token) >= 16
            admin = next(n for n in info["nodes"] if n["role"] == "edge")["admin"]
            selector = json.dumps({"prefix": "/live/"}).encode()
            for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                            {"Authorization": f"Basic {token}"}):
                status, got, answer = get(admin, "/purge", headers, "POST", selector)
                assert status == 401 and got["WWW-Authenticate"].startswith("Bearer"), (headers, answer)
            auth = {"Authorization": f"Bearer {token}"}
            for bad, reason in ((b"/live/", b"not JSON"), (b'{"prefix": "live"}', b"must start with '/'"),
                                (b'{"url": "/a/../b.ts"}', b"'..' in path")):
                status, _, answer = get(admin, "/purge", auth, "POST", bad)
                assert status == 400 and reason in answer, (bad, answer)
            status, _, answer = get(admin, "/purge", auth, "POST", selector)
            assert status == 200 and json.loads(answer)["workers"] == 1, answer
            assert get(admin, "/healthz")[0] == 200  # the node is fine

            assert purge_cmd(config, "--prefix", "/live/", token="wrong-token-wrong-token").returncode == 1
            result = purge_cmd(config, "/live/master.m3u8", token=token)
            assert result.returncode == 0, result.stderr
            assert [ln.split()[:2] for ln in result.stdout.splitlines()[:2]] == [["shield", "shield-1"],
                                                                                  ["edge", "edge-1"]]
            result = purge_cmd(config, "--stream", "relative", token=token)
            assert result.returncode == 2 and "must start with '/'" in result.stderr
            # A node that does not answer is reported, the others are still purged, and the status says so.
            down = tmp_path / "with-a-dead-edge.toml"
            down.write_text(config.read_text() + f'[edges.edge-9]\nregion = "eu"\nlisten = "127.0.0.1:{free_port()}"\n'
                                                  f'admin = "127.0.0.1:{free_port()}"\n')
            result = purge_cmd(down, "--prefix", "/live/", token=token)
            lines = result.stdout.splitlines()
            assert result.returncode == 1 and "edge-9" in result.stderr, result.stdout + result.stderr
            assert "error" in lines[2] and "edge-9" in lines[2] and "dropped" in lines[1], lines


def worker_pids(admin: str) -> set[int]:
    """The pids of the workers answering `admin` (asked over new connections)."""
    return {json.loads(get(admin, "/healthz")[2])["pid"] for _ in range(40)}


def purge_once(admin: str, token: str, selector: dict[str, str], timeout: float) -> tuple[int, dict[str, Any]]:
    """POST /purge until a worker that runs answers (a stopped one holds its connections unanswered)."""
    url = urllib.parse.urlsplit(admin)
    for _ in range(40):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        try:
            conn.request("POST", "/purge", body=json.dumps(selector).encode(),
                         headers={"Authorization": f"Bearer {token}"})
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        except (TimeoutError, ConnectionError):  # the stopped worker took it, or a dead one had queued it
            continue
        finally:
            conn.close()
    raise AssertionError("no worker answered the purge")


@pytest.mark.slow
def test_a_stuck_worker_bounds_the_purge_and_a_dead_one_is_skipped(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "t"  # the nodes' temporary directories, the workers' sockets among them
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    with in_thread(FakeOrigin()) as origin:
        publish(origin, "old")
        config = tmp_path / "cdn.toml"
        config.write_text(with_token(cdn_toml(origin, tmp_path, edges=1, workers=2), TOKEN))
        with run_cdn(config) as info:
            edge = next(n for n in info["nodes"] if n["role"] == "edge")
            pids = worker_pids(edge["admin"])
            assert len(pids) == 2
            stuck, other = sorted(pids)
            os.kill(stuck, signal.SIGSTOP)
            try:
                status, answer = purge_once(edge["admin"], TOKEN, {"prefix": "/live/"}, timeout=ANSWER_TIMEOUT + 3)
            finally:
                os.kill(stuck, signal.SIGCONT)
            # Answered within the bound, saying which worker may still hold copies.
            assert status == 504 and answer["unanswered"] == [stuck] and list(answer["memory"]) == [str(other)]

            os.kill(stuck, signal.SIGKILL)  # its socket stays behind; the supervisor starts another worker

            def replaced() -> bool:
                try:
                    return len(worker_pids(edge["admin"]) - {stuck}) == 2
                except OSError:  # a connection the dead worker had queued: reset
                    return False
            assert wait_until(replaced, 30)
            status, answer = purge_once(edge["admin"], TOKEN, {"prefix": "/live/"}, timeout=ANSWER_TIMEOUT + 3)
            assert status == 200 and len(answer["memory"]) == 2 and str(stuck) not in answer["memory"], answer
            # One socket per live worker: the dead one's was removed by that purge.
            sockets = {int(p.stem) for p in temp.glob("livecdn-workers-edge-1-*/*.sock")}
            assert sockets == worker_pids(edge["admin"]) and stuck not in sockets
        assert list(temp.glob("livecdn-workers-*")) == []  # removed when the node stopped


async def test_a_purged_url_forgets_what_its_vary_taught(origin: FakeOrigin, stack: Stack) -> None:
    """The origin stopped varying and the operator purged the URL: it is cached again, not passed through forever.

    In-process nodes, purged the way other code in a node would (`node.purges.purge`).
    """
    name = "/live/a/seg1.ts"

    async def by_language(request: web.Request) -> web.StreamResponse:
        return web.Response(body=f"old {request.headers.get('Accept-Language')} ".encode() * 64,
                            content_type="video/mp2t", headers={"Vary": "Accept-Language"})

    origin.routes[name] = by_language  # type: ignore[assignment]

    async def fetch() -> tuple[bytes, str]:
        async with aiohttp.ClientSession() as s, s.get(stack.edge + name, headers={"Accept-Language": "fr"}) as r:
            return await r.read(), r.headers["X-Cache"]

    assert [(b[:6], c) for b, c in [await fetch(), await fetch()]] == [(b"old fr", "MISS"), (b"old fr", "HIT")]
    origin.routes[name] = body(b"new " * 64)  # no Vary any more
    for node in (*stack.shields, *stack.edges):
        assert node.purges is not None
        purged = await node.purges.purge(Selector("url", name))
        assert purged.complete and purged.dropped >= 1  # the shield also holds the variant without the header
    assert [(b[:4], c) for b, c in [await fetch(), await fetch()]] == [(b"new ", "MISS"), (b"new ", "HIT")]


async def test_a_node_without_a_token_has_purge_disabled(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s, s.post(stack.edge_admin() + "/purge", json={"prefix": "/"},
                                                    headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 403 and "disabled" in (await r.json())["error"]
