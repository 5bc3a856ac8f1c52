"""From a bookable opportunity to imin's Checkout: the guest URL, or a checkout session
created on imin's Standalone or Authenticated Checkout (contract, "Checkout sessions").

The one module behind the three faces: `harvester checkout`, `harvester serve` and this
Python API. The opportunity must be in `bookable_now` when asked for; customer details go
into the request body and nowhere else (no log, no row, no error message).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, Engine, text

from harvester import bookability, sql
from harvester.config import Config, Source
from harvester.errors import CheckoutFailed, FeedError, NoSuchOpportunity, NotBookable
from harvester.fetch import Fetcher, retrying

logger = logging.getLogger(__name__)

CONTEXT = ["https://openactive.io/", "https://imin.co/"]
SESSION_PATHS = {"standalone": "/checkout-sessions", "authenticated": "/api/checkout-sessions/"}
CUSTOMER_MASK = "[customer]"


class CheckoutSession(NamedTuple):
    """Where to send the booker, and by which route it was obtained."""

    url: str
    route: str


class Opportunity(NamedTuple):
    """A bookable opportunity as `bookable_now` shows it."""

    source: str
    kind: str
    id: str | None
    identifier: Any  # the child's data.identifier as published (a string or a number)
    checkout_url: str | None
    start_date: datetime | None = None


class Checkout:
    """Creates checkout sessions for the configured sources over one HTTP client."""

    def __init__(self, engine: Engine, config: Config, fetcher: Fetcher | None = None) -> None:
        self.engine = engine
        self.sources = {source.name: source for source in config.sources}
        self.settings = config.settings
        self.fetcher = fetcher or Fetcher(config.settings)

    def close(self) -> None:
        """Close the HTTP client."""
        self.fetcher.close()

    def create(
        self, *, id: str | None = None, source: str | None = None,
        identifier: str | None = None, customer: Mapping[str, Any] | None = None,
    ) -> CheckoutSession:  # fmt: skip
        """The checkout URL of one opportunity, by its @id (within `source` if given) or by
        its identifier within `source`; NotBookable or CheckoutFailed say why not."""
        with self.engine.begin() as conn:
            opportunity = find_bookable(conn, id=id, source=source, identifier=identifier)
        config = self.sources.get(opportunity.source)
        if config is None:
            raise CheckoutFailed(f"source {opportunity.source!r} is not in the config")
        if config.checkout_route == "guest":
            return guest_session(opportunity)
        session = self.request_session(config, opportunity, customer)
        logger.debug(
            "checkout session for %s (%s route)", opportunity.id, config.checkout_route,
            extra={"event": "checkout_created", "source": opportunity.source},
        )  # fmt: skip
        return session

    def request_session(
        self, source: Source, opportunity: Opportunity, customer: Mapping[str, Any] | None
    ) -> CheckoutSession:
        """POST the checkout session; retried on 5xx, 429 and timeouts, within bounds."""
        url = session_url(source)
        try:
            body = orjson.dumps(session_body(source, opportunity, customer))
        except TypeError:  # integers beyond 64 bits, lone surrogates, nesting too deep
            raise CheckoutFailed("the customer details cannot be sent as JSON") from None
        status, answer = self.post_with_retries(url, source, body, customer)
        if status == 400:
            self.record_refusal(opportunity)
            raise NotBookable(f"refused by checkout: {describe_answer(answer, customer)}")
        if status not in (200, 201):
            detail = describe_answer(answer, customer)
            raise CheckoutFailed(f"{url}: HTTP {status}: {detail}")
        target = target_of(answer)
        if target is None:
            raise CheckoutFailed(f"{url}: HTTP {status} without a potentialAction target")
        return CheckoutSession(target, source.checkout_route)

    def post_with_retries(
        self, url: str, source: Source, body: bytes, customer: Mapping[str, Any] | None
    ) -> tuple[int, Any]:
        """The publisher's answer, passing failures retried; CheckoutFailed past the bounds."""
        policy = replace(self.settings, retry_attempts=self.settings.checkout_attempts,
                         retry_max_seconds=self.settings.checkout_retry_seconds)  # fmt: skip
        try:
            for attempt in retrying(policy, time.sleep, lambda: False):
                with attempt:
                    return self.fetcher.post_json(url, source.headers, body)
        except FeedError as exc:
            raise CheckoutFailed(mask_customer(str(exc), customer)) from exc
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def record_refusal(self, opportunity: Opportunity) -> None:
        """Out of bookable_now until the child or its parent is next updated."""
        if opportunity.id is not None:
            field, key = "id", opportunity.id
        else:  # stored as text (bookability.identifier_of), published as it came
            field, key = "identifier", bookability.identifier_of(opportunity.identifier)
        params = {"source": opportunity.source, "key": key, "start_date": opportunity.start_date}
        with self.engine.begin() as conn:
            conn.execute(text(sql.REFUSE_OPPORTUNITY[field]), params)


