"""`harvester serve`: the HTTP API over checkout sessions, against the sample checkout server.

Through FastAPI's TestClient, through a real uvicorn server on a socket (in a thread, and
`serve()` itself in a child process stopped by SIGTERM), and by schemathesis against the
app's own OpenAPI document.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import httpx2
import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.core.transport import Response as SchemaResponse
from schemathesis.specs.openapi.schemas import OpenApiSchema
from sqlalchemy import Engine, text

from harvester import api, bookability, database, feedstate, pagewrite, records
from harvester.checkout import Checkout
from harvester.config import Broker, Config, Settings, Source
from harvester.errors import ConfigError
from harvester.pagewrite import PageWrite
from harvester.rpde import Item
from harvester.sample.checkout import SampleCheckout

Json = dict[str, Any]

TOKEN = "api-token-for-tests-7f3a9c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API_KEY = "sample-checkout-key-for-api-tests"
FLAG = "imin:isPotentiallyBookable"
BROKER = Broker(name="Test Broker", url="https://broker.example/")
# Distinctive values, so a leak into a response or a log cannot be missed.
CUSTOMER: Json = {
    "type": "Person", "email": "jane.quill-customer@example.com", "givenName": "Janequill",
    "familyName": "Customerova", "telephone": "07700 900461",
}  # fmt: skip
CUSTOMER_TEXTS = ("jane.quill-customer@example.com", "Janequill", "Customerova", "07700 900461")
# Two sources holding one session each: "open" on the standalone route, "member" on the
# authenticated one (its session's identifier a number, as some publishers write it).
OPEN_ID = "https://open.example/scheduled-sessions/1"
OPEN_IDENTIFIER = "court 1 at 10:00 / open"
MEMBER_ID = "https://member.example/scheduled-sessions/1"
MEMBER_IDENTIFIER = 8_900_001
# One retry, at most 2 s apart: a failing publisher costs a test seconds, not minutes.
SETTINGS = Settings(checkout_attempts=2, checkout_retry_seconds=2)
SCHEMA_EXAMPLES = 25  # per operation, for schemathesis

_modified = itertools.count(1)


# --- writing bookable opportunities ------------------------------------------------------------


def feeds_of(name: str) -> tuple[str, str]:
    """The source's SessionSeries and ScheduledSession feeds."""
    return (f"https://{name}.example/session-series", f"https://{name}.example/scheduled-sessions")


def make_source(name: str, base: str, route: str) -> Source:
    """A source checked out at the sample server by `route`."""
    broker = BROKER if route == "authenticated" else None
    return Source(name=name, feeds=feeds_of(name), checkout_base_url=base,
                  headers={"X-API-KEY": API_KEY}, checkout_route=route, broker=broker)  # fmt: skip


def make_config(base: str) -> Config:
    """Both sources, with short checkout retries."""
    sources = (
        make_source("open", base, "standalone"),
        make_source("member", base, "authenticated"),
    )
    return Config(sources=sources, settings=SETTINGS)


def updated(kind: str, rpde_id: str, data: Json) -> Item:
    """An RPDE `updated` item with a fresh `modified`."""
    return Item("updated", kind, rpde_id, next(_modified), None, data)


def series(series_id: str) -> Json:
    """A SessionSeries whose publicAdult offer is potentially bookable, a week ahead."""
    offer = {"publicAdult": {FLAG: True, "validFromBeforeStartDate": "P1W"}}
    return {"@type": "SessionSeries", "@id": series_id, "imin:aggregateOffer": offer}


def session(session_id: str, identifier: Any, series_id: str) -> Json:
    """A potentially bookable ScheduledSession of the series, three days ahead."""
    start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    return {
        "@type": "ScheduledSession", "@id": session_id, "identifier": identifier,
        "superEvent": series_id, "startDate": start.isoformat(),
        "endDate": (start + timedelta(hours=1)).isoformat(), FLAG: True,
    }  # fmt: skip


