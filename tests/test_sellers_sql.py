"""Rule 7 (bookable sellers), checkout refusals and attribution, through the real store
and views on PostgreSQL: written as the harvester writes pages, read as apps read them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, text

from harvester import attribution, feedstate, pagewrite, records, rpde
from harvester.checkout import Checkout, CheckoutSession
from harvester.config import Config, Source
from harvester.feedstate import FeedRow
from harvester.pagewrite import PageWrite
from harvester.rpde import Item
from harvester.sample.checkout import SampleCheckout

HOST = "https://pub.example"
SERIES_FEED, SESSIONS_FEED = f"{HOST}/session-series", f"{HOST}/scheduled-sessions"
SELLERS_FEED = f"{HOST}/bookable-sellers/acme"
SELLER = f"{HOST}/sellers/1"
LICENSE = "https://creativecommons.org/licenses/by/4.0/"
_modified = itertools.count(1)


@dataclass
class Source7:
    """One source with a sellers feed (or not), written page by page."""

    engine: Engine
    name: str = "src"
    sellers: bool = True
    feeds: dict[str, FeedRow] = field(default_factory=dict)

    def __post_init__(self) -> None:
        source = Source(
            name=self.name, feeds=(SERIES_FEED, SESSIONS_FEED),
            checkout_base_url="checkout.example.com",
            bookable_sellers_feed=SELLERS_FEED if self.sellers else None,
        )  # fmt: skip
        with self.engine.begin() as conn:
            feedstate.sync_source(conn, source, "https://checkout.example.com/")
            pairs = [(self.name, url) for url, _ in source.feed_purposes()]
            self.feeds = {row.url: row for row in feedstate.load_feeds(conn, pairs)}

    def write(self, url: str, items: list[Item], license: str | None = None) -> None:
        feed = self.feeds[url]
        rows, _ = records.to_rows(items, feed.purpose)
        next_url = f"{url}?page={next(_modified)}"
        page = PageWrite(rows, [], feed.next_url, next_url, False, license)
        with self.engine.begin() as conn:
            self.feeds[url] = pagewrite.write_page(conn, feed, page).feed
        assert self.feeds[url].next_url == next_url


def updated(kind: str, rpde_id: str, data: dict[str, Any]) -> Item:
    return Item("updated", kind, rpde_id, next(_modified), None, data)


def deleted(kind: str, rpde_id: str) -> Item:
    return Item("deleted", kind, rpde_id, next(_modified), None, None)


def series(seller: str | None = SELLER, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "@type": "SessionSeries", "@id": f"{HOST}/series/1",
        "imin:aggregateOffer": {"publicAdult": {"imin:isPotentiallyBookable": True}}, **extra,
    }  # fmt: skip
    if seller is not None:
        data["organizer"] = {"@type": "Organization", "@id": seller}
    return data


def session(number: int = 1, **extra: Any) -> dict[str, Any]:
    start = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    return {
        "@type": "ScheduledSession", "@id": f"{HOST}/sessions/{number}",
        "identifier": number, "superEvent": f"{HOST}/series/1", "startDate": start,
        "imin:isPotentiallyBookable": True, **extra,
    }  # fmt: skip


def seller_item(seller: str = SELLER, rpde_id: str = "1") -> Item:
    return updated("Organization", rpde_id, {"@type": "Organization", "@id": seller})


def bookable(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM bookable_now")).all()
    return {row.id: row for row in rows}


def reason(engine: Engine, number: int = 1) -> tuple[bool, str | None]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT bookable, reason FROM opportunity_status WHERE id = :id"),
            {"id": f"{HOST}/sessions/{number}"},
        ).one()
    return row.bookable, row.reason


def test_rule_7_an_opportunity_is_bookable_while_its_seller_is_held(engine: Engine) -> None:
    source = Source7(engine)
    source.write(SERIES_FEED, [updated("SessionSeries", "s1", series())])
    source.write(SESSIONS_FEED, [updated("ScheduledSession", "c1", session())])
    assert bookable(engine) == {}
    assert reason(engine) == (False, f"seller not bookable: {SELLER}")
    source.write(SELLERS_FEED, [seller_item()])
    assert set(bookable(engine)) == {f"{HOST}/sessions/1"}
    assert reason(engine) == (True, None)
    # The seller's tombstone takes its opportunities out at once, with the reason.
    source.write(SELLERS_FEED, [deleted("Organization", "1")])
    assert bookable(engine) == {}
    assert reason(engine) == (False, f"seller not bookable: {SELLER}")


def test_rule_7_reads_the_sellers_of_the_published_parent_and_of_an_embedded_one(
    engine: Engine,
) -> None:
    source = Source7(engine)
    source.write(SELLERS_FEED, [seller_item()])
    embedded = {**series(), "@id": f"{HOST}/series/9", "name": "embedded"}
    source.write(
        SESSIONS_FEED, [updated("ScheduledSession", "c2", session(2, superEvent=embedded))]
    )
    assert set(bookable(engine)) == {f"{HOST}/sessions/2"}
    # A published parent whose seller is another replaces the embedded one's.
    other = f"{HOST}/sellers/2"
    source.write(SERIES_FEED, [updated("SessionSeries", "s9", {**embedded, "organizer": other})])
    assert reason(engine, 2) == (False, f"seller not bookable: {other}")
    source.write(
        SERIES_FEED, [updated("SessionSeries", "s9", series(None, **{"@id": embedded["@id"]}))]
    )
    assert reason(engine, 2) == (False, "parent names no seller")


def test_without_a_sellers_feed_rule_7_does_not_apply(engine: Engine) -> None:
    source = Source7(engine, sellers=False)
    source.write(SERIES_FEED, [updated("SessionSeries", "s1", series(seller=None))])
    source.write(SESSIONS_FEED, [updated("ScheduledSession", "c1", session())])
    assert set(bookable(engine)) == {f"{HOST}/sessions/1"}


def refuse(engine: Engine, number: int = 1) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE harvester.items SET refused_at = now() WHERE item_id = :id"),
                     {"id": f"{HOST}/sessions/{number}"})  # fmt: skip


def test_a_refused_opportunity_returns_when_it_or_its_parent_is_updated(engine: Engine) -> None:
    source = Source7(engine, sellers=False)
    source.write(SERIES_FEED, [updated("SessionSeries", "s1", series())])
    source.write(SESSIONS_FEED, [updated("ScheduledSession", "c1", session())])
    refuse(engine)
    far = datetime.now(UTC) + timedelta(days=1)
    with engine.connect() as conn:
        later = conn.execute(text("SELECT count(*) FROM bookable_at(:at)"), {"at": far}).scalar()
    assert bookable(engine) == {} and later == 0  # for any instant
    assert reason(engine) == (False, "refused by checkout")
    source.write(SESSIONS_FEED, [updated("ScheduledSession", "c1", session(name="again"))])
    assert set(bookable(engine)) == {f"{HOST}/sessions/1"}
    refuse(engine)
    assert bookable(engine) == {}
    source.write(SERIES_FEED, [updated("SessionSeries", "s1", series(name="changed"))])
    assert set(bookable(engine)) == {f"{HOST}/sessions/1"}


def test_attribution_comes_from_the_dataset_else_the_page_license(engine: Engine) -> None:
    source = Source7(engine, sellers=False)
    source.write(SERIES_FEED, [updated("SessionSeries", "s1", series(**{
        "imin:dataSource": {"@type": "Dataset", "identifier": "everyone-active"}}))])  # fmt: skip
    source.write(SESSIONS_FEED, [
        updated("ScheduledSession", "c1", session(1)),
        updated("ScheduledSession", "c2", session(2, **{
            "imin:dataSource": {"identifier": "better"}})),
    ], license=LICENSE)  # fmt: skip
    rows = bookable(engine)
    assert [(r.attribution_name, r.attribution_url, r.license) for r in rows.values()] == [
        (None, None, LICENSE),
        (None, None, LICENSE),
    ]
    with engine.begin() as conn:
        attribution.store_datasets(conn, "src", [
            attribution.Dataset("everyone-active", "EA data", "https://data.ea/", "https://lic/ea",
                                "Everyone Active"),
            attribution.Dataset("better", "Better", "https://better/", None, None),
        ])  # fmt: skip
    rows = bookable(engine)
    first, second = rows[f"{HOST}/sessions/1"], rows[f"{HOST}/sessions/2"]
    # The child's own dataSource wins over its parent's; the page's licence fills a gap.
    assert (first.attribution_name, first.attribution_url, first.license) == (
        "Everyone Active",
        "https://data.ea/",
        "https://lic/ea",
    )
    assert (second.attribution_name, second.attribution_url, second.license) == (
        "Better",
        "https://better/",
        LICENSE,
    )


def test_a_page_license_is_read_and_kept_on_the_feed(engine: Engine) -> None:
    page = rpde.parse_page(SESSIONS_FEED, b'{"items": [], "next": "x", "license": "  "}')
    assert page.license is None
    body = orjson.dumps({"items": [], "next": SESSIONS_FEED, "license": LICENSE})
    page = rpde.parse_page(SESSIONS_FEED, body)
    assert page.license == LICENSE
    source = Source7(engine, sellers=False)
    source.write(SESSIONS_FEED, [], license=LICENSE)
    source.write(SESSIONS_FEED, [], license=None)  # a page without one keeps the last
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT license FROM harvester.feeds WHERE url = :u"),
                            {"u": SESSIONS_FEED}).scalar()  # fmt: skip
    assert kept == LICENSE


def test_a_refusal_outlasts_a_backfill_resending_what_is_held(engine: Engine) -> None:
    """Re-sent versions (a backfill) are not updates: the refusal stands until one comes."""
    source = Source7(engine, sellers=False)
    parent = updated("SessionSeries", "s1", series())
    child = updated("ScheduledSession", "c1", session())
    source.write(SERIES_FEED, [parent])
    source.write(SESSIONS_FEED, [child])
    refuse(engine)
    source.write(SERIES_FEED, [parent])
    source.write(SESSIONS_FEED, [child])
    assert reason(engine) == (False, "refused by checkout")
    source.write(SESSIONS_FEED, [child._replace(modified_number=next(_modified))])
    assert reason(engine) == (True, None)


def test_each_source_checks_out_by_its_own_route(engine: Engine) -> None:
    """One config, two sources: the opportunity's source decides the route."""
    with SampleCheckout() as server:
        sources = {}
        for name in ("a", "b"):
            sources[name] = Source7(engine, name=name, sellers=False)
            session_data = session(**{"@id": f"{HOST}/{name}/sessions/1"})
            sources[name].write(SERIES_FEED, [updated("SessionSeries", "s1", series())])
            sources[name].write(SESSIONS_FEED, [updated("ScheduledSession", "c1", session_data)])
        config = Config(sources=(
            Source(name="a", feeds=(SERIES_FEED,), checkout_base_url=server.base_url,
                   headers={"X-API-KEY": "sample-checkout-key"}, checkout_route="standalone"),
            Source(name="b", feeds=(SERIES_FEED,), checkout_base_url="checkout.b.example"),
        ))  # fmt: skip
        checkout = Checkout(engine, config)
        try:
            standalone = checkout.create(id=f"{HOST}/a/sessions/1")
            guest = checkout.create(id=f"{HOST}/b/sessions/1")
        finally:
            checkout.close()
    assert standalone.route == "standalone" and "/opendata/" in standalone.url
    assert [request.path for request in server.requests] == ["/checkout-sessions"]
    # The guest URL is bookable_now's, from the checkout base the source was registered with.
    assert guest == CheckoutSession("https://checkout.example.com/v1/scheduled-sessions/1", "guest")