def create_checkout(
    engine: Engine, config: Config, *, id: str | None = None, source: str | None = None,
    identifier: str | None = None, customer: Mapping[str, Any] | None = None,
) -> CheckoutSession:  # fmt: skip
    """`Checkout.create` once, with a client of its own."""
    checkout = Checkout(engine, config)
    try:
        return checkout.create(id=id, source=source, identifier=identifier, customer=customer)
    finally:
        checkout.close()


def find_bookable(
    conn: Connection, *, id: str | None, source: str | None, identifier: str | None
) -> Opportunity:
    """The opportunity if it is in bookable_now; NotBookable with its status reason if not."""
    if id is None and (identifier is None or source is None):
        raise NotBookable("name the opportunity by its @id, or by source and identifier")
    field, key = ("id", id) if id is not None else ("identifier", identifier)
    rows = conn.execute(text(sql.FIND_BOOKABLE[field]), {"key": key, "source": source}).all()
    if len(rows) > 1:
        raise NotBookable(f"{key!r} names opportunities in several sources: give the source")
    if rows:
        return Opportunity(*rows[0])
    reason = conn.execute(text(sql.OPPORTUNITY_REASON[field]),
                          {"key": key, "source": source}).scalar()  # fmt: skip
    if reason is None:
        raise NoSuchOpportunity("no such opportunity is held")
    raise NotBookable(reason)


def guest_session(opportunity: Opportunity) -> CheckoutSession:
    """The guest route: the URL built from the identifier, as bookable_now shows it."""
    if opportunity.checkout_url is None:
        raise CheckoutFailed(
            f"{opportunity.id}: no checkout URL (no checkout_base_url, or no identifier)"
        )
    return CheckoutSession(opportunity.checkout_url, "guest")


def session_url(source: Source) -> str:
    """`{base}/checkout-sessions` or `{base}/api/checkout-sessions/` for the source's route."""
    base = (bookability.checkout_prefix(source.checkout_base_url) or "").rstrip("/")
    return base + SESSION_PATHS[source.checkout_route]


def session_body(
    source: Source, opportunity: Opportunity, customer: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The imin:CheckoutSession asked for, in the route's shape (contract, seeds 000/001)."""
    ordered: dict[str, Any] = {"type": opportunity.kind, "id": opportunity.id}
    order: dict[str, Any] = {
        "type": "OrderQuote", "orderedItem": [{"type": "OrderItem", "orderedItem": ordered}],
    }  # fmt: skip
    if source.checkout_route == "authenticated":
        ordered["identifier"] = opportunity.identifier  # as published: not encoded
        broker = source.broker
        if broker is not None:
            order["broker"] = {"type": "Organization", "name": broker.name, "url": broker.url}
        if customer is not None:
            order["customer"] = dict(customer)  # passed through unchanged
    return {"@context": CONTEXT, "type": "imin:CheckoutSession", "imin:initialOrder": order}


def target_of(answer: Any) -> str | None:
    """The first `potentialAction[]` entry's `target` (a URL, or an EntryPoint's)."""
    actions = answer.get("potentialAction") if isinstance(answer, dict) else None
    for action in actions if isinstance(actions, list) else []:
        target = action.get("target") if isinstance(action, dict) else None
        if isinstance(target, dict):
            target = target.get("url") or target.get("urlTemplate")
        if isinstance(target, str) and target:
            return target
    return None


def describe_answer(answer: Any, customer: Mapping[str, Any] | None) -> str:
    """One line from an error answer: its type and description, customer details masked."""
    if not isinstance(answer, dict):
        return "no JSON error in the answer"
    parts = [answer.get(key) for key in ("type", "@type", "description", "message")]
    text_ = ": ".join(dict.fromkeys(str(part) for part in parts if isinstance(part, str)))
    return mask_customer(" ".join(text_.split())[:300], customer) or "no error description"


def mask_customer(message: str, customer: Mapping[str, Any] | None) -> str:
    """The message with every text of the customer's details masked: a publisher may
    echo them, and they must never reach a log or an error."""
    for value in sorted(_texts_of(customer), key=len, reverse=True):
        message = message.replace(value, CUSTOMER_MASK)
    return message


def _texts_of(node: Any) -> set[str]:
    if isinstance(node, Mapping):
        return {text_ for value in node.values() for text_ in _texts_of(value)}
    if isinstance(node, list | tuple):
        return {text_ for value in node for text_ in _texts_of(value)}
    if isinstance(node, str | int | float) and not isinstance(node, bool):
        value = str(node)
        return {value} if len(value) >= 3 else set()
    return set()
