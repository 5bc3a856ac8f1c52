"""A simulated open OpenActive ecosystem: a data catalog chain, many hosts, hundreds of feeds.

``Ecosystem(datasets=170, hosts=20, items=2_000_000)`` serves, on 127.0.0.1, one
``ThreadingHTTPServer`` per host (each its own port, so each its own host to a client
that limits its connections per scheme, host and port):

- host 0: ``/data-catalog-collection.jsonld``, a schema.org ``DataCatalog`` whose
  ``hasPart`` lists the URLs of 4 catalogs, and ``/_stats`` (the counters as JSON);
- each catalog, on its own host: a ``DataCatalog`` whose ``dataset`` lists dataset-site
  URLs (a few datasets are listed by two catalogs);
- each dataset site, on its publisher's host: an HTML page with the ``Dataset`` in a
  ``<script type="application/ld+json">`` (4 in 5) or the ``Dataset`` as a JSON-LD
  document; its ``distribution`` lists 2 or 4 RPDE feeds (``DataDownload``) and a CSV
  timetable that is no RPDE feed;
- each feed: RPDE 1.0 pages ordered by ``modified`` then ``id`` (``afterTimestamp`` and
  ``afterId``), generated on the fly from the feed and the position, with the sample
  publisher's item builders (``harvester.sample.dataset``). Every page is answered after
  a latency drawn from ``latency`` (100-300 ms by default), in its own thread.

Item counts follow real publishers: a few big datasets and many small (weights
``1 / rank ** 0.7``), and within a dataset the child feeds (scheduled-sessions, slots)
hold nearly all the items, the parent feeds (session-series, facility-uses) few. Children
reference parents of their own dataset by ``@id``: every dataset has its own ``@id``
namespace (``https://{slug}.example``). A quarter of the feeds send ``next`` relative to
the page (``?afterTimestamp=...``, ``scheduled-sessions?...`` or ``/datasets/...?...``).
Everything is deterministic for a seed (and ``now``); nothing is held item by item, so
memory stays flat however many items are served.

The latency-bound ideal catch-up (``ideal_seconds``): a feed's pages come one after
another, and a host answers at most ``limit`` requests at once, so with ``L`` the mean
latency and ``pages`` the requests a feed takes to its last page (its pages of items and
the empty last page)::

    host(h) = max(sum of h's feeds' pages * L / limit, h's longest feed's pages * L)
    ideal   = DISCOVERY_DEPTH * L + max over hosts of host(h)

``DISCOVERY_DEPTH`` (3: collection, catalog, dataset site) counts the requests before a
feed's first page can be asked for. The dataset-site requests themselves, and a client's
own time per page, are not counted: the figure is a floor, not a forecast.

``python -m harvester.sample.ecosystem --datasets 170 --hosts 20 --items 2000000
--latency 0.1,0.3`` serves until SIGTERM/SIGINT and prints ``READY <collection url>``.
"""

from __future__ import annotations

import argparse
import bisect
import html
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, quote, urlsplit

import orjson

from harvester.sample import dataset, shapes
from harvester.sample.__main__ import parse_now, wait_for_signal
from harvester.sample.dataset import LICENSE, MODIFIED_ID, Sizes
from harvester.sample.httpserver import BackgroundServer, SampleHTTPServer, send_answer
from harvester.sample.server import Response, error_response
from harvester.sample.shapes import Json

DEFAULT_DATASETS = 170
DEFAULT_HOSTS = 20
DEFAULT_ITEMS = 2_000_000
DEFAULT_PAGE_SIZE = 500
DEFAULT_LATENCY = (0.1, 0.3)
CATALOGS = 4
DISCOVERY_DEPTH = 3  # collection, catalog, dataset site: requests before a first feed page

COLLECTION_PATH = "/data-catalog-collection.jsonld"
STATS_PATH = "/_stats"
CONTEXT = ["https://schema.org/", "https://openactive.io/"]
RPDE_FORMAT = "application/vnd.openactive.rpde+json; version=1"
JSON_LD = "application/ld+json"
# The sample builders' @id host; each dataset's pages swap in a namespace of its own.
SAMPLE_HOST = shapes.HOST.encode()

SIZE_SKEW = 0.7  # dataset weights 1 / rank ** SIZE_SKEW: a few big publishers, many small
HOST_SKEW = 0.6  # host weights alike: booking platforms that host many datasets

