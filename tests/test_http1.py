"""The player HTTP/1.1 protocol without sockets: request framing and limits, response heads."""

from __future__ import annotations

import pytest

from livecdn.front.http1 import (
    LAST_CHUNK, NEED_DATA, ProtocolError, Request, RequestParser, chunk, date_line, header_lines, http_date,
    response_head,
)

DATE = date_line(0)  # "Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"


def events(*pieces: bytes, **limits: int) -> list[Request | ProtocolError]:
    """Feed the pieces in order; every event that comes out."""
    parser = RequestParser(**limits)
    out: list[Request | ProtocolError] = []
    for piece in pieces:
        parser.receive_data(piece)
        while (event := parser.next_event()) is not NEED_DATA:
            out.append(event)  # type: ignore[arg-type]
    return out


def error(*pieces: bytes, **limits: int) -> tuple[int, str]:
    evs = events(*pieces, **limits)
    assert evs and isinstance(evs[-1], ProtocolError), evs
    return evs[-1].status, evs[-1].reason


# --- requests ------------------------------------------------------------------

def test_a_simple_get() -> None:
    [req] = events(b"GET /live/a.m3u8?token=x HTTP/1.1\r\nHost: cdn\r\nRange: bytes=0-9\r\n\r\n")
    assert isinstance(req, Request)
    assert (req.method, req.target, req.version, req.keep_alive) == ("GET", "/live/a.m3u8?token=x", "1.1", True)
    assert req.header(b"range") == "bytes=0-9" and req.header(b"host") == "cdn"
    assert req.header(b"if-none-match") is None


def test_header_names_are_case_insensitive_and_repeats_join() -> None:
    [req] = events(b"GET / HTTP/1.1\r\nHOST: a\r\nAccept-Encoding: gzip\r\naccept-encoding: br\r\n\r\n")
    assert req.headers[b"accept-encoding"] == b"gzip, br"  # type: ignore[union-attr]


def test_nothing_complete_is_need_data() -> None:
    parser = RequestParser()
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert parser.next_event() is NEED_DATA


def test_pipelined_requests_come_out_in_order_however_the_bytes_are_cut() -> None:
    stream = b"".join(b"GET /%d.ts HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
    whole = [r.target for r in events(stream)]  # type: ignore[union-attr]
    bytewise = [r.target for r in events(*(stream[i:i + 1] for i in range(len(stream))))]  # type: ignore[union-attr]
    assert whole == bytewise == [f"/{i}.ts" for i in range(5)]


def test_blank_line_split_across_reads() -> None:
    [req] = events(b"GET /a HTTP/1.1\r\nHost: a\r\n\r", b"\n")
    assert req.target == "/a"  # type: ignore[union-attr]


@pytest.mark.parametrize(("head", "keep"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),  # HTTP/1.0 closes unless it asks
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", False),  # a body is never read
])
def test_keep_alive_rules(head: bytes, keep: bool) -> None:
    [req] = events(head)
    assert req.keep_alive is keep  # type: ignore[union-attr]


