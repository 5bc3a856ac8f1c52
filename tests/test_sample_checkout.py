"""The bundled sample checkout server follows the Checkout API contract over real HTTP."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from harvester.sample.checkout import SampleCheckout

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key"
SESSION_ID = "https://sample-firehose.example/scheduled-sessions/42"
SLOT_ID = "https://sample-firehose.example/facility-uses/7/slots/9"
Json = dict[str, Any]


def standalone_body(opportunity_id: str = SESSION_ID, kind: str = "ScheduledSession") -> Json:
    """A valid standalone checkout-session request."""
    return {
        "@context": ["https://openactive.io/", "https://imin.co/"],
        "type": "imin:CheckoutSession",
        "imin:initialOrder": {
            "type": "OrderQuote",
            "orderedItem": [
                {"type": "OrderItem", "orderedItem": {"type": kind, "id": opportunity_id}}
            ],
        },
    }


def authenticated_body(opportunity_id: str = SESSION_ID, identifier: Any = 42) -> Json:
    """A valid authenticated checkout-session request."""
    body = standalone_body(opportunity_id)
    order = body["imin:initialOrder"]
    order["orderedItem"][0]["orderedItem"]["identifier"] = identifier
    order["broker"] = {"type": "Organization", "name": "Test Broker", "url": "https://b.example"}
    order["customer"] = {"type": "Person", "email": "someone@example.com"}
    return body


@pytest.fixture
def checkout() -> Iterator[SampleCheckout]:
    """A started checkout server requiring ``KEY``."""
    with SampleCheckout(api_key=KEY) as started:
        yield started


@pytest.fixture
def client(checkout: SampleCheckout) -> Iterator[httpx.Client]:
    """A client of ``checkout`` that sends the right API key."""
    with httpx.Client(base_url=checkout.base_url, headers={"X-API-KEY": KEY}, timeout=5) as http:
        yield http


def test_base_url_has_the_bound_port_and_no_trailing_slash(checkout: SampleCheckout) -> None:
    assert checkout.base_url == f"http://127.0.0.1:{checkout.port}"
    assert checkout.port > 0


def test_standalone_route_creates_a_session(checkout: SampleCheckout, client: httpx.Client) -> None:
    sent = standalone_body(SLOT_ID, kind="Slot")
    response = client.post("/checkout-sessions", json=sent)
    assert response.status_code == 201
    location = response.headers["location"]
    assert location.startswith("/checkout-sessions/")
    session_id = location.rsplit("/", 1)[1]
    assert len(session_id) == 32
    body = response.json()
    assert body["potentialAction"] == [
        {
            "type": "OrderAction",
            "name": "Checkout",
            "target": f"{checkout.base_url}/opendata/{session_id}",
        }
    ]
    # The request echoed, with the default broker added.
    expected = copy.deepcopy(sent)
    expected["imin:initialOrder"]["broker"] = {"type": "Organization", "name": "Sample Broker"}
    assert {k: v for k, v in body.items() if k != "potentialAction"} == expected


@pytest.mark.parametrize("path", ["/api/checkout-sessions/", "/api/checkout-sessions"])
@pytest.mark.parametrize("identifier", [42, "42", 4.5])
def test_authenticated_route_creates_a_session(
    checkout: SampleCheckout, client: httpx.Client, path: str, identifier: Any
) -> None:
    sent = authenticated_body(identifier=identifier)
    response = client.post(path, json=sent)
    assert response.status_code == 201
    session_id = response.headers["location"].removeprefix("/checkout-sessions/")
    assert session_id and "/" not in session_id
    body = response.json()
    (action,) = body.pop("potentialAction")
    assert action["target"] == f"{checkout.base_url}/checkout/{session_id}"
    assert body == sent  # the broker given is kept as is


def test_session_ids_are_unique(client: httpx.Client) -> None:
    locations = {
        client.post("/checkout-sessions", json=standalone_body()).headers["location"]
        for _ in range(5)
    }
    assert len(locations) == 5


def test_refused_opportunity_is_400_until_sold(
    checkout: SampleCheckout, client: httpx.Client
) -> None:
    checkout.refuse(SESSION_ID)
    for path, body in [
        ("/checkout-sessions", standalone_body()),
        ("/api/checkout-sessions/", authenticated_body()),
    ]:
        response = client.post(path, json=body)
        assert response.status_code == 400
        assert response.json() == {
            "type": "UnavailableOpportunityError",
            "description": "This opportunity is not available to book.",
        }
    # Another opportunity is unaffected.
    assert client.post("/checkout-sessions", json=standalone_body(SLOT_ID, "Slot")).is_success
    checkout.sell(SESSION_ID)
    assert client.post("/checkout-sessions", json=standalone_body()).status_code == 201


def test_refuse_given_at_construction() -> None:
    with SampleCheckout(api_key=None, refuse=[SLOT_ID]) as checkout:
        response = httpx.post(
            f"{checkout.base_url}/checkout-sessions",
            json=standalone_body(SLOT_ID, "Slot"),
            timeout=5,
        )
        assert response.status_code == 400
        assert response.json()["type"] == "UnavailableOpportunityError"


@pytest.mark.parametrize("headers", [{}, {"X-API-KEY": "wrong"}])
def test_missing_or_wrong_api_key_is_401(checkout: SampleCheckout, headers: dict[str, str]) -> None:
    for path, body in [
        ("/checkout-sessions", standalone_body()),
        ("/api/checkout-sessions/", authenticated_body()),
    ]:
        response = httpx.post(checkout.base_url + path, json=body, headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json()["type"] == "UnauthenticatedError"
        assert response.json()["description"]


def test_no_api_key_needed_when_none() -> None:
    with SampleCheckout(api_key=None) as checkout:
        url = f"{checkout.base_url}/checkout-sessions"
        assert httpx.post(url, json=standalone_body(), timeout=5).status_code == 201


def test_default_api_key() -> None:
    with SampleCheckout() as checkout:
        url = f"{checkout.base_url}/checkout-sessions"
        assert httpx.post(url, json=standalone_body(), timeout=5).status_code == 401
        headers = {"X-API-KEY": "sample-checkout-key"}
        response = httpx.post(url, json=standalone_body(), headers=headers, timeout=5)
        assert response.status_code == 201


def without_identifier() -> tuple[str, Json]:
    body = authenticated_body()
    del body["imin:initialOrder"]["orderedItem"][0]["orderedItem"]["identifier"]
    return "/api/checkout-sessions/", body


def with_empty_identifier() -> tuple[str, Json]:
    return "/api/checkout-sessions/", authenticated_body(identifier="")


def with_boolean_identifier() -> tuple[str, Json]:
    return "/api/checkout-sessions/", authenticated_body(identifier=True)


def with_wrong_context() -> tuple[str, Json]:
    body = standalone_body()
    body["@context"] = "https://openactive.io/"
    return "/checkout-sessions", body


def with_wrong_type() -> tuple[str, Json]:
    body = standalone_body()
    body["type"] = "CheckoutSession"
    return "/checkout-sessions", body


def with_wrong_opportunity_type() -> tuple[str, Json]:
    return "/checkout-sessions", standalone_body(kind="SessionSeries")


def with_two_items() -> tuple[str, Json]:
    body = standalone_body()
    items = body["imin:initialOrder"]["orderedItem"]
    items.append(items[0])
    return "/checkout-sessions", body


def without_broker_url() -> tuple[str, Json]:
    body = authenticated_body()
    del body["imin:initialOrder"]["broker"]["url"]
    return "/api/checkout-sessions/", body


def with_empty_broker_name() -> tuple[str, Json]:
    body = authenticated_body()
    body["imin:initialOrder"]["broker"]["name"] = ""
    return "/api/checkout-sessions/", body


def without_customer() -> tuple[str, Json]:
    body = authenticated_body()
    del body["imin:initialOrder"]["customer"]
    return "/api/checkout-sessions/", body


def standalone_on_authenticated_route() -> tuple[str, Json]:
    return "/api/checkout-sessions/", standalone_body()


def customer_on_standalone_route() -> tuple[str, Json]:
    return "/checkout-sessions", authenticated_body()


@pytest.mark.parametrize(
    "case",
    [
        without_identifier,
        with_empty_identifier,
        with_boolean_identifier,
        with_wrong_context,
        with_wrong_type,
        with_wrong_opportunity_type,
        with_two_items,
        without_broker_url,
        with_empty_broker_name,
        without_customer,
        standalone_on_authenticated_route,
        customer_on_standalone_route,
    ],
)
def test_malformed_body_is_422(client: httpx.Client, case: Any) -> None:
    path, body = case()
    response = client.post(path, json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["type"] == "InvalidRequestError"
    assert error["description"]


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'"text"'])
def test_not_a_json_object_is_422(client: httpx.Client, content: bytes) -> None:
    response = client.post(
        "/checkout-sessions", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["type"] == "InvalidRequestError"


def test_missing_identifier_description_says_what_is_wrong(client: httpx.Client) -> None:
    path, body = without_identifier()
    assert "identifier" in client.post(path, json=body).json()["description"]


def test_chunked_body_is_read(client: httpx.Client) -> None:
    chunks = iter([orjson.dumps(standalone_body())[:10], orjson.dumps(standalone_body())[10:]])
    response = client.post("/checkout-sessions", content=chunks)
    assert response.status_code == 201


def test_unknown_path_is_404_and_other_methods_405(client: httpx.Client) -> None:
    assert client.post("/nope", json=standalone_body()).status_code == 404
    assert client.post("/checkout-sessions/extra", json=standalone_body()).status_code == 404
    response = client.get("/checkout-sessions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert client.delete("/api/checkout-sessions/").status_code == 405
    assert client.put("/api/checkout-sessions", json=authenticated_body()).status_code == 405


def test_fail_next_twice_then_created(checkout: SampleCheckout, client: httpx.Client) -> None:
    checkout.fail_next(503, times=2, headers={"Retry-After": "1"})
    statuses = []
    for _ in range(3):
        response = client.post("/checkout-sessions", json=standalone_body())
        statuses.append(response.status_code)
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert response.json()["status"] == 503
    assert statuses == [503, 503, 201]


def test_fail_next_queues_in_order(checkout: SampleCheckout, client: httpx.Client) -> None:
    checkout.fail_next(429, headers={"Retry-After": "3"})
    checkout.fail_next(500)
    first = client.post("/checkout-sessions", json=standalone_body())
    second = client.post("/checkout-sessions", json=standalone_body())
    third = client.post("/checkout-sessions", json=standalone_body())
    assert (first.status_code, first.headers["retry-after"]) == (429, "3")
    assert second.status_code == 500
    assert "retry-after" not in second.headers
    assert third.status_code == 201


def test_fail_next_delay_times_the_client_out(checkout: SampleCheckout) -> None:
    checkout.fail_next(500, delay=1.0)
    url = f"{checkout.base_url}/checkout-sessions"
    headers = {"X-API-KEY": KEY}
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=standalone_body(), headers=headers, timeout=0.2)
    assert time.monotonic() - started < 0.9
    # The delayed failure was used up; the next request is answered at once.
    started = time.monotonic()
    assert httpx.post(url, json=standalone_body(), headers=headers, timeout=5).status_code == 201
    assert time.monotonic() - started < 0.9


def test_fail_next_delay_then_status(checkout: SampleCheckout, client: httpx.Client) -> None:
    checkout.fail_next(503, delay=0.3)
    started = time.monotonic()
    response = client.post("/checkout-sessions", json=standalone_body())
    assert response.status_code == 503
    assert time.monotonic() - started >= 0.3


def test_requests_are_recorded(checkout: SampleCheckout, client: httpx.Client) -> None:
    sent = authenticated_body()
    client.post("/api/checkout-sessions/", json=sent)
    client.post("/checkout-sessions", content=b"{nope")
    client.get("/elsewhere?x=1")
    assert len(checkout.requests) == 3
    first, second, third = checkout.requests
    assert (first.method, first.path, first.body) == ("POST", "/api/checkout-sessions/", sent)
    assert first.headers["x-api-key"] == KEY
    assert first.headers["content-type"] == "application/json"
    assert (second.method, second.body) == ("POST", None)
    assert (third.method, third.path, third.body) == ("GET", "/elsewhere", None)
    assert checkout.requests[-1] == third
    assert checkout.requests[:2] == [first, second]
    checkout.requests.clear()
    assert len(checkout.requests) == 0


def test_nothing_is_logged(
    checkout: SampleCheckout, client: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    client.post("/api/checkout-sessions/", json=authenticated_body())
    client.post("/checkout-sessions", content=b"{nope")
    captured = capfd.readouterr()
    assert "someone@example.com" not in captured.out + captured.err
    assert captured.err == ""


def test_stop_then_start_reuses_the_port() -> None:
    checkout = SampleCheckout(api_key=None)
    with checkout:
        port = checkout.port
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{port}/checkout-sessions", json={}, timeout=2)
    with checkout:
        assert checkout.port == port
        url = f"{checkout.base_url}/checkout-sessions"
        assert httpx.post(url, json=standalone_body(), timeout=5).status_code == 201


def test_command_line_prints_ready_answers_and_exits_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "harvester.sample.checkout",
        "--port",
        "0",
        "--api-key",
        KEY,
        "--refuse",
        SLOT_ID,
        "https://x.example/other",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("READY http://127.0.0.1:")
            base_url = line.split()[1]
            headers = {"X-API-KEY": KEY}
            url = f"{base_url}/checkout-sessions"
            created = httpx.post(url, json=standalone_body(), headers=headers, timeout=5)
            assert created.status_code == 201
            assert created.json()["potentialAction"][0]["target"].startswith(base_url)
            refused = httpx.post(
                url, json=standalone_body(SLOT_ID, "Slot"), headers=headers, timeout=5
            )
            assert refused.status_code == 400
            assert httpx.post(url, json=standalone_body(), timeout=5).status_code == 401
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert process.stderr is not None
            assert process.stderr.read() == ""
        finally:
            if process.poll() is None:
                process.kill()
