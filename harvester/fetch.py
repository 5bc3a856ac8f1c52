"""The only module that speaks HTTP: one polite GET of an RPDE page, with failures classified."""

from __future__ import annotations

import contextvars
import email.utils
import logging
import random
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urljoin

import httpcore
import httpx
import orjson
import tenacity

from harvester import __version__
from harvester.config import Settings
from harvester.errors import (
    FatalFeedError,
    FeedGone,
    FeedOverloaded,
    InvalidPage,
    RetriableFeedError,
)
from harvester.rpde import host_key, origin_of

logger = logging.getLogger(__name__)
T = TypeVar("T")

USER_AGENT = f"harvester/{__version__} (OpenActive RPDE harvester; httpx/{httpx.__version__})"
ACCEPT = "application/json, application/vnd.openactive.rpde+json;q=0.9"
# Only what decode_capped inflates, with its output counted: httpx would also offer br and
# zstd when those packages happen to be installed, and decode them with no bound.
ACCEPT_ENCODING = "gzip, deflate"
LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32)
MAX_REDIRECTS = 5
INFLATE_STEP = 64 * 1024  # decoded bytes per zlib call at most: the cap is checked this often
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib's window bits for a gzip (RFC 1952) stream
ENCODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Response:
    """A page body and the publisher's caching hint."""

    url: str
    body: bytes
    max_age: float | None


class Fetcher:
    """A shared HTTP client with a per-host limit on requests in flight.

    One pool for every host, not one per host: measured on the simulated ecosystem (2M
    items, 20 hosts), a pool per host held ~70-180 MB more at peak (each connection keeps
    its read buffers, and nothing throttles parsing), for no gain on a CPU-bound machine.
    """

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.client = httpx.Client(
            # A caller's transport (tests: httpx.MockTransport) is used as given.
            transport=transport if transport is not None else deadline_transport(LIMITS),
            timeout=httpx.Timeout(settings.request_timeout_seconds),
            headers={
                "User-Agent": USER_AGENT,
                "Accept": ACCEPT,
                "Accept-Encoding": ACCEPT_ENCODING,
            },
            follow_redirects=False,
            limits=LIMITS,
        )
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the pooled connections."""
        self.client.close()

    def get(self, url: str, headers: Mapping[str, str]) -> Response:
        """GET one page, following same-origin redirects only; raise a classified FeedError.

        The whole call, redirect hops included, must end within request_deadline_seconds
        (counted once a per-host slot is held, since waiting for one holds no connection).
        """
        seconds = self.settings.request_deadline_seconds
        with self._host_slot(url), request_deadline(seconds) as deadline:
            for _ in range(MAX_REDIRECTS + 1):
                location, response = self._request(url, headers, deadline)
                if response is not None:
                    return response
                url = location
        raise FatalFeedError(f"{url}: too many redirects", url=url)

    def _request(
        self, url: str, headers: Mapping[str, str], deadline: Deadline
    ) -> tuple[str, Response | None]:
        try:
            with self.client.stream("GET", url, headers=dict(headers)) as response:
                check_status(url, response)
                if response.is_redirect:
                    return _same_origin_redirect(url, response), None
                body = read_capped(url, response, self.settings.max_page_bytes)
                max_age = parse_max_age(response.headers.get("Cache-Control"))
                return url, Response(url, body, max_age)
        except httpx.TransportError as exc:
            if deadline.expired:
                message = f"{url}: no complete answer within {deadline.seconds:g} s"
                raise RetriableFeedError(message, url=url) from exc
            # The exception text never carries request headers, so API keys stay out of logs.
            raise RetriableFeedError(f"{url}: {type(exc).__name__}: {exc}", url=url) from exc

    def post_json(self, url: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        """POST an encoded JSON body; the status and the decoded JSON answer (None if not JSON).

        5xx, 429 and transport failures raise RetriableFeedError (with any Retry-After);
        redirects are not followed: a checkout session is created where it was asked for.
        Error messages never quote the request body (it may carry customer details).
        """
        seconds = self.settings.request_deadline_seconds
        with self._host_slot(url), request_deadline(seconds) as deadline:
            try:
                request_headers = {**headers, "Content-Type": "application/json",
                                   "Accept": "application/json"}  # fmt: skip
                with self.client.stream("POST", url, headers=request_headers,
                                        content=body) as response:  # fmt: skip
                    check_answer(url, response)
                    answer = read_capped(url, response, self.settings.max_page_bytes)
                    return response.status_code, _json_or_none(answer)
            except httpx.TransportError as exc:
                if deadline.expired:
                    message = f"{url}: no complete answer within {deadline.seconds:g} s"
                    raise RetriableFeedError(message, url=url) from exc
                raise RetriableFeedError(f"{url}: {type(exc).__name__}", url=url) from exc

    def _host_slot(self, url: str) -> threading.BoundedSemaphore:
        host = host_key(url)
        with self._lock:
            if host not in self._hosts:
                limit = self.settings.max_connections_per_host
                self._hosts[host] = threading.BoundedSemaphore(limit)
            return self._hosts[host]


def check_status(url: str, response: httpx.Response) -> None:
    """RPDE §HTTP status codes: 404/410 gone, 503 long back-off; 429 and 5xx retried."""
    status = response.status_code
    if status == 200 or response.is_redirect:
        return
    retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
    message = f"{url}: HTTP {status}"
    if status in (404, 410):
        raise FeedGone(f"{message}: the feed is gone (RPDE: do not retry)", url=url)
    if status == 503 and retry_after is None:
        raise FeedOverloaded(f"{message}: publisher overloaded", url=url)
    if status == 429 or status >= 500:
        raise RetriableFeedError(message, url=url, retry_after=retry_after)
    raise FatalFeedError(f"{message}: refused (check the source's headers)", url=url)


def check_answer(url: str, response: httpx.Response) -> None:
    """A POST's answer: 429 and 5xx are passing failures (retried); the rest are answers."""
    status = response.status_code
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
        raise RetriableFeedError(f"{url}: HTTP {status}", url=url, retry_after=retry_after)


