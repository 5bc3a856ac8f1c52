"""Every real publisher fixture, served as a feed and harvested into PostgreSQL by the pipeline.

The expectations are computed here from the files with the contract's rules (latest state
per (kind, id), an older `modified` never wins, tombstones delete, broken items are set
aside), independently of harvester.rpde.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from conftest import FIXTURES
from sqlalchemy import Engine, text

from harvester import feedstate
from harvester.config import Settings, Source
from harvester.fetch import Fetcher
from harvester.pipeline import Harvester

ORIGIN = "https://publisher.test"
SOURCE = "fixture"
FILES = sorted(path.name for path in FIXTURES.glob("*.json"))
ORIGIN_PART = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")

Json = Any
Key = tuple[Any, ...]


@dataclass(frozen=True)
class ServedPage:
    """One page the mock publisher serves: its URL and its JSON document."""

    url: str
    document: dict[str, Any]


# --- turning a fixture file into a feed --------------------------------------------------


def on_mock_origin(url: str) -> str:
    """The same path and query, byte for byte, on the mock publisher's origin."""
    if url.startswith("/"):
        return ORIGIN + url
    assert ORIGIN_PART.match(url), f"not an absolute URL: {url!r}"
    return ORIGIN_PART.sub(ORIGIN, url, count=1)


def is_capture_by_url(document: Json) -> bool:
    """The test suite's `{URL: [items]}` capture."""
    return isinstance(document, dict) and bool(document) and all(
        key.startswith(("http://", "https://")) and isinstance(value, list)
        for key, value in document.items()
    )  # fmt: skip


def raw_pages(document: Json) -> list[tuple[str, list[Any], dict[str, Any]]]:
    """(URL, items, other page keys) in the order they are served, whatever the file's shape."""
    if isinstance(document, dict) and "items" in document and "next" in document:
        # An RPDE page: served at the feed URL; its `next` kept, moved to the mock origin.
        extra = {k: v for k, v in document.items() if k not in ("items", "next")}
        first = (f"{ORIGIN}/feed", document["items"], extra)
        return [first, (on_mock_origin(document["next"]), [], {})]
    if isinstance(document, dict) and "pages" in document:
        return [(on_mock_origin(p["url"]), p["items"], {}) for p in document["pages"]]
    if is_capture_by_url(document):
        return [(on_mock_origin(url), items, {}) for url, items in document.items()]
    items = document if isinstance(document, list) else [document]
    return [(f"{ORIGIN}/feed", items, {})]


def serve(document: Json) -> list[ServedPage]:
    """Chain the pages by `next` and end with an RPDE last page (no items, next = itself)."""
    pages = raw_pages(document)
    if pages[-1][1]:
        last_url = pages[-1][0] + ("&" if "?" in pages[-1][0] else "?") + "harvester-test=end"
        pages.append((last_url, [], {}))
    served = []
    for index, (url, items, extra) in enumerate(pages):
        next_url = pages[index + 1][0] if index + 1 < len(pages) else url
        served.append(ServedPage(url, {**extra, "next": next_url, "items": items}))
    paths = [httpx.URL(page.url).raw_path for page in served]
    assert len(set(paths)) == len(paths), "two pages at one URL"
    return served


def mock_transport(pages: list[ServedPage], seen: list[str]) -> httpx.MockTransport:
    """Serve each page at its URL; anything else is a test failure."""
    bodies = {httpx.URL(p.url).raw_path: json.dumps(p.document).encode() for p in pages}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        assert request.url.host == "publisher.test"
        body = bodies.get(request.url.raw_path)
        if body is None:
            return httpx.Response(500, content=b"unexpected URL")
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    return httpx.MockTransport(handler)


# --- the expected outcome, from the contract's rules -------------------------------------


def usable_id(value: Any) -> str | None:
    """RPDE ids: strings or integers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return value if isinstance(value, str) and value else None


def kind_of(raw: dict[str, Any]) -> str | None:
    """The RPDE kind, or the data's type when the kind is missing."""
    kind, data = raw.get("kind"), raw.get("data")
    if isinstance(kind, str) and kind.strip():
        return kind
    if isinstance(data, dict):
        declared = data.get("@type", data.get("type"))
        return declared if isinstance(declared, str) and declared else None
    return None


