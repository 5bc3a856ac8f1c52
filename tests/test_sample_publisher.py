"""The bundled sample publisher serves correct RPDE over real HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from harvester import bookability
from harvester.sample import FEED_NAMES, Fault, SamplePublisher
from harvester.sample.__main__ import parse_args
from harvester.sample.dataset import Sizes, split_sizes
from harvester.sample.shapes import FLAG, FLAG_UNDERSCORE, SPECIAL_ID_SUFFIX

NOW = datetime(2025, 6, 1, 12, 7, 30, tzinfo=UTC)
ITEMS = 1_000
PAGE_SIZE = 37  # small and odd: page ends fall inside groups of equal ``modified``
TIMESTAMP_FEEDS = ("session-series", "scheduled-sessions", "facility-uses")
ROOT = Path(__file__).resolve().parent.parent

Page = dict[str, Any]
PARENT_REF = re.compile(r"/(session-series|facility-uses)/(\d+)(?:/individual-facility-uses/\d+)?$")
CHILD_FEEDS = {  # child feed: (its type, its parent feed, the parent type)
    "scheduled-sessions": ("ScheduledSession", "session-series", "SessionSeries"),
    "slots": ("Slot", "facility-uses", "FacilityUse"),
}


@pytest.fixture
def publisher() -> Iterator[SamplePublisher]:
    """A started publisher of 1,000 items in pages of 37."""
    with SamplePublisher(items=ITEMS, now=NOW, page_size=PAGE_SIZE) as started:
        yield started


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """An HTTP client with a short timeout."""
    with httpx.Client(timeout=5.0) as http:
        yield http


def fetch(client: httpx.Client, url: str) -> tuple[httpx.Response, Page]:
    """GET ``url`` and parse the page with orjson (integers stay exact)."""
    response = client.get(url)
    return response, orjson.loads(response.content)


def walk(client: httpx.Client, url: str) -> tuple[list[Page], str]:
    """Follow ``next`` until the RPDE last page; the items and the last page's URL."""
    items: list[Page] = []
    for _ in range(10_000):
        response, page = fetch(client, url)
        assert response.status_code == 200
        if not page["items"] and page["next"] == url:
            return items, url
        items += page["items"]
        url = page["next"]
    raise AssertionError("the feed never reached its last page")


def sort_key(feed: str, item: Page) -> tuple[int, str]:
    """The RPDE ordering key of an item in ``feed``."""
    return (item["modified"], "" if feed == "slots" else str(item["id"]))


def test_full_walk_covers_every_item_once(publisher: SamplePublisher, client: httpx.Client) -> None:
    counts = {}
    for feed, url in publisher.feed_urls.items():
        items, _ = walk(client, url)
        ids = [str(item["id"]) for item in items]
        assert len(ids) == len(set(ids)), feed
        assert items == list(publisher.items(feed))
        counts[feed] = len(items)
    assert sum(counts.values()) == ITEMS
    assert counts["scheduled-sessions"] > counts["session-series"] > 0
    assert counts["slots"] > counts["facility-uses"] > 0


def test_each_feed_is_ordered_by_its_rpde_ordering(
    publisher: SamplePublisher, client: httpx.Client
) -> None:
    for feed, url in publisher.feed_urls.items():
        keys = [sort_key(feed, item) for item in walk(client, url)[0]]
        assert keys == sorted(keys), feed
        assert len(set(keys)) == len(keys), feed
    sessions = [item["modified"] for item in publisher.items("scheduled-sessions")]
    assert len(set(sessions)) < len(sessions)  # ties exist, so afterId is exercised


def test_next_urls_follow_both_orderings(publisher: SamplePublisher, client: httpx.Client) -> None:
    _, page = fetch(client, publisher.feed_url("scheduled-sessions"))
    last = page["items"][-1]
    assert page["next"] == (
        f"{publisher.feed_url('scheduled-sessions')}"
        f"?afterTimestamp={last['modified']}&afterId={quote(last['id'], safe='')}"
    )
    _, page = fetch(client, publisher.feed_url("slots"))
    assert isinstance(page["items"][0]["id"], int)
    assert page["next"] == (
        f"{publisher.feed_url('slots')}?afterChangeNumber={page['items'][-1]['modified']}"
    )


