"""Prometheus metrics and an optional HTTP port serving /metrics and /healthz.

Per-feed series are labelled `source` and `kind` (the type of item the feed serves);
gauges that describe one feed also carry its `url`, as two feeds may share a kind.
"""

from __future__ import annotations

import errno
import logging
import platform
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from harvester import __version__, feedstate
from harvester.config import Settings
from harvester.errors import ConfigError

logger = logging.getLogger(__name__)

HEALTHY_WITHIN_SECONDS = 60.0  # /healthz fails when the worker loop has not ticked for this long
FEED_STATES = ("new", "harvesting", "caught_up", "backing_off", "gone", "error", "database")
DEFAULT_HOST = "127.0.0.1"  # the port tells feed URLs and health: not for the world unless asked

# A `_created` series per counter doubles what a scrape carries and nobody graphs it.
# The switch is process-wide in prometheus_client and read when a counter is made: so
# here, before the first one.
disable_created_metrics()

registry = CollectorRegistry(auto_describe=True)
# What every Prometheus exporter is expected to show: process_*, python_info, python_gc_*.
ProcessCollector(registry=registry)
PlatformCollector(registry=registry)
GCCollector(registry=registry)
BUILD = Info("harvester_build", "the harvester's version and the Python running it",
             registry=registry)  # fmt: skip
BUILD.info({"version": __version__, "python": platform.python_version()})

# Counters are summed over a source's feeds of one kind: no URL, so they stay readable.
PAGES = Counter("harvester_pages", "RPDE pages committed, by source and kind of item",
                ["source", "kind"], registry=registry)  # fmt: skip
ITEMS = Counter("harvester_items", "RPDE items written, by source and kind of item",
                ["source", "kind"], registry=registry)  # fmt: skip
REJECTED = Counter(
    "harvester_items_rejected", "RPDE items set aside as broken, by source and kind of item",
    ["source", "kind"], registry=registry,
)  # fmt: skip
ERRORS = Counter(
    "harvester_feed_errors", "feed failures by source, kind of item and resulting state",
    ["source", "kind", "state"], registry=registry,
)  # fmt: skip


class Typed(Protocol):
    """A stored row: all the metrics read of it is its item type."""

    @property
    def type(self) -> str | None:
        """The item's type (`ScheduledSession`, ...); None for a tombstone."""


def url_kind(url: str) -> str:
    """A feed's kind before any page is seen: its URL's last path segment."""
    parts = urlsplit(url)
    return parts.path.rstrip("/").rsplit("/", 1)[-1] or parts.hostname or url


def page_kind(rows: Sequence[Typed]) -> str | None:
    """The most common item type among a page's rows; None when no row has one."""
    tally = Tally(row.type for row in rows if row.type)
    return tally.most_common(1)[0][0] if tally else None


class Kinds:
    """The kind of item each feed serves, as last seen on one of its pages, by URL."""

    def __init__(self) -> None:
        self.by_url: dict[str, str] = {}
        self.lock = threading.Lock()

    def see(self, url: str, rows: Sequence[Typed]) -> str:
        """Note the kind of a page's rows; the feed's kind from now on."""
        kind = page_kind(rows)
        if kind is not None:  # a page of tombstones says nothing: keep what was seen
            with self.lock:
                self.by_url[url] = kind
        return self.of(url)

    def of(self, url: str) -> str:
        """The feed's kind: as last seen, else read from its URL."""
        with self.lock:
            return self.by_url.get(url) or url_kind(url)


KINDS = Kinds()


class StateCollector(Collector):
    """harvester_feed_state: 1 for each feed's current state, 0 for the others.

    Labelled at scrape time, so a feed whose kind becomes known leaves no stale series
    under the kind read from its URL.
    """

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], str] = {}
        self.lock = threading.Lock()

    def set(self, source: str, url: str, state: str) -> None:
        """The feed is now in this state."""
        with self.lock:
            self.states[(source, url)] = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per feed and state."""
        family = GaugeMetricFamily(
            "harvester_feed_state", "1 for the feed's current state, by source, kind and URL",
            labels=["source", "kind", "url", "state"],
        )  # fmt: skip
        with self.lock:
            states = list(self.states.items())
        for (source, url), current in states:
            kind = KINDS.of(url)
            for name in FEED_STATES:
                family.add_metric([source, kind, url, name], 1 if name == current else 0)
        yield family


STATE = StateCollector()
registry.register(STATE)


class LagCollector(Collector):
    """harvester_feed_lag_seconds: time since each feed last reached its last page."""

    def __init__(self) -> None:
        self.caught_up: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()

    def mark(self, source: str, url: str) -> None:
        """The feed just reached its last page."""
        with self.lock:
            self.caught_up[(source, url)] = time.time()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Lag per feed, computed at scrape time so it grows while a feed is stuck."""
        family = GaugeMetricFamily(
            "harvester_feed_lag_seconds",
            "seconds since the feed was last caught up, by source, kind and URL",
            labels=["source", "kind", "url"],
        )  # fmt: skip
        now = time.time()
        with self.lock:
            moments = list(self.caught_up.items())
        for (source, url), moment in moments:
            family.add_metric([source, KINDS.of(url), url], now - moment)
        yield family


LAG = LagCollector()
registry.register(LAG)