def modified_of(value: Any) -> tuple[int | None, str | None]:
    """Integers and digit strings as integers, other strings as text."""
    if value is None:
        return None, None
    assert not isinstance(value, bool | float), f"unexpected modified {value!r}"
    if isinstance(value, int):
        return value, None
    if re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value.strip()), None
    return None, value


def is_older(new: tuple[int | None, str | None], old: tuple[int | None, str | None]) -> bool:
    """An update or tombstone loses to what is held only when its `modified` is older."""
    if new[0] is not None and old[0] is not None:
        return new[0] < old[0]
    if new[1] is not None and old[1] is not None:
        return new[1] < old[1]
    return False


def faults_of(raw: Any) -> set[str]:
    """What is wrong with an item's envelope (empty: well-formed)."""
    if not isinstance(raw, dict):
        return {"the item is not"}
    faults = set()
    if usable_id(raw.get("id")) is None:
        faults.add("`id`")
    if raw.get("state") not in ("updated", "deleted"):
        faults.add("`state`")
    if kind_of(raw) is None:
        faults.add("`kind`")
    if raw.get("state") == "updated" and not isinstance(raw.get("data"), dict):
        faults.add("`data`")
    return faults


@dataclass
class Expected:
    """What the database should hold after harvesting a feed."""

    held: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    rejected: dict[Key, set[str]] = field(default_factory=dict)


def expect(pages: list[ServedPage]) -> Expected:
    """Apply the feed's items in order, as the contract says the harvester must."""
    expected = Expected()
    for page in pages:
        for position, raw in enumerate(page.document["items"]):
            faults = faults_of(raw)
            if faults:
                rpde_id = usable_id(raw.get("id")) if isinstance(raw, dict) else None
                key = ("item", kind_of(raw), rpde_id) if rpde_id else ("at", page.url, position)
                expected.rejected[key] = faults
                continue
            apply_item(expected.held, raw)
    return expected


def apply_item(held: dict[tuple[str, str], dict[str, Any]], raw: dict[str, Any]) -> None:
    """An update replaces unless older; a tombstone removes unless older."""
    key = (kind_of(raw) or "", usable_id(raw["id"]) or "")
    modified = modified_of(raw.get("modified"))
    if key in held and is_older(modified, held[key]["modified"]):
        return
    if raw["state"] == "deleted":
        held.pop(key, None)
    else:
        held[key] = {"modified": modified, "data": raw["data"]}


# --- harvesting --------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the harvest did and what the database holds."""

    caught_up: bool
    requested: list[str]
    feed: Any
    items: dict[tuple[str, str], Any]
    rejected: list[Any]


def harvest(engine: Engine, pages: list[ServedPage]) -> Outcome:
    """Register the feed and harvest it through the real pipeline until its last page."""
    feed_url = pages[0].url
    with engine.begin() as conn:
        feedstate.sync_source(
            conn, Source(name=SOURCE, feeds=(feed_url,)), "https://checkout.test/"
        )
        (feed,) = feedstate.load_feeds(conn, [(SOURCE, feed_url)])
    requested: list[str] = []
    settings = Settings(retry_attempts=1)
    fetcher = Fetcher(settings, transport=mock_transport(pages, requested))
    harvester = Harvester(
        engine=engine, fetcher=fetcher, settings=settings,
        sources={SOURCE: Source(name=SOURCE, feeds=(feed_url,))},
    )  # fmt: skip
    try:
        progress = harvester.harvest(feed)
    finally:
        fetcher.close()
    return Outcome(progress.caught_up, requested, *read_database(engine, feed.id))


def read_database(
    engine: Engine, feed_id: int
) -> tuple[Any, dict[tuple[str, str], Any], list[Any]]:
    """The feed row, the held items by key, and the rejected items."""
    with engine.connect() as conn:
        feed = conn.execute(
            text("SELECT next_url, state, caught_up_at, pages FROM harvester.feeds WHERE id = :id"),
            {"id": feed_id},
        ).one()
        items = conn.execute(
            text("SELECT kind, rpde_id, modified, modified_text, data FROM harvester.items"
                 " WHERE source = :source"),
            {"source": SOURCE},
        ).all()  # fmt: skip
        rejected = conn.execute(
            text("SELECT kind, rpde_id, page_url, position, reason FROM harvester.rejected_items"
                 " WHERE feed_id = :id"),
            {"id": feed_id},
        ).all()  # fmt: skip
    return feed, {(row.kind, row.rpde_id): row for row in items}, rejected


