"""The simulated ecosystem serves a valid catalog chain and correct RPDE over many hosts."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
import pytest

from harvester import bookability
from harvester.sample import dataset, shapes
from harvester.sample.ecosystem import (
    ABSOLUTE,
    CATALOGS,
    DISCOVERY_DEPTH,
    RPDE_FORMAT,
    Ecosystem,
    EcosystemDataset,
    FastDice,
    make_plan,
)

NOW = datetime(2025, 6, 1, 12, 7, 30, tzinfo=UTC)
SMALL = {"datasets": 6, "hosts": 3, "items": 3_000, "page_size": 97, "seed": 1}
LATENCY = (0.01, 0.02)
LICENSE = "https://creativecommons.org/licenses/by/4.0/"
SCRIPT = re.compile(r'<script type="application/ld\+json">(.*?)</script>', re.S)
PARENT_FEEDS = {"scheduled-sessions": "session-series", "slots": "facility-uses"}
CHILD_TYPES = {"scheduled-sessions": "ScheduledSession", "slots": "Slot"}
PARENT_TYPES = {"session-series": "SessionSeries", "facility-uses": "FacilityUse"}
PARENT_REF = re.compile(
    r"^(?P<namespace>https://[^/]+)/(?P<feed>session-series|facility-uses)/(?P<index>\d+)"
    r"(?P<court>/individual-facility-uses/\d+)?$"
)

Json = dict[str, Any]


@dataclass
class Walked:
    """One feed walked from its first page to its last."""

    items: list[Json] = field(default_factory=list)
    pages: int = 0
    nexts: list[str] = field(default_factory=list)  # ``next`` as sent
    last_url: str = ""
    last_page: Json = field(default_factory=dict)


def walk(client: httpx.Client, url: str, limit: int = 10_000) -> Walked:
    """Follow ``next`` (resolved against the page's URL) until RPDE's last page."""
    walked = Walked()
    for _ in range(limit):
        response = client.get(url)
        assert response.status_code == 200, (url, response.text)
        page = orjson.loads(response.content)
        walked.pages += 1
        walked.nexts.append(page["next"])
        if not page["items"]:
            walked.last_url, walked.last_page = url, page
            return walked
        walked.items += page["items"]
        url = urljoin(url, page["next"])
    raise AssertionError(f"{url}: no last page within {limit} pages")


def dataset_of(client: httpx.Client, url: str) -> Json:
    """The Dataset of a dataset site, from its HTML script or its JSON-LD body."""
    response = client.get(url)
    assert response.status_code == 200
    if response.headers["content-type"].startswith("text/html"):
        scripts = SCRIPT.findall(response.text)
        assert len(scripts) == 1
        return orjson.loads(scripts[0])
    assert response.headers["content-type"] == "application/ld+json"
    return orjson.loads(response.content)


@pytest.fixture(scope="module")
def ecosystem() -> Iterator[Ecosystem]:
    """A small started ecosystem, shared by the read-only tests."""
    with Ecosystem(**SMALL, latency=LATENCY, now=NOW) as started:
        yield started


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """An HTTP client."""
    with httpx.Client(timeout=10.0) as http:
        yield http


@pytest.fixture(scope="module")
def walked(ecosystem: Ecosystem, client: httpx.Client) -> dict[str, Walked]:
    """Every feed walked once, by URL."""
    return {feed.url: walk(client, feed.url) for feed in ecosystem.feeds}


# --- the discovery chain ---------------------------------------------------------------------


def test_the_collection_lists_four_catalogs_spread_over_hosts(
    ecosystem: Ecosystem, client: httpx.Client
) -> None:
    response = client.get(ecosystem.collection_url)
    assert response.headers["content-type"] == "application/ld+json"
    collection = orjson.loads(response.content)
    assert collection["@type"] == "DataCatalog"
    assert "https://schema.org/" in collection["@context"]
    assert collection["@id"] == ecosystem.collection_url
    parts = collection["hasPart"]
    assert len(parts) == CATALOGS and all(isinstance(url, str) for url in parts)
    assert len({urlsplit(url).netloc for url in parts}) == SMALL["hosts"]
    for url in parts:
        catalog = orjson.loads(client.get(url).content)
        assert catalog["@type"] == "DataCatalog" and catalog["@id"] == url
        assert all(isinstance(site, str) for site in catalog["dataset"])


def test_the_catalogs_list_every_dataset_site_some_twice(
    ecosystem: Ecosystem, client: httpx.Client
) -> None:
    listed: Counter[str] = Counter()
    for url in ecosystem.catalog_urls():
        listed.update(orjson.loads(client.get(url).content)["dataset"])
    expected = {ecosystem.dataset_url(data) for data in ecosystem.plan.datasets}
    assert set(listed) == expected
    assert any(count == 2 for count in listed.values())
    assert max(listed.values()) <= 2


def test_dataset_sites_describe_their_feeds_and_a_csv(
    ecosystem: Ecosystem, client: httpx.Client
) -> None:
    kinds = Counter()
    feeds_by_site: dict[str, set[str]] = {}
    for feed in ecosystem.feeds:
        feeds_by_site.setdefault(feed.dataset_url, set()).add(feed.url)
    for data in ecosystem.plan.datasets:
        url = ecosystem.dataset_url(data)
        kinds["html" if data.html else "json-ld"] += 1
        document = dataset_of(client, url)
        assert document["@type"] == "Dataset"
        assert document["@id"] == url == document["url"]
        assert document["license"] == LICENSE
        assert document["publisher"]["@type"] == "Organization" and document["publisher"]["name"]
        assert document["name"] and "https://schema.org/" in document["@context"]
        rpde = [d for d in document["distribution"] if d["encodingFormat"] == RPDE_FORMAT]
        other = [d for d in document["distribution"] if d["encodingFormat"] != RPDE_FORMAT]
        assert len(rpde) in (2, 4)
        for download in rpde:
            assert download["@type"] == "DataDownload"
            assert download["additionalType"] == f"https://openactive.io/{download['name']}"
        assert {download["contentUrl"] for download in rpde} == feeds_by_site[url]
        assert [d["encodingFormat"] for d in other] == ["text/csv"]
        assert client.get(other[0]["contentUrl"]).status_code == 200
    assert kinds["html"] > kinds["json-ld"] > 0


def test_an_unknown_path_is_not_found_and_hosts_serve_only_their_own(
    ecosystem: Ecosystem, client: httpx.Client
) -> None:
    feed = ecosystem.feeds[0]
    other_host = (feed.host + 1) % SMALL["hosts"]
    assert client.get(ecosystem.base_url(other_host) + urlsplit(feed.url).path).status_code == 404
    assert client.get(ecosystem.base_url(0) + "/nothing-here").status_code == 404


# --- the feeds -------------------------------------------------------------------------------


def test_every_feed_walks_to_a_last_page_with_the_promised_items(
    ecosystem: Ecosystem, walked: dict[str, Walked]
) -> None:
    assert len(walked) == len(ecosystem.plan.feeds) >= 12
    for feed in ecosystem.feeds:
        result = walked[feed.url]
        assert len(result.items) == feed.items > 0
        assert result.pages == feed.pages
        keys = [(item["kind"], str(item["id"])) for item in result.items]
        assert len(set(keys)) == len(keys), feed.url
        order = [(item["modified"], str(item["id"])) for item in result.items]
        assert order == sorted(order), feed.url
        # RPDE's last page: no items, and next names the page itself.
        assert result.last_page["items"] == []
        assert result.last_page["license"] == LICENSE
        assert urljoin(result.last_url, result.last_page["next"]) == result.last_url
    assert sum(feed.items for feed in ecosystem.feeds) == SMALL["items"]


def test_a_quarter_of_the_feeds_send_next_relative_and_it_resolves(
    ecosystem: Ecosystem, walked: dict[str, Walked]
) -> None:
    styles = Counter(feed.next_style for feed in ecosystem.feeds)
    relative = len(ecosystem.feeds) - styles[ABSOLUTE]
    assert 0.15 <= relative / len(ecosystem.feeds) <= 0.35
    assert len(styles) == 4  # absolute, and the three relative forms
    for feed in ecosystem.feeds:
        nexts = walked[feed.url].nexts
        absolute = [url.startswith("http://") for url in nexts]
        assert all(absolute) if feed.next_style == ABSOLUTE else not any(absolute), feed.url
        # Resolved, every next stays on the feed's own path: the walk above followed them.
        for sent in nexts:
            assert urlsplit(urljoin(feed.url, sent)).path == urlsplit(feed.url).path


def test_children_reference_parents_of_their_own_dataset(
    ecosystem: Ecosystem, walked: dict[str, Walked]
) -> None:
    by_dataset: dict[str, dict[str, Walked]] = {}
    for feed in ecosystem.feeds:
        by_dataset.setdefault(feed.dataset_url, {})[feed.name] = walked[feed.url]
    outcomes: Counter[str] = Counter()
    for data in ecosystem.plan.datasets:
        feeds = by_dataset[ecosystem.dataset_url(data)]
        for child_feed, parent_feed in PARENT_FEEDS.items():
            if child_feed not in feeds:
                continue
            parents = feeds[parent_feed].items  # in index order: item i is parent i
            for item in feeds[child_feed].items:
                ref = child_ref(item) if "data" in item else None
                if ref is not None:  # None: a tombstone, or the parent embedded whole
                    outcomes[resolve(ref, data.namespace, parent_feed, parents)] += 1
    refs = sum(outcomes.values())
    assert refs > 0.9 * SMALL["items"]
    assert set(outcomes) <= {"live", "tombstone", "orphan"}, outcomes
    assert outcomes["live"] > 0.8 * refs
    # The sample's planned orphans (1 %) point just past the end of the parent feed.
    assert 0 < outcomes["orphan"] <= 0.02 * refs


def resolve(ref: str, namespace: str, parent_feed: str, parents: list[Json]) -> str:
    """What a child's parent @id names: a live parent, a tombstone, an orphan, or wrong."""
    found = PARENT_REF.match(ref)
    if found is None or found["namespace"] != namespace or found["feed"] != parent_feed:
        return f"wrong: {ref}"
    index = int(found["index"])
    if index >= len(parents):
        return "orphan"
    parent = parents[index]
    assert str(parent["id"]).endswith(f"{index:09d}")
    if parent["state"] == "deleted":
        return "tombstone"
    node_id = parent["data"].get("@id") or parent["data"]["id"]
    assert node_id == f"{namespace}/{parent_feed}/{index}"
    courts = {c.get("@id") or c["id"] for c in parent["data"].get("individualFacilityUse", [])}
    return "live" if found["court"] is None or ref in courts else f"no such court: {ref}"


def child_ref(item: Json) -> str | None:
    """The parent @id a child names; None when the parent is embedded whole."""
    data = item["data"]
    ref = data.get("superEvent", data.get("facilityUse"))
    if isinstance(ref, str):
        return ref
    return None if "location" in ref else ref["@id"]


def test_no_two_datasets_share_an_item_id_namespace(
    ecosystem: Ecosystem, walked: dict[str, Walked]
) -> None:
    owners: dict[str, str] = {}
    for feed in ecosystem.feeds:
        for item in walked[feed.url].items:
            data = item.get("data")
            if data is not None:
                node_id = data.get("@id") or data["id"]
                assert owners.setdefault(node_id, feed.url) == feed.url
                assert shapes.HOST not in orjson.dumps(data).decode()


def test_the_children_are_bookable_under_the_harvesters_rules(
    ecosystem: Ecosystem, walked: dict[str, Walked]
) -> None:
    by_dataset: dict[str, dict[str, Walked]] = {}
    for feed in ecosystem.feeds:
        by_dataset.setdefault(feed.dataset_url, {})[feed.name] = walked[feed.url]
    bookable = total = 0
    for feeds in by_dataset.values():
        for child_feed, parent_feed in PARENT_FEEDS.items():
            if child_feed not in feeds:
                continue
            offers: dict[str | None, bookability.Offer] = {}
            for item in feeds[parent_feed].items:
                if "data" in item:
                    parent = bookability.read_parent(PARENT_TYPES[parent_feed], item["data"])
                    offers |= dict.fromkeys(parent.refs, parent.offer)
            for item in feeds[child_feed].items:
                if "data" in item:
                    child = bookability.read_child(CHILD_TYPES[child_feed], item["data"])
                    offer = child.embedded_offer or offers.get(child.parent_ref)
                    bookable += bookability.is_bookable_at(child, offer, NOW)
                    total += 1
    assert 0.1 < bookable / total < 0.5  # the sample publisher's share, ~1 in 4


def test_served_pages_and_items_are_counted(
    ecosystem: Ecosystem, client: httpx.Client, walked: dict[str, Walked]
) -> None:
    stats = orjson.loads(client.get(ecosystem.stats_url).content)
    assert stats["items"] >= SMALL["items"]
    assert stats["pages"] >= ecosystem.plan.pages
    assert stats["feeds_walked"] == len(ecosystem.feeds)
    assert stats["all_walked_seconds"] is not None
    assert stats["in_flight"] == 0
    assert stats["plan"] == ecosystem.plan.summary()
    assert [host["url"] for host in stats["hosts"]] == [
        ecosystem.base_url(number) for number in range(SMALL["hosts"])
    ]
    assert stats["requests_by_kind"]["feed"] >= ecosystem.plan.pages
    assert "stats" not in stats["requests_by_kind"]  # /_stats does not count itself


def test_a_bad_position_is_a_bad_request(ecosystem: Ecosystem, client: httpx.Client) -> None:
    response = client.get(ecosystem.feeds[0].url + "?afterTimestamp=soon&afterId=x")
    assert response.status_code == 400


# --- in flight and latency -------------------------------------------------------------------


def fire_at_once(urls: list[str]) -> list[float]:
    """GET every URL at the same moment, each on its own connection; the seconds each took."""
    barrier = threading.Barrier(len(urls))
    seconds = [0.0] * len(urls)

    def fetch(number: int) -> None:
        with httpx.Client(timeout=10.0) as http:
            barrier.wait()
            started = time.perf_counter()
            assert http.get(urls[number]).status_code == 200
            seconds[number] = time.perf_counter() - started

    threads = [threading.Thread(target=fetch, args=(number,)) for number in range(len(urls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seconds


def test_the_in_flight_counters_count_concurrent_requests() -> None:
    with Ecosystem(**SMALL, latency=(0.4, 0.4), now=NOW) as eco:
        by_host: dict[int, list[str]] = {}
        for feed in eco.feeds:
            by_host.setdefault(feed.host, []).append(feed.url)
        busy, other = sorted(by_host, key=lambda host: -len(by_host[host]))[:2]
        urls = by_host[busy][:5] + by_host[other][:2]
        urls.append(by_host[busy][0])  # a second request to one feed: still one feed
        started = time.perf_counter()
        seconds = fire_at_once(urls)
        wall = time.perf_counter() - started
        stats = eco.stats()
    assert min(seconds) >= 0.4  # each waited its latency...
    assert wall < 0.4 * 2.5  # ...side by side, not one after the other
    assert stats["peak_in_flight"] == 8
    assert stats["hosts"][busy]["peak_in_flight"] == 6
    assert stats["hosts"][other]["peak_in_flight"] == 2
    assert stats["peak_in_flight_per_host"] == 6
    assert stats["peak_feeds_in_flight"] == 7
    assert stats["in_flight"] == stats["feeds_in_flight"] == 0
    assert stats["requests"] == 8 and stats["pages"] == 8


def test_each_request_waits_a_latency_from_the_range() -> None:
    with Ecosystem(**SMALL, latency=(0.15, 0.25), now=NOW) as eco, httpx.Client() as http:
        times = []
        for url in [eco.collection_url, eco.feeds[0].url, eco.feeds[1].url]:
            started = time.perf_counter()
            http.get(url)
            times.append(time.perf_counter() - started)
    assert all(0.15 <= seconds < 0.25 + 0.5 for seconds in times)  # + a loaded machine


# --- determinism and shape -------------------------------------------------------------------


def first_pages(eco: Ecosystem, http: httpx.Client) -> list[list[Json]]:
    """The items of every feed's first page."""
    return [orjson.loads(http.get(feed.url).content)["items"] for feed in eco.feeds]


def test_the_same_seed_serves_the_same_ecosystem() -> None:
    with httpx.Client() as http:
        with Ecosystem(**SMALL, latency=(0, 0), now=NOW) as one:
            items_one, plan_one = first_pages(one, http), one.plan
        with Ecosystem(**SMALL, latency=(0, 0), now=NOW) as two:
            items_two, plan_two = first_pages(two, http), two.plan
        with Ecosystem(**{**SMALL, "seed": 2}, latency=(0, 0), now=NOW) as three:
            items_three, plan_three = first_pages(three, http), three.plan
    assert plan_one == plan_two and items_one == items_two
    assert plan_three != plan_one and items_three != items_one


def test_the_default_size_has_the_promised_shape() -> None:
    plan = make_plan(datasets=170, hosts=20, items=2_000_000, page_size=500, seed=1)
    feeds = plan.feeds
    assert 430 <= len(feeds) <= 490 and plan.items == 2_000_000
    assert {feed.host for feed in feeds} == set(range(20))
    children = sum(feed.items for feed in feeds if feed.name in ("scheduled-sessions", "slots"))
    assert children > 0.9 * plan.items
    sizes = sorted(data.items for data in plan.datasets)
    assert sizes[-1] > 10 * sizes[len(sizes) // 2]  # a few big publishers, many small
    assert sizes[-1] < 0.15 * plan.items  # but no one feed is the whole harvest
    assert Counter(len(data.feeds) for data in plan.datasets).keys() == {2, 4}


def test_ideal_seconds_is_the_slowest_host_plus_discovery() -> None:
    plan = make_plan(**SMALL)
    mean, limit = 0.2, 2
    expected = 0.0
    for host in range(plan.hosts):
        pages = [feed.pages for feed in plan.feeds if feed.host == host]
        if pages:
            expected = max(expected, sum(pages) * mean / limit, max(pages) * mean)
    assert plan.ideal_seconds(limit, mean) == pytest.approx(expected + DISCOVERY_DEPTH * mean)
    one_host = make_plan(datasets=2, hosts=1, items=30_000, page_size=100)
    longest = max(feed.pages for feed in one_host.feeds)
    assert sum(feed.pages for feed in one_host.feeds) / 100 < longest
    assert one_host.ideal_seconds(100, 1.0) == pytest.approx(longest + DISCOVERY_DEPTH)


def test_the_fast_dice_and_start_dates_match_the_samples() -> None:
    for seed in (1, 7, 2**31 - 1):
        slow, fast = shapes.Dice(seed), FastDice(seed)
        for salt in (0, 11, 24, 47):
            for index in range(0, 200_000, 997):
                assert fast.roll(salt, index, 1000) == slow.roll(salt, index, 1000)
                assert fast.percentile(salt, index) == slow.percentile(salt, index)
    sizes = dataset.Sizes(series=10, sessions=100, facility_uses=5, slots=50)
    ours = EcosystemDataset(sizes, NOW, 3)
    sample = dataset.Dataset(size=0, now=NOW, seed=3)
    for index in range(300):
        assert ours.start_of(index, salt=21, minutes=15) == sample.start_of(
            index, salt=21, minutes=15
        )


# --- the command line ------------------------------------------------------------------------


def test_the_command_line_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "harvester.sample.ecosystem", "--datasets", "3",
               "--hosts", "2", "--items", "300", "--latency", "0.01,0.02"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split(" ", 1)[1]
        collection = httpx.get(url, timeout=5).json()
        assert collection["@type"] == "DataCatalog" and len(collection["hasPart"]) == CATALOGS
        stats = httpx.get(url.rsplit("/", 1)[0] + "/_stats", timeout=5).json()
        assert stats["plan"]["datasets"] == 3 and stats["plan"]["items"] == 300
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
