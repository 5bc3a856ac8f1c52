"""The HTTP client: status classification, caps, redirects, headers, and the retry policy."""

from __future__ import annotations

import email.utils
import gzip
import json
import os
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from harvester import __version__
from harvester.config import Settings
from harvester.errors import (
    FatalFeedError,
    FeedError,
    FeedGone,
    FeedOverloaded,
    InvalidPage,
    RetriableFeedError,
)
from harvester.fetch import ACCEPT_ENCODING, Fetcher, decode_capped, retrying

FEED = "https://publisher.example/feed?afterTimestamp=1&afterId=%7Ba%7D"
PAGE = json.dumps(
    {"next": FEED, "items": [{"state": "deleted", "kind": "session", "id": "a", "modified": 1}]}
).encode()
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def requests() -> list[httpx.Request]:
    """Every request the mock publisher received."""
    return []


def fetcher_for(
    handler: Handler, requests: list[httpx.Request], settings: Settings | None = None
) -> Fetcher:
    """A Fetcher whose transport records requests and answers with `handler`."""

    def record(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return handler(request)

    return Fetcher(settings or Settings(), transport=httpx.MockTransport(record))


def answer(status: int, body: bytes = PAGE, **headers: str) -> Handler:
    """A handler that always answers the same."""
    return lambda _request: httpx.Response(status, content=body, headers=headers)


def encoded(body: bytes, encoding: str | None = None) -> Handler:
    """A handler answering `body` as sent on the wire, with this Content-Encoding.

    A streamed response, as a network transport gives: httpx.Response(content=...) would
    decode it (unbounded) as it is made, before the Fetcher sees it.
    """
    headers = {"Content-Length": str(len(body))}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return lambda _request: httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))


def http_date(delta: timedelta) -> str:
    """An HTTP date `delta` from now."""
    return email.utils.format_datetime(datetime.now(UTC) + delta, usegmt=True)


# --- successful fetches ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "max_age"),
    [
        (None, None),  # no caching hint
        ("public, max-age=3600", 3600.0),  # the usual form
        ("max-age=8", 8.0),  # alone
        ("public, MAX-AGE = 60 , must-revalidate", 60.0),  # odd case and spacing
        ('max-age="120"', 120.0),  # quoted
        ("no-cache", None),  # no max-age
        ("s-maxage=30", None),  # a shared-cache directive is not max-age
    ],
)
def test_body_and_max_age(
    requests: list[httpx.Request], cache_control: str | None, max_age: float | None
) -> None:
    headers = {"Cache-Control": cache_control} if cache_control else {}
    fetcher = fetcher_for(answer(200, **headers), requests)
    response = fetcher.get(FEED, {})
    assert response.body == PAGE
    assert response.max_age == max_age
    assert response.url == FEED


def test_url_is_requested_byte_for_byte(requests: list[httpx.Request]) -> None:
    fetcher_for(answer(200), requests).get(FEED, {})
    assert requests[0].url.raw_path == b"/feed?afterTimestamp=1&afterId=%7Ba%7D"


def test_user_agent_and_configured_headers(requests: list[httpx.Request]) -> None:
    fetcher = fetcher_for(answer(200), requests)
    fetcher.get(FEED, {"X-API-KEY": "secret", "Accept-Language": "en"})
    sent = requests[0].headers
    assert sent["X-API-KEY"] == "secret"
    assert sent["Accept-Language"] == "en"
    assert f"harvester/{__version__}" in sent["User-Agent"]
    assert "json" in sent["Accept"]


