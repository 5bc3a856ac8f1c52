"""The sample publisher: real RPDE pages over HTTP from a mutable, lazily generated state.

Each feed's list is the generated initial list (see ``dataset``) plus a small overlay of
changes published since (see ``state``); tests change it and inject faults through the
``SamplePublisher`` hooks while the server thread serves pages.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import orjson

from harvester.sample import dataset
from harvester.sample.dataset import CHANGE_NUMBER, FEED_NAMES, LICENSE
from harvester.sample.httpserver import BackgroundServer, SampleHTTPServer
from harvester.sample.shapes import Json
from harvester.sample.state import FeedState, Position


@dataclass(frozen=True)
class Fault:
    """A scripted misbehaviour for the next ``times`` requests to one feed."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # raw body instead of the page (truncated JSON, HTML…)
    delay: float = 0.0  # seconds to sleep before answering
    next_url: str | None = None  # replaces the page's ``next``
    times: int = 1


@dataclass
class PendingFault:
    """A queued fault and how many more requests it applies to."""

    fault: Fault
    remaining: int


@dataclass(frozen=True)
class Response:
    """What one request gets back."""

    status: int
    headers: dict[str, str]
    body: bytes


class SamplePublisher(BackgroundServer):
    """An imin-Firehose-like RPDE publisher on 127.0.0.1, with hooks for tests."""

    def __init__(
        self,
        *,
        items: int = 2_000,
        now: datetime | None = None,
        seed: int = 1,
        page_size: int = 500,
        host: str = "127.0.0.1",
        port: int = 0,
        last_page_max_age: int = 8,
        page_max_age: int = 3600,
        mix: str = dataset.DEFAULT_MIX,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.now = now if now is not None else datetime.now(UTC)
        self.dataset = dataset.Dataset(size=items, now=self.now, seed=seed, mix=mix)
        self.page_size = page_size
        self.host = host
        self.port = port  # the bound port once started, kept for a restart
        self.last_page_max_age = last_page_max_age
        self.page_max_age = page_max_age
        self.states = {name: FeedState(feed) for name, feed in self.dataset.feeds.items()}
        self.faults: dict[str, deque[PendingFault]] = {name: deque() for name in FEED_NAMES}
        self.requests: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.server: PublisherServer | None = None
        self.thread: threading.Thread | None = None

    thread_name = "sample-publisher"

    def make_server(self) -> PublisherServer:
        """The HTTP server answering from this publisher."""
        return PublisherServer((self.host, self.port), self)

    @property
    def feed_urls(self) -> dict[str, str]:
        """Every feed's first-page URL, by feed name."""
        return {name: self.feed_url(name) for name in FEED_NAMES}

    def feed_url(self, feed: str) -> str:
        """The first-page URL of ``feed``."""
        if feed not in self.states:
            raise KeyError(f"unknown feed {feed!r}; expected one of {FEED_NAMES}")
        return f"{self.base_url}/feeds/{feed}"

    def to_config_toml(
        self,
        source_name: str = "sample",
        checkout_base_url: str | None = "checkout.sample.example",
    ) -> str:
        """A harvester config (contract format) listing this publisher's four feeds."""
        lines = ["[[sources]]", f"name = {toml_string(source_name)}"]
        if checkout_base_url is not None:
            lines.append(f"checkout_base_url = {toml_string(checkout_base_url)}")
        lines.append("feeds = [")
        lines += [f"  {toml_string(url)}," for url in self.feed_urls.values()]
        lines.append("]")
        return "\n".join(lines) + "\n"

    # -- feed state (the test hooks) ------------------------------------------------------

    def state_of(self, feed: str) -> FeedState:
        """The state of ``feed``, or KeyError naming the known feeds."""
        try:
            return self.states[feed]
        except KeyError:
            raise KeyError(f"unknown feed {feed!r}; expected one of {FEED_NAMES}") from None

    def items(self, feed: str) -> Iterator[Json]:
        """The feed's current list in RPDE order, updated and deleted items, as served."""
        with self.lock:
            state = self.state_of(feed).snapshot()
        return state.iter_after(None)

    def held(self, feed: str) -> dict[tuple[str, str], Json]:
        """What a correct harvester holds: ``{(kind, str(id)): data}`` of updated items."""
        return {
            (item["kind"], str(item["id"])): item["data"]
            for item in self.items(feed)
            if item["state"] == "updated"
        }

    def get(self, feed: str, item_id: str | int) -> Json | None:
        """The current data of an item; None when deleted or unknown."""
        with self.lock:
            found = self.state_of(feed).current(item_id)
        return None if found is None else found[1]

    def upsert(self, feed: str, item_id: str | int, data: Json, kind: str | None = None) -> None:
        """Publish an update: a new ``modified``, and the item moves to the end."""
        with self.lock:
            state = self.state_of(feed)
            found = state.current(item_id)
            if kind is None:
                kind = found[0] if found is not None else state.feed.default_kind
            state.publish(self.published_id(state, item_id), kind, data)

    def delete(self, feed: str, item_id: str | int) -> None:
        """Publish a tombstone: a new ``modified``, and the item moves to the end."""
        with self.lock:
            state = self.state_of(feed)
            found = state.current(item_id)
            if found is None:
                raise KeyError(f"{feed}: no item with id {item_id!r}")
            state.publish(self.published_id(state, item_id), found[0], None)

    def forget(self, feed: str, item_id: str | int) -> None:
        """Make an item vanish with no tombstone (a publisher that lost it, an expired one)."""
        with self.lock:
            state = self.state_of(feed)
            if state.current(item_id) is None:
                raise KeyError(f"{feed}: no item with id {item_id!r}")
            state.forget(item_id)

    def published_id(self, state: FeedState, item_id: str | int) -> str | int:
        """The id as the feed spells it (a slot id given as text stays an integer)."""
        entry = state.overlay.get(str(item_id))
        if entry is not None:
            return entry.item_id
        index = state.feed.index_of(str(item_id))
        return item_id if index is None else state.feed.id_of(index)

    def inject(self, feed: str, fault: Fault) -> None:
        """Queue ``fault`` for the next ``fault.times`` requests to ``feed``."""
        with self.lock:
            self.state_of(feed)
            self.faults[feed].append(PendingFault(fault, fault.times))

    # -- answering requests -------------------------------------------------------------

    def respond(self, target: str, host: str | None = None) -> Response:
        """The answer to ``GET target`` (a path with its query, as sent, to ``host``)."""
        with self.lock:
            self.requests.append((time.monotonic(), target))
        parts = urlsplit(target)
        feed = route_feed(parts.path)
        if feed is None:
            return error_response(HTTPStatus.NOT_FOUND)
        fault = self.take_fault(feed)
        if fault is not None and fault.delay > 0:
            time.sleep(fault.delay)
        if fault is not None and (fault.body is not None or fault.status != 200):
            return fault_response(fault)
        try:
            position = parse_position(self.states[feed].feed, parts.query)
        except ValueError as exc:
            return error_response(HTTPStatus.BAD_REQUEST, str(exc))
        # The last page echoes the URL as the client wrote it (e.g. via "localhost").
        requested = f"http://{host}{target}" if host else self.base_url + target
        response = self.serve_page(feed, requested, position)
        return apply_fault(response, fault)

    def take_fault(self, feed: str) -> Fault | None:
        """The fault for this request to ``feed``, if one is queued."""
        with self.lock:
            queue = self.faults[feed]
            if not queue:
                return None
            pending = queue[0]
            pending.remaining -= 1
            if pending.remaining <= 0:
                queue.popleft()
            return pending.fault

    def serve_page(self, feed: str, url: str, position: Position | None) -> Response:
        """The RPDE page of ``feed`` after ``position``; ``url`` is the URL requested."""
        with self.lock:
            items = list(islice(self.states[feed].iter_after(position), self.page_size))
        # RPDE last page: no items, and ``next`` is the URL just requested, byte for byte.
        next_url = self.next_url_after(feed, items[-1]) if items else url
        max_age = self.page_max_age if items else self.last_page_max_age
        body = orjson.dumps({"next": next_url, "items": items, "license": LICENSE})
        headers = {
            "Content-Type": "application/json",
            "Cache-Control": f"public, max-age={max_age}",
        }
        return Response(HTTPStatus.OK, headers, body)

    def next_url_after(self, feed: str, item: Json) -> str:
        """The ``next`` URL that continues after ``item``."""
        url = self.feed_url(feed)
        if self.states[feed].feed.ordering == CHANGE_NUMBER:
            return f"{url}?afterChangeNumber={item['modified']}"
        after_id = quote(str(item["id"]), safe="")
        return f"{url}?afterTimestamp={item['modified']}&afterId={after_id}"


def route_feed(path: str) -> str | None:
    """The feed name of ``/feeds/{name}``, or None."""
    prefix, _, name = path.rpartition("/")
    return name if prefix == "/feeds" and name in FEED_NAMES else None


def parse_position(feed: dataset.Feed, query: str) -> Position | None:
    """The position a query asks for; None means from the beginning (the first page)."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    try:
        if feed.ordering == CHANGE_NUMBER:
            raw = params.get("afterChangeNumber")
            return None if raw is None else (int(raw), "")
        raw = params.get("afterTimestamp")
        return None if raw is None else (int(raw), params.get("afterId", ""))
    except ValueError:
        raise ValueError(f"not an integer position in {query!r}") from None


def error_response(status: HTTPStatus, detail: str = "") -> Response:
    """A small JSON error answer."""
    body = orjson.dumps({"error": status.phrase, "detail": detail})
    return Response(status, {"Content-Type": "application/json"}, body)


def fault_response(fault: Fault) -> Response:
    """The answer an injected non-page fault gives."""
    if fault.body is None:
        body = orjson.dumps({"error": "injected fault", "status": fault.status})
    else:
        body = fault.body
    headers = {"Content-Type": "application/json", **fault.headers}
    return Response(fault.status, headers, body)


def apply_fault(response: Response, fault: Fault | None) -> Response:
    """A real page with a fault's extra headers and ``next`` override."""
    if fault is None:
        return response
    body = response.body
    if fault.next_url is not None:
        page: dict[str, Any] = orjson.loads(body)
        page["next"] = fault.next_url
        body = orjson.dumps(page)
    return Response(response.status, {**response.headers, **fault.headers}, body)


def toml_string(text: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML, non-ASCII stays as is)."""
    return orjson.dumps(text).decode()


class PublisherServer(SampleHTTPServer):
    """The publisher's server: its handlers answer from `publisher`."""

    def __init__(self, address: tuple[str, int], publisher: SamplePublisher) -> None:
        self.publisher = publisher
        super().__init__(address, PublisherHandler)


class PublisherHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; every GET is answered by the publisher."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, a keep-alive client waits
    # ~40 ms for the delayed ACK on every page.
    disable_nagle_algorithm = True
    server: PublisherServer

    def do_GET(self) -> None:
        """Answer one GET."""
        response = self.server.publisher.respond(self.path, self.headers.get("Host"))
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if not any(name.lower() == "content-length" for name in response.headers):
            self.send_header("Content-Length", str(len(response.body)))
        else:
            self.close_connection = True  # a faked length leaves the stream unusable
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and the demo read ``publisher.requests`` instead."""
