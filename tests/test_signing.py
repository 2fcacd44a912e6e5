"""Signed URLs without sockets: the token format, the edge's gate, the `[signing]` table and `livecdn sign`.

The process tests (real edges, router, players) are tests/test_signed_urls.py
and tests/test_players.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urljoin

import pytest

from edge.tokens import VERIFIED_BOUND, TokenGate
from livecdn.cache.keys import BadRequest
from livecdn.config import SigningKey, SigningSettings, load
from livecdn.config.load import SIGNING_ENV
from livecdn.front.request import Request
from livecdn.logs import redacted
from livecdn.signing import parse, sign
from tests.cdn import ROOT
from tests.test_config import MINIMAL, problem, write

SECRET = b"k1-secret-0123456789abcdef"
NOW = 1_800_000_000.0
KEYS = (SigningKey("k1", SECRET.decode()), SigningKey("k0", "k0-secret-0123456789abcdef"))


def gate(prefixes: tuple[str, ...] = ("/",)) -> TokenGate:
    return TokenGate(SigningSettings(KEYS, prefixes))


def check(g: TokenGate, target: str, peer: str = "127.0.0.1", now: float = NOW) -> tuple[bool, str]:
    """(had a token, the target left for the cache key)."""
    request = Request("GET", target, "1.1", {}, True)
    return g.unwrap(request, peer, now), request.target


def refusal(g: TokenGate, target: str, peer: str = "127.0.0.1", now: float = NOW) -> str:
    with pytest.raises(BadRequest) as info:
        check(g, target, peer, now)
    assert info.value.status == 403
    return info.value.reason


def signed(path: str = "/live/master.m3u8", **kw: object) -> str:
    return sign(path, "k1", SECRET, int(NOW) + 60, **kw)  # type: ignore[arg-type]


def test_a_token_leads_the_path_and_states_key_expiry_scope_address() -> None:
    url = signed("/live//master.m3u8?a=1", address="10.0.0.7")
    segment, _, rest = url.removeprefix("/~").partition("/")
    assert "/" + rest == "/live/master.m3u8?a=1"  # normalized path, query kept
    token = parse(segment)
    assert (token.key, token.expires, token.scope, token.address) == ("k1", int(NOW) + 60, "/live/", "10.0.0.7")


def test_relative_uris_keep_the_token_and_ll_hls_query_stays() -> None:
    # What hls.js, ffmpeg and dash.js do with a playlist's URIs: RFC 3986 resolution against its URL.
    master = "http://edge" + signed()
    media = urljoin(master, "720p/index.m3u8?_HLS_msn=7&_HLS_part=1")
    segment = urljoin(media, "seg7.ts")
    g = gate()
    for url in (master, media, segment):
        had, rest = check(g, url.removeprefix("http://edge"))
        assert had and "~" not in rest
    assert check(g, media.removeprefix("http://edge"))[1] == "/live/720p/index.m3u8?_HLS_msn=7&_HLS_part=1"


def test_each_bad_token_gets_its_reason() -> None:
    g = gate()
    good = signed()
    segment = good.split("/")[1]
    fields = segment.removeprefix("~").split("~")
    assert refusal(g, "/~k1~1~2/live/master.m3u8") == "token malformed"
    assert refusal(g, good.replace(fields[4], fields[4][:-2] + ("AA" if fields[4][-2:] != "AA" else "BB"))) \
        == "token signature bad"
    later = str(int(fields[1]) + 3600)
    assert refusal(g, good.replace(f"~{fields[1]}~", f"~{later}~")) == "token signature bad"  # expiry tampered
    assert refusal(g, good, now=NOW + 61) == "token expired"
    assert refusal(g, good.replace("/live/master.m3u8", "/other/master.m3u8")) == "path out of token scope"
    assert refusal(g, sign("/live/master.m3u8", "k9", SECRET, int(NOW) + 60)) == "token key unknown"
    bound = signed(address="10.0.0.7")
    assert refusal(g, bound) == "token for another address"
    assert check(g, bound, peer="10.0.0.7")[0]
    # The address field is signed: taking it off breaks the signature.
    assert refusal(g, bound.replace("~10.0.0.7~", "~~")) == "token signature bad"


def test_a_refused_token_is_off_the_target_too() -> None:
    g = gate()
    request = Request("GET", "/~k1~1~L2xpdmUv~~garbage/live/master.m3u8", "1.1", {}, True)
    with pytest.raises(BadRequest):
        g.unwrap(request, "127.0.0.1", NOW)
    assert request.target == "/live/master.m3u8"


def test_both_rotation_keys_are_accepted_and_a_dropped_one_is_refused() -> None:
    g = gate()
    old = sign("/live/master.m3u8", "k0", KEYS[1].secret.encode(), int(NOW) + 60)
    assert check(g, old)[0] and check(g, signed())[0]
    after = TokenGate(SigningSettings(KEYS[:1]))
    assert refusal(after, old) == "token key unknown"
    assert check(after, signed())[0]


def test_only_prefixes_need_a_token() -> None:
    g = gate(("/live/",))
    assert check(g, "/public/a.ts") == (False, "/public/a.ts")
    g.require("/public/a.ts")
    with pytest.raises(BadRequest) as info:
        g.require("/live/master.m3u8")
    assert (info.value.status, info.value.reason) == (403, "token missing")


def test_verified_tokens_are_remembered_within_a_bound_and_garbage_is_not() -> None:
    g = gate()
    for n in range(3):
        with pytest.raises(BadRequest):
            check(g, f"/~k1~{n}~L2xpdmUv~~{'A' * 43}/live/x.ts")
    assert len(g._verified) == 0
    for n in range(VERIFIED_BOUND + 1):
        check(g, sign("/live/x.ts", "k1", SECRET, int(NOW) + 60 + n))
    assert 1 <= len(g._verified) <= VERIFIED_BOUND


def test_sign_refuses_a_path_outside_its_scope_and_bad_paths() -> None:
    with pytest.raises(ValueError, match="outside the scope"):
        sign("/live/master.m3u8", "k1", SECRET, 1, scope="/other/")
    with pytest.raises(ValueError, match="'..'"):
        sign("/live/../x.m3u8", "k1", SECRET, 1)
    assert parse(sign("/live/720p/a.ts", "k1", SECRET, 1, scope="/").split("/")[1][1:]).scope == "/"


def test_log_lines_show_no_token() -> None:
    assert redacted(signed()) == "/~redacted/live/master.m3u8"
    assert redacted("/live/a.ts") == "/live/a.ts"


# --- the [signing] table ----------------------------------------------------------

def test_keys_inline_from_a_file_and_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "k2.key").write_text("k2-secret-from-a-file-0123\n")
    topo = load(write(tmp_path, MINIMAL + """