# --- status classification ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (404, {}, FeedGone, None),  # RPDE: the feed is gone, do not retry
        (410, {}, FeedGone, None),
        (503, {}, FeedOverloaded, None),  # RPDE: overloaded, back off 60-120 min
        (503, {"Retry-After": "30"}, RetriableFeedError, 30.0),  # the publisher says when
        (429, {"Retry-After": "12"}, RetriableFeedError, 12.0),  # rate limited
        (429, {}, RetriableFeedError, None),
        (500, {}, RetriableFeedError, None),  # a passing server error
        (502, {}, RetriableFeedError, None),
        (504, {"Retry-After": "not a date"}, RetriableFeedError, None),  # unreadable hint
        (401, {}, FatalFeedError, None),  # the API key is wrong: an operator must act
        (403, {}, FatalFeedError, None),
        (400, {}, FatalFeedError, None),
    ],
)
def test_status_classification(
    requests: list[httpx.Request],
    status: int,
    headers: dict[str, str],
    error: type[FeedError],
    retry_after: float | None,
) -> None:
    fetcher = fetcher_for(answer(status, b"{}", **headers), requests)
    with pytest.raises(error) as caught:
        fetcher.get(FEED, {})
    assert type(caught.value) is error
    assert FEED in str(caught.value) and str(status) in str(caught.value)
    assert caught.value.url == FEED
    assert getattr(caught.value, "retry_after", None) == retry_after


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_as_http_date(requests: list[httpx.Request], status: int) -> None:
    when = http_date(timedelta(seconds=120))
    fetcher = fetcher_for(answer(status, b"{}", **{"Retry-After": when}), requests)
    with pytest.raises(RetriableFeedError) as caught:
        fetcher.get(FEED, {})
    assert not isinstance(caught.value, FeedOverloaded)
    # The date is whole seconds, so between 119 and 120 s from the moment it was made.
    assert caught.value.retry_after is not None and 100.0 < caught.value.retry_after <= 120.0


def test_retry_after_date_in_the_past_is_zero(requests: list[httpx.Request]) -> None:
    when = http_date(timedelta(hours=-1))
    fetcher = fetcher_for(answer(503, b"{}", **{"Retry-After": when}), requests)
    with pytest.raises(RetriableFeedError) as caught:
        fetcher.get(FEED, {})
    assert caught.value.retry_after == 0.0


@pytest.mark.parametrize(
    "exception",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed connection"),
    ],
)
def test_transport_error_is_retriable(
    requests: list[httpx.Request], exception: httpx.TransportError
) -> None:
    def fail(_request: httpx.Request) -> httpx.Response:
        raise exception

    fetcher = fetcher_for(fail, requests)
    with pytest.raises(RetriableFeedError) as caught:
        fetcher.get(FEED, {"X-API-KEY": "secret"})
    assert FEED in str(caught.value)
    assert "secret" not in str(caught.value)


# --- body size cap -----------------------------------------------------------------------


def test_oversized_body_with_content_length(requests: list[httpx.Request]) -> None:
    fetcher = fetcher_for(answer(200), requests, Settings(max_page_bytes=len(PAGE) - 1))
    with pytest.raises(InvalidPage, match="byte cap"):
        fetcher.get(FEED, {})


def test_oversized_streamed_body(requests: list[httpx.Request]) -> None:
    def stream(_request: httpx.Request) -> httpx.Response:
        # An iterator body is sent chunked: no Content-Length to trust.
        chunks: Iterator[bytes] = iter([PAGE[:10], PAGE[10:], b" " * 100])
        return httpx.Response(200, content=chunks)

    fetcher = fetcher_for(stream, requests, Settings(max_page_bytes=len(PAGE) + 50))
    with pytest.raises(InvalidPage, match="byte cap"):
        fetcher.get(FEED, {})


def test_body_exactly_at_the_cap_is_taken(requests: list[httpx.Request]) -> None:
    fetcher = fetcher_for(answer(200), requests, Settings(max_page_bytes=len(PAGE)))
    assert fetcher.get(FEED, {}).body == PAGE


# --- content encodings: decoded by our code, the cap on decoded bytes --------------------


