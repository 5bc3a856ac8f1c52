"""The sample checkout server: a stand-in for imin's Checkout API, for demos and tests.

Two routes create checkout sessions from a one-item ``OrderQuote``: the standalone
``POST /checkout-sessions`` (no customer details) and the authenticated
``POST /api/checkout-sessions/`` (with broker, customer and the item's ``identifier``).
Tests refuse opportunities, inject failures and read ``requests`` while the server
thread answers.
"""

from __future__ import annotations

import argparse
import copy
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, overload
from urllib.parse import urlsplit

import orjson

from harvester.sample.__main__ import wait_for_signal
from harvester.sample.httpserver import BackgroundServer, SampleHTTPServer, send_answer
from harvester.sample.shapes import CONTEXT, Json

STANDALONE = "standalone"
AUTHENTICATED = "authenticated"
ROUTES = {  # path: which API it is
    "/checkout-sessions": STANDALONE,
    "/api/checkout-sessions/": AUTHENTICATED,
    "/api/checkout-sessions": AUTHENTICATED,
}
TARGET_PREFIX = {STANDALONE: "opendata", AUTHENTICATED: "checkout"}
OPPORTUNITY_TYPES = ("ScheduledSession", "Slot")
DEFAULT_BROKER: Json = {"type": "Organization", "name": "Sample Broker"}
API_KEY_HEADER = "X-API-KEY"
DEFAULT_API_KEY = "sample-checkout-key"
MAX_BODY = 1 << 20  # bytes; a checkout body is a few hundred


class InvalidBody(ValueError):
    """A request body that is not what the route expects (answered with 422)."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON, None when absent or not JSON


@dataclass(frozen=True)
class Response:
    """What one request gets back."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class PendingFailure:
    """A queued ``fail_next`` and how many more requests it applies to."""

    status: int
    remaining: int
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class RequestLog(Sequence[RecordedRequest]):
    """A thread-safe, append-only record of requests; reads see a consistent snapshot."""

    def __init__(self) -> None:
        self.entries: list[RecordedRequest] = []
        self.lock = threading.Lock()

    def append(self, request: RecordedRequest) -> None:
        """Record one request."""
        with self.lock:
            self.entries.append(request)

    def clear(self) -> None:
        """Forget every request recorded so far."""
        with self.lock:
            self.entries.clear()

    def snapshot(self) -> list[RecordedRequest]:
        """A copy of the record as it is now."""
        with self.lock:
            return list(self.entries)

    @overload
    def __getitem__(self, index: int) -> RecordedRequest: ...

    @overload
    def __getitem__(self, index: slice) -> list[RecordedRequest]: ...

    def __getitem__(self, index: int | slice) -> RecordedRequest | list[RecordedRequest]:
        """One request, or a list of them for a slice."""
        with self.lock:
            return self.entries[index]

    def __len__(self) -> int:
        """How many requests were recorded."""
        with self.lock:
            return len(self.entries)

    def __iter__(self) -> Iterator[RecordedRequest]:
        """Iterate over a snapshot, so concurrent requests do not disturb the loop."""
        return iter(self.snapshot())

    def __repr__(self) -> str:
        """Like a list's."""
        return f"RequestLog({self.snapshot()!r})"