def _json_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def read_capped(url: str, response: httpx.Response, limit: int) -> bytes:
    """Read and decode the body, refusing anything larger than `limit` bytes once decoded."""
    encoding = content_encoding(url, response.headers.get("Content-Encoding"))
    declared = response.headers.get("Content-Length")
    # Content-Length counts bytes on the wire: a bound on the decoded size only unencoded.
    if encoding == "identity" and declared and declared.isdigit() and int(declared) > limit:
        raise InvalidPage(
            f"{url}: response of {declared} bytes exceeds the {limit} byte cap"
            " (harvester.max_page_bytes)",
            url=url,
        )
    body = decode_capped(url, raw_body(response), encoding, limit)
    # One short-lived copy: the bytearray is dropped on return.
    return bytes(body)


def raw_body(response: httpx.Response) -> Iterable[bytes]:
    """The body's bytes as they came, still encoded: never httpx's own, unbounded decoding."""
    stream = response.stream
    if response.is_stream_consumed and isinstance(stream, httpx.SyncByteStream):
        # A response made with content=... (httpx.MockTransport in tests) is read as it is
        # made; its stream still holds the bytes as given.
        return stream
    return response.iter_raw()


def content_encoding(url: str, header: str | None) -> str:
    """The one encoding `decode_capped` must undo: identity, gzip or deflate; else InvalidPage."""
    tokens = [token.strip().lower() for token in (header or "").split(",")]
    codings = [token for token in tokens if token and token != "identity"]
    if not codings:
        return "identity"
    shown = " ".join((header or "").split())[:100]  # one line, short
    if len(codings) > 1:
        message = f"{url}: Content-Encoding {shown!r} refused: stacked encodings are not accepted"
        raise InvalidPage(message, url=url)
    if codings[0] not in ENCODINGS:
        message = f"{url}: Content-Encoding {shown!r} refused: only gzip and deflate are accepted"
        raise InvalidPage(message, url=url)
    return ENCODINGS[codings[0]]


