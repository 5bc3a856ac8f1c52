"""The only module that speaks HTTP: one polite GET of an RPDE page, with failures classified."""

from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urljoin

import httpx
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
from harvester.rpde import origin_of

logger = logging.getLogger(__name__)

USER_AGENT = f"harvester/{__version__} (OpenActive RPDE harvester; httpx/{httpx.__version__})"
ACCEPT = "application/json, application/vnd.openactive.rpde+json;q=0.9"
MAX_REDIRECTS = 5
MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Response:
    """A page body and the publisher's caching hint."""

    url: str
    body: bytes
    max_age: float | None


class Fetcher:
    """A shared HTTP client with a per-host limit on requests in flight."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(settings.request_timeout_seconds),
            headers={"User-Agent": USER_AGENT, "Accept": ACCEPT},
            follow_redirects=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the pooled connections."""
        self.client.close()

    def get(self, url: str, headers: Mapping[str, str]) -> Response:
        """GET one page, following same-origin redirects only; raise a classified FeedError."""
        with self._host_slot(url):
            for _ in range(MAX_REDIRECTS + 1):
                location, response = self._request(url, headers)
                if response is not None:
                    return response
                url = location
        raise FatalFeedError(f"{url}: too many redirects", url=url)

    def _request(self, url: str, headers: Mapping[str, str]) -> tuple[str, Response | None]:
        try:
            with self.client.stream("GET", url, headers=dict(headers)) as response:
                check_status(url, response)
                if response.is_redirect:
                    return _same_origin_redirect(url, response), None
                body = read_capped(url, response, self.settings.max_page_bytes)
                max_age = parse_max_age(response.headers.get("Cache-Control"))
                return url, Response(url, body, max_age)
        except httpx.TransportError as exc:
            # The exception text never carries request headers, so API keys stay out of logs.
            raise RetriableFeedError(f"{url}: {type(exc).__name__}: {exc}", url=url) from exc

    def _host_slot(self, url: str) -> threading.BoundedSemaphore:
        host = "{}://{}:{}".format(*origin_of(url))
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


def read_capped(url: str, response: httpx.Response, limit: int) -> bytes:
    """Read the body, refusing anything larger than `limit` bytes."""
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise InvalidPage(
            f"{url}: response of {declared} bytes exceeds the {limit} byte cap", url=url
        )
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise InvalidPage(f"{url}: response exceeds the {limit} byte cap", url=url)
        chunks.append(chunk)
    return b"".join(chunks)


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