class CaughtUpCollector(Collector):
    """harvester_feed_last_caught_up_timestamp_seconds per feed, read from the database.

    From the feeds table, not from this process's memory: a feed stuck since before a
    restart, or one another worker holds, still raises a lag alert
    (`time() - harvester_feed_last_caught_up_timestamp_seconds > ...`).
    """

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def bind(self, engine: Engine) -> None:
        """Read from this database from now on."""
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per feed that has ever reached its last page."""
        family = GaugeMetricFamily(
            "harvester_feed_last_caught_up_timestamp_seconds",
            "when the feed last reached its last page (Unix time), from the database,"
            " by source, kind and URL",
            labels=["source", "kind", "url"],
        )  # fmt: skip
        # A feed this process has not harvested (another worker's) gets its URL's kind.
        for source, url, moment in self.read():
            family.add_metric([source, KINDS.of(url), url], moment.timestamp())
        yield family

    def read(self) -> list[Any]:
        """(source, url, caught_up_at) of every feed; none when the database is away."""
        if self.engine is None:
            return []
        try:
            with self.engine.begin() as conn:
                return feedstate.caught_up_times(conn)
        except SQLAlchemyError as exc:
            logger.warning("metrics: feeds not read: %s", type(exc).__name__,
                           extra={"event": "metrics_database_unavailable"})  # fmt: skip
            return []


CAUGHT_UP = CaughtUpCollector()
registry.register(CAUGHT_UP)


class Health:
    """What /healthz reads: the worker loop's heartbeat, the database, and feed progress."""

    def __init__(self, unhealthy_after: float = Settings.unhealthy_after_seconds) -> None:
        self.started = self.last_tick = self.last_progress = time.monotonic()
        self.database_ok = True
        self.unhealthy_after = unhealthy_after

    def configure(self, unhealthy_after: float) -> None:
        """Set how long without any feed's progress makes the process unhealthy."""
        self.unhealthy_after = unhealthy_after

    def tick(self, database_ok: bool = True) -> None:
        """The worker loop is alive; note whether the database answered lately."""
        self.last_tick = time.monotonic()
        self.database_ok = database_ok

    def progress(self) -> None:
        """A feed committed a page (a poll of its last page included)."""
        self.last_progress = time.monotonic()

    def problem(self) -> str | None:
        """Why the process is unhealthy now, or None."""
        return health_problem(time.monotonic(), self.last_tick, self.database_ok,
                              self.last_progress, self.unhealthy_after)  # fmt: skip


def health_problem(
    now: float, last_tick: float, database_ok: bool, last_progress: float, unhealthy_after: float
) -> str | None:
    """The rule of /healthz: a live loop, a reachable database, and some feed progressing.

    Progress counts a poll of a caught-up feed's last page, so feeds that are merely up to
    date stay healthy; all feeds gone, failing or backing off make the process unhealthy.
    """
    if now - last_tick >= HEALTHY_WITHIN_SECONDS:
        return f"the worker loop has not run for {now - last_tick:.0f} s"
    if not database_ok:
        return "the database is unavailable"
    if now - last_progress >= unhealthy_after:
        return (f"no feed has made progress for {now - last_progress:.0f} s"
                f" (limit {unhealthy_after:.0f} s): see `harvester status`")  # fmt: skip
    return None


HEALTH = Health()


def record_page(
    source: str, url: str, rows: Sequence[Typed], rejected: int, caught_up: bool
) -> None:
    """Count one committed page; its rows tell the feed's kind."""
    HEALTH.progress()
    kind = KINDS.see(url, rows)
    PAGES.labels(source, kind).inc()
    ITEMS.labels(source, kind).inc(len(rows))
    if rejected:
        REJECTED.labels(source, kind).inc(rejected)
    if caught_up:
        LAG.mark(source, url)
    set_state(source, url, "caught_up" if caught_up else "harvesting")


def record_error(source: str, url: str, state: str) -> None:
    """Count a feed failure under the feed's last seen kind and show its new state."""
    ERRORS.labels(source, KINDS.of(url), state).inc()
    set_state(source, url, state)


def set_state(source: str, url: str, state: str) -> None:
    """Exactly one state gauge per feed is 1."""
    STATE.set(source, url, state)


class MetricsHandler(BaseHTTPRequestHandler):
    """GET /metrics (Prometheus text format) and GET /healthz."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self.reply(HTTPStatus.OK, generate_latest(registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            problem = HEALTH.problem()
            if problem is None:
                self.reply(HTTPStatus.OK, b"ok\n", "text/plain")
            else:
                body = f"unhealthy: {problem}\n".encode()
                self.reply(HTTPStatus.SERVICE_UNAVAILABLE, body, "text/plain")
        else:
            self.reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        """Send a complete response."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not worth a log line each."""


def serve_metrics(host: str = DEFAULT_HOST, port: int = 0) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz in a daemon thread; returns the server (port 0 = any)."""
    try:
        server = ThreadingHTTPServer((host, port), MetricsHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # a second worker on one port: say so, no traceback
            raise ConfigError(f"metrics port {port} on {host} is in use") from exc
        raise
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="harvester-metrics", daemon=True).start()
    logger.info(
        "metrics on http://%s:%d/metrics", host, server.server_address[1],
        extra={"event": "metrics_listening", "port": server.server_address[1]},
    )  # fmt: skip
    return server