def test_ids_needing_encoding_round_trip_through_after_id(
    publisher: SamplePublisher, client: httpx.Client
) -> None:
    items = list(publisher.items("scheduled-sessions"))
    position = next(n for n, item in enumerate(items) if item["id"].endswith(SPECIAL_ID_SUFFIX))
    special = items[position]
    url = (
        f"{publisher.feed_url('scheduled-sessions')}"
        f"?afterTimestamp={special['modified']}&afterId={quote(special['id'], safe='')}"
    )
    assert "%23" in url and "%20" in url and "%26" in url and "%C3%A9" in url
    _, page = fetch(client, url)
    assert page["items"] == items[position + 1 : position + 1 + PAGE_SIZE]


def test_big_modified_values_survive_exactly(
    publisher: SamplePublisher, client: httpx.Client
) -> None:
    response, page = fetch(client, publisher.feed_url("scheduled-sessions"))
    feed = publisher.dataset.scheduled_sessions
    for index, item in enumerate(page["items"]):
        assert item["modified"] > 2**53
        assert item["modified"] == feed.modified_of(index)
        assert str(item["modified"]).encode() in response.content
        # the neighbour of a value above 2^53 would collapse onto it through a float
        assert float(item["modified"]) == float(item["modified"] + 1)


def test_last_page_echoes_the_requested_url(
    publisher: SamplePublisher, client: httpx.Client
) -> None:
    _, last_url = walk(client, publisher.feed_url("slots"))
    response, page = fetch(client, last_url)
    assert page == {"next": last_url, "items": [], "license": page["license"]}
    assert response.headers["cache-control"] == "public, max-age=8"
    assert response.headers["content-type"] == "application/json"
    odd = f"{publisher.feed_url('slots')}?afterChangeNumber=99999999&x=a%20b&y=%2F"
    assert fetch(client, odd)[1]["next"] == odd
    local = odd.replace("127.0.0.1", "localhost")
    assert fetch(client, local)[1]["next"] == local


def test_pages_with_items_are_cacheable_for_an_hour(
    publisher: SamplePublisher, client: httpx.Client
) -> None:
    response, page = fetch(client, publisher.feed_url("facility-uses"))
    assert response.headers["cache-control"] == "public, max-age=3600"
    assert page["license"] == "https://creativecommons.org/licenses/by/4.0/"
    assert set(page) == {"next", "items", "license"}


def test_empty_feed_first_page_is_its_last_page(client: httpx.Client) -> None:
    with SamplePublisher(items=0, now=NOW) as empty:
        url = empty.feed_url("session-series")
        page = fetch(client, url)[1]
        assert (page["next"], page["items"]) == (url, [])


def test_update_moves_the_item_to_the_end(publisher: SamplePublisher, client: httpx.Client) -> None:
    before, last_url = walk(client, publisher.feed_url("scheduled-sessions"))
    target = next(item for item in before[:10] if item["state"] == "updated")
    data = {**target["data"], "remainingAttendeeCapacity": 0, FLAG: False}
    publisher.upsert("scheduled-sessions", target["id"], data)
    changed, new_last = walk(client, last_url)
    assert [item["id"] for item in changed] == [target["id"]]
    assert changed[0]["data"] == data
    assert changed[0]["modified"] > max(item["modified"] for item in before)
    assert new_last != last_url
    after, _ = walk(client, publisher.feed_url("scheduled-sessions"))
    assert len(after) == len(before)
    assert after[-1] == changed[0]
    assert publisher.get("scheduled-sessions", target["id"]) == data


def test_delete_publishes_a_tombstone(publisher: SamplePublisher, client: httpx.Client) -> None:
    _, last_url = walk(client, publisher.feed_url("slots"))
    target = next(item for item in publisher.items("slots") if item["state"] == "updated")
    publisher.delete("slots", str(target["id"]))  # text ids find integer ids too
    changed, _ = walk(client, last_url)
    assert changed == [
        {
            "state": "deleted",
            "kind": target["kind"],
            "id": target["id"],
            "modified": changed[0]["modified"],
        }
    ]
    assert changed[0]["modified"] > target["modified"]
    assert publisher.get("slots", target["id"]) is None
    assert (target["kind"], str(target["id"])) not in publisher.held("slots")
    with pytest.raises(KeyError):
        publisher.delete("slots", "no-such-slot")