def check(outcome: Outcome, pages: list[ServedPage], expected: Expected) -> None:
    """The harvest reached the last page and the database holds what the rules say."""
    assert outcome.caught_up
    assert outcome.requested == [page.url for page in pages]  # every page, in order, once
    assert outcome.feed.next_url == pages[-1].url
    assert outcome.feed.state == "caught_up" and outcome.feed.caught_up_at is not None
    assert outcome.feed.pages == len(pages)  # one committed position per page
    assert set(outcome.items) == set(expected.held)
    for key, want in expected.held.items():
        row = outcome.items[key]
        number, text_value = want["modified"]
        # Exact: numeric compared with the Python int, never through a float.
        assert row.modified == (Decimal(number) if number is not None else None), key
        assert row.modified_text == text_value, key
        assert row.data == want["data"], key
    rejected = {rejected_key(row): row.reason for row in outcome.rejected}
    assert set(rejected) == set(expected.rejected)
    for key, faults in expected.rejected.items():
        assert any(fault in rejected[key] for fault in faults), (key, rejected[key], faults)


def rejected_key(row: Any) -> Key:
    """Rejected items with an id are kept once per (kind, id); others once per place."""
    if row.rpde_id is not None:
        return ("item", row.kind, row.rpde_id)
    return ("at", row.page_url, row.position)


def load(name: str) -> Json:
    """A fixture file, with integers of any size kept exact."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


# --- the tests ---------------------------------------------------------------------------


def test_fixtures_are_found() -> None:
    # Guards the parametrization below against an empty or moved directory.
    assert len(FILES) >= 30


@pytest.mark.parametrize("name", FILES)
def test_fixture_is_harvested(engine: Engine, name: str) -> None:
    pages = serve(load(name))
    expected = expect(pages)
    outcome = harvest(engine, pages)
    check(outcome, pages, expected)


def is_capture(document: Json) -> bool:
    """The test suite's capture format, in either form."""
    return (isinstance(document, dict) and "pages" in document) or is_capture_by_url(document)


CAPTURES = [name for name in FILES if is_capture(load(name))]


def with_data_restored(document: Json, restore: Callable[[dict[str, Any]], None]) -> Json:
    """A copy of a capture with `restore` applied to every item."""
    restored = copy.deepcopy(document)
    pages = restored["pages"] if "pages" in restored else [{"items": v} for v in restored.values()]
    for page in pages:
        for raw in page["items"]:
            restore(raw)
    return restored


def wrap_hash(raw: dict[str, Any]) -> None:
    """Replace a capture's hash string with a data object holding it (the envelope is untouched)."""
    if raw.get("state") == "updated" and isinstance(raw.get("data"), str):
        raw["data"] = {"capturedDataHash": raw["data"]}


def test_captures_are_present() -> None:
    assert len(CAPTURES) >= 7


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_updates_are_rejected_for_their_hash_data(engine: Engine, name: str) -> None:
    document = load(name)
    pages = serve(document)
    outcome = harvest(engine, pages)
    updates = [raw for page in pages for raw in page.document["items"] if raw["state"] == "updated"]
    assert updates and outcome.items == {}
    assert len(outcome.rejected) == len({(raw["kind"], str(raw["id"])) for raw in updates})
    assert all("`data` is not a JSON object" in row.reason for row in outcome.rejected)


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_envelopes_with_data_restored(engine: Engine, name: str) -> None:
    # The real envelopes (ids, ordering, deletes, .NET ticks above 2^53) with a data object.
    pages = serve(with_data_restored(load(name), wrap_hash))
    expected = expect(pages)
    outcome = harvest(engine, pages)
    check(outcome, pages, expected)
    assert not outcome.rejected and outcome.items


def test_reference_implementation_ticks_and_deletes(engine: Engine) -> None:
    # 107 ids published, ordered by (ticks, id); 101 and 103-105 arrive only as tombstones.
    name = "openactive-test-suite__feed-snapshot_reference-implementation_ScheduledSession.json"
    pages = serve(with_data_restored(load(name), wrap_hash))
    outcome = harvest(engine, pages)
    ids = {rpde_id for _kind, rpde_id in outcome.items}
    assert len(ids) == 107
    assert not ids & {"101", "103", "104", "105"}
    biggest = max(int(row.modified) for row in outcome.items.values())
    assert biggest > 2**53
    assert any(row.modified == Decimal(638760825044541600) for row in outcome.items.values())
