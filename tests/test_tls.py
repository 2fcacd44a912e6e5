"""HTTPS at the edge and the router, against real processes and real clients (curl, openssl s_client).

A CDN started as `livecdn demo` runs (a topology this module writes: two
edges with TLS, certificates from a throwaway CA), or `livecdn demo --tls`
itself. What is pinned: protocol versions (1.1 refused; 1.2, 1.3 taken),
SNI choosing the certificate by name, session resumption, plain HTTP served
or redirected beside HTTPS, SIGHUP swapping the certificate for new
handshakes while a connection opened before it keeps working, a bad
certificate or key refused at start (exit 2, one line naming file and key),
and `demo --tls`: curl with the demo's CA through the router's https 302 to
an https edge, which fetches from its shield over HTTPS.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.cdn import ROOT, free_port_on, run_cdn, topology_toml, wait_until

pytestmark = pytest.mark.slow

# Names the two certificates of edge-1 are for (SNI), and the edges' loopback addresses (topology_toml's).
NAME_A, NAME_B = "a.cdn.test", "b.cdn.test"
EDGE_1, EDGE_2 = "127.0.1.1", "127.0.2.1"
PLAYLIST = "/live/master.m3u8"


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("openssl is not installed: run `make test` (deps-test installs it)", pytrace=False)
    return path


def issue(ca: trustme.CA, where: Path, stem: str, *names: str) -> tuple[Path, Path]:
    """A certificate (with its chain) and key for `names`, written as stem.pem / stem.key."""
    leaf = ca.issue_cert(*names)
    cert, key = where / f"{stem}.pem", where / f"{stem}.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def tls_topology(where: Path, ca: trustme.CA) -> str:
    """Two edges, no router: edge-1 serves plain HTTP beside HTTPS with two certificates (the first for its
    address and NAME_A, the default), edge-2 redirects plain HTTP to HTTPS."""
    issue(ca, where, "a", EDGE_1, NAME_A)
    issue(ca, where, "b", NAME_B)
    issue(ca, where, "e2", EDGE_2)
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    port = free_port_on([EDGE_1, EDGE_2])
    return topology_toml(origin={"mode": "synthetic"}, edges=2, router=False) + "\n".join([
        "[edges.edge-1.tls]", f'listen = "{EDGE_1}:{port}"',
        'certificates = [{cert = "a.pem", key = "a.key"}, {cert = "b.pem", key = "b.key"}]',
        "[edges.edge-2.tls]", f'listen = "{EDGE_2}:{port}"', 'certificates = [{cert = "e2.pem", key = "e2.key"}]',
        'plain = "redirect"', ""])


def tls_port(config: Path) -> int:
    return int(re.findall(r'listen = "127\.0\.1\.1:(\d+)"', config.read_text())[-1])


@pytest.fixture(scope="module")
def tls_cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    where = tmp_path_factory.mktemp("tls")
    config = where / "cdn.toml"
    config.write_text(tls_topology(where, trustme.CA()))
    with run_cdn(config) as info:
        info["dir"], info["tls_port"] = where, tls_port(config)
        yield info


def s_client(host: str, port: int, *args: str, request: str = "") -> subprocess.CompletedProcess[str]:
    """One openssl s_client connection (with `request` sent, then EOF): its whole output."""
    return subprocess.run([_openssl(), "s_client", "-connect", f"{host}:{port}", "-showcerts", *args],
                          input=request, capture_output=True, text=True, timeout=20)


def served(output: str) -> str:
    """The leaf certificate an s_client transcript shows, as PEM."""
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", output, re.S)
    assert m is not None, output
    return m.group(0)


def leaf_of(path: Path) -> str:
    return served(path.read_text())


def test_tls_1_2_and_1_3_are_accepted_and_1_1_is_refused(tls_cdn: dict[str, Any]) -> None:
    port, ca = tls_cdn["tls_port"], str(tls_cdn["dir"] / "ca.pem")
    for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        out = s_client(EDGE_1, port, flag, "-CAfile", ca, "-verify_return_error")
        assert out.returncode == 0, out.stderr
        assert f"Protocol  : {version}" in out.stdout or f"New, {version}" in out.stdout, out.stdout
        assert "Verify return code: 0 (ok)" in out.stdout, out.stdout
    # The client is allowed TLS 1.1 (security level 0 lets OpenSSL 3 offer it): the server refuses it.
    old = s_client(EDGE_1, port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert old.returncode != 0, old.stdout
    assert "no protocols available" not in old.stderr, old.stderr  # it was offered, not withheld by the client
    assert "Cipher is (NONE)" in old.stdout or "New, (NONE)" in old.stdout, old.stdout


def test_sni_picks_the_certificate_for_the_name_and_the_first_without_one(tls_cdn: dict[str, Any]) -> None:
    port, where = tls_cdn["tls_port"], tls_cdn["dir"]
    ca = str(where / "ca.pem")
    for name, stem in ((NAME_A, "a"), (NAME_B, "b")):
        out = s_client(EDGE_1, port, "-servername", name, "-CAfile", ca, "-verify_hostname", name,
                       "-verify_return_error")
        assert out.returncode == 0, out.stderr
        assert served(out.stdout) == leaf_of(where / f"{stem}.pem"), name
    bare = s_client(EDGE_1, port, "-noservername")
    assert served(bare.stdout) == leaf_of(where / "a.pem")
    unknown = s_client(EDGE_1, port, "-servername", "other.test")
    assert served(unknown.stdout) == leaf_of(where / "a.pem")


def test_sessions_resume(tls_cdn: dict[str, Any], tmp_path: Path) -> None:
    port, session = tls_cdn["tls_port"], str(tmp_path / "session.pem")
    for version in ("-tls1_2", "-tls1_3"):
        # TLS 1.3 tickets come after the handshake: a request and its answer let the client read them.
        first = s_client(EDGE_1, port, version, "-sess_out", session, "-ign_eof",
                         request=f"GET /healthz HTTP/1.1\r\nHost: {NAME_A}\r\nConnection: close\r\n\r\n")
        assert first.returncode == 0 and "New," in first.stdout, first.stdout
        again = s_client(EDGE_1, port, version, "-sess_in", session)
        assert "Reused," in again.stdout, (version, again.stdout)


def test_curl_gets_the_playlist_over_https_and_plain_http_beside_it(tls_cdn: dict[str, Any]) -> None:
    port, ca = tls_cdn["tls_port"], str(tls_cdn["dir"] / "ca.pem")
    for flag, status, alpn in (("--http2", "HTTP/2 200", "h2"), ("--http1.1", "HTTP/1.1 200", "http/1.1")):
        out = subprocess.run(["curl", "-sv", flag, "--cacert", ca, f"https://{EDGE_1}:{port}{PLAYLIST}"],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        assert f"< {status}" in out.stderr and "TLSv1.3" in out.stderr, out.stderr
        assert f"ALPN: server accepted {alpn}" in out.stderr, out.stderr  # HTTP/2 when the client offers it
        assert out.stdout.startswith("#EXTM3U")
    edge_1 = next(n for n in tls_cdn["nodes"] if n["name"] == "edge-1")
    with urllib.request.urlopen(edge_1["url"] + PLAYLIST, timeout=10) as r:  # plain = "serve" (the default)
        assert r.status == 200 and r.read().startswith(b"#EXTM3U")


def test_plain_http_redirects_to_https_with_the_same_path(tls_cdn: dict[str, Any]) -> None:
    edge_2 = next(n for n in tls_cdn["nodes"] if n["name"] == "edge-2")
    port, ca = tls_cdn["tls_port"], str(tls_cdn["dir"] / "ca.pem")
    target = f"{PLAYLIST}?x=1"
    head = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                           edge_2["url"] + target], capture_output=True, text=True, timeout=20)
    assert head.stdout == f"301 https://{EDGE_2}:{port}{target}", head.stdout
    h2c = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                          "%{http_version} %{http_code} %{redirect_url}", edge_2["url"] + target],
                         capture_output=True, text=True, timeout=20)
    assert h2c.stdout == f"2 301 https://{EDGE_2}:{port}{target}", h2c.stdout  # HTTP/2 on the plain port redirects too
    post = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", edge_2["url"] + "/"],
                          capture_output=True, text=True, timeout=20)
    assert post.stdout == "308"  # a method other than GET/HEAD is kept by a 308
    followed = subprocess.run(["curl", "-sL", "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code} %{url_effective}",
                               edge_2["url"] + target], capture_output=True, text=True, timeout=20)
    assert followed.stdout == f"200 https://{EDGE_2}:{port}{target}", followed.stdout


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = 15.0) -> bytes:
    """What an s_client process prints until `marker` (or the timeout)."""
    assert proc.stdout is not None
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            got += chunk
    return got


def test_sighup_serves_a_new_certificate_to_new_handshakes_and_keeps_open_connections(tmp_path: Path) -> None:
    ca = trustme.CA()
    config = tmp_path / "cdn.toml"
    config.write_text(tls_topology(tmp_path, ca))
    port = tls_port(config)
    request = f"GET {PLAYLIST} HTTP/1.1\r\nHost: {NAME_A}\r\n\r\n".encode()
    with run_cdn(config) as info:
        edge = next(n for n in info["nodes"] if n["name"] == "edge-1")
        with urllib.request.urlopen(edge["admin"] + "/healthz", timeout=10) as r:
            pid = json.loads(r.read())["pid"]
        before = leaf_of(tmp_path / "a.pem")
        old = subprocess.Popen([_openssl(), "s_client", "-connect", f"{EDGE_1}:{port}", "-servername", NAME_A,
                                "-ign_eof", "-quiet"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
        try:
            assert old.stdin is not None
            old.stdin.write(request)
            old.stdin.flush()
            assert b"HTTP/1.1 200" in _read_until(old, b"#EXTM3U")
            issue(ca, tmp_path, "a", EDGE_1, NAME_A)  # a new certificate in the same files
            after = leaf_of(tmp_path / "a.pem")
            assert after != before
            os.kill(pid, signal.SIGHUP)
            assert wait_until(lambda: served(s_client(EDGE_1, port, "-servername", NAME_A).stdout) == after), \
                "new handshakes still get the old certificate"
            old.stdin.write(request)  # the connection opened before the reload
            old.stdin.flush()
            assert b"HTTP/1.1 200" in _read_until(old, b"#EXTM3U"), "the old connection broke"
            assert old.poll() is None
        finally:
            old.kill()
            old.wait()
        # A broken file on SIGHUP keeps the running certificates (logged), it does not take TLS down.
        (tmp_path / "a.key").write_text("not a key\n")
        os.kill(pid, signal.SIGHUP)
        assert wait_until(lambda: "a.key: not a PEM private key" in info["stderr"]()), info["stderr"]()[-2000:]
        assert served(s_client(EDGE_1, port, "-servername", NAME_A).stdout) == after


@pytest.fixture
def edge_config(tmp_path: Path) -> Path:
    config = tmp_path / "cdn.toml"
    config.write_text(tls_topology(tmp_path, trustme.CA()))
    return config


def _start_edge(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livecdn", "edge", "--config", str(config), "--node", "edge-1"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)


@pytest.mark.parametrize(("breakage", "key", "problem"), [
    (lambda d: (d / "b.pem").unlink(), "edges.edge-1.tls.certificates[1].cert", "b.pem: cannot read: No such file"),
    (lambda d: (d / "a.pem").write_text("hello\n"), "edges.edge-1.tls.certificates[0].cert",
     "a.pem: not a PEM certificate"),
    (lambda d: shutil.copy(d / "b.key", d / "a.key"), "edges.edge-1.tls.certificates[0].key",
     "a.key: does not match the certificate in"),
    (lambda d: ((d / "a.key").unlink(), (d / "a.key").mkdir()), "edges.edge-1.tls.certificates[0].key",
     "a.key: cannot read: Is a directory"),
], ids=["missing", "not-pem", "mismatched-key", "unreadable-key"])
def test_a_bad_certificate_or_key_is_one_line_naming_file_and_key_and_exit_2(
        edge_config: Path, breakage: Any, key: str, problem: str) -> None:
    breakage(edge_config.parent)
    proc = _start_edge(edge_config)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"livecdn: {edge_config}: {key}: "), lines[0]
    assert problem in lines[0], lines[0]


def test_a_missing_origin_ca_file_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(topology_toml(origin="https://127.0.0.1:1", edges=1, router=False, shields=0)
                      .replace('url = "https://127.0.0.1:1"', 'url = "https://127.0.0.1:1"\nca_file = "nope.pem"')
                      .replace('[edges.edge-1]', '[edges.edge-1]\norigin_fallback = true'))
    proc = _start_edge(config)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"livecdn: {config}: origin.ca_file: {tmp_path / 'nope.pem'}: cannot read: " \
                                  "No such file or directory", proc.stderr


@pytest.fixture(scope="module")
def demo_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    config = tmp_path_factory.mktemp("demo-tls") / "cdn.toml"
    config.write_text(topology_toml(origin={"mode": "synthetic"}))
    with run_cdn(config, "--tls") as info:
        yield info


def test_demo_tls_plays_over_https_through_the_router_with_its_ca(demo_tls: dict[str, Any]) -> None:
    ca, play = demo_tls["ca"], demo_tls["https"]["play"]
    router = next(n for n in demo_tls["nodes"] if n["role"] == "geo")
    assert play == router["https"] + PLAYLIST and play.startswith("https://")
    out = subprocess.run(["curl", "-svL", "--cacert", ca, play], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # The router's 302 names the edge's https URL, and the edge answers over TLS 1.3 with HTTP/2.
    location = re.search(r"< Location: (\S+)", out.stderr)
    edges = {n["https"] for n in demo_tls["nodes"] if n["role"] == "edge"}
    assert location is not None and location.group(1).rsplit(PLAYLIST, 1)[0] in edges, out.stderr
    assert out.stderr.count("SSL connection using TLSv1.3") == 2, out.stderr
    assert "< HTTP/2 200" in out.stderr and out.stdout.startswith("#EXTM3U"), out.stderr
    # Its plain play URL redirects to an https edge too (an https page can load what it is sent to).
    plain = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{redirect_url}", demo_tls["play"]],
                           capture_output=True, text=True, timeout=30)
    assert plain.stdout.rsplit(PLAYLIST, 1)[0] in edges, plain.stdout


def test_demo_tls_edges_fetch_from_their_shield_over_https(demo_tls: dict[str, Any]) -> None:
    shield = next(n for n in demo_tls["nodes"] if n["role"] == "shield")
    for edge in (n for n in demo_tls["nodes"] if n["role"] == "edge"):
        with urllib.request.urlopen(edge["admin"] + "/healthz", timeout=10) as r:
            upstreams = json.loads(r.read())["upstreams"]
        assert list(upstreams) == [shield["https"]], upstreams
        assert upstreams[shield["https"]]["state"] == "up"
    # Their only upstream is the shield's https URL (no origin fallback): what they serve came that way.
    edge = next(n for n in demo_tls["nodes"] if n["role"] == "edge")
    context = ssl.create_default_context(cafile=demo_tls["ca"])
    with urllib.request.urlopen(edge["https"] + PLAYLIST, timeout=10, context=context) as r:
        assert r.status == 200 and r.read().startswith(b"#EXTM3U")