def test_upsert_of_a_new_item_and_re_creation(publisher: SamplePublisher) -> None:
    publisher.upsert("session-series", "ss-new", {"@type": "SessionSeries", "name": "New"})
    assert publisher.get("session-series", "ss-new") == {"@type": "SessionSeries", "name": "New"}
    publisher.delete("session-series", "ss-new")
    publisher.upsert("session-series", "ss-new", {"name": "Again"})
    items = list(publisher.items("session-series"))
    assert [item["id"] for item in items].count("ss-new") == 1
    assert items[-1]["data"] == {"name": "Again"}
    assert items[-1]["kind"] == "SessionSeries"


def test_stored_data_cannot_be_changed_behind_the_feed(publisher: SamplePublisher) -> None:
    data = {"name": "original"}
    publisher.upsert("facility-uses", "fu-x", data)
    data["name"] = "mutated by caller"
    fetched = publisher.get("facility-uses", "fu-x")
    assert fetched == {"name": "original"}
    fetched["name"] = "mutated again"
    assert publisher.get("facility-uses", "fu-x") == {"name": "original"}


def test_held_matches_a_full_walk(publisher: SamplePublisher, client: httpx.Client) -> None:
    publisher.delete("session-series", "ss-000000001")
    for feed, url in publisher.feed_urls.items():
        held: dict[tuple[str, str], Any] = {}
        for item in walk(client, url)[0]:
            key = (item["kind"], str(item["id"]))
            if item["state"] == "updated":
                held[key] = item["data"]
            else:
                held.pop(key, None)
        assert held == publisher.held(feed), feed
    assert ("SessionSeries", "ss-000000001") not in publisher.held("session-series")


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=503, headers={"Retry-After": "1"}),
        Fault(body=b'{"next": "http://127.0.0.1/fe'),
        Fault(
            status=502,
            body=b"<html><body>Bad gateway</body></html>",
            headers={"Content-Type": "text/html"},
        ),
        Fault(next_url="https://evil.example/feeds/slots?afterChangeNumber=1"),
    ],
    ids=["503", "truncated", "html", "foreign-next"],
)
def test_a_fault_is_served_once_then_service_resumes(
    publisher: SamplePublisher, client: httpx.Client, fault: Fault
) -> None:
    url = publisher.feed_url("slots")
    normal = client.get(url)
    publisher.inject("slots", fault)
    faulty = client.get(url)
    assert faulty.status_code == fault.status
    if fault.body is not None:
        assert faulty.content == fault.body
    if fault.next_url is not None:
        assert orjson.loads(faulty.content)["next"] == fault.next_url
    for name, value in fault.headers.items():
        assert faulty.headers[name] == value
    again = client.get(url)
    assert (again.status_code, again.content) == (200, normal.content)


def test_faults_apply_per_feed_in_order_and_times(
    publisher: SamplePublisher, client: httpx.Client
) -> None:
    url = publisher.feed_url("session-series")
    publisher.inject("session-series", Fault(status=500, times=2))
    publisher.inject("session-series", Fault(status=429))
    assert client.get(publisher.feed_url("slots")).status_code == 200
    statuses = [client.get(url).status_code for _ in range(4)]
    assert statuses == [500, 500, 429, 200]


def test_a_delay_fault_holds_the_answer(publisher: SamplePublisher, client: httpx.Client) -> None:
    url = publisher.feed_url("facility-uses")
    publisher.inject("facility-uses", Fault(delay=0.3))
    started = time.monotonic()
    assert client.get(url).status_code == 200
    assert time.monotonic() - started >= 0.3
    publisher.inject("facility-uses", Fault(delay=2.0))
    with pytest.raises(httpx.ReadTimeout):
        client.get(url, timeout=0.2)
    assert client.get(url).status_code == 200