def decode_capped(url: str, chunks: Iterable[bytes], encoding: str, limit: int) -> bytearray:
    """The body of wire `chunks` decoded, refused as soon as it exceeds `limit` decoded bytes.

    The one place the cap is applied. Decoding is incremental, in pieces of bounded size,
    so memory stays near `limit` whatever the ratio of a compressed body: a gzip bomb is
    refused once `limit` bytes are out, not once it is all inflated.
    """
    body = bytearray()
    for piece in decoded_pieces(url, chunks, encoding):
        body += piece
        if len(body) > limit:
            decoded = "" if encoding == "identity" else f" once decoded ({encoding})"
            message = f"{url}: response exceeds the {limit} byte cap{decoded} (max_page_bytes)"
            raise InvalidPage(message, url=url)
    return body


def decoded_pieces(url: str, chunks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """The decoded body, piece by piece as the wire chunks come; lazily, so a caller that
    stops asking stops the decoding."""
    if encoding == "identity":
        yield from chunks
        return
    inflater = Inflater(url, encoding)
    for chunk in chunks:
        yield from inflater.feed(chunk)
    inflater.finish()


class Inflater:
    """Incremental gzip or deflate decoding, in pieces of at most INFLATE_STEP bytes."""

    def __init__(self, url: str, encoding: str) -> None:
        self.url = url
        self.encoding = encoding
        self.stream: Any = None  # a zlib Decompress object (its type is not public)
        self.head = b""  # the first bytes, until they tell raw deflate from zlib-wrapped

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The pieces decoded from the next wire bytes."""
        if self.stream is None:
            self.head += data
            if self.encoding == "deflate" and len(self.head) < 2:
                return
            data, self.head = self.head, b""
            self.stream = zlib.decompressobj(wbits_for(self.encoding, data))
        while data:
            if self.stream.eof:
                self.next_member()
            try:
                yield self.stream.decompress(data, INFLATE_STEP)
            except zlib.error as exc:
                message = f"{self.url}: the {self.encoding} body is corrupt ({exc})"
                raise InvalidPage(message, url=self.url) from exc
            # What zlib left: input held back by max_length, or what follows the stream's end.
            data = self.stream.unused_data if self.stream.eof else self.stream.unconsumed_tail

    def next_member(self) -> None:
        """Bytes after the end of a stream: a gzip body may hold several members (RFC 1952)."""
        if self.encoding != "gzip":
            message = f"{self.url}: data after the end of the {self.encoding} body"
            raise InvalidPage(message, url=self.url)
        self.stream = zlib.decompressobj(GZIP_WBITS)

    def finish(self) -> None:
        """The wire body has ended: refuse a stream cut short."""
        if self.stream is None or not self.stream.eof:
            message = f"{self.url}: the {self.encoding} body is cut short"
            raise InvalidPage(message, url=self.url)


def wbits_for(encoding: str, head: bytes) -> int:
    """zlib's wbits for a gzip, zlib-wrapped deflate or raw deflate stream starting `head`."""
    if encoding == "gzip":
        return GZIP_WBITS
    # Many servers send raw deflate for "deflate". A zlib (RFC 1950) header is compression
    # method 8, a window of at most 32 KiB, and a check making the first two bytes % 31 == 0.
    method, window, check = head[0] & 0x0F, head[0] >> 4, (head[0] << 8 | head[1]) % 31
    return zlib.MAX_WBITS if (method, check) == (8, 0) and window <= 7 else -zlib.MAX_WBITS


# --- the request deadline -------------------------------------------------------------------


@dataclass
class Deadline:
    """When the request in flight in this thread must be answered in full."""

    seconds: float
    at: float  # time.monotonic()
    expired: bool = False  # set when the deadline, not a per-operation timeout, cut it off


# Per thread (each Fetcher.get runs in its own), read by DeadlineStream at each call because
# pooled connections move from thread to thread.
_DEADLINE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "harvester_request_deadline", default=None
)


@contextmanager
def request_deadline(seconds: float) -> Iterator[Deadline]:
    """Bound every network operation of this thread by a deadline `seconds` from now."""
    deadline = Deadline(seconds, time.monotonic() + seconds)
    token = _DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _DEADLINE.reset(token)