def write_bookable(engine: Engine, source: Source, session_id: str, identifier: Any) -> None:
    """Register the source and write its series and one session, page by page."""
    series_feed, sessions_feed = source.feeds
    series_id = f"{series_feed}/1"
    child = session(session_id, identifier, series_id)
    pages = {
        series_feed: [updated("SessionSeries", "1", series(series_id))],
        sessions_feed: [updated("ScheduledSession", "1", child)],
    }
    with engine.begin() as conn:
        prefix = bookability.checkout_prefix(source.checkout_base_url)
        feedstate.sync_source(conn, source, prefix)
        feeds = feedstate.load_feeds(conn, [(source.name, url) for url in source.feeds])
    for feed in feeds:
        page = PageWrite(records.to_rows(pages[feed.url])[0], [], feed.next_url,
                         f"{feed.url}?after=1", False)  # fmt: skip
        with engine.begin() as conn:
            pagewrite.write_page(conn, feed, page)


def bookable_ids(engine: Engine) -> set[str]:
    """The @ids in bookable_now."""
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT id FROM bookable_now")).scalars())


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def sample() -> Iterator[SampleCheckout]:
    """The sample checkout server, requiring our API key."""
    with SampleCheckout(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def checkout(engine: Engine, sample: SampleCheckout) -> Iterator[Checkout]:
    """A Checkout over both sources, each holding one bookable session."""
    config = make_config(sample.base_url)
    write_bookable(engine, config.sources[0], OPEN_ID, OPEN_IDENTIFIER)
    write_bookable(engine, config.sources[1], MEMBER_ID, MEMBER_IDENTIFIER)
    assert bookable_ids(engine) == {OPEN_ID, MEMBER_ID}
    checkout = Checkout(engine, config)
    yield checkout
    checkout.close()


@pytest.fixture
def app(checkout: Checkout, engine: Engine) -> FastAPI:
    """The API app."""
    return api.make_app(checkout, TOKEN, engine)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A TestClient on the app; server-side exceptions are raised in the test."""
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def schema(app: FastAPI) -> OpenApiSchema:
    """The app's own OpenAPI document, loaded by schemathesis (with the token)."""
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)


def conforms(schema: OpenApiSchema, method: str, path: str, response: Any) -> None:
    """The response is one the OpenAPI document describes (status, headers, body)."""
    schema.validate_response(schema[path][method], SchemaResponse.from_any(response))


@contextlib.contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """The app on a real socket (uvicorn in a thread, any free port); its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", log_config=None)
    server = api.Server(config)
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()


def free_port() -> int:
    """A port nobody listens on just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(client: TestClient, body: Any, headers: dict[str, str] | None = None) -> httpx2.Response:
    """POST /checkout-sessions with the token (unless other headers are given)."""
    return client.post(
        "/checkout-sessions", json=body, headers=AUTH if headers is None else headers
    )


# --- the token --------------------------------------------------------------------------------

BAD_AUTHORIZATIONS = [
    {},  # none at all
    {"Authorization": "Bearer not-the-token"},  # a wrong token
    {"Authorization": f"Bearer {TOKEN}x"},  # the token and more
    {"Authorization": f"Basic {TOKEN}"},  # the right value, the wrong scheme
    {"Authorization": "Bearer "},  # an empty token
    {"Authorization": f"Bearer{TOKEN}"},  # no space after the scheme
    {"Authorization": TOKEN},  # the token alone
]