def test_unknown_paths_are_404(publisher: SamplePublisher, client: httpx.Client) -> None:
    for path in ("/feeds/nope", "/feeds/slots/extra", "/", "/feeds"):
        assert client.get(publisher.base_url + path).status_code == 404
    assert client.get(publisher.feed_url("slots") + "?afterChangeNumber=abc").status_code == 400


def test_requests_are_recorded_with_their_query(
    publisher: SamplePublisher, client: httpx.Client
) -> None:
    started = time.monotonic()
    client.get(publisher.feed_url("slots") + "?afterChangeNumber=5")
    client.get(publisher.base_url + "/feeds/nope")
    paths = [path for _, path in publisher.requests]
    assert paths == ["/feeds/slots?afterChangeNumber=5", "/feeds/nope"]
    assert all(started <= moment <= time.monotonic() for moment, _ in publisher.requests)


def test_restart_keeps_the_url_and_the_state(client: httpx.Client) -> None:
    publisher = SamplePublisher(items=200, now=NOW).start()
    try:
        url = publisher.feed_url("slots")
        publisher.delete("slots", 10_000_000)
        publisher.stop()
        with pytest.raises(httpx.ConnectError):
            client.get(url)
        publisher.start()
        assert publisher.feed_url("slots") == url
        assert (publisher.get("slots", 10_000_000), client.get(url).status_code) == (None, 200)
    finally:
        publisher.stop()


def test_generation_is_deterministic_and_seeded() -> None:
    first = SamplePublisher(items=300, now=NOW, seed=7)
    second = SamplePublisher(items=300, now=NOW, seed=7)
    other = SamplePublisher(items=300, now=NOW, seed=8)
    for feed in ("scheduled-sessions", "slots"):
        assert list(first.items(feed)) == list(second.items(feed))
        assert list(first.items(feed)) != list(other.items(feed))


def test_the_dataset_holds_every_shape_the_bookability_rules_meet() -> None:
    publisher = SamplePublisher(items=2_000, now=NOW)
    series = list(publisher.items("session-series"))
    sessions = [item["data"] for item in publisher.items("scheduled-sessions") if "data" in item]
    slots = list(publisher.items("slots"))
    facilities = [item["data"] for item in publisher.items("facility-uses") if "data" in item]
    offers = [i["data"]["imin:aggregateOffer"] for i in series if "data" in i]
    adults = [offer["publicAdult"] for offer in offers if "publicAdult" in offer]
    assert any("publicAdult" not in offer for offer in offers)  # children only
    assert any(adult.get(FLAG) is False for adult in adults)
    assert any(adult.get(FLAG_UNDERSCORE) is True for adult in adults)
    assert any(adult.get(FLAG_UNDERSCORE) is False for adult in adults)
    windows = {adult.get("validFromBeforeStartDate") for adult in adults}
    assert windows == {"P1W", "PT36H", "P1DT12H", "P1M", "P7D", None}
    assert any(adult.get("validThroughBeforeStartDate") == "PT2H" for adult in adults)
    assert all(item["state"] in ("updated", "deleted") for item in series + slots)
    for items in (series, slots):
        assert any(item["state"] == "deleted" for item in items)
    held_series = {item["data"]["@id"] for item in series if "data" in item}
    parents = [session["superEvent"] for session in sessions]
    assert any(isinstance(p, str) and p not in held_series for p in parents)  # orphans
    assert any(isinstance(p, dict) and set(p) == {"@type", "@id"} for p in parents)
    assert any(isinstance(p, dict) and "imin:aggregateOffer" in p for p in parents)  # embedded
    statuses = {session.get("eventStatus") for session in sessions}
    assert {
        "https://schema.org/EventCancelled",
        "https://schema.org/EventPostponed",
        "http://schema.org/EventCancelled",
        "EventPostponed",
        None,
    } <= statuses
    identifiers = [session["identifier"] for session in sessions]
    assert any(isinstance(identifier, int) for identifier in identifiers)
    for awkward in ("?", "&", "#", "%", " ", "é"):
        assert any(awkward in str(identifier) for identifier in identifiers), awkward
    assert any(session["startDate"].endswith("+01:00") for session in sessions)
    assert any(session["startDate"].endswith("Z") for session in sessions)
    assert any(session.get(FLAG_UNDERSCORE) is True for session in sessions)
    assert any(session.get(FLAG) is False for session in sessions)
    assert {item["kind"] for item in slots} == {"FacilityUse/Slot", "IndividualFacilityUse/Slot"}
    assert any("type" in data and "@type" not in data for data in facilities)
    assert any("individualFacilityUse" in data for data in facilities)