def test_bytes_after_a_closing_request_are_ignored() -> None:
    evs = events(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
    assert [e.target for e in evs] == ["/a"]  # type: ignore[union-attr]


def test_other_methods_parse_and_are_left_to_the_front() -> None:
    [req] = events(b"PURGE /a.ts HTTP/1.1\r\nHost: a\r\n\r\n")
    assert req.method == "PURGE"  # type: ignore[union-attr]


def test_unknown_method_is_405_with_allow() -> None:
    [err] = events(b"BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(err, ProtocolError) and err.status == 405
    assert dict(err.headers)["Allow"] == "GET, HEAD, OPTIONS"


def test_expect_100_continue_is_accepted_anything_else_is_417() -> None:
    [req] = events(b"GET /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n")
    assert isinstance(req, Request) and req.keep_alive
    assert error(b"GET /a HTTP/1.1\r\nHost: a\r\nExpect: tea\r\n\r\n")[0] == 417


@pytest.mark.parametrize(("data", "status", "words"), [
    (b"GET / HTTP/1.1\r\n\r\n", 400, "without Host"),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0"),
    (b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad request"),
    (b"GET /caf\xc3 HTTP/1.1\r\nHost: a\r\n\r\n", 400, ""),
    (b"GET / FTP/1.1\r\n\r\n", 400, "bad request"),
])
def test_malformed_requests_name_the_problem(data: bytes, status: int, words: str) -> None:
    got, reason = error(data)
    assert got == status and words in reason


def test_a_long_target_is_414() -> None:
    assert error(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n")[0] == 414
    assert error(b"GET /" + b"a" * 100, max_target=50)[0] == 414  # the line is not even complete


def test_a_long_header_field_is_431_and_names_it() -> None:
    status, reason = error(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    assert status == 431 and "X-Big" in reason


def test_an_unfinished_head_cannot_grow_past_the_limit() -> None:
    # The field never ends: httptools would hold it whole; the parser refuses at the bound.
    pieces = [b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "] + [b"a" * 1000] * 20
    status, _ = error(*pieces, max_head=4096, max_field=1 << 20)
    assert status == 431


def test_many_requests_in_one_read_do_not_count_as_one_big_head() -> None:
    stream = b"".join(b"GET /%d.ts HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(400))  # ~12 KiB
    evs = events(stream + b"GET /last.ts HTTP/1.1\r\n", b"Host: a\r\n\r\n", max_head=1024)
    assert len(evs) == 401 and all(isinstance(e, Request) for e in evs)


def test_too_many_header_fields_is_431() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(20)) + b"\r\n"
    assert error(head, max_headers=10)[0] == 431


def test_after_an_error_nothing_more_is_parsed() -> None:
    parser = RequestParser()
    parser.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBREW / HTTP/1.1\r\n\r\n")
    parser.receive_data(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
    evs = [parser.next_event() for _ in range(3)]
    assert isinstance(evs[0], Request) and isinstance(evs[1], ProtocolError) and evs[2] is NEED_DATA


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_head must be positive, got 0"):
        RequestParser(max_head=0)


# --- responses -----------------------------------------------------------------

def test_a_kept_http11_head() -> None:
    head = response_head(200, [("Content-Type", "video/mp2t"), ("X-Cache", "HIT")], length=3,
                         keep_alive=True, version="1.1", date=DATE)
    assert head == (b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nX-Cache: HIT\r\nContent-Length: 3\r\n"
                    b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n")


@pytest.mark.parametrize(("keep", "version", "line"), [
    (False, "1.1", b"Connection: close\r\n"),
    (True, "1.0", b"Connection: keep-alive\r\n"),
    (False, "1.0", b"Connection: close\r\n"),
])
def test_connection_line(keep: bool, version: str, line: bytes) -> None:
    head = response_head(200, [], length=0, keep_alive=keep, version=version, date=DATE)
    assert head.endswith(line + b"\r\n")


def test_unknown_length_is_chunked_for_http11_and_unframed_for_http10() -> None:
    h11 = response_head(200, [], length=None, keep_alive=True, version="1.1", date=DATE)
    h10 = response_head(200, [], length=None, keep_alive=False, version="1.0", date=DATE)
    assert b"Transfer-Encoding: chunked\r\n" in h11
    assert b"Transfer-Encoding" not in h10 and b"Content-Length" not in h10
    assert b"".join(chunk(memoryview(b"hello"))) + LAST_CHUNK == b"5\r\nhello\r\n0\r\n\r\n"


@pytest.mark.parametrize("status", [204, 304])
def test_no_length_on_answers_without_a_body(status: int) -> None:
    head = response_head(status, [("ETag", '"a"')], length=0, keep_alive=True, version="1.1", date=DATE)
    assert b"Content-Length" not in head and head.startswith(b"HTTP/1.1 %d " % status)


def test_header_values_cannot_split_the_head() -> None:
    assert header_lines([("X-A", "one\r\nInjected: yes")]) == b"X-A: one  Injected: yes\r\n"
    assert header_lines([("X-Name", "café")]) == "X-Name: café\r\n".encode("latin-1")


def test_dates() -> None:
    assert http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert date_line(784111777.9) == b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
    assert date_line(784111777.1) is date_line(784111777.5)  # built once per second