@pytest.mark.parametrize("headers", BAD_AUTHORIZATIONS)
def test_checkout_sessions_need_the_token(
    client: TestClient, sample: SampleCheckout, headers: dict[str, str]
) -> None:
    """401 with a reason and WWW-Authenticate: Bearer; nothing reaches the publisher."""
    response = post(client, {"id": OPEN_ID}, headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert set(response.json()) == {"reason"} and "Bearer" in response.json()["reason"]
    assert len(sample.requests) == 0


def test_no_token_wrong_token_right_token(client: TestClient, schema: OpenApiSchema) -> None:
    """On POST /checkout-sessions and GET /openapi.json: 401, 401, then served."""
    for path in ("/checkout-sessions", "/openapi.json"):
        method = client.post if path == "/checkout-sessions" else client.get
        kwargs: Json = {"json": {"id": OPEN_ID}} if path == "/checkout-sessions" else {}
        assert method(path, **kwargs).status_code == 401
        wrong = method(path, headers={"Authorization": "Bearer wrong"}, **kwargs)
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        right = method(path, headers={"authorization": f"bearer {TOKEN}"}, **kwargs)
        assert right.status_code == (201 if path == "/checkout-sessions" else 200), right.text
    conforms(schema, "POST", "/checkout-sessions", wrong)


def test_every_path_needs_the_token(client: TestClient) -> None:
    """/healthz, unknown paths and the disabled /docs and /redoc are 401 without it."""
    for path in ("/healthz", "/docs", "/redoc", "/nowhere"):
        assert client.get(path).status_code == 401, path
    assert client.get("/docs", headers=AUTH).status_code == 404
    assert client.get("/redoc", headers=AUTH).status_code == 404


def test_openapi_document_describes_the_api(client: TestClient) -> None:
    """Both routes, the bearer scheme, every error as a reason."""
    document = client.get("/openapi.json", headers=AUTH).json()
    assert set(document["paths"]) == {"/checkout-sessions", "/healthz"}
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
    }
    assert document["security"] == [{"bearer": []}]
    responses = document["paths"]["/checkout-sessions"]["post"]["responses"]
    assert set(responses) == {"201", "400", "401", "409", "422", "502", "503"}
    for status in ("400", "401", "409", "422", "502", "503"):
        assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/Reason"
        )
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_make_app_and_serve_refuse_an_empty_token(checkout: Checkout, engine: Engine) -> None:
    """No token, no API: ConfigError with one line, before anything listens."""
    for token in ("", "   ", "\n"):
        with pytest.raises(ConfigError, match="HARVESTER_API_TOKEN") as caught:
            api.serve(checkout, token, engine, port=free_port())
        assert "\n" not in str(caught.value)
        with pytest.raises(ConfigError):
            api.make_app(checkout, token, engine)


# --- checkout sessions ------------------------------------------------------------------------


def test_standalone_route(
    client: TestClient, sample: SampleCheckout, schema: OpenApiSchema
) -> None:
    """201 with the sample server's target; it got the standalone shape, no customer."""
    response = post(client, {"id": OPEN_ID, "customer": CUSTOMER})
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["route"] == "standalone"
    assert answer["url"].startswith(f"{sample.base_url}/opendata/")
    conforms(schema, "POST", "/checkout-sessions", response)
    (request,) = sample.requests
    assert request.path == "/checkout-sessions"
    assert request.headers["x-api-key"] == API_KEY
    order = request.body["imin:initialOrder"]
    assert order["orderedItem"] == [
        {"type": "OrderItem", "orderedItem": {"type": "ScheduledSession", "id": OPEN_ID}}
    ]
    assert "customer" not in order and "broker" not in order


def test_standalone_route_by_source_and_identifier(
    client: TestClient, sample: SampleCheckout
) -> None:
    """The same session named by its source and (awkward) identifier."""
    response = post(client, {"source": "open", "identifier": OPEN_IDENTIFIER})
    assert response.status_code == 201, response.text
    assert response.json()["route"] == "standalone"
    assert sample.requests[0].body["imin:initialOrder"]["orderedItem"][0]["orderedItem"]["id"] \
        == OPEN_ID  # fmt: skip


@pytest.mark.parametrize("identifier", [MEMBER_IDENTIFIER, str(MEMBER_IDENTIFIER)])
def test_authenticated_route(
    client: TestClient, sample: SampleCheckout, schema: OpenApiSchema, identifier: Any
) -> None:
    """201 with the target; the identifier as published, the broker and the customer sent."""
    body = {"source": "member", "identifier": identifier, "customer": CUSTOMER}
    response = post(client, body)
    assert response.status_code == 201, response.text
    assert response.json()["route"] == "authenticated"
    assert response.json()["url"].startswith(f"{sample.base_url}/checkout/")
    conforms(schema, "POST", "/checkout-sessions", response)
    (request,) = sample.requests
    assert request.path == "/api/checkout-sessions/"
    assert request.headers["x-api-key"] == API_KEY
    order = request.body["imin:initialOrder"]
    assert order["orderedItem"][0]["orderedItem"] == {
        "type": "ScheduledSession", "id": MEMBER_ID, "identifier": MEMBER_IDENTIFIER,
    }  # fmt: skip
    assert order["broker"] == {"type": "Organization", "name": BROKER.name, "url": BROKER.url}
    assert order["customer"] == CUSTOMER