# Feed name: schema type. A dataset publishes one of three layouts, with each feed's share
# of the dataset's items in percent.
FEED_TYPES = {
    "session-series": "SessionSeries",
    "scheduled-sessions": "ScheduledSession",
    "facility-uses": "FacilityUse",
    "slots": "Slot",
}
SESSIONS = (("session-series", 5), ("scheduled-sessions", 95))
FACILITIES = (("facility-uses", 6), ("slots", 94))
BOTH = (("session-series", 4), ("scheduled-sessions", 80), ("facility-uses", 1), ("slots", 15))
LAYOUT_SHARES = ((BOTH, 0.35), (FACILITIES, 0.25))  # the rest: SESSIONS

# How a feed writes ``next``: most absolute; every fourth feed relative, in one of three forms.
ABSOLUTE, QUERY, SEGMENT, PATH = "absolute", "query", "segment", "path"
RELATIVE_STYLES = (QUERY, SEGMENT, PATH)

TOWNS = ("Bristol", "Leeds", "Manchester", "London", "Plymouth", "Cardiff", "Nottingham",
         "Sheffield", "York", "Norwich", "Exeter", "Derby", "Bath", "Hull")  # fmt: skip
BRANDS = ("Leisure Trust", "Active", "Sport CIC", "Community Sport", "Fitness",
          "Swim and Sport", "Leisure Centres", "Clubs")  # fmt: skip


# --- the plan: which datasets, feeds and items live where (pure, no I/O) -----------------


@dataclass(frozen=True)
class FeedPlan:
    """One RPDE feed of a dataset: where it is served and how much it holds."""

    dataset: str  # the dataset's slug
    name: str  # e.g. scheduled-sessions
    host: int
    path: str
    items: int
    pages: int  # requests to walk it: its pages of items, then the empty last page
    next_style: str  # ABSOLUTE, QUERY, SEGMENT or PATH

    @property
    def schema_type(self) -> str:
        """The schema type of the feed's items (ScheduledSession, Slot, ...)."""
        return FEED_TYPES[self.name]


@dataclass(frozen=True)
class DatasetPlan:
    """One dataset site: its publisher, host, catalogs and feeds."""

    number: int
    slug: str
    publisher: str
    host: int
    html: bool  # an HTML page with embedded JSON-LD; else a JSON-LD document
    catalogs: tuple[int, ...]
    seed: int
    feeds: tuple[FeedPlan, ...]

    @property
    def path(self) -> str:
        """The dataset site's path on its host."""
        base = f"/datasets/{self.slug}/"
        return base if self.html else base + "dataset.jsonld"

    @property
    def csv_path(self) -> str:
        """The path of its non-RPDE distribution (a CSV timetable)."""
        return f"/datasets/{self.slug}/timetable.csv"

    @property
    def namespace(self) -> str:
        """The base of its items' @ids (each dataset its own)."""
        return f"https://{self.slug}.example"

    @property
    def items(self) -> int:
        """Items over all its feeds."""
        return sum(feed.items for feed in self.feeds)