[signing]
prefixes = ["/live/"]
ttl = 600
[[signing.keys]]
id = "k2"
file = "k2.key"
[[signing.keys]]
id = "k1"
secret = "k1-secret-0123456789abcdef"
"""))
    assert topo.signing is not None
    assert [(k.id, k.secret) for k in topo.signing.keys] == [("k2", "k2-secret-from-a-file-0123"),
                                                             ("k1", "k1-secret-0123456789abcdef")]
    assert (topo.signing.prefixes, topo.signing.ttl) == (("/live/",), 600.0)
    assert "k2-secret" not in repr(topo)  # a secret is never printed
    monkeypatch.setenv(SIGNING_ENV, "e1:env-secret-0123456789abc, e0:env-secret-abcdefghijklm")
    topo = load(write(tmp_path, MINIMAL))
    assert topo.signing is not None and [k.id for k in topo.signing.keys] == ["e1", "e0"]
    assert topo.signing.prefixes == ("/",)


def test_no_signing_table_means_no_tokens(tmp_path: Path) -> None:
    assert load(write(tmp_path, MINIMAL)).signing is None


@pytest.mark.parametrize(("extra", "expected"), [
    ("[signing]\n", "signing.keys: is required"),
    ("[signing]\nkeys = []\n", "signing.keys: must not be empty"),
    ('[[signing.keys]]\nid = "a"\nsecret = "short"\n', "signing.keys[0].secret: must be at least 16 characters, got 5"),
    ('[[signing.keys]]\nid = "a b"\nsecret = "0123456789abcdef"\n', "signing.keys[0].id: must be 1 to 32 letters"),
    ('[[signing.keys]]\nid = "a"\nfile = "nope.key"\n', "signing.keys[0].file: "),
    ('[[signing.keys]]\nid = "a"\nfile = "x"\nsecret = "0123456789abcdef"\n',
     "signing.keys[0].file: give secret or file, not both"),
    ('[[signing.keys]]\nid = "a"\nsecret = "0123456789abcdef"\n[[signing.keys]]\nid = "a"\n'
     'secret = "0123456789abcdef"\n', "signing.keys: key id 'a' is given twice"),
    ('[signing]\nprefixes = ["live"]\n[[signing.keys]]\nid = "a"\nsecret = "0123456789abcdef"\n',
     "signing.prefixes[0]: must start and end with '/'"),
])
def test_signing_errors_name_the_key(tmp_path: Path, extra: str, expected: str) -> None:
    assert problem(tmp_path, MINIMAL + extra).startswith(expected)


def test_a_bad_environment_key_is_named_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_ENV, "nocolon")
    assert problem(tmp_path, MINIMAL) == f"{SIGNING_ENV} (environment): item 1 is not ID:SECRET"
    monkeypatch.setenv(SIGNING_ENV, "a:short")
    assert problem(tmp_path, MINIMAL).startswith(f"{SIGNING_ENV} (environment): keys[0].secret: must be at least")


# --- livecdn sign -------------------------------------------------------------------

def livecdn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livecdn", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, env=env)


def test_livecdn_sign_without_signing_says_so_and_exits_2(tmp_path: Path) -> None:
    proc = livecdn("sign", "--config", str(write(tmp_path, MINIMAL)), "/live/master.m3u8")
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert proc.stderr.strip() == (f"livecdn: {tmp_path / 'cdn.toml'}: signing: this topology asks for no signed "
                                   f"URLs: add a [signing] table with keys, or set {SIGNING_ENV}")


def test_livecdn_sign_prints_a_router_url_the_gate_accepts(tmp_path: Path) -> None:
    config = write(tmp_path, MINIMAL + '[[signing.keys]]\nid = "k1"\nsecret = "k1-secret-0123456789abcdef"\n')
    proc = livecdn("sign", "--config", str(config), "/live/master.m3u8", "--ttl", "30", "--address", "10.0.0.7")
    assert proc.returncode == 0, proc
    url = proc.stdout.strip()
    assert url.startswith("http://127.0.0.1:8000/~k1~")  # the router's HTTP listener
    assert url.endswith("/live/master.m3u8")
    path = url.removeprefix("http://127.0.0.1:8000")
    g = gate()
    assert check(g, path, peer="10.0.0.7", now=time.time()) == (True, "/live/master.m3u8")
    assert refusal(g, path, peer="10.0.0.7", now=time.time() + 31) == "token expired"
    bad = livecdn("sign", "--config", str(config), "/live/master.m3u8", "--address", "nowhere")
    assert bad.returncode == 2 and "--address" in bad.stderr
    bad = livecdn("sign", "--config", str(config), "/live/master.m3u8", "--ttl", "0")
    assert bad.returncode == 2 and "--ttl: must be above 0 s" in bad.stderr