def raw_deflate(data: bytes) -> bytes:
    """Deflate with no zlib wrapper, as many servers send `Content-Encoding: deflate`."""
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def gzip_bomb(size: int) -> bytes:
    """One gzip member of `size` zero bytes, built in steps (a few hundred KB for 200 MB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    step = b"\0" * (1 << 20)
    parts = [packer.compress(step) for _ in range(size // len(step))]
    return b"".join([*parts, packer.flush()])


ENCODED = {
    "none": (None, PAGE),
    "identity": ("identity", PAGE),
    "gzip": ("gzip", gzip.compress(PAGE)),
    "x-gzip": ("x-gzip", gzip.compress(PAGE)),
    "gzip-any-case": (" GZip ", gzip.compress(PAGE)),
    "deflate-zlib": ("deflate", zlib.compress(PAGE)),
    "deflate-raw": ("deflate", raw_deflate(PAGE)),
    "gzip-two-members": ("gzip", gzip.compress(PAGE[:20]) + gzip.compress(PAGE[20:])),
}


@pytest.mark.parametrize(("encoding", "body"), ENCODED.values(), ids=ENCODED.keys())
def test_encoded_body_is_decoded(
    requests: list[httpx.Request], encoding: str | None, body: bytes
) -> None:
    response = fetcher_for(encoded(body, encoding), requests).get(FEED, {})
    assert response.body == PAGE


def test_a_response_made_already_read_is_decoded_from_its_raw_bytes(
    requests: list[httpx.Request],
) -> None:
    # httpx.Response(content=...) (MockTransport) is read when made; the Fetcher decodes
    # its raw bytes again itself.
    handler = answer(200, gzip.compress(PAGE), **{"Content-Encoding": "gzip"})
    assert fetcher_for(handler, requests).get(FEED, {}).body == PAGE


@pytest.mark.parametrize("encoding", ["gzip", "deflate-zlib", "deflate-raw", "identity"])
def test_decoding_byte_by_byte(encoding: str) -> None:
    # Chunks of one byte: the deflate header is told on two bytes, held across chunks.
    encode = {"gzip": gzip.compress, "deflate-zlib": zlib.compress, "deflate-raw": raw_deflate}
    wire = encode.get(encoding, bytes)(PAGE)
    name = encoding.split("-")[0]
    chunks = (wire[i : i + 1] for i in range(len(wire)))
    assert decode_capped(FEED, chunks, name, len(PAGE)) == PAGE


def test_decoding_in_bounded_steps_keeps_the_unconsumed_input() -> None:
    # One chunk inflating to far more than a step: zlib's unconsumed_tail is fed again.
    page = os.urandom(300_000).hex().encode()  # 600 KB, compressible but not trivially
    decoded = decode_capped(FEED, [gzip.compress(page)], "gzip", len(page))
    assert decoded == page


def test_decoded_body_exactly_at_the_cap_is_taken() -> None:
    assert decode_capped(FEED, [gzip.compress(PAGE)], "gzip", len(PAGE)) == PAGE
    with pytest.raises(InvalidPage, match="byte cap once decoded"):
        decode_capped(FEED, [gzip.compress(PAGE)], "gzip", len(PAGE) - 1)


@pytest.mark.parametrize(
    "encoding",
    [
        "gzip, gzip",  # stacked: a bomb of a bomb is a few hundred bytes
        "deflate, gzip",
        "br",  # not offered: httpx would decode it, unbounded, when brotli is installed
        "zstd",
        "compress",
        "chunked",  # a transfer coding, not a content coding
    ],
)
def test_stacked_and_unknown_encodings_are_refused(
    requests: list[httpx.Request], encoding: str
) -> None:
    fetcher = fetcher_for(encoded(gzip.compress(gzip.compress(PAGE)), encoding), requests)
    with pytest.raises(InvalidPage) as caught:
        fetcher.get(FEED, {})
    message = str(caught.value)
    assert FEED in message and repr(encoding) in message and "\n" not in message
    assert caught.value.url == FEED


def test_stacked_encoding_in_two_header_lines_is_refused(requests: list[httpx.Request]) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        headers = [("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")]
        body = httpx.ByteStream(gzip.compress(gzip.compress(PAGE)))
        return httpx.Response(200, headers=headers, stream=body)

    with pytest.raises(InvalidPage, match="stacked"):
        fetcher_for(handler, requests).get(FEED, {})


@pytest.mark.parametrize(
    ("encoding", "body", "fault"),
    [
        ("gzip", b"this is not gzip at all", "corrupt"),
        ("gzip", gzip.compress(PAGE)[:10] + b"\xff" * 40 + gzip.compress(PAGE)[50:], "corrupt"),
        ("gzip", gzip.compress(PAGE)[:-12], "cut short"),  # truncated
        ("gzip", b"", "cut short"),
        ("deflate", zlib.compress(PAGE)[:-8], "cut short"),
        ("deflate", zlib.compress(PAGE) + b"junk", "after the end"),
        ("gzip", gzip.compress(PAGE) + b"junk after the member", "corrupt"),
    ],
    ids=["not-gzip", "corrupt-gzip", "truncated-gzip", "empty-gzip", "truncated-deflate",
         "deflate-trailing-junk", "gzip-trailing-junk"],
)  # fmt: skip
def test_broken_encoded_body_is_an_invalid_page(
    requests: list[httpx.Request], encoding: str, body: bytes, fault: str
) -> None:
    fetcher = fetcher_for(encoded(body, encoding), requests)
    with pytest.raises(InvalidPage, match=fault) as caught:
        fetcher.get(FEED, {})
    assert FEED in str(caught.value) and encoding in str(caught.value)


def test_content_length_bounds_only_unencoded_bodies(requests: list[httpx.Request]) -> None:
    # Incompressible: the gzip body on the wire is longer than the decoded one.
    page = os.urandom(2_000)
    wire = gzip.compress(page)
    assert len(wire) > len(page)
    fetcher = fetcher_for(encoded(wire, "gzip"), requests, Settings(max_page_bytes=2_000))
    assert fetcher.get(FEED, {}).body == page


def test_gzip_bomb_is_refused_quickly_in_little_memory(requests: list[httpx.Request]) -> None:
    bomb = gzip_bomb(200 * 1024 * 1024)
    assert len(bomb) < 1024 * 1024
    settings = Settings()  # the default cap, 8 MiB decoded
    fetcher = fetcher_for(encoded(bomb, "gzip"), requests, settings)
    started = time.monotonic()
    tracemalloc.start()
    try:
        with pytest.raises(InvalidPage, match="byte cap") as caught:
            fetcher.get(FEED, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert FEED in str(caught.value)
    assert peak < settings.max_page_bytes + 16 * 1024 * 1024, peak
    assert time.monotonic() - started < 5.0


def test_accept_encoding_is_only_what_we_decode(
    requests: list[httpx.Request], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What httpx offers by default when the brotli and zstandard packages are installed.
    monkeypatch.setattr(httpx._client, "ACCEPT_ENCODING", "gzip, deflate, br, zstd")
    fetcher_for(answer(200), requests).get(FEED, {})
    assert requests[0].headers["Accept-Encoding"] == ACCEPT_ENCODING == "gzip, deflate"


# --- the request deadline, over real sockets -----------------------------------------------

TRICKLE_SECONDS = 0.3  # between two bytes a trickling publisher sends
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


def trickle(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    """Send `data` one byte at a time, until done or the client hangs up."""
    for byte in data:
        try:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(TRICKLE_SECONDS)


class TricklingServer:
    """A local HTTP server whose answers come slowly, by path; records each client's port."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        ports = self.ports

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                ports.append(self.client_address[1])
                body = PAGE[:20]  # 20 bytes: 6 s at one byte per 0.3 s
                if self.path == "/ok":
                    self.wfile.write(HEAD % len(PAGE) + PAGE)
                elif self.path == "/trickled-body":
                    self.wfile.write(HEAD % len(body))
                    self.wfile.flush()
                    trickle(self, body)
                elif self.path == "/trickled-head":
                    trickle(self, HEAD % len(body) + body)
                elif self.path.startswith("/slow-redirect"):
                    time.sleep(1.2)
                    self.wfile.write(b"HTTP/1.1 302 Found\r\nLocation: /slow\r\n"
                                     b"Content-Length: 0\r\n\r\n")  # fmt: skip
                elif self.path == "/slow":
                    time.sleep(1.2)
                    self.wfile.write(HEAD % len(PAGE) + PAGE)
                elif self.path == "/silent":
                    time.sleep(2.0)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> TricklingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def trickling() -> Iterator[TricklingServer]:
    """A started TricklingServer."""
    with TricklingServer() as server:
        yield server