def test_unknown_opportunity_is_409(
    client: TestClient, sample: SampleCheckout, schema: OpenApiSchema
) -> None:
    """An id nobody published, or an identifier in the wrong source: 409 with the reason."""
    for body in ({"id": "https://open.example/scheduled-sessions/404"},
                 {"source": "member", "identifier": OPEN_IDENTIFIER}):  # fmt: skip
        response = post(client, body)
        assert response.status_code == 409
        assert list(response.json()) == ["reason"]
        assert "no such opportunity is held" in response.json()["reason"]
        conforms(schema, "POST", "/checkout-sessions", response)
    assert len(sample.requests) == 0


def test_refused_opportunity_is_409_and_leaves_bookable_now(
    client: TestClient, sample: SampleCheckout, engine: Engine, schema: OpenApiSchema
) -> None:
    """Refused by checkout: 409; out of bookable_now, so still 409 once it sells again."""
    sample.refuse(OPEN_ID)
    refused = post(client, {"id": OPEN_ID})
    assert refused.status_code == 409
    assert refused.json()["reason"].startswith("refused by checkout: UnavailableOpportunityError")
    conforms(schema, "POST", "/checkout-sessions", refused)
    assert bookable_ids(engine) == {MEMBER_ID}
    sample.sell(OPEN_ID)
    again = post(client, {"id": OPEN_ID})
    assert again.status_code == 409
    assert "refused by checkout" in again.json()["reason"]  # opportunity_status's reason
    assert len(sample.requests) == 1  # the second ask never reached the publisher
    assert post(client, {"id": MEMBER_ID, "customer": CUSTOMER}).status_code == 201


def test_publisher_failing_past_the_retries_is_502(
    client: TestClient, sample: SampleCheckout, engine: Engine, schema: OpenApiSchema
) -> None:
    """500 on both attempts: 502 with the reason; the opportunity stays bookable."""
    sample.fail_next(500, times=3)
    response = post(client, {"source": "member", "identifier": MEMBER_IDENTIFIER,
                             "customer": CUSTOMER})  # fmt: skip
    assert response.status_code == 502
    reason = response.json()["reason"]
    assert "500" in reason and "/api/checkout-sessions/" in reason
    assert not any(value in response.text for value in CUSTOMER_TEXTS)
    conforms(schema, "POST", "/checkout-sessions", response)
    assert len(sample.requests) == SETTINGS.checkout_attempts
    assert MEMBER_ID in bookable_ids(engine)
    # The third failure is used up by the next ask's first attempt; its retry succeeds.
    retried = post(client, {"id": MEMBER_ID, "customer": CUSTOMER})
    assert retried.status_code == 201 and len(sample.requests) == 4


def test_database_down_is_503(sample: SampleCheckout, schema: OpenApiSchema) -> None:
    """A checkout that cannot reach the database: 503 with a reason, not a crash."""
    dead = database.make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    checkout = Checkout(dead, make_config(sample.base_url))
    try:
        with TestClient(api.make_app(checkout, TOKEN, dead)) as client:
            response = post(client, {"id": OPEN_ID})
            health = client.get("/healthz", headers=AUTH)
    finally:
        checkout.close()
        dead.dispose()
    assert response.status_code == 503
    assert response.json() == {"reason": "the database is not available; try again"}
    conforms(schema, "POST", "/checkout-sessions", response)
    assert health.status_code == 503
    assert health.json() == {"status": "unavailable", "reason": "the database does not answer"}
    conforms(schema, "GET", "/healthz", health)


# --- invalid bodies ---------------------------------------------------------------------------

