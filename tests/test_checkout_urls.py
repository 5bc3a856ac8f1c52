"""Checkout URLs: the contract's format, pure and through SQL (bookable_now.checkout_url)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote

import pytest
from sqlalchemy import Engine, text

from harvester import bookability, feedstate, pagewrite, records
from harvester.config import Source
from harvester.pagewrite import PageWrite
from harvester.rpde import Item

Json = dict[str, Any]

SESSIONS_FEED = "https://pub.example/scheduled-sessions"
SERIES_FEED = "https://pub.example/session-series"
SLOTS_FEED = "https://pub.example/slots"
FACILITIES_FEED = "https://pub.example/facility-uses"
SERIES_ID = "https://pub.example/session-series/1"
FACILITY_ID = "https://pub.example/facility-uses/1"
FLAG = "imin:isPotentiallyBookable"


def contract_url(host_or_base: str, item_type: str, identifier: str) -> str:
    """The contract's rule, written out independently of the harvester's code."""
    base = host_or_base if "://" in host_or_base else f"https://{host_or_base}"
    path = {"ScheduledSession": "scheduled-sessions", "Slot": "slots"}[item_type]
    encoded = quote(identifier, safe="!~*'()")
    return f"{base.rstrip('/')}/v1/{path}/{encoded}"


def harvester_url(base: str, item_type: str, identifier: Any) -> str | None:
    """What the harvester builds for a child with this `identifier` (as found in data)."""
    text_id = bookability.identifier_of(identifier)
    prefix = bookability.checkout_prefix(base)
    path = bookability.checkout_path(item_type, text_id)
    return None if prefix is None or path is None else prefix + path


IDENTIFIERS = [
    # A whole URL with a query: / : ? & = all encoded.
    ("https://upstream.example/api/sessions/1?x=1&y=2",
     "https%3A%2F%2Fupstream.example%2Fapi%2Fsessions%2F1%3Fx%3D1%26y%3D2"),
    # A fragment and a literal percent sign: # and % encoded (% becomes %25).
    ("https://upstream.example/s/1#/subEvent/1%2",
     "https%3A%2F%2Fupstream.example%2Fs%2F1%23%2FsubEvent%2F1%252"),
    # Spaces become %20, never +.
    ("court 1 at 10:00 am", "court%201%20at%2010%3A00%20am"),
    # Non-ASCII: UTF-8 bytes, percent-encoded.
    ("séance-é", "s%C3%A9ance-%C3%A9"),
    # An emoji (four UTF-8 bytes).
    ("yoga 🧘", "yoga%20%F0%9F%A7%98"),
    # encodeURIComponent leaves ! ~ * ' ( ) - _ . alone.
    ("a-b_c.d!e~f*g'h(i)", "a-b_c.d!e~f*g'h(i)"),
    # Everything else that is reserved: + , ; = @ $ [ ] are encoded.
    ("a+b,c;d=e@f$g[h]", "a%2Bb%2Cc%3Bd%3De%40f%24g%5Bh%5D"),
    # Plain digits as a string.
    ("12345", "12345"),
]  # fmt: skip

BASES = [
    # A bare host, as in the contract's example.
    "checkout.example.com",
    # An https URL without a trailing slash...
    "https://checkout.example.com",
    # ...and with one.
    "https://checkout.example.com/",
    # A base URL with a path.
    "https://book.example.org/partners/imin",
    # A base URL with a path and a trailing slash.
    "https://book.example.org/partners/imin/",
]


@pytest.mark.parametrize(("identifier", "encoded"), IDENTIFIERS)
def test_encoding_is_encode_uri_component(identifier: str, encoded: str) -> None:
    """enc() equals the contract's quote(s, safe="!~*'()") and the literal expected text."""
    assert bookability.encode_component(identifier) == encoded
    assert encoded == quote(identifier, safe="!~*'()")
    assert unquote(encoded) == identifier


def test_encoding_matches_quote_for_every_ascii_character_and_beyond() -> None:
    """The fast ASCII path (str.translate) and the UTF-8 path both equal quote(s, safe=...)."""
    every_ascii = "".join(chr(code) for code in range(128))
    samples = [every_ascii, every_ascii[::-1], "", "%", "%%41", every_ascii + "é", "\u2603/☃"]
    samples += [chr(code) * 3 for code in range(128)]
    for text_id in samples:
        assert bookability.encode_component(text_id) == quote(text_id, safe="!~*'()"), text_id


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("item_type", ["ScheduledSession", "Slot"])
@pytest.mark.parametrize("identifier", [case[0] for case in IDENTIFIERS])
def test_checkout_url_matches_the_contract(base: str, item_type: str, identifier: str) -> None:
    """Every base form x kind x awkward identifier gives the contract's URL."""
    assert harvester_url(base, item_type, identifier) == contract_url(base, item_type, identifier)