def test_a_million_item_feed_serves_a_page_from_the_middle(client: httpx.Client) -> None:
    with SamplePublisher(items=1_000_000, now=NOW) as big:
        feed = big.dataset.scheduled_sessions
        middle = feed.count // 2
        anchor = feed.item_of(middle)
        url = (
            f"{big.feed_url('scheduled-sessions')}"
            f"?afterTimestamp={anchor['modified']}&afterId={quote(anchor['id'], safe='')}"
        )
        _, page = fetch(client, url)
        assert page["items"] == [feed.item_of(i) for i in range(middle + 1, middle + 501)]
        _, slots_page = fetch(client, f"{big.feed_url('slots')}?afterChangeNumber=600001")
        assert slots_page["items"][0]["modified"] == 600_002
        assert len(slots_page["items"]) == 500


def test_to_config_toml_lists_the_four_feeds(publisher: SamplePublisher) -> None:
    config = tomllib.loads(publisher.to_config_toml(source_name="demo"))
    (source,) = config["sources"]
    assert source["name"] == "demo"
    assert source["checkout_base_url"] == "checkout.sample.example"
    assert source["feeds"] == list(publisher.feed_urls.values())


def test_command_line_prints_ready_and_exits_cleanly_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "harvester.sample", "--items", "1000", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:")
        base_url = line.split()[1]
        assert httpx.get(f"{base_url}/feeds/slots", timeout=5).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("feed", "pick"),
    [
        ("session-series", 3),  # a base item of a timestamp-ordered feed
        ("slots", 5),  # an integer id in a change-number feed
        ("scheduled-sessions", -1),  # an item that changed since (lives in the overlay)
    ],
)
def test_forget_drops_an_item_with_no_tombstone(
    publisher: SamplePublisher, client: httpx.Client, feed: str, pick: int
) -> None:
    if pick == -1:
        first = next(i for i in publisher.items(feed) if i["state"] == "updated")
        publisher.upsert(feed, first["id"], {**first["data"], "name": "changed"})
    _, last_url = walk(client, publisher.feed_url(feed))
    updated = [item for item in publisher.items(feed) if item["state"] == "updated"]
    target = updated[pick]
    publisher.forget(feed, str(target["id"]))
    key = (target["kind"], str(target["id"]))
    assert key not in publisher.held(feed)
    assert publisher.get(feed, target["id"]) is None
    assert walk(client, last_url)[0] == []  # nothing new: no tombstone is published
    walked, _ = walk(client, publisher.feed_url(feed))
    assert target["id"] not in [item["id"] for item in walked]
    deleted = sum(1 for item in publisher.items(feed) if item["state"] == "deleted")
    assert len(walked) == len(updated) - 1 + deleted  # only the target is gone
    with pytest.raises(KeyError):
        publisher.forget(feed, str(target["id"]))
    publisher.upsert(feed, target["id"], {"name": "back"})  # re-publishing brings it back
    assert publisher.held(feed)[key] == {"name": "back"}


# --- the Firehose mix -----------------------------------------------------------------------


def test_the_balanced_split_is_unchanged_and_the_default() -> None:
    assert split_sizes(1_000) == Sizes(series=30, sessions=450, facility_uses=20, slots=500)
    assert split_sizes(1_000_003, "balanced") == split_sizes(1_000_003)
    assert split_sizes(3) == split_sizes(3, "firehose") == Sizes(0, 3, 0, 0)


