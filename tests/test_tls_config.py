"""TLS in the topology file and the pure parts of TLS: SNI choice, the https redirect's Location.

The `[*.tls]` tables are read by the one reader (exact "key: problem" lines),
their files named relative to the topology file; `choose` picks a
certificate by SNI name; `HttpsRedirect` builds the Location a plain
listener answers with.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from livecdn.config import load
from livecdn.front.redirect import HttpsRedirect
from livecdn.front.request import Request
from livecdn.front.tls import choose
from tests.test_config import MINIMAL, problem, write

EDGE_TLS = '[edges.e.tls]\nlisten = "127.0.1.1:8443"\ncertificates = [{cert = "certs/e.pem", key = "/keys/e.key"}]\n'


def test_tls_tables_are_read_with_their_files_beside_the_topology(tmp_path: Path) -> None:
    text = MINIMAL.replace('url = "http://127.0.0.1:9/"', 'url = "https://127.0.0.1:9/"\nca_file = "ca.pem"')
    topo = load(write(tmp_path, text + EDGE_TLS + '[shields.s.tls]\nlisten = "127.0.0.1:8663"\n'
                      'certificates = [{cert = "s.pem", key = "s.key", names = ["*.shield.test"]}]\n'
                      'ca_file = "shield-ca.pem"\nplain = "off"\n'))
    edge, shield = topo.edges["e"], topo.shields["s"]
    assert edge.tls is not None and shield.tls is not None
    assert edge.tls.certificates[0].cert == str(tmp_path / "certs/e.pem")
    assert edge.tls.certificates[0].key == "/keys/e.key"  # an absolute path stays
    assert edge.tls.plain == "serve" and shield.tls.plain == "off"
    assert shield.tls.certificates[0].names == ("*.shield.test",)
    assert shield.tls.ca_file == str(tmp_path / "shield-ca.pem")
    assert topo.routes[0].ca_file == str(tmp_path / "ca.pem")
    assert (edge.base_url, shield.base_url) == ("https://127.0.1.1:8443", "https://127.0.0.1:8663")
    assert topo.edges["e"].listen.url == "http://127.0.1.1:8080"


@pytest.mark.parametrize(("extra", "expected"), [
    ('[edges.e.tls]\nlisten = "127.0.1.1:8443"\ncertificates = []',
     "edges.e.tls.certificates: must not be empty"),
    ('[edges.e.tls]\nlisten = "127.0.1.1:8443"', "edges.e.tls.certificates: is required"),
    (EDGE_TLS + 'plain = "maybe"', "edges.e.tls.plain: expected one of 'serve', 'redirect', 'off', got 'maybe'"),
    ('[edges.e.tls]\nlisten = "127.0.1.1:8443"\ncertificates = [{cert = "e.pem"}]',
     "edges.e.tls.certificates[0].key: is required"),
    ('[edges.e.tls]\nlisten = "127.0.1.1:8443"\ncertificates = [{cert = "e.pem", key = "e.key", nmes = []}]',
     "edges.e.tls.certificates[0].nmes: unknown key"),
    ('[edges.e.tls]\nlisten = "127.0.1.1:8080"\ncertificates = [{cert = "e.pem", key = "e.key"}]',
     "edges.e.tls.listen: 127.0.1.1:8080 is already used by edges.e.listen"),
])
def test_tls_errors_name_file_key_and_problem(tmp_path: Path, extra: str, expected: str) -> None:
    assert problem(tmp_path, MINIMAL + extra + "\n") == expected


def test_sni_choice_is_exact_then_one_label_wildcard_then_the_default() -> None:
    table = {"a.test": "A", "*.b.test": "B"}
    assert choose(table, "D", "a.test") == "A"
    assert choose(table, "D", "A.Test.") == "A"  # DNS names are case-blind; a final dot is the same name
    assert choose(table, "D", "x.b.test") == "B"
    assert choose(table, "D", "b.test") == "D"  # a wildcard is for one label below, not the name itself
    assert choose(table, "D", "y.x.b.test") == "D"
    assert choose(table, "D", None) == "D"  # no SNI (an IP address URL)
    assert choose(table, "D", "other.test") == "D"


def _request(target: str, host: str | None, method: str = "GET") -> Request:
    return Request(method, target, "1.1", {b"host": host.encode()} if host is not None else {}, True)


@pytest.mark.parametrize(("target", "host", "port", "expected"), [
    ("/live/a.m3u8?x=1", "cdn.test:8080", 8443, "https://cdn.test:8443/live/a.m3u8?x=1"),
    ("/live/a.m3u8", "cdn.test", 443, "https://cdn.test/live/a.m3u8"),
    ("/x", "[::1]:80", 8443, "https://[::1]:8443/x"),
    ("http://cdn.test/y?z", "cdn.test", 8443, "https://cdn.test:8443/y?z"),  # absolute form: its path only
    ("/x", "evil.test\r\nSet-Cookie: a", 8443, None),
    ("/x", None, 8443, None),
])
def test_the_https_redirect_keeps_host_path_and_query(target: str, host: str | None, port: int,
                                                      expected: str | None) -> None:
    assert HttpsRedirect(port).location(_request(target, host)) == expected


def test_the_https_redirect_is_301_for_get_and_308_otherwise_and_400_without_a_host() -> None:
    redirect = HttpsRedirect(8443)
    assert redirect.answer_now(_request("/a", "h.test"), "", 0).fields.status == 301  # type: ignore[union-attr]
    assert redirect.answer_now(_request("/a", "h.test", "POST"), "", 0).fields.status == 308  # type: ignore
    assert redirect.answer_now(_request("/a", None), "", 0).fields.status == 400  # type: ignore[union-attr]