INVALID_BODIES = [
    # Neither id nor source and identifier.
    ({"customer": CUSTOMER}, ["source: Field required", "identifier: Field required"]),
    # A source without identifier.
    ({"source": "member", "customer": CUSTOMER}, ["identifier: Field required"]),
    # An identifier without source.
    ({"identifier": MEMBER_IDENTIFIER, "customer": CUSTOMER}, ["source: Field required"]),
    # Both forms at once: which one was meant?
    ({"id": MEMBER_ID, "identifier": "x", "customer": CUSTOMER}, ["identifier: Extra inputs"]),
    # An id that is not a string.
    ({"id": 12, "customer": CUSTOMER}, ["id: Input should be a valid string"]),
    # A customer that is not an object (the value itself must not come back).
    ({"id": MEMBER_ID, "customer": CUSTOMER["email"]}, ["customer: expected a JSON object"]),
    # A customer JSON can carry but the publisher could not be sent.
    ({"id": MEMBER_ID, "customer": {**CUSTOMER, "loyalty": 10**30}}, ["customer: expected"]),
    # A NUL, which PostgreSQL text cannot hold.
    ({"id": "https://open.example/\x00", "customer": CUSTOMER}, ["id: String should match"]),
    # Not an object at all.
    ([CUSTOMER], ["body: Input should be a valid dictionary"]),
]  # fmt: skip


@pytest.mark.parametrize(("body", "faults"), INVALID_BODIES)
def test_invalid_body_is_422_without_the_customer(
    client: TestClient, sample: SampleCheckout, schema: OpenApiSchema, body: Any, faults: list[str]
) -> None:
    """422 `{"reason": ...}` naming the fields at fault, quoting none of the values sent."""
    response = post(client, body)
    assert response.status_code == 422
    assert list(response.json()) == ["reason"]
    reason = response.json()["reason"]
    for fault in faults:
        assert fault in reason
    assert not any(value in response.text for value in CUSTOMER_TEXTS)
    conforms(schema, "POST", "/checkout-sessions", response)
    assert len(sample.requests) == 0


