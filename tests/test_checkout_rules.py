"""The pure parts of checkout sessions, bookable sellers and attribution: config, the
request bodies, the seller of a parent, the target of an answer, datasets read."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from harvester import attribution, bookability, checkout, records, rpde
from harvester.config import Broker, parse_config
from harvester.errors import CheckoutFailed, ConfigError

BASE = """
[[sources]]
name = "imin"
checkout_base_url = "checkout.example.com"
feeds = ["https://firehose.example/scheduled-sessions"]
"""


def test_routes_sellers_and_attribution_are_read_from_the_config() -> None:
    text = BASE + (
        'checkout_route = "authenticated"\n'
        'bookable_sellers_feed = "https://firehose.example/bookable-sellers/acme"\n'
        'attribution_feed = "https://firehose.example/datasets"\n'
        '[sources.broker]\nname = "Acme Sports"\nurl = "https://acme.example"\n'
    )
    source = parse_config(text, {}).sources[0]
    assert source.checkout_route == "authenticated"
    assert source.broker == Broker("Acme Sports", "https://acme.example")
    assert source.attribution_feed == "https://firehose.example/datasets"
    assert source.feed_purposes() == (
        ("https://firehose.example/scheduled-sessions", "opportunities"),
        ("https://firehose.example/bookable-sellers/acme", "sellers"),
    )


def test_the_default_route_is_guest_and_needs_nothing_more() -> None:
    source = parse_config(BASE, {}).sources[0]
    assert (source.checkout_route, source.broker, source.bookable_sellers_feed) == (
        "guest", None, None,
    )  # fmt: skip
    assert source.feed_purposes() == (
        ("https://firehose.example/scheduled-sessions", "opportunities"),
    )


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('checkout_route = "phone"\n', "checkout_route"),
        ('checkout_route = "authenticated"\n', "broker"),  # no broker to send
        ('checkout_route = "standalone"\n[sources.broker]\nname = ""\n', "broker.name"),
        ('checkout_route = "standalone"\n[sources.broker]\nname = "A"\nurl = "x"\n', "broker.url"),
        ('[sources.broker]\nname = "A"\nemail = "a@b"\n', "broker.email"),
        ('bookable_sellers_feed = "ftp://x/sellers"\n', "bookable_sellers_feed"),
        ('bookable_sellers_feed = "https://firehose.example/scheduled-sessions"\n',
         "bookable_sellers_feed"),
        ('attribution_feed = 7\n', "attribution_feed"),
    ],
)  # fmt: skip
def test_bad_checkout_settings_are_errors_naming_the_key(extra: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"sources\[0\]\.{key}"):
        parse_config(BASE + extra, {})


def test_a_session_route_needs_a_checkout_base() -> None:
    text = BASE.replace('checkout_base_url = "checkout.example.com"\n', "")
    with pytest.raises(ConfigError, match=r"checkout_route: standalone needs checkout_base_url"):
        parse_config(text + 'checkout_route = "standalone"\n', {})


@pytest.mark.parametrize(
    ("parent_type", "parent", "seller"),
    [
        ("SessionSeries",
         {"superEvent": {"organizer": {"@id": "https://s/1"}}, "organizer": {"id": "https://o"}},
         "https://s/1"),
        ("SessionSeries", {"superEvent": "https://series/9", "organizer": {"id": "https://o/2"}},
         "https://o/2"),
        ("SessionSeries", {"organizer": "https://o/3"}, "https://o/3"),
        ("SessionSeries", {"provider": {"@id": "https://p/4"}}, None),
        ("FacilityUse", {"provider": {"@id": "https://p/4"}, "organizer": "https://o/5"},
         "https://p/4"),
        ("IndividualFacilityUse", {"provider": "https://p/6"}, "https://p/6"),
        ("FacilityUse", {"organizer": "https://o/7"}, None),
        ("SessionSeries", {"organizer": {"name": "no id"}}, None),
        ("SessionSeries", {}, None),
    ],
)  # fmt: skip
def test_the_seller_of_a_parent(parent_type: str, parent: dict[str, Any], seller: str) -> None:
    assert bookability.seller_of(parent_type, parent) == seller


def test_a_child_is_joined_to_the_seller_of_the_parent_that_applies() -> None:
    """A published parent's seller beats the embedded parent's (rule 2 decides both)."""
    embedded = (None, None, None, None, None, "https://embedded-seller")
    published = ("SessionSeries", "s1", None, None, None, None, None, "https://published")
    start = bookability.parse_datetime("2030-01-01T10:00:00Z", "startDate")[0]
    assert records.join(start, None, "ref", "SessionSeries", embedded, published)[-1] == (
        "https://published"
    )
    assert records.join(start, None, "ref", "SessionSeries", embedded, None)[-1] == (
        "https://embedded-seller"
    )
    assert records.join(start, None, "ref", None, embedded, None)[-1] is None


def test_a_sellers_feed_item_is_a_seller_by_its_id() -> None:
    page = rpde.parse_page("https://f/sellers", orjson.dumps({"items": [
        {"state": "updated", "kind": "Organization", "id": "1", "modified": 1,
         "data": {"@type": "Organization", "@id": "https://sellers/1"}},
        {"state": "deleted", "kind": "Organization", "id": "2", "modified": 2},
    ], "next": "https://f/sellers?afterId=2"}))  # fmt: skip
    rows, _ = records.to_rows(page.items, "sellers")
    assert [(row.role, row.item_id) for row in rows] == [("seller", "https://sellers/1"),
                                                         (None, None)]  # fmt: skip


OPPORTUNITY = checkout.Opportunity(
    "imin", "ScheduledSession", "https://pub/sessions/1", 12345, "https://c/v1/x"
)


def test_the_standalone_body_names_the_opportunity_only() -> None:
    source = parse_config(BASE + 'checkout_route = "standalone"\n', {}).sources[0]
    body = checkout.session_body(source, OPPORTUNITY, {"email": "a@b.example"})
    assert body == {
        "@context": ["https://openactive.io/", "https://imin.co/"],
        "type": "imin:CheckoutSession",
        "imin:initialOrder": {"type": "OrderQuote", "orderedItem": [{
            "type": "OrderItem",
            "orderedItem": {"type": "ScheduledSession", "id": "https://pub/sessions/1"},
        }]},
    }  # fmt: skip
    assert checkout.session_url(source) == "https://checkout.example.com/checkout-sessions"


def test_the_authenticated_body_adds_identifier_broker_and_customer() -> None:
    text = BASE.replace("checkout.example.com", "http://127.0.0.1:9/base/") + (
        'checkout_route = "authenticated"\n[sources.broker]\nname = "Acme"\nurl = "https://a.example"\n'
    )
    source = parse_config(text, {}).sources[0]
    customer = {"type": "Person", "email": "booker@example.com", "givenName": "Ada"}
    order = checkout.session_body(source, OPPORTUNITY, customer)["imin:initialOrder"]
    assert order["orderedItem"][0]["orderedItem"]["identifier"] == 12345  # as published
    assert order["broker"] == {"type": "Organization", "name": "Acme", "url": "https://a.example"}
    assert order["customer"] == customer
    assert checkout.session_url(source) == "http://127.0.0.1:9/base/api/checkout-sessions/"


@pytest.mark.parametrize(
    ("answer", "target"),
    [
        ({"potentialAction": [{"type": "OrderAction", "target": "https://c/1"}]}, "https://c/1"),
        ({"potentialAction": [{"name": "x"}, {"target": {"urlTemplate": "https://c/2"}}]},
         "https://c/2"),
        ({"potentialAction": []}, None),
        ({"potentialAction": "https://c/3"}, None),
        (["not", "an", "object"], None),
    ],
)  # fmt: skip
def test_the_target_is_the_first_potential_action_with_one(answer: Any, target: str) -> None:
    assert checkout.target_of(answer) == target


def test_customer_details_echoed_in_an_answer_are_masked() -> None:
    customer = {"email": "ada@example.com", "telephone": "0123456789", "age": 7}
    answer = {"type": "InvalidCustomer", "description": "ada@example.com / 0123456789 refused"}
    line = checkout.describe_answer(answer, customer)
    assert "ada@example.com" not in line and "0123456789" not in line
    assert line == "InvalidCustomer: [customer] / [customer] refused"


DATASET = {
    "@type": "Dataset", "@id": "https://data.everyoneactive.com/OpenActive/",
    "identifier": "everyone-active", "name": "Everyone Active Sessions",
    "publisher": {"name": "Everyone Active", "legalName": "SLM Ltd"},
    "license": "https://creativecommons.org/licenses/by/4.0/",
}  # fmt: skip


@pytest.mark.parametrize(
    "document",
    [
        [DATASET],
        {"@type": "DataCatalog", "dataset": [DATASET]},
        {"@graph": [DATASET]},
        {"itemListElement": [{"@type": "ListItem", "item": DATASET}]},
        DATASET,
    ],
)
def test_datasets_are_read_from_a_json_ld_list(document: Any) -> None:
    found = attribution.read_feed("https://f/datasets", lambda url: orjson.dumps(document))
    assert found == [attribution.Dataset(
        "everyone-active", "Everyone Active Sessions", "https://data.everyoneactive.com/OpenActive/",
        "https://creativecommons.org/licenses/by/4.0/", "Everyone Active",
    )]  # fmt: skip


def test_datasets_are_read_from_an_rpde_feed_to_its_end() -> None:
    other = {**DATASET, "identifier": "better", "@id": "https://better/", "publisher": {}}
    pages = {
        "https://f/ds": {"items": [
            {"state": "updated", "kind": "Dataset", "id": "a", "modified": 1, "data": DATASET},
            {"state": "updated", "kind": "Dataset", "id": "b", "modified": 2, "data": other},
        ], "next": "https://f/ds?after=2"},
        "https://f/ds?after=2": {"items": [
            {"state": "deleted", "kind": "Dataset", "id": "a", "modified": 3},
        ], "next": "https://f/ds?after=3"},
        "https://f/ds?after=3": {"items": [], "next": "https://f/ds?after=3"},
    }  # fmt: skip
    found = attribution.read_feed("https://f/ds", lambda url: orjson.dumps(pages[url]))
    assert [(d.identifier, d.publisher_name, d.url) for d in found] == [
        ("better", None, "https://better/")
    ]


def test_customer_details_that_are_not_json_fail_before_any_request() -> None:
    """An integer beyond 64 bits cannot be sent: a clear failure, nothing sent."""
    text = BASE + 'checkout_route = "authenticated"\n[sources.broker]\nname = "Acme"\n'
    source = parse_config(text, {}).sources[0]
    sent: list[Any] = []

    class Recorder:
        def post_json(self, *args: Any) -> tuple[int, Any]:
            sent.append(args)
            return 201, {}

    agent = checkout.Checkout.__new__(checkout.Checkout)
    agent.fetcher = Recorder()  # type: ignore[assignment]
    agent.settings = parse_config(BASE, {}).settings
    with pytest.raises(CheckoutFailed, match="cannot be sent as JSON"):
        agent.request_session(source, OPPORTUNITY, {"id": 2**70})
    assert sent == []