DEADLINE = Settings(request_deadline_seconds=2, request_timeout_seconds=1)


def timed_failure(fetcher: Fetcher, url: str) -> tuple[float, RetriableFeedError]:
    """How long `fetcher.get(url)` took to fail, and its error."""
    started = time.monotonic()
    with pytest.raises(RetriableFeedError) as caught:
        fetcher.get(url, {"X-API-KEY": "secret"})
    return time.monotonic() - started, caught.value


@pytest.mark.parametrize("path", ["/trickled-body", "/trickled-head"])
def test_a_trickling_answer_is_cut_off_at_the_deadline(
    trickling: TricklingServer, path: str
) -> None:
    # Each byte comes well within the 1 s read timeout: only the deadline ends it.
    fetcher = Fetcher(DEADLINE)
    url = trickling.base_url + path
    seconds, error = timed_failure(fetcher, url)
    assert 1.9 <= seconds < 3.0
    assert str(error) == f"{url}: no complete answer within 2 s"
    assert error.url == url
    fetcher.close()


def test_the_deadline_covers_redirect_hops(trickling: TricklingServer) -> None:
    # Two hops of 1.2 s each: both within the per-read timeout, not within the deadline.
    fetcher = Fetcher(Settings(request_deadline_seconds=2, request_timeout_seconds=5))
    seconds, error = timed_failure(fetcher, trickling.base_url + "/slow-redirect")
    assert 1.9 <= seconds < 3.0
    assert "no complete answer within 2 s" in str(error)
    assert fetcher.get(trickling.base_url + "/slow", {}).body == PAGE  # one hop fits
    fetcher.close()