def test_unparsable_body_is_422(client: TestClient) -> None:
    """Broken JSON or no body: 422 with a reason; a body not in UTF-8: 400."""
    broken = client.post("/checkout-sessions", content=b'{"id": "x", "customer": {"email": "jane',
                         headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert broken.status_code == 422 and "JSON decode error" in broken.json()["reason"]
    assert "jane" not in broken.text
    not_utf8 = client.post("/checkout-sessions", content=b'{"id": "\xff"}',
                           headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert not_utf8.status_code == 400 and list(not_utf8.json()) == ["reason"]
    empty = client.post("/checkout-sessions", headers=AUTH)
    assert empty.status_code == 422 and empty.json()["reason"].startswith("invalid request: body")


def test_customer_details_are_never_logged(
    client: TestClient, sample: SampleCheckout, caplog: pytest.LogCaptureFixture
) -> None:
    """Created, refused, failed or invalid: no log record holds the customer's details."""
    caplog.set_level(logging.DEBUG)
    member = {"source": "member", "identifier": MEMBER_IDENTIFIER, "customer": CUSTOMER}
    assert post(client, member).status_code == 201
    assert post(client, {**member, "extra": True}).status_code == 422
    sample.fail_next(500, times=2)
    assert post(client, member).status_code == 502
    sample.refuse(MEMBER_ID)
    assert post(client, member).status_code == 409
    assert caplog.records, "something was logged (the checkout's own record at least)"
    logged = caplog.text + "".join(str(record.__dict__) for record in caplog.records)
    assert not any(value in logged for value in CUSTOMER_TEXTS)


# --- /healthz ---------------------------------------------------------------------------------


def test_healthz(client: TestClient, schema: OpenApiSchema) -> None:
    """200 `{"status": "ok"}` when the database answers SELECT 1."""
    response = client.get("/healthz", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    conforms(schema, "GET", "/healthz", response)


# --- over a real socket -----------------------------------------------------------------------


def test_over_a_real_socket(app: FastAPI, sample: SampleCheckout) -> None:
    """uvicorn on a free port: 401 without the token, then the authenticated route, 409."""
    with live_server(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        denied = http.post("/checkout-sessions", json={"id": MEMBER_ID})
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        body = {"source": "member", "identifier": MEMBER_IDENTIFIER, "customer": CUSTOMER}
        created = http.post("/checkout-sessions", json=body, headers=AUTH)
        assert created.status_code == 201, created.text
        assert created.json()["url"].startswith(f"{sample.base_url}/checkout/")
        assert sample.requests[0].body["imin:initialOrder"]["customer"] == CUSTOMER
        unknown = http.post("/checkout-sessions", json={"id": "nope"}, headers=AUTH)
        assert unknown.status_code == 409
        assert http.get("/healthz", headers=AUTH).json() == {"status": "ok"}
        assert http.get("/openapi.json", headers=AUTH).json()["info"]["title"] == "harvester"


def test_concurrent_requests_over_a_real_socket(app: FastAPI, sample: SampleCheckout) -> None:
    """Sync handlers run in the thread pool: slow publisher answers overlap, not queue."""
    delay = 1.5
    sample.fail_next(500, times=4, delay=delay)  # each of 4 first attempts waits, then fails
    with live_server(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(http.post, "/checkout-sessions", json={"id": OPEN_ID},
                                   headers=AUTH) for _ in range(4)]  # fmt: skip
            statuses = [future.result().status_code for future in futures]
        elapsed = time.monotonic() - started
    assert statuses == [201] * 4
    assert len(sample.requests) == 8
    # Overlapping: one delay and one retry wait (<= 2 s). Queued: at least four delays.
    assert elapsed < 4 * delay - 0.5


def test_serve_stops_cleanly_on_sigterm(db_url: str, checkout: Checkout) -> None:
    """`serve()` in a child process: answers on its port, exits 0 on SIGTERM."""
    port = free_port()
    script = (
        "import sys\n"
        "from harvester import database\n"
        "from harvester.api import serve\n"
        "from harvester.checkout import Checkout\n"
        "from harvester.config import Config, Source\n"
        "engine = database.make_engine(sys.argv[1])\n"
        "config = Config(sources=(Source(name='open', feeds=('https://open.example/f',)),))\n"
        "serve(Checkout(engine, config), sys.argv[2], engine, port=int(sys.argv[3]))\n"
        "print('returned', flush=True)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, db_url, TOKEN, str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert child.poll() is None, child.communicate()[1].decode()
            with contextlib.suppress(httpx.TransportError):
                health = httpx.get(f"{base}/healthz", headers=AUTH, timeout=2)
                break
            assert time.monotonic() < deadline, "serve() did not listen"
            time.sleep(0.05)
        assert health.json() == {"status": "ok"}
        assert "server" not in health.headers  # uvicorn does not name itself
        assert httpx.get(f"{base}/healthz", timeout=2).status_code == 401
        assert httpx.post(f"{base}/checkout-sessions", json={"id": OPEN_ID}, headers=AUTH,
                          timeout=10).status_code == 201  # fmt: skip
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err.decode()
    assert out.decode().strip() == "returned"
    assert err.decode() == ""  # quiet by default: warning level, so no access log either


# --- schemathesis -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        ("POST", "/checkout-sessions", GenerationMode.POSITIVE),
        ("POST", "/checkout-sessions", GenerationMode.NEGATIVE),
        ("GET", "/healthz", GenerationMode.POSITIVE),
    ],
)
def test_schemathesis(
    schema: OpenApiSchema, sample: SampleCheckout, method: str, path: str, mode: GenerationMode
) -> None:
    """Generated requests (valid, and for the body invalid ones): no 5xx, answers conform
    to the document, the token is enforced (schemathesis's checks, all defaults)."""
    operations = {
        (op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())
    }
    assert operations == {("POST", "/checkout-sessions"), ("GET", "/healthz")}
    statuses: set[int] = set()

    @given(case=schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=SCHEMA_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(case: Case) -> None:
        statuses.add(case.call_and_validate(headers=AUTH).status_code)

    check()
    # Random ids name nothing bookable (409); invalid bodies are 422 (400 when not UTF-8),
    # and negative cases that spoil the Authorization header are 401.
    assert statuses & {200, 409, 422}, statuses
    assert statuses <= {200, 400, 401, 409, 422}, statuses