@dataclass(frozen=True)
class Plan:
    """The whole ecosystem's layout, a pure function of its parameters and seed."""

    hosts: int
    page_size: int
    datasets: tuple[DatasetPlan, ...]
    catalog_hosts: tuple[int, ...]

    @property
    def feeds(self) -> list[FeedPlan]:
        """Every feed, dataset by dataset."""
        return [feed for data in self.datasets for feed in data.feeds]

    @property
    def items(self) -> int:
        """Items over all feeds."""
        return sum(data.items for data in self.datasets)

    @property
    def pages(self) -> int:
        """Requests to walk every feed to its last page."""
        return sum(feed.pages for feed in self.feeds)

    def host_pages(self) -> list[list[int]]:
        """Each host's feeds' page counts."""
        pages: list[list[int]] = [[] for _ in range(self.hosts)]
        for feed in self.feeds:
            pages[feed.host].append(feed.pages)
        return pages

    def ideal_seconds(self, limit: int, mean_latency: float) -> float:
        """The latency-bound catch-up time (see the module docstring for the formula)."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        bounds = [
            max(sum(pages) * mean_latency / limit, max(pages) * mean_latency)
            for pages in self.host_pages()
            if pages
        ]
        return DISCOVERY_DEPTH * mean_latency + max(bounds, default=0.0)

    def summary(self) -> Json:
        """Counts, for logs and ``/_stats``."""
        return {"datasets": len(self.datasets), "hosts": self.hosts, "feeds": len(self.feeds),
                "items": self.items, "pages": self.pages, "page_size": self.page_size}  # fmt: skip


def make_plan(
    *, datasets: int, hosts: int, items: int, page_size: int = DEFAULT_PAGE_SIZE, seed: int = 1
) -> Plan:
    """Lay out ``datasets`` over ``hosts`` with ``items`` in all, deterministically."""
    if datasets < 1 or hosts < 1 or page_size < 1:
        raise ValueError("datasets, hosts and page_size must be >= 1")
    rng = random.Random(seed)
    layouts = choose_layouts(datasets, rng)
    if items < sum(len(layout) for layout in layouts):
        raise ValueError("items must be at least one per feed")
    order = list(range(datasets))
    rng.shuffle(order)  # which dataset gets which rank in size
    weights = [0.0] * datasets
    for rank, number in enumerate(order):
        weights[number] = (rank + 1) ** -SIZE_SKEW
    sizes = apportion(items, weights, [len(layout) for layout in layouts])
    host_of = choose_hosts(datasets, hosts, rng)
    plans, feed_number = [], 0
    for number in range(datasets):
        counts = apportion(sizes[number], [share for _, share in layouts[number]],
                           [1] * len(layouts[number]))  # fmt: skip
        slug = slug_of(number)
        feeds = []
        for (name, _), count in zip(layouts[number], counts, strict=True):
            feeds.append(FeedPlan(
                dataset=slug, name=name, host=host_of[number],
                path=f"/datasets/{slug}/feeds/{name}", items=count,
                pages=math.ceil(count / page_size) + 1, next_style=next_style_of(feed_number),
            ))  # fmt: skip
            feed_number += 1
        plans.append(DatasetPlan(
            number=number, slug=slug, publisher=publisher_of(number), host=host_of[number],
            html=number % 5 != 4, catalogs=catalogs_of(number),
            seed=shapes.mix64(seed << 20 | number) % 2**31, feeds=tuple(feeds),
        ))  # fmt: skip
    catalog_hosts = tuple((1 + k) % hosts for k in range(CATALOGS))
    return Plan(hosts, page_size, tuple(plans), catalog_hosts)


def choose_layouts(datasets: int, rng: random.Random) -> list[tuple[tuple[str, int], ...]]:
    """Each dataset's feeds and shares: ~35 % all four, ~25 % facilities, the rest sessions."""
    layouts: list[tuple[tuple[str, int], ...]] = []
    for layout, share in LAYOUT_SHARES:
        layouts += [layout] * round(datasets * share)
    layouts = (layouts + [SESSIONS] * datasets)[:datasets]
    rng.shuffle(layouts)
    return layouts


def choose_hosts(datasets: int, hosts: int, rng: random.Random) -> list[int]:
    """Each dataset's host: every host one first (when there are enough), then by weight."""
    weights = [(host + 1) ** -HOST_SKEW for host in range(hosts)]
    firsts = list(range(hosts))
    rng.shuffle(firsts)
    chosen = rng.choices(range(hosts), weights=weights, k=datasets)
    return [firsts[number] if number < hosts else chosen[number] for number in range(datasets)]


def apportion(total: int, weights: Sequence[float], minimum: Sequence[int]) -> list[int]:
    """Split ``total`` by ``weights`` (largest remainders), each at least its ``minimum``."""
    spare = total - sum(minimum)
    if spare < 0:
        raise ValueError("total is below the minimums")
    scale = spare / sum(weights)
    exact = [weight * scale for weight in weights]
    counts = [floor + int(share) for floor, share in zip(minimum, exact, strict=True)]
    left = total - sum(counts)
    by_remainder = sorted(range(len(weights)), key=lambda i: (int(exact[i]) - exact[i], i))
    for index in by_remainder[:left]:
        counts[index] += 1
    return counts