@pytest.mark.parametrize("total", [100, 101, 999, 2_000, 252_200, 1_000_000])
def test_the_firehose_split_is_about_4_80_1_15_and_fills_every_feed(total: int) -> None:
    sizes = split_sizes(total, "firehose")
    counts = (sizes.series, sessions := sizes.sessions, sizes.facility_uses, sizes.slots)
    assert sum(counts) == total
    assert min(counts) >= 1
    assert sessions == max(counts)
    for count, share in zip(counts, (4, 80, 1, 15), strict=True):
        assert abs(count / total - share / 100) < 0.015, (counts, total)


def test_a_firehose_publisher_serves_its_split() -> None:
    publisher = SamplePublisher(items=1_000, now=NOW, mix="firehose")
    counts = [len(list(publisher.items(feed))) for feed in FEED_NAMES]
    assert counts == [40, 800, 10, 150]
    with pytest.raises(ValueError, match="unknown mix"):
        SamplePublisher(items=1_000, mix="lopsided")


def test_the_command_line_takes_a_mix() -> None:
    assert parse_args(["--mix", "firehose"]).mix == "firehose"
    assert parse_args([]).mix == "balanced"


def parent_refs(publisher: SamplePublisher, child_feed: str) -> list[str]:
    """The parent @id each live child of ``child_feed`` names (embedded parents left out)."""
    key = "superEvent" if child_feed == "scheduled-sessions" else "facilityUse"
    refs = [item["data"][key] for item in publisher.items(child_feed) if "data" in item]
    return [ref if isinstance(ref, str) else ref["@id"] for ref in refs
            if isinstance(ref, str) or "imin:aggregateOffer" not in ref]  # fmt: skip


def parent_index(ref: str) -> tuple[str, int]:
    """(parent feed, index) of a generated parent @id (a court names its FacilityUse)."""
    found = PARENT_REF.search(ref)
    assert found is not None, ref
    return found.group(1), int(found.group(2))


@pytest.mark.parametrize("child_feed", list(CHILD_FEEDS))
def test_every_firehose_child_finds_its_parent_but_the_planned_orphans(child_feed: str) -> None:
    publisher = SamplePublisher(items=10_000, now=NOW, mix="firehose")
    parent_feed = CHILD_FEEDS[child_feed][1]
    parents = publisher.dataset.feeds[parent_feed]
    published = {str(item["id"]) for item in publisher.items(parent_feed)}
    indexes = []
    for ref in parent_refs(publisher, child_feed):
        feed, index = parent_index(ref)
        assert feed == parent_feed, ref
        indexes.append(index)
    orphans = [index for index in indexes if index >= parents.count]  # planned: past the end
    assert 0 < len(orphans) <= 0.02 * len(indexes)
    assert all(str(parents.id_of(i)) in published for i in indexes if i < parents.count)
    assert len(set(indexes) - set(orphans)) > 0.9 * parents.count  # spread over the parents


def bookable_share(publisher: SamplePublisher, child_feed: str) -> float:
    """The share of ``child_feed``'s live children bookable at NOW (the contract's rules)."""
    child_type, parent_feed, parent_type = CHILD_FEEDS[child_feed]
    offers: dict[str | None, bookability.Offer] = {}
    for item in publisher.items(parent_feed):
        if "data" in item:
            parent = bookability.read_parent(parent_type, item["data"])
            offers |= dict.fromkeys(parent.refs, parent.offer)
    bookable = total = 0
    for item in publisher.items(child_feed):
        if "data" in item:
            child = bookability.read_child(child_type, item["data"])
            offer = child.embedded_offer or offers.get(child.parent_ref)
            bookable += bookability.is_bookable_at(child, offer, NOW)
            total += 1
    return bookable / total


@pytest.mark.parametrize("child_feed", list(CHILD_FEEDS))
def test_a_firehose_dataset_keeps_the_share_of_bookable_children(child_feed: str) -> None:
    balanced = SamplePublisher(items=10_000, now=NOW)
    firehose = SamplePublisher(items=10_000, now=NOW, mix="firehose")
    expected = bookable_share(balanced, child_feed)
    assert 0.15 < expected < 0.35
    assert abs(bookable_share(firehose, child_feed) - expected) < 0.03
