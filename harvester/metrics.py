"""Prometheus metrics and an optional HTTP port serving /metrics and /healthz."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from harvester import feedstate
from harvester.config import Settings

logger = logging.getLogger(__name__)

HEALTHY_WITHIN_SECONDS = 60.0  # /healthz fails when the worker loop has not ticked for this long
FEED_STATES = ("new", "harvesting", "caught_up", "backing_off", "gone", "error", "database")

registry = CollectorRegistry(auto_describe=True)
PAGES = Counter("harvester_pages", "RPDE pages committed", ["source", "feed"], registry=registry)
ITEMS = Counter("harvester_items", "RPDE items written", ["source", "feed"], registry=registry)
REJECTED = Counter(
    "harvester_items_rejected", "RPDE items set aside as broken", ["source", "feed"],
    registry=registry,
)  # fmt: skip
ERRORS = Counter(
    "harvester_feed_errors", "feed failures by resulting state", ["source", "feed", "state"],
    registry=registry,
)  # fmt: skip
STATE = Gauge(
    "harvester_feed_state", "1 for the feed's current state", ["source", "feed", "state"],
    registry=registry,
)  # fmt: skip


class LagCollector(Collector):
    """harvester_feed_lag_seconds: time since each feed last reached its last page."""

    def __init__(self) -> None:
        self.caught_up: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()

    def mark(self, source: str, feed: str) -> None:
        """The feed just reached its last page."""
        with self.lock:
            self.caught_up[(source, feed)] = time.time()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Lag per feed, computed at scrape time so it grows while a feed is stuck."""
        family = GaugeMetricFamily(
            "harvester_feed_lag_seconds", "seconds since the feed was last caught up",
            labels=["source", "feed"],
        )  # fmt: skip
        now = time.time()
        with self.lock:
            for (source, feed), moment in self.caught_up.items():
                family.add_metric([source, feed], now - moment)
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
            "when the feed last reached its last page (Unix time), from the database",
            labels=["source", "feed"],
        )  # fmt: skip
        for source, url, moment in self.read():
            family.add_metric([source, url], moment.timestamp())
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


def record_page(source: str, feed: str, items: int, rejected: int, caught_up: bool) -> None:
    """Count one committed page."""
    HEALTH.progress()
    PAGES.labels(source, feed).inc()
    ITEMS.labels(source, feed).inc(items)
    if rejected:
        REJECTED.labels(source, feed).inc(rejected)
    if caught_up:
        LAG.mark(source, feed)
    set_state(source, feed, "caught_up" if caught_up else "harvesting")


def record_error(source: str, feed: str, state: str) -> None:
    """Count a feed failure and show its new state."""
    ERRORS.labels(source, feed, state).inc()
    set_state(source, feed, state)


def set_state(source: str, feed: str, state: str) -> None:
    """Exactly one state gauge per feed is 1."""
    for name in FEED_STATES:
        STATE.labels(source, feed, name).set(1 if name == state else 0)


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


def serve_metrics(host: str, port: int) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz in a daemon thread; returns the server (port 0 = any)."""
    server = ThreadingHTTPServer((host, port), MetricsHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="harvester-metrics", daemon=True).start()
    logger.info(
        "metrics on http://%s:%d/metrics", host, server.server_address[1],
        extra={"event": "metrics_listening", "port": server.server_address[1]},
    )  # fmt: skip
    return server