def test_the_deadline_holds_on_a_connection_reused_by_another_thread(
    trickling: TricklingServer,
) -> None:
    fetcher = Fetcher(DEADLINE)
    assert fetcher.get(trickling.base_url + "/ok", {}).body == PAGE  # opens the connection
    outcome: list[tuple[float, RetriableFeedError]] = []
    worker = threading.Thread(
        target=lambda: outcome.append(timed_failure(fetcher, trickling.base_url + "/trickled-body"))
    )
    worker.start()
    worker.join(10)
    assert trickling.ports[0] == trickling.ports[1]  # the pooled connection was reused
    seconds, error = outcome[0]
    assert 1.9 <= seconds < 3.0 and "within 2 s" in str(error)
    fetcher.close()


def test_a_silent_publisher_still_meets_the_per_read_timeout(trickling: TricklingServer) -> None:
    fetcher = Fetcher(Settings(request_deadline_seconds=10, request_timeout_seconds=1))
    seconds, error = timed_failure(fetcher, trickling.base_url + "/silent")
    assert 0.9 <= seconds < 1.8
    assert "ReadTimeout" in str(error) and "deadline" not in str(error)
    assert "secret" not in str(error)
    fetcher.close()


# --- redirects ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "https://publisher.example/moved?afterId=%7Ba%7D",  # absolute, same origin
        "/moved?afterId=%7Ba%7D",  # relative
        "https://publisher.example:443/moved?afterId=%7Ba%7D",  # explicit default port
    ],
)
def test_same_origin_redirect_is_followed(requests: list[httpx.Request], location: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/feed":
            return httpx.Response(302, headers={"Location": location})
        return httpx.Response(200, content=PAGE)

    response = fetcher_for(handler, requests).get(FEED, {"X-API-KEY": "secret"})
    assert response.body == PAGE
    assert [r.url.path for r in requests] == ["/feed", "/moved"]
    assert requests[1].headers["X-API-KEY"] == "secret"


@pytest.mark.parametrize(
    "location",
    [
        "https://evil.example/feed",  # another host
        "http://publisher.example/feed",  # a downgrade to http
        "https://publisher.example:8443/feed",  # another port
        "//evil.example/feed",  # scheme-relative to another host
    ],
)
def test_foreign_redirect_is_refused(requests: list[httpx.Request], location: str) -> None:
    fetcher = fetcher_for(answer(301, b"", Location=location), requests)
    with pytest.raises(FatalFeedError, match="another origin"):
        fetcher.get(FEED, {"X-API-KEY": "secret"})
    assert len(requests) == 1  # the API key never went anywhere else


def test_redirect_loop_stops(requests: list[httpx.Request]) -> None:
    fetcher = fetcher_for(answer(302, b"", Location="/feed"), requests)
    with pytest.raises(FatalFeedError, match="too many redirects"):
        fetcher.get(FEED, {})
    assert 1 < len(requests) <= 10


# --- retry policy ------------------------------------------------------------------------


class Recorder:
    """A fake sleep, a stop switch, and a flaky operation, all counted."""

    def __init__(self, errors: list[Exception], stop_after_calls: int | None = None) -> None:
        self.errors = errors
        self.calls = 0
        self.sleeps: list[float] = []
        self.stop_after_calls = stop_after_calls

    def sleep(self, seconds: float) -> None:
        """Record instead of waiting."""
        self.sleeps.append(seconds)

    def stopping(self) -> bool:
        """True once the operation has been called `stop_after_calls` times."""
        return self.stop_after_calls is not None and self.calls >= self.stop_after_calls

    def operation(self) -> str:
        """Raise the next error, or succeed when they run out."""
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "page"


def run_retrying(settings: Settings, recorder: Recorder) -> str:
    """Run the operation under the policy, as the pipeline does."""
    result = ""
    for attempt in retrying(settings, recorder.sleep, recorder.stopping):
        with attempt:
            result = recorder.operation()
    return result


def failing(error: Exception, times: int) -> list[Exception]:
    """The same error `times` times."""
    return [error] * times


def test_retries_until_success() -> None:
    recorder = Recorder(failing(RetriableFeedError("HTTP 500"), 2))
    assert run_retrying(Settings(retry_attempts=5), recorder) == "page"
    assert recorder.calls == 3
    assert len(recorder.sleeps) == 2
    assert all(0.0 < seconds <= 60.0 for seconds in recorder.sleeps)


@pytest.mark.parametrize("attempts", [1, 3, 6])
def test_gives_up_after_retry_attempts(attempts: int) -> None:
    error = RetriableFeedError("HTTP 500")
    recorder = Recorder(failing(error, 100))
    with pytest.raises(RetriableFeedError) as caught:
        run_retrying(Settings(retry_attempts=attempts), recorder)
    assert caught.value is error
    assert recorder.calls == attempts
    assert len(recorder.sleeps) == attempts - 1


@pytest.mark.parametrize(
    "error",
    [
        FeedGone("HTTP 404"),  # RPDE: never retry a gone feed
        FeedOverloaded("HTTP 503"),  # left to the scheduler's long back-off
        FatalFeedError("HTTP 401"),  # an operator must act
        ValueError("a bug"),  # not a feed error at all
    ],
)
def test_no_retry_for(error: Exception) -> None:
    recorder = Recorder(failing(error, 10))
    with pytest.raises(type(error)):
        run_retrying(Settings(retry_attempts=6), recorder)
    assert recorder.calls == 1
    assert recorder.sleeps == []


def test_retry_after_is_the_minimum_wait() -> None:
    recorder = Recorder(failing(RetriableFeedError("HTTP 429", retry_after=30.0), 3))
    assert run_retrying(Settings(retry_attempts=6), recorder) == "page"
    assert len(recorder.sleeps) == 3
    assert all(seconds >= 30.0 for seconds in recorder.sleeps)


def test_long_retry_after_is_left_to_the_scheduler() -> None:
    # Longer than a quarter of retry_max_seconds: raised at once, the feed is parked.
    recorder = Recorder(failing(RetriableFeedError("HTTP 503", retry_after=3600.0), 3))
    with pytest.raises(RetriableFeedError):
        run_retrying(Settings(retry_attempts=6, retry_max_seconds=600.0), recorder)
    assert recorder.calls == 1


def test_stops_retrying_on_shutdown() -> None:
    recorder = Recorder(failing(RetriableFeedError("HTTP 500"), 100), stop_after_calls=2)
    with pytest.raises(RetriableFeedError):
        run_retrying(Settings(retry_attempts=10), recorder)
    assert recorder.calls == 2


def test_backoff_grows() -> None:
    recorder = Recorder(failing(RetriableFeedError("HTTP 500"), 5))
    run_retrying(Settings(retry_attempts=6), recorder)
    # Exponential with jitter in [0.5, 1]: attempt n waits within [0.25, 0.5] * 2^(n-1).
    for attempt, seconds in enumerate(recorder.sleeps, start=1):
        assert 0.25 * 2 ** (attempt - 1) <= seconds <= 0.5 * 2 ** (attempt - 1)


def test_fetch_and_retry_together(requests: list[httpx.Request]) -> None:
    # Two 500s then the page: the pipeline's loop over a real Fetcher.
    statuses = [500, 500, 200]
    fetcher = fetcher_for(lambda _r: httpx.Response(statuses.pop(0), content=PAGE), requests)
    sleeps: list[float] = []
    body = b""
    for attempt in retrying(Settings(retry_attempts=6), sleeps.append, lambda: False):
        with attempt:
            body = fetcher.get(FEED, {}).body
    assert body == PAGE
    assert len(requests) == 3 and len(sleeps) == 2