@pytest.mark.parametrize(
    ("base", "item_type", "identifier", "url"),
    [
        # Bare host, a session, a URL identifier.
        ("checkout.example.com", "ScheduledSession", "https://u.example/s?a=1",
         "https://checkout.example.com/v1/scheduled-sessions/https%3A%2F%2Fu.example%2Fs%3Fa%3D1"),
        # A slot goes under /v1/slots/.
        ("checkout.example.com", "Slot", "slot 1", "https://checkout.example.com/v1/slots/slot%201"),
        # Trailing slash: no double slash.
        ("https://checkout.example.com/", "Slot", "x", "https://checkout.example.com/v1/slots/x"),
        # A path is kept in front of v1.
        ("https://book.example.org/p", "ScheduledSession", "x",
         "https://book.example.org/p/v1/scheduled-sessions/x"),
        # Surrounding spaces in the configured base are dropped.
        ("  checkout.example.com  ", "Slot", "x", "https://checkout.example.com/v1/slots/x"),
        # A numeric identifier is written as its digits.
        ("checkout.example.com", "Slot", 8900001, "https://checkout.example.com/v1/slots/8900001"),
        # Even beyond 2^53.
        ("checkout.example.com", "ScheduledSession", 12345678901234567890,
         "https://checkout.example.com/v1/scheduled-sessions/12345678901234567890"),
    ],
)  # fmt: skip
def test_literal_urls(base: str, item_type: str, identifier: Any, url: str) -> None:
    """A few URLs written out in full."""
    assert harvester_url(base, item_type, identifier) == url


@pytest.mark.parametrize(
    ("item_type", "identifier"),
    [
        # No identifier: no URL.
        ("ScheduledSession", None),
        # A parent type has no checkout path.
        ("SessionSeries", "x"),
    ],
)
def test_no_checkout_path(item_type: str, identifier: str | None) -> None:
    """Only children with an identifier get a checkout path."""
    assert bookability.checkout_path(item_type, identifier) is None


def test_no_base_no_prefix() -> None:
    """A source without checkout_base_url has no prefix, hence NULL URLs."""
    assert bookability.checkout_prefix(None) is None


# --- through SQL -------------------------------------------------------------------------------

_modified = itertools.count(1)


def write(engine: Engine, source: str, base: str | None, pages: dict[str, list[Item]]) -> None:
    """Register `source` with `base`, then write one page per feed through the store."""
    with engine.begin() as conn:
        feedstate.sync_source(conn, Source(name=source, feeds=tuple(pages), checkout_base_url=base),
                          bookability.checkout_prefix(base))  # fmt: skip
        feeds = feedstate.load_feeds(conn, [(source, url) for url in pages])
    for feed in feeds:
        page = PageWrite(records.to_rows(pages[feed.url])[0], [], feed.next_url,
                         f"{feed.url}?after=1", False)  # fmt: skip
        with engine.begin() as conn:
            pagewrite.write_page(conn, feed, page)


def updated(kind: str, rpde_id: str, data: Json) -> Item:
    """An RPDE `updated` item."""
    return Item("updated", kind, rpde_id, next(_modified), None, data)


def parent(item_type: str, own_id: str) -> Json:
    """A parent bookable a week ahead."""
    offer = {"publicAdult": {FLAG: True, "validFromBeforeStartDate": "P1W"}}
    return {"@type": item_type, "@id": own_id, "imin:aggregateOffer": offer}


def child(item_type: str, number: int, identifier: Any, start: str) -> Json:
    """A bookable child of parent 1 with this identifier."""
    link = {"ScheduledSession": ("superEvent", SERIES_ID), "Slot": ("facilityUse", FACILITY_ID)}
    field, ref = link[item_type]
    return {
        "@type": item_type, "@id": f"https://pub.example/{item_type}/{number}",
        "identifier": identifier, field: ref, "startDate": start, FLAG: True,
    }  # fmt: skip


SQL_IDENTIFIERS = [case[0] for case in IDENTIFIERS] + [310000001]


@pytest.mark.parametrize("base", [BASES[0], BASES[2], BASES[3]])
def test_checkout_urls_through_sql(engine: Engine, base: str) -> None:
    """bookable_now.checkout_url equals the contract's URL for sessions and slots."""
    start = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    sessions = [updated("ScheduledSession", f"s{n}", child("ScheduledSession", n, ident, start))
                for n, ident in enumerate(SQL_IDENTIFIERS)]  # fmt: skip
    slots = [updated("FacilityUse/Slot", f"{n}", child("Slot", n, ident, start))
             for n, ident in enumerate(SQL_IDENTIFIERS)]  # fmt: skip
    write(engine, "src", base, {
        SERIES_FEED: [updated("SessionSeries", "p1", parent("SessionSeries", SERIES_ID))],
        FACILITIES_FEED: [updated("FacilityUse", "f1", parent("FacilityUse", FACILITY_ID))],
        SESSIONS_FEED: sessions,
        SLOTS_FEED: slots,
    })  # fmt: skip
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, identifier, checkout_url FROM bookable_now")).all()
    got = {(row.kind, row.identifier): row.checkout_url for row in rows}
    expected = {
        (kind, str(ident)): contract_url(base, kind, str(ident))
        for kind in ("ScheduledSession", "Slot")
        for ident in SQL_IDENTIFIERS
    }
    assert got == expected


def test_no_base_gives_null_urls_in_sql(engine: Engine) -> None:
    """A source without checkout_base_url: bookable, with a NULL checkout_url."""
    start = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    write(engine, "bare", None, {
        SERIES_FEED: [updated("SessionSeries", "p1", parent("SessionSeries", SERIES_ID))],
        SESSIONS_FEED: [
            updated("ScheduledSession", "s1", child("ScheduledSession", 1, "a", start))
        ],
    })  # fmt: skip
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT source, identifier, checkout_url FROM bookable_now")).all()
    assert [tuple(row) for row in rows] == [("bare", "a", None)]