def next_style_of(feed_number: int) -> str:
    """Every fourth feed writes ``next`` relative to the page, cycling the three forms."""
    if feed_number % 4 != 3:
        return ABSOLUTE
    return RELATIVE_STYLES[(feed_number // 4) % len(RELATIVE_STYLES)]


def catalogs_of(number: int) -> tuple[int, ...]:
    """The catalogs listing a dataset: one, and a second for one dataset in seven."""
    first = number % CATALOGS
    return (first, (first + 1) % CATALOGS) if number % 7 == 3 else (first,)


def publisher_of(number: int) -> str:
    """A publisher's name, unique per dataset."""
    town = TOWNS[number % len(TOWNS)]
    brand = BRANDS[(number // len(TOWNS)) % len(BRANDS)]
    return f"{town} {brand} {number + 1}"


def slug_of(number: int) -> str:
    """The dataset's URL slug."""
    return publisher_of(number).lower().replace(" ", "-")


# --- items: the sample builders, one namespace and ordering per dataset --------------------


_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class FastDice(shapes.Dice):
    """``shapes.Dice`` with the same rolls, cheaper: the seed's hash is taken once.

    A roll is most of an item's cost, and serving millions of items must not make the
    simulator the bottleneck of a benchmark.
    """

    seed_hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed_hash", shapes.mix64(self.seed))

    def roll(self, salt: int, index: int, sides: int) -> int:
        """A number in [0, sides), fixed by seed, salt and index (as ``Dice.roll``)."""
        value = ((self.seed_hash ^ (salt << 40) ^ index) + 0x9E3779B97F4A7C15) & _MASK64
        value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
        return (value ^ (value >> 31)) % sides


class TimestampSlotFeed(dataset.SlotFeed, dataset.TimestampFeed):
    """The sample's slots, ordered by ``modified`` then ``id`` (not by change number)."""

    ordering = MODIFIED_ID
    group = 2  # ties in ``modified``: afterId decides
    modified_of = dataset.TimestampFeed.modified_of
    last_parent: tuple[int, tuple[str, str]] = (-1, ("", ""))

    def parent_of(self, index: int) -> tuple[str, str]:
        """As the sample's, remembered for the last index: an item asks twice (kind, data)."""
        last = self.last_parent  # one tuple, read and written whole: safe across threads
        if last[0] == index:
            return last[1]
        parent = super().parent_of(index)
        self.last_parent = (index, parent)
        return parent


class EcosystemDataset(dataset.Dataset):
    """The sample's feeds with sizes of our choosing; feeds of size 0 are not published."""

    def __init__(self, sizes: Sizes, now: datetime, seed: int) -> None:
        super().__init__(size=0, now=now, seed=seed)
        self.sizes = sizes
        self.dice = FastDice(seed)
        self.session_series = dataset.SessionSeriesFeed(self, sizes.series)
        self.scheduled_sessions = dataset.ScheduledSessionFeed(self, sizes.sessions)
        self.facility_uses = dataset.FacilityUseFeed(self, sizes.facility_uses)
        self.slots = TimestampSlotFeed(self, sizes.slots)
        every = (self.session_series, self.scheduled_sessions, self.facility_uses, self.slots)
        self.feeds = {feed.name: feed for feed in every if feed.count}
        self.first_start = self.clock.first_start

    def start_of(self, index: int, *, salt: int, minutes: int) -> datetime:
        """As the sample's ``start_of``, with the clock's first start taken once."""
        steps = 32 * 24 * 60 // minutes
        return self.first_start + timedelta(minutes=minutes * self.dice.roll(salt, index, steps))


def sizes_of(plan: DatasetPlan) -> Sizes:
    """A dataset plan's item counts per feed."""
    counts = {feed.name: feed.items for feed in plan.feeds}
    return Sizes(series=counts.get("session-series", 0),
                 sessions=counts.get("scheduled-sessions", 0),
                 facility_uses=counts.get("facility-uses", 0),
                 slots=counts.get("slots", 0))  # fmt: skip


class FeedSource:
    """One served feed: its pages, generated from the position asked for."""

    def __init__(self, plan: FeedPlan, feed: dataset.Feed, namespace: str, page_size: int) -> None:
        self.plan = plan
        self.feed = feed
        self.namespace = namespace.encode()
        self.page_size = page_size
        self.base_url = ""  # the host's http://127.0.0.1:PORT, set once it listens

    def page(self, query: str, requested: str) -> tuple[Response, int]:
        """The page after the query's position, and how many items it holds."""
        try:
            position = parse_position(query)
        except ValueError as exc:
            return error_response(HTTPStatus.BAD_REQUEST, str(exc)), 0
        feed = self.feed
        start = 0
        if position is not None:  # the items are sorted by index: bisection, never a scan
            start = bisect.bisect_right(range(feed.count), position, key=feed.sort_key)
        end = min(start + self.page_size, feed.count)
        items = [feed.item_of(index) for index in range(start, end)]
        next_url = self.next_after(items[-1]) if items else self.echo(query, requested)
        body = orjson.dumps({"next": next_url, "items": items, "license": LICENSE})
        # The builders' @ids all share one host: each dataset gets a namespace of its own.
        body = body.replace(SAMPLE_HOST, self.namespace)
        max_age = 3600 if items else 8
        headers = {"Content-Type": "application/json",
                   "Cache-Control": f"public, max-age={max_age}"}  # fmt: skip
        return Response(HTTPStatus.OK, headers, body), len(items)

    def next_after(self, item: Json) -> str:
        """``next`` continuing after ``item``, in this feed's style."""
        after_id = quote(str(item["id"]), safe="")
        return self.styled(f"afterTimestamp={item['modified']}&afterId={after_id}", None)

    def echo(self, query: str, requested: str) -> str:
        """The last page's ``next``: the page itself, in this feed's style."""
        return self.styled(query, requested) if query else requested

    def styled(self, query: str, absolute: str | None) -> str:
        """A URL with ``query`` as this feed writes it (``absolute``: the absolute form)."""
        style, path = self.plan.next_style, self.plan.path
        if style == QUERY:
            return f"?{query}"
        if style == SEGMENT:
            return f"{path.rsplit('/', 1)[1]}?{query}"
        if style == PATH:
            return f"{path}?{query}"
        return absolute if absolute is not None else f"{self.base_url}{path}?{query}"


def parse_position(query: str) -> tuple[int, str] | None:
    """(afterTimestamp, afterId) from a query; None for the first page."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    raw = params.get("afterTimestamp")
    if raw is None:
        return None
    try:
        return int(raw), params.get("afterId", "")
    except ValueError:
        raise ValueError(f"afterTimestamp is not an integer in {query!r}") from None


# --- the documents of the discovery chain ---------------------------------------------------


def json_ld(document: Json) -> Response:
    """A JSON-LD document response."""
    return Response(HTTPStatus.OK, {"Content-Type": JSON_LD}, orjson.dumps(document))


def collection_document(url: str, catalog_urls: Sequence[str], published: str) -> Json:
    """The collection: a DataCatalog whose ``hasPart`` lists the catalogs."""
    return {"@context": CONTEXT, "@type": "DataCatalog", "@id": url,
            "name": "Simulated OpenActive Data Catalog Collection",
            "publisher": {"@type": "Organization", "name": "Simulated OpenActive"},
            "license": LICENSE, "datePublished": published,
            "hasPart": list(catalog_urls)}  # fmt: skip


def catalog_document(url: str, number: int, dataset_urls: Sequence[str], published: str) -> Json:
    """One catalog: a DataCatalog whose ``dataset`` lists dataset-site URLs."""
    return {"@context": CONTEXT, "@type": "DataCatalog", "@id": url,
            "name": f"Simulated Booking Platform {number + 1} Data Catalog",
            "publisher": {"@type": "Organization", "name": f"Booking Platform {number + 1}"},
            "license": LICENSE, "datePublished": published,
            "dataset": list(dataset_urls)}  # fmt: skip


def dataset_document(
    plan: DatasetPlan, url: str, feed_urls: Sequence[str], csv_url: str, published: str
) -> Json:
    """The dataset site's Dataset: its RPDE feeds and a CSV that is no feed."""
    distribution: list[Json] = [
        {"@type": "DataDownload", "name": FEED_TYPES[feed.name],
         "additionalType": f"https://openactive.io/{FEED_TYPES[feed.name]}",
         "encodingFormat": RPDE_FORMAT, "contentUrl": feed_url}
        for feed, feed_url in zip(plan.feeds, feed_urls, strict=True)
    ]  # fmt: skip
    distribution.append({"@type": "DataDownload", "name": "Timetable (CSV)",
                         "encodingFormat": "text/csv", "contentUrl": csv_url})  # fmt: skip
    return {
        "@context": CONTEXT, "@type": "Dataset", "@id": url, "url": url,
        "name": f"{plan.publisher} Sessions and Facilities",
        "description": f"Near real-time availability and rich descriptions of the sessions "
                       f"and facilities of {plan.publisher}.",
        "keywords": ["Sessions", "Facilities", "Activities", "Sports", "Physical Activity"],
        "license": LICENSE, "inLanguage": ["en-GB"],
        "schemaVersion": "https://openactive.io/modelling-opportunity-data/2.0/",
        "documentation": "https://permalink.openactive.io/dataset-site/open-data-documentation",
        "datePublished": published, "dateModified": published,
        "publisher": {"@type": "Organization", "name": plan.publisher,
                      "url": f"{plan.namespace}/"},
        "distribution": distribution,
    }  # fmt: skip


def dataset_page(document: Json) -> Response:
    """A dataset site as real ones are: HTML with the Dataset in a JSON-LD script."""
    embedded = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode().replace("</", "<\\/")
    title = html.escape(str(document["name"]))
    body = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n"
        f'<script type="application/ld+json">\n{embedded}\n</script>\n</head>\n'
        f"<body>\n<h1>{title}</h1>\n<p>This dataset is published under the OpenActive "
        f"standards.</p>\n</body>\n</html>\n"
    )
    return Response(HTTPStatus.OK, {"Content-Type": "text/html; charset=utf-8"}, body.encode())


CSV_BODY = b"id,name,startDate\n1,Yoga for Beginners,2025-06-01T10:00:00Z\n"


# --- instrumentation ------------------------------------------------------------------------


class Stats:
    """Requests in flight (per host, in all, distinct feeds) and what was served."""

    def __init__(self, hosts: int) -> None:
        self.lock = threading.Lock()
        self.host_in_flight = [0] * hosts
        self.host_peak = [0] * hosts
        self.host_requests = [0] * hosts
        self.in_flight = 0
        self.peak_in_flight = 0
        self.feeds_in_flight: Counter[str] = Counter()
        self.peak_feeds_in_flight = 0
        self.kinds: Counter[str] = Counter()
        self.pages = 0
        self.items = 0
        self.walked: set[str] = set()  # feeds whose empty last page was served
        self.first_at: float | None = None  # time.monotonic() of the first request
        self.walked_at: float | None = None  # ... when the last feed's last page was served

    @contextmanager
    def request(self, host: int, kind: str, feed: str | None) -> Iterator[None]:
        """Count one request as in flight while the block runs."""
        with self.lock:
            self.first_at = time.monotonic() if self.first_at is None else self.first_at
            self.kinds[kind] += 1
            self.host_requests[host] += 1
            self.host_in_flight[host] += 1
            self.host_peak[host] = max(self.host_peak[host], self.host_in_flight[host])
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            if feed is not None:
                self.feeds_in_flight[feed] += 1
                self.peak_feeds_in_flight = max(self.peak_feeds_in_flight,
                                                len(self.feeds_in_flight))  # fmt: skip
        try:
            yield
        finally:
            with self.lock:
                self.host_in_flight[host] -= 1
                self.in_flight -= 1
                if feed is not None:
                    self.feeds_in_flight[feed] -= 1
                    if not self.feeds_in_flight[feed]:
                        del self.feeds_in_flight[feed]

    def served(self, feed: str, items: int, feeds: int) -> None:
        """A page of ``items`` of ``feed`` went out (0 items: its last page)."""
        with self.lock:
            self.pages += 1
            self.items += items
            if not items and feed not in self.walked:
                self.walked.add(feed)
                if len(self.walked) == feeds:
                    self.walked_at = time.monotonic()

    def snapshot(self, base_urls: Sequence[str]) -> Json:
        """The counters as JSON-ready values."""
        with self.lock:
            walked_seconds = None
            if self.first_at is not None and self.walked_at is not None:
                walked_seconds = round(self.walked_at - self.first_at, 3)
            return {
                "in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight,
                "feeds_in_flight": len(self.feeds_in_flight),
                "peak_feeds_in_flight": self.peak_feeds_in_flight,
                "peak_in_flight_per_host": max(self.host_peak, default=0),
                "pages": self.pages, "items": self.items,
                "requests": sum(self.host_requests), "requests_by_kind": dict(self.kinds),
                "feeds_walked": len(self.walked), "all_walked_seconds": walked_seconds,
                "hosts": [
                    {"host": number, "url": url, "in_flight": self.host_in_flight[number],
                     "peak_in_flight": self.host_peak[number],
                     "requests": self.host_requests[number]}
                    for number, url in enumerate(base_urls)
                ],
            }  # fmt: skip


# --- the servers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """What a path on a host serves: its kind, and the feed or dataset it belongs to."""

    kind: str  # collection, catalog, dataset, feed, csv, stats
    number: int = 0  # the catalog's or the dataset's number
    feed: FeedSource | None = None


@dataclass(frozen=True)
class EcosystemFeed:
    """A served feed as a client sees it: its URL, host, items and pages."""

    url: str
    name: str
    dataset_url: str
    host: int
    host_url: str
    items: int
    pages: int
    next_style: str


class Ecosystem:
    """The simulated ecosystem: one HTTP server per host, served in daemon threads."""

    def __init__(
        self,
        *,
        datasets: int = DEFAULT_DATASETS,
        hosts: int = DEFAULT_HOSTS,
        items: int = DEFAULT_ITEMS,
        page_size: int = DEFAULT_PAGE_SIZE,
        latency: tuple[float, float] = DEFAULT_LATENCY,
        seed: int = 1,
        now: datetime | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        low, high = latency
        if not 0 <= low <= high:
            raise ValueError("latency must be (low, high) with 0 <= low <= high")
        self.latency = (low, high)
        self.now = now if now is not None else datetime.now(UTC)
        self.published = (self.now - timedelta(days=90)).date().isoformat()
        self.plan = make_plan(datasets=datasets, hosts=hosts, items=items,
                              page_size=page_size, seed=seed)  # fmt: skip
        self.stats_counter = Stats(hosts)
        self.random = random.Random(seed)
        self.servers = [EcosystemHost(self, number, host) for number in range(hosts)]
        self.routes: list[dict[str, Route]] = [{} for _ in range(hosts)]
        self.routes[0][COLLECTION_PATH] = Route("collection")
        self.routes[0][STATS_PATH] = Route("stats")
        for number, catalog_host in enumerate(self.plan.catalog_hosts):
            self.routes[catalog_host][catalog_path(number)] = Route("catalog", number)
        self.sources: list[FeedSource] = []
        for data in self.plan.datasets:
            self.add_dataset(data)

    def add_dataset(self, data: DatasetPlan) -> None:
        """Route a dataset's site, CSV and feeds on its host."""
        routes = self.routes[data.host]
        routes[data.path] = Route("dataset", data.number)
        routes[data.csv_path] = Route("csv", data.number)
        generator = EcosystemDataset(sizes_of(data), self.now, data.seed)
        for plan in data.feeds:
            source = FeedSource(plan, generator.feeds[plan.name], data.namespace,
                                self.plan.page_size)  # fmt: skip
            routes[plan.path] = Route("feed", data.number, source)
            self.sources.append(source)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen on every host; stop them all if one fails."""
        try:
            for server in self.servers:
                server.start()
        except BaseException:
            self.stop()
            raise
        for source in self.sources:
            source.base_url = self.base_url(source.plan.host)
        return self

    def stop(self) -> None:
        """Stop every host's server."""
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Self:
        """Start serving."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop serving."""
        self.stop()

    # -- what a client sees ----------------------------------------------------------------

    def base_url(self, host: int) -> str:
        """``http://127.0.0.1:PORT`` of host number ``host`` (once started)."""
        return self.servers[host].base_url

    @property
    def collection_url(self) -> str:
        """The URL to give the harvester: the data catalog collection."""
        return self.base_url(0) + COLLECTION_PATH

    @property
    def stats_url(self) -> str:
        """The URL of the counters as JSON."""
        return self.base_url(0) + STATS_PATH

    def catalog_urls(self) -> list[str]:
        """The catalogs' URLs, in the collection's order."""
        return [self.base_url(host) + catalog_path(number)
                for number, host in enumerate(self.plan.catalog_hosts)]  # fmt: skip

    def dataset_url(self, data: DatasetPlan) -> str:
        """A dataset site's URL."""
        return self.base_url(data.host) + data.path

    @property
    def feeds(self) -> list[EcosystemFeed]:
        """Every feed with its URL, host, items and pages (once started)."""
        by_slug = {data.slug: data for data in self.plan.datasets}
        return [
            EcosystemFeed(url=self.base_url(feed.host) + feed.path, name=feed.name,
                          dataset_url=self.dataset_url(by_slug[feed.dataset]), host=feed.host,
                          host_url=self.base_url(feed.host), items=feed.items,
                          pages=feed.pages, next_style=feed.next_style)
            for feed in self.plan.feeds
        ]  # fmt: skip

    @property
    def mean_latency(self) -> float:
        """The mean of the latency drawn per request."""
        return sum(self.latency) / 2

    def ideal_seconds(self, per_host_limit: int) -> float:
        """The latency-bound catch-up time (see the module docstring)."""
        return self.plan.ideal_seconds(per_host_limit, self.mean_latency)

    def stats(self) -> Json:
        """The counters, with the plan's totals."""
        snapshot = self.stats_counter.snapshot([server.url_or_none() for server in self.servers])
        snapshot["plan"] = self.plan.summary()
        return snapshot

    # -- answering requests ----------------------------------------------------------------

    def route(self, host: int, path: str) -> Route | None:
        """What ``path`` serves on ``host``, if anything."""
        return self.routes[host].get(path)

    def sleep(self) -> None:
        """The latency of one request."""
        low, high = self.latency
        if high > 0:
            time.sleep(self.random.uniform(low, high))

    def respond(self, host: int, target: str, host_header: str | None) -> Response:
        """The answer to ``GET target`` on ``host``, after the latency."""
        parts = urlsplit(target)
        route = self.route(host, parts.path)
        if route is not None and route.kind == "stats":
            return Response(HTTPStatus.OK, {"Content-Type": "application/json"},
                            orjson.dumps(self.stats()))  # fmt: skip
        kind = "unknown" if route is None else route.kind
        feed = None if route is None or route.feed is None else route.feed.plan.path
        with self.stats_counter.request(host, kind, feed):
            self.sleep()
            if route is None:
                return error_response(HTTPStatus.NOT_FOUND)
            if route.feed is not None:
                base = f"http://{host_header}" if host_header else self.base_url(host)
                response, items = route.feed.page(parts.query, base + target)
                if response.status == HTTPStatus.OK:
                    self.stats_counter.served(route.feed.plan.path, items, len(self.sources))
                return response
            return self.document(route)

    def document(self, route: Route) -> Response:
        """A collection, catalog, dataset site or CSV."""
        if route.kind == "collection":
            return json_ld(collection_document(self.collection_url, self.catalog_urls(),
                                               self.published))  # fmt: skip
        if route.kind == "catalog":
            listed = [self.dataset_url(data) for data in self.plan.datasets
                      if route.number in data.catalogs]  # fmt: skip
            url = self.catalog_urls()[route.number]
            return json_ld(catalog_document(url, route.number, listed, self.published))
        data = self.plan.datasets[route.number]
        if route.kind == "csv":
            return Response(HTTPStatus.OK, {"Content-Type": "text/csv"}, CSV_BODY)
        base = self.base_url(data.host)
        document = dataset_document(data, self.dataset_url(data),
                                    [base + feed.path for feed in data.feeds],
                                    base + data.csv_path, self.published)  # fmt: skip
        return dataset_page(document) if data.html else json_ld(document)


def catalog_path(number: int) -> str:
    """The path of catalog ``number`` on its host."""
    return f"/catalogs/catalog-{number + 1}.jsonld"


class EcosystemHost(BackgroundServer):
    """One host of the ecosystem: its own port, answering from the ecosystem."""

    thread_name = "ecosystem-host"

    def __init__(self, ecosystem: Ecosystem, number: int, host: str) -> None:
        self.ecosystem = ecosystem
        self.number = number
        self.host = host
        self.port = 0

    def make_server(self) -> EcosystemServer:
        """The HTTP server of this host."""
        return EcosystemServer((self.host, self.port), self)

    def url_or_none(self) -> str:
        """The base URL, or "" before the first start."""
        return self.base_url if self.port else ""


class EcosystemServer(SampleHTTPServer):
    """A host's server: its handlers answer from the ecosystem."""

    # A client opening many connections at once must not meet a full listen backlog
    # (the default 5 drops SYNs, and the retry costs a second).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], host: EcosystemHost) -> None:
        self.host = host
        super().__init__(address, EcosystemHandler)


class EcosystemHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; every GET is answered by the ecosystem."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # two writes per answer: no delayed-ACK stall
    server: EcosystemServer

    def do_GET(self) -> None:
        """Answer one GET."""
        host = self.server.host
        response = host.ecosystem.respond(host.number, self.path, self.headers.get("Host"))
        send_answer(self, response.status, response.headers, response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: ``/_stats`` tells what was served."""


# --- the command line -----------------------------------------------------------------------


def parse_latency(text: str) -> tuple[float, float]:
    """``LOW,HIGH`` seconds (or one value for both)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not seconds: {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not 0 <= values[0] <= values[1]:
        raise argparse.ArgumentTypeError("expected LOW,HIGH with 0 <= LOW <= HIGH")
    return values[0], values[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m harvester.sample.ecosystem",
        description="Serve a simulated OpenActive ecosystem (a data catalog chain over many "
        "hosts, hundreds of RPDE feeds) until SIGTERM/SIGINT.",
    )
    parser.add_argument("--datasets", type=int, default=DEFAULT_DATASETS, help="default 170")
    parser.add_argument("--hosts", type=int, default=DEFAULT_HOSTS, help="default 20")
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS, help="default 2000000")
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="default 500")
    parser.add_argument("--latency", type=parse_latency, default=DEFAULT_LATENCY,
                        help="LOW,HIGH seconds before each answer (default 0.1,0.3)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="default 1")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    parser.add_argument("--now", type=parse_now, default=None,
                        help="ISO 8601 instant with a timezone to generate around "
                        "(default: now)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until told to stop; exit status 0."""
    args = parse_args(argv)
    ecosystem = Ecosystem(datasets=args.datasets, hosts=args.hosts, items=args.items,
                          page_size=args.page_size, latency=args.latency, seed=args.seed,
                          now=args.now, host=args.host)  # fmt: skip
    with ecosystem:
        summary = ecosystem.plan.summary()
        print(f"ecosystem: {summary['datasets']} datasets, {summary['feeds']} feeds, "
              f"{summary['items']:,} items, {summary['pages']:,} pages on {args.hosts} hosts; "
              f"latency-bound ideal at 4 requests per host: {ecosystem.ideal_seconds(4):.1f} s",
              file=sys.stderr, flush=True)  # fmt: skip
        print(f"READY {ecosystem.collection_url}", flush=True)
        wait_for_signal()
    return 0


if __name__ == "__main__":
    sys.exit(main())