def run_bounded(
    operation: Callable[[float | None], T],
    timeout: float | None,
    error: type[httpcore.TimeoutException],
) -> T:
    """Run `operation(timeout)` with `timeout` cut to the time left before the deadline."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return operation(timeout)
    left = deadline.at - time.monotonic()
    if left <= 0:
        deadline.expired = True
        raise error(f"the {deadline.seconds:g} s deadline has passed")
    if timeout is not None and timeout < left:
        return operation(timeout)  # the per-operation timeout is the tighter bound
    try:
        return operation(left)
    except error:
        deadline.expired = True
        raise


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes end by the deadline of the request using it."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self.stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read, within the time left."""
        return run_bounded(
            lambda bound: self.stream.read(max_bytes, bound), timeout, httpcore.ReadTimeout
        )

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write, within the time left."""
        run_bounded(lambda bound: self.stream.write(buffer, bound), timeout, httpcore.WriteTimeout)

    def close(self) -> None:
        """Close the connection."""
        self.stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        """The TLS handshake, within the time left."""
        stream = run_bounded(
            lambda bound: self.stream.start_tls(ssl_context, server_hostname, bound),
            timeout,
            httpcore.ConnectTimeout,
        )
        return DeadlineStream(stream)

    def get_extra_info(self, info: str) -> Any:
        """What the wrapped stream says."""
        return self.stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's blocking sockets, with connects and streams under the request deadline.

    TCP only: feeds are http(s) URLs, never Unix sockets (the base class refuses those).
    """

    def __init__(self) -> None:
        self.backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Connect within the time left."""
        stream = run_bounded(
            lambda bound: self.backend.connect_tcp(
                host, port, bound, local_address, socket_options
            ),
            timeout,
            httpcore.ConnectTimeout,
        )
        return DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        """Sleep."""
        self.backend.sleep(seconds)


def deadline_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """httpx's own transport, its network I/O bounded by the request deadline. It and its
    pool share one TLS context: each holds the whole CA bundle (about a megabyte)."""
    ssl_context = httpx.create_ssl_context()
    transport = httpx.HTTPTransport(verify=ssl_context, limits=limits)
    # httpx.HTTPTransport takes no httpcore network backend, so the pool it built (no
    # connection opened yet) is replaced by one built as httpx builds it, with ours.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=DeadlineBackend(),
    )
    return transport


def parse_max_age(header: str | None) -> float | None:
    """Cache-Control max-age in seconds, if given."""
    match = MAX_AGE.search(header or "")
    return float(match.group(1)) if match else None


def parse_retry_after(header: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _same_origin_redirect(url: str, response: httpx.Response) -> str:
    target = urljoin(url, response.headers.get("Location", ""))
    if origin_of(target) != origin_of(url):
        # Headers (API keys) must never be sent to another origin.
        raise FatalFeedError(f"{url}: redirect to another origin refused: {target}", url=url)
    return target


def retrying(
    settings: Settings, sleep: Callable[[float], None], stopping: Callable[[], bool]
) -> tenacity.Retrying:
    """Bounded retries of passing failures: attempts and time, exponential with jitter.

    A Retry-After longer than the policy allows, or a 503 without one, is not waited
    out here: it is raised so the scheduler can park the feed and serve the others.
    """

    def should_retry(state: tenacity.RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        if not isinstance(error, RetriableFeedError | InvalidPage) or stopping():
            return False
        if isinstance(error, FeedOverloaded):
            return False
        retry_after = getattr(error, "retry_after", None)
        return retry_after is None or retry_after <= settings.retry_max_seconds / 4

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        backoff = min(60.0, 0.5 * 2 ** (state.attempt_number - 1)) * random.uniform(0.5, 1.0)
        return max(backoff, getattr(error, "retry_after", None) or 0.0)

    def log_retry(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        seconds = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "retrying in %.1fs after: %s", seconds, error,
            extra={"event": "fetch_retry", "attempt": state.attempt_number},
        )  # fmt: skip

    return tenacity.Retrying(
        retry=should_retry,
        wait=wait,
        stop=tenacity.stop_after_attempt(settings.retry_attempts)
        | tenacity.stop_after_delay(settings.retry_max_seconds),
        sleep=sleep,
        before_sleep=log_retry,
        reraise=True,
    )
