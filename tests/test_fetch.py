"""The HTTP client: status classification, caps, redirects, headers, and the retry policy."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

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
from harvester.fetch import Fetcher, retrying

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
