"""`harvester serve`: checkout sessions over HTTP (contract, "Checkout sessions").

One route creates a checkout session (`POST /checkout-sessions`), one says whether the
database answers (`GET /healthz`), and `/openapi.json` describes both. Every request needs
`Authorization: Bearer <HARVESTER_API_TOKEN>`. Customer details go to the publisher and
nowhere else: request bodies are never logged, and no error answer quotes one.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    Tag,
    field_validator,
)
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from typing_extensions import TypeAliasType

from harvester import __version__, bookability, redact
from harvester.checkout import Checkout
from harvester.errors import CheckoutFailed, ConfigError, NotBookable, database_fault

logger = logging.getLogger(__name__)

GRACE_SECONDS = 30  # on SIGTERM, requests in flight (a checkout being retried) may finish
MAX_REASON_CHARS = 500
# Held ids are at most 1,000 bytes (rpde.py), so longer keys name nothing; text holds no NUL.
Key = Annotated[str, StringConstraints(min_length=1, max_length=4000, pattern=r"^[^\x00]*$")]
# Customer details go out as JSON unchanged; the encoder holds numbers to 64-bit integers.
InRange = Field(ge=-(2**63), le=2**63)  # exact as floats, so the document says it exactly
Scalar = (
    StrictStr | StrictBool | Annotated[StrictInt, InRange] | Annotated[StrictFloat, InRange] | None
)
CustomerValue = TypeAliasType(
    "CustomerValue", "Scalar | list[CustomerValue] | dict[str, CustomerValue]"
)
Customer = dict[str, CustomerValue]
NAMING = 'name the opportunity by "id", or by "source" and "identifier"'
CUSTOMER_SHAPE = "expected a JSON object, any numbers in it within ±2^63"


class Named(BaseModel):
    """What both forms of the request carry: the customer (authenticated route only)."""

    model_config = ConfigDict(extra="forbid")

    customer: Customer | None = None

    @field_validator("customer")
    @classmethod
    def encodable(cls, customer: Customer | None) -> Customer | None:
        """The customer must go out as JSON as it came in."""
        return check_encodable(customer)


class ById(Named):
    """A checkout session for the opportunity with this @id (within `source`, if given)."""

    id: Key
    source: Key | None = None


class ByIdentifier(Named):
    """A checkout session for the opportunity with this identifier in `source`."""

    source: Key
    identifier: Key | StrictInt


def naming(body: Any) -> str:
    """Which form a body takes: by @id when it has one, else by identifier."""
    return "by-id" if isinstance(body, dict) and "id" in body else "by-identifier"


SessionRequest = Annotated[
    Annotated[ById, Tag("by-id")] | Annotated[ByIdentifier, Tag("by-identifier")],
    Discriminator(naming),
]
TAGS = frozenset({"by-id", "by-identifier", "constrained-str", "int"})


class SessionCreated(BaseModel):
    """Where to send the booker, and by which route the URL was obtained."""

    url: str
    route: Literal["guest", "standalone", "authenticated"]


class Reason(BaseModel):
    """Why the request was not served, in one line."""

    reason: str


class Healthy(BaseModel):
    """The database answers."""

    status: Literal["ok"]


class Unhealthy(BaseModel):
    """The database does not answer."""

    status: Literal["unavailable"]
    reason: str


def check_encodable(customer: Customer | None) -> Customer | None:
    """ValueError, quoting nothing, if the customer cannot be sent as JSON."""
    if customer is not None:
        try:
            orjson.dumps(customer)
        except orjson.JSONEncodeError:
            raise ValueError("not encodable as JSON (nested too deeply?)") from None
    return customer


def reason_response(
    status: int, reason: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """`{"reason": ...}` with this status."""
    return JSONResponse({"reason": reason[:MAX_REASON_CHARS]}, status, headers=headers)


def describe_invalid(exc: RequestValidationError) -> str:
    """The fields at fault and what is wrong with them, never the values sent (nor, for
    the customer, anything below it: its keys are the customer's too)."""
    faults: dict[str, None] = {}
    missing = False
    for error in exc.errors():
        names = [str(part)[:40] for part in error.get("loc", ()) if part not in TAGS]
        names = names[1:] if names[:1] == ["body"] else names
        if names[:1] == ["customer"]:
            wrong = error.get("msg") if error.get("type") == "value_error" else CUSTOMER_SHAPE
            faults[f"customer: {wrong}"] = None
            continue
        faults[f"{'.'.join(names) or 'body'}: {error.get('msg', 'invalid')}"] = None
        missing = missing or error.get("type") == "missing"
    reason = "invalid request: " + "; ".join(faults)
    return f"{reason}; {NAMING}" if missing else reason


class BearerAuth:
    """401 for any HTTP request without the API token, before anything else reads it."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass authorised requests on; answer the others."""
        if scope["type"] == "http" and not self.authorised(scope):
            reason = "a valid Authorization: Bearer token is required"
            response = reason_response(401, reason, {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def authorised(self, scope: Scope) -> bool:
        """Whether the Authorization header carries the token (compared in constant time)."""
        values = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(
            credentials.strip(), self.expected
        )


def make_app(checkout: Checkout, token: str, engine: Engine) -> FastAPI:
    """The API over `checkout`, guarded by `token`, its health read from `engine`."""
    token = check_token(token)
    app = FastAPI(
        title="harvester", version=__version__, docs_url=None, redoc_url=None,
        description="Checkout sessions for opportunities that are bookable now.",
    )  # fmt: skip
    add_routes(app, checkout, engine)
    add_error_handlers(app)
    document_bearer(app)
    app.add_middleware(BearerAuth, token=token)
    return app


def check_token(token: str) -> str:
    """The token without surrounding whitespace; ConfigError if there is none."""
    token = (token or "").strip()
    if not token:
        raise ConfigError("HARVESTER_API_TOKEN is not set: the API will not serve without it")
    return token


def add_routes(app: FastAPI, checkout: Checkout, engine: Engine) -> None:
    """POST /checkout-sessions and GET /healthz (sync: FastAPI runs them in threads)."""
    unauthorised = {401: {"model": Reason, "description": "No valid bearer token"}}

    @app.post(
        "/checkout-sessions", status_code=201, summary="Create a checkout session",
        responses={
            400: {"model": Reason, "description": "The body cannot be read (not UTF-8?)"},
            **unauthorised,
            409: {"model": Reason, "description": "Not bookable now, or refused by checkout"},
            422: {"model": Reason, "description": f"Invalid body: {NAMING}"},
            502: {"model": Reason, "description": "The publisher's checkout failed"},
            503: {"model": Reason, "description": "The database is not available"},
        },
    )  # fmt: skip
    def create_session(body: SessionRequest) -> SessionCreated:
        """A checkout URL for one opportunity that is bookable now."""
        if isinstance(body, ById):
            keys: dict[str, Any] = {"id": body.id, "source": body.source}
        else:
            identifier = bookability.identifier_of(body.identifier)
            keys = {"source": body.source, "identifier": identifier}
        session = checkout.create(**keys, customer=body.customer)
        return SessionCreated.model_validate(session._asdict())

    @app.get(
        "/healthz", summary="Whether the database answers", response_model=Healthy,
        responses={**unauthorised, 503: {"model": Unhealthy, "description": "No database"}},
    )  # fmt: skip
    def healthz() -> Healthy | JSONResponse:
        """200 when the database answers `SELECT 1`, else 503 with a reason."""
        problem = database_problem(engine)
        if problem is None:
            return Healthy(status="ok")
        return JSONResponse({"status": "unavailable", "reason": problem}, 503)


def database_problem(engine: Engine) -> str | None:
    """None when the database answers `SELECT 1`; else why not, in words safe to show."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("health check: the database does not answer: %s",
                       type(exc).__name__, extra={"event": "health_failed"})  # fmt: skip
        return "the database does not answer"
    return None


def add_error_handlers(app: FastAPI) -> None:
    """Every error answer is `{"reason": ...}`; none quotes the request."""

    def not_bookable(_request: Request, exc: Exception) -> JSONResponse:
        return reason_response(409, getattr(exc, "reason", str(exc)))

    def checkout_failed(_request: Request, exc: Exception) -> JSONResponse:
        return reason_response(502, getattr(exc, "reason", str(exc)))

    def invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return reason_response(422, describe_invalid(exc))

    def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return reason_response(exc.status_code, str(exc.detail), exc.headers)

    def database_error(_request: Request, exc: Exception) -> JSONResponse:
        logger.error("database error while serving: %s", type(exc).__name__,
                     extra={"event": "api_database_error"})  # fmt: skip
        if database_fault(exc) == "passing":
            return reason_response(503, "the database is not available; try again")
        return reason_response(500, "internal error")

    app.add_exception_handler(NotBookable, not_bookable)
    app.add_exception_handler(CheckoutFailed, checkout_failed)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(SQLAlchemyError, database_error)


def document_bearer(app: FastAPI) -> None:
    """Say in the OpenAPI document that every operation needs the bearer token."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {})
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


class Server(uvicorn.Server):
    """uvicorn's server, but SIGTERM and SIGINT end `run()` instead of being raised again."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Stop on SIGTERM/SIGINT (a second SIGINT forces it); restore the handlers after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stops = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(
    checkout: Checkout, token: str, engine: Engine, host: str = "127.0.0.1", port: int = 8080,
    *, log_level: str = "warning",
) -> None:  # fmt: skip
    """Serve the API in the foreground until SIGTERM or SIGINT; ConfigError without a token."""
    app = make_app(checkout, token, engine)
    redact.register_secrets([check_token(token)])
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level.lower(), log_config=None,
        server_header=False, timeout_graceful_shutdown=GRACE_SECONDS,
    )  # fmt: skip
    try:
        Server(config).run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind (it logged why)
        raise ConfigError(f"cannot serve on {host}:{port} (see the log above)") from exc