class SampleCheckout(BackgroundServer):
    """An imin-Checkout-API-like server on 127.0.0.1, with hooks for tests."""

    def __init__(
        self,
        api_key: str | None = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        refuse: Iterable[str] = (),
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port  # the bound port once started, kept for a restart
        self.refused: set[str] = set(refuse)
        self.failures: deque[PendingFailure] = deque()
        self.requests = RequestLog()
        self.lock = threading.Lock()
        self.server: CheckoutServer | None = None
        self.thread: threading.Thread | None = None

    thread_name = "sample-checkout"

    def make_server(self) -> CheckoutServer:
        """The HTTP server answering from this checkout."""
        return CheckoutServer((self.host, self.port), self)

    # -- test hooks ---------------------------------------------------------------------

    def refuse(self, opportunity_id: str) -> None:
        """Answer 400 UnavailableOpportunityError for ``opportunity_id`` from now on."""
        with self.lock:
            self.refused.add(opportunity_id)

    def sell(self, opportunity_id: str) -> None:
        """Undo ``refuse``: the opportunity can be checked out again."""
        with self.lock:
            self.refused.discard(opportunity_id)

    def fail_next(
        self,
        status: int,
        times: int = 1,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests with ``status``, after sleeping ``delay`` s."""
        if times < 1:
            raise ValueError("times must be >= 1")
        failure = PendingFailure(status, times, dict(headers or {}), delay)
        with self.lock:
            self.failures.append(failure)

    def is_refused(self, opportunity_id: str) -> bool:
        """Whether ``opportunity_id`` is refused right now."""
        with self.lock:
            return opportunity_id in self.refused

    # -- answering requests -------------------------------------------------------------

    def respond(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Response:
        """The answer to one request; ``headers`` have lower-cased names."""
        body = parse_json(raw)
        path = urlsplit(target).path
        self.requests.append(RecordedRequest(method, path, headers, body))
        failure = self.take_failure()
        if failure is not None:
            if failure.delay > 0:
                time.sleep(failure.delay)
            return failure_response(failure)
        route = ROUTES.get(path)
        if route is None:
            return error_response(HTTPStatus.NOT_FOUND, "NotFoundError", f"No route {path}.")
        if method != "POST":
            response = error_response(
                HTTPStatus.METHOD_NOT_ALLOWED, "MethodNotAllowedError", "Only POST is allowed."
            )
            return Response(response.status, {**response.headers, "Allow": "POST"}, response.body)
        if self.api_key is not None and headers.get(API_KEY_HEADER.lower()) != self.api_key:
            return error_response(
                HTTPStatus.UNAUTHORIZED,
                "UnauthenticatedError",
                f"A valid {API_KEY_HEADER} header is required.",
            )
        if body is None:
            return invalid_response("The request body is not JSON.")
        try:
            opportunity_id = validate_session(body, route)
        except InvalidBody as exc:
            return invalid_response(str(exc))
        if self.is_refused(opportunity_id):
            return error_response(
                HTTPStatus.BAD_REQUEST,
                "UnavailableOpportunityError",
                "This opportunity is not available to book.",
            )
        return self.create_session(body, route)

    def take_failure(self) -> PendingFailure | None:
        """The failure for this request, if one is queued."""
        with self.lock:
            if not self.failures:
                return None
            pending = self.failures[0]
            pending.remaining -= 1
            if pending.remaining <= 0:
                self.failures.popleft()
            return pending

    def create_session(self, body: Json, route: str) -> Response:
        """201 with the request echoed, a broker, and the action that checks it out."""
        session_id = uuid.uuid4().hex
        session = copy.deepcopy(body)
        session["imin:initialOrder"].setdefault("broker", dict(DEFAULT_BROKER))
        target = f"{self.base_url}/{TARGET_PREFIX[route]}/{session_id}"
        session["potentialAction"] = [{"type": "OrderAction", "name": "Checkout", "target": target}]
        headers = {
            "Content-Type": "application/json",
            "Location": f"/checkout-sessions/{session_id}",
        }
        return Response(HTTPStatus.CREATED, headers, orjson.dumps(session))


def parse_json(raw: bytes) -> Any:
    """The parsed body; None when empty or not JSON."""
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def validate_session(body: Any, route: str) -> str:
    """The ordered opportunity's ``@id``, or InvalidBody saying what is wrong."""
    if not isinstance(body, dict):
        raise InvalidBody("The body must be a JSON object.")
    if body.get("@context") != CONTEXT:
        raise InvalidBody(f"@context must be {orjson.dumps(CONTEXT).decode()}.")
    if body.get("type") != "imin:CheckoutSession":
        raise InvalidBody('type must be "imin:CheckoutSession".')
    order = body.get("imin:initialOrder")
    if not isinstance(order, dict) or order.get("type") != "OrderQuote":
        raise InvalidBody('imin:initialOrder must be an object of type "OrderQuote".')
    items = order.get("orderedItem")
    if not isinstance(items, list) or len(items) != 1:
        raise InvalidBody("imin:initialOrder.orderedItem must be a list of exactly one OrderItem.")
    (item,) = items
    if not isinstance(item, dict) or item.get("type") != "OrderItem":
        raise InvalidBody('imin:initialOrder.orderedItem[0] must be of type "OrderItem".')
    opportunity = item.get("orderedItem")
    if not isinstance(opportunity, dict) or opportunity.get("type") not in OPPORTUNITY_TYPES:
        raise InvalidBody(
            "imin:initialOrder.orderedItem[0].orderedItem must be a ScheduledSession or a Slot."
        )
    opportunity_id = opportunity.get("id")
    if not isinstance(opportunity_id, str) or not opportunity_id:
        raise InvalidBody("imin:initialOrder.orderedItem[0].orderedItem.id must be a string.")
    if route == AUTHENTICATED:
        validate_authenticated(order, opportunity)
    elif "customer" in order:
        # Customer details on the open-data route would go to the wrong API.
        raise InvalidBody("customer belongs on the authenticated route /api/checkout-sessions/.")
    return opportunity_id


def validate_authenticated(order: Json, opportunity: Json) -> None:
    """What the authenticated route needs beyond the standalone shape."""
    identifier = opportunity.get("identifier")
    is_number = isinstance(identifier, int | float) and not isinstance(identifier, bool)
    if not (is_number or (isinstance(identifier, str) and identifier)):
        raise InvalidBody(
            "imin:initialOrder.orderedItem[0].orderedItem.identifier must be a non-empty "
            "string or a number."
        )
    broker = order.get("broker")
    if (
        not isinstance(broker, dict)
        or broker.get("type") != "Organization"
        or not isinstance(broker.get("name"), str)
        or not broker["name"]
        or not isinstance(broker.get("url"), str)
    ):
        raise InvalidBody(
            'imin:initialOrder.broker must be {"type": "Organization", "name": <non-empty '
            'string>, "url": <string>}.'
        )
    if not isinstance(order.get("customer"), dict):
        raise InvalidBody("imin:initialOrder.customer must be an object.")


def error_response(status: HTTPStatus, kind: str, description: str) -> Response:
    """A small JSON error answer in the Checkout API's style."""
    body = orjson.dumps({"type": kind, "description": description})
    return Response(status, {"Content-Type": "application/json"}, body)


def invalid_response(description: str) -> Response:
    """422 InvalidRequestError (400 means the opportunity was refused)."""
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, "InvalidRequestError", description)


def failure_response(failure: PendingFailure) -> Response:
    """The answer a ``fail_next`` gives."""
    try:
        phrase = HTTPStatus(failure.status).phrase
    except ValueError:
        phrase = "Injected failure"
    body = orjson.dumps(
        {"type": "InjectedError", "status": failure.status, "description": f"{phrase}."}
    )
    return Response(failure.status, {"Content-Type": "application/json", **failure.headers}, body)


class CheckoutServer(SampleHTTPServer):
    """The checkout's server: its handlers answer from `checkout`."""

    def __init__(self, address: tuple[str, int], checkout: SampleCheckout) -> None:
        self.checkout = checkout
        super().__init__(address, CheckoutHandler)


class CheckoutHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; every request is answered by the checkout."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, a keep-alive client waits
    # ~40 ms for the delayed ACK on every answer.
    disable_nagle_algorithm = True
    server: CheckoutServer

    def do_POST(self) -> None:
        """Answer one POST."""
        self.answer()

    def do_GET(self) -> None:
        """Answer one GET (405 on the known routes)."""
        self.answer()

    def do_PUT(self) -> None:
        """Answer one PUT (405 on the known routes)."""
        self.answer()

    def do_PATCH(self) -> None:
        """Answer one PATCH (405 on the known routes)."""
        self.answer()

    def do_DELETE(self) -> None:
        """Answer one DELETE (405 on the known routes)."""
        self.answer()

    def answer(self) -> None:
        """Read the body, ask the checkout, write its answer."""
        try:
            raw = self.read_body()
        except ValueError:
            self.close_connection = True  # the rest of the stream cannot be framed
            self.write_response(invalid_response("The request body cannot be read."))
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.write_response(self.server.checkout.respond(self.command, self.path, headers, raw))

    def read_body(self) -> bytes:
        """The request body, by Content-Length or chunked; ValueError when unreadable."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            raise ValueError(f"bad Content-Length {length}")
        return self.rfile.read(length)

    def read_chunked(self) -> bytes:
        """A chunked body, up to MAX_BODY bytes."""
        chunks: list[bytes] = []
        size = 0
        while True:
            length = int(self.rfile.readline(64).split(b";")[0].strip(), 16)
            if length == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            size += length
            if size > MAX_BODY:
                raise ValueError("body too large")
            chunks.append(self.rfile.read(length))
            self.rfile.readline(8)  # the CRLF after each chunk

    def write_response(self, response: Response) -> None:
        """Send ``response`` with its length."""
        send_answer(self, response.status, response.headers, response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: bodies carry customer details; tests read ``checkout.requests``."""


# -- the command line -------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m harvester.sample.checkout",
        description="Serve a sample imin-like Checkout API until SIGTERM/SIGINT.",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        help=f"the {API_KEY_HEADER} to require (default {DEFAULT_API_KEY}; empty: none)",
    )
    parser.add_argument(
        "--refuse",
        nargs="+",
        action="extend",
        default=[],
        metavar="ID",
        help="opportunity @ids to answer 400 UnavailableOpportunityError for",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until told to stop; exit status 0."""
    args = parse_args(argv)
    checkout = SampleCheckout(
        api_key=args.api_key or None, host=args.host, port=args.port, refuse=args.refuse
    )
    with checkout:
        print(f"READY {checkout.base_url}", flush=True)
        wait_for_signal()
    return 0


if __name__ == "__main__":
    sys.exit(main())
