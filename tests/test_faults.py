"""A publisher that fails on purpose, and real `harvester` processes on a real PostgreSQL.

Each fault ends with the right data (harvester.items equal to what the publisher holds,
or to exactly the pages before the fault) and the right feed state (harvester.feeds and
`harvester status`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import (
    FAST_SETTINGS,
    feed_rows,
    held_items,
    parse_status,
    run_harvester,
    start_harvester,
    wait_for,
    write_config,
)
from sqlalchemy import Engine, text

from harvester.sample import FEED_NAMES, Fault, SamplePublisher

PAGE_SIZE = 50
FAST = {**FAST_SETTINGS, "request_timeout_seconds": 1}
TRUNCATED = b'{"next": "http://127.0.0.1/feeds/x", "items": [{"state": "upd'


@pytest.fixture
def publisher() -> Iterator[SamplePublisher]:
    """A small publisher: 400 items over four feeds, pages of 50, last pages not cached."""
    with SamplePublisher(items=400, page_size=PAGE_SIZE, last_page_max_age=0) as started:
        yield started


def fast_config(tmp_path: Path, publisher: SamplePublisher, **settings: Any) -> Path:
    """The publisher's feeds with the small test settings (overridable)."""
    return write_config(tmp_path / "harvester.toml", publisher.to_config_toml(), FAST | settings)


# --- reading the outcome -------------------------------------------------------------


def feed_row(engine: Engine, url: str) -> Any:
    """The feed's harvester.feeds row (None before the harvester registered it)."""
    return feed_rows(engine).get(url)


def feed_state(engine: Engine, url: str) -> str | None:
    """The feed's state (None before the harvester registered it)."""
    row = feed_row(engine, url)
    return None if row is None else row.state


def prefix_held(publisher: SamplePublisher, feed: str, items: int) -> dict[tuple[str, str], Any]:
    """What a harvester holds after committing exactly the first `items` items of `feed`."""
    held: dict[tuple[str, str], Any] = {}
    for item in list(publisher.items(feed))[:items]:
        key = (item["kind"], str(item["id"]))
        if item["state"] == "updated":
            held[key] = item["data"]
        else:
            held.pop(key, None)
    return held


Expected = tuple[dict[tuple[str, str], Any], str, str | None]  # items, state, error text


def assert_feeds(
    engine: Engine, db_url: str, publisher: SamplePublisher, **special: Expected
) -> None:
    """Every feed holds the right items and shows the right state in its row and in
    `harvester status`: by default exactly the publisher's items, caught up, no error;
    `special` (by feed name, dashes as underscores) says otherwise."""
    result = run_harvester(db_url, "status")
    assert result.returncode == 0, result.stderr
    status = parse_status(result.stdout)
    lines, errors = status.lines, status.errors
    for feed in FEED_NAMES:
        url = publisher.feed_url(feed)
        expected, state, error = special.get(
            feed.replace("-", "_"), (publisher.held(feed), "caught_up", None)
        )
        assert held_items(engine, url) == expected, url
        row = feed_row(engine, url)
        assert row.state == state, (url, row.last_error)
        assert lines[url][3] == state
        assert lines[url][2] == str(len(expected))
        if error is None:
            assert row.last_error is None and url not in errors
        else:
            assert error in row.last_error and error in errors[url]


def request_times(publisher: SamplePublisher, feed: str) -> list[tuple[float, str]]:
    """The publisher's log of requests to one feed: (monotonic time, path and query)."""
    return [
        (at, target)
        for at, target in publisher.requests
        if target.split("?")[0].endswith(f"/{feed}")
    ]


# --- faults the harvester rides out within one run ----------------------------------


@dataclass(frozen=True)
class Passing:
    """A fault on the first requests of the slots feed that a run must ride out."""

    faults: tuple[Fault, ...]
    first_page_requests: int  # how often the first page is asked for, retries included
    min_gap: float = 0.0  # seconds between the faulty answer and the next request, at least


PASSING = {
    # 5xx twice, then the page: retried within the run's attempts
    "5xx-then-recovery": Passing((Fault(status=500, times=2),), 3),
    # a gateway's HTML error page is a 5xx like any other
    "502-html": Passing((Fault(status=502, body=b"<html>Bad gateway</html>",
                               headers={"Content-Type": "text/html"}),), 2),
    # 429 with Retry-After in seconds: the next request waits at least that long
    "429-retry-after": Passing((Fault(status=429, headers={"Retry-After": "2"}),), 2, 2.0),
    # 503 with Retry-After is a passing overload: waited out, not parked
    "503-retry-after": Passing((Fault(status=503, headers={"Retry-After": "1"}),), 2, 1.0),
    # a body cut short once: retried, and the next answer is whole
    "truncated-json-once": Passing((Fault(body=TRUNCATED),), 2),
    # slow answers below the timeout: no retry at all
    "slow-below-timeout": Passing((Fault(delay=0.5, times=3),), 1),
    # an answer slower than request_timeout_seconds (1 s): abandoned and retried
    "slower-than-timeout": Passing((Fault(delay=1.6),), 2, 1.0),
}  # fmt: skip


@pytest.mark.parametrize("case", PASSING.values(), ids=PASSING.keys())
def test_passing_faults_are_survived_in_one_run(
    case: Passing, publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    for fault in case.faults:
        publisher.inject("slots", fault)
    result = run_harvester(
        db_url, "run", "--once", "--config", str(fast_config(tmp_path, publisher))
    )
    assert result.returncode == 0, result.stderr
    first_page = [at for at, target in request_times(publisher, "slots") if "?" not in target]
    assert len(first_page) == case.first_page_requests
    if case.min_gap:
        assert first_page[1] - first_page[0] >= case.min_gap
    assert_feeds(engine, db_url, publisher)


# --- faults that outlast a run ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "state", "message"),
    [
        # a 5xx on every attempt: the feed backs off, and recovers on the next run
        (Fault(status=500, times=FAST["retry_attempts"]), "backing_off", "HTTP 500"),
        # a truncated body on every attempt: the feed is in error (not JSON)
        (Fault(body=TRUNCATED, times=FAST["retry_attempts"]), "error", "not JSON"),
    ],
    ids=["5xx-every-attempt", "truncated-json-every-attempt"],
)
def test_a_feed_failing_mid_way_keeps_its_pages_and_recovers_later(
    fault: Fault, state: str, message: str, publisher: SamplePublisher, db_url: str,
    engine: Engine, tmp_path: Path,
) -> None:  # fmt: skip
    publisher.inject("slots", Fault(times=2))  # two good pages first
    publisher.inject("slots", fault)
    config = str(fast_config(tmp_path, publisher))
    url = publisher.feed_url("slots")
    failed = run_harvester(db_url, "run", "--once", "--config", config)
    assert failed.returncode == 1
    assert f"FAILED sample {url}" in failed.stderr and message in failed.stderr
    assert len(request_times(publisher, "slots")) == 2 + FAST["retry_attempts"]
    expected = prefix_held(publisher, "slots", 2 * PAGE_SIZE)
    assert_feeds(engine, db_url, publisher, slots=(expected, state, message))  # others exact

    again = run_harvester(db_url, "run", "--once", "--config", config)
    assert again.returncode == 0, again.stderr
    third_page = request_times(publisher, "slots")[2 + FAST["retry_attempts"]][1]
    assert "afterChangeNumber" in third_page  # resumed from the stored position
    assert_feeds(engine, db_url, publisher)


class RecordingServer:
    """A tiny HTTP server that answers by a script and records every request's headers."""

    def __init__(self, answer: Callable[[str, int], tuple[int, dict[str, str], bytes]]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    server.requests.append((self.path, dict(self.headers.items())))
                    seen = sum(1 for path, _ in server.requests if path == self.path)
                status, headers, body = server.answer(self.path, seen)
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RecordingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def nothing(path: str, seen: int) -> tuple[int, dict[str, str], bytes]:
    """An empty RPDE last page for whatever is asked."""
    return 200, {}, b'{"items": [], "next": "/"}'


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        # the page's `next` names another origin
        (lambda foreign: Fault(next_url=f"{foreign}/feeds/slots?afterChangeNumber=1"),
         "`next` points to another origin, refused"),
        # a redirect to another origin: the API key must not follow it
        (lambda foreign: Fault(status=302, headers={"Location": f"{foreign}/feeds/slots"}),
         "redirect to another origin refused"),
    ],
    ids=["foreign-next", "foreign-redirect"],
)  # fmt: skip
def test_a_foreign_origin_is_refused_before_any_request(
    fault: Callable[[str], Fault], message: str, publisher: SamplePublisher, db_url: str,
    engine: Engine, tmp_path: Path,
) -> None:  # fmt: skip
    with RecordingServer(nothing) as foreign:
        publisher.inject("slots", Fault(times=1))  # one good page first
        publisher.inject("slots", fault(foreign.base_url))
        url = publisher.feed_url("slots")
        result = run_harvester(
            db_url, "run", "--once", "--config", str(fast_config(tmp_path, publisher))
        )
        assert foreign.requests == []  # not a single request left for the foreign origin
    assert result.returncode == 1
    assert f"FAILED sample {url}" in result.stderr and foreign.base_url in result.stderr
    assert len(request_times(publisher, "slots")) == 2  # refused, not retried
    page_one = prefix_held(publisher, "slots", PAGE_SIZE)
    assert_feeds(engine, db_url, publisher, slots=(page_one, "error", message))
    assert foreign.base_url in feed_row(engine, url).last_error
    assert feed_row(engine, url).next_url.startswith(publisher.base_url)


def test_404_and_410_mark_feeds_gone_and_a_later_run_leaves_them_alone(
    publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    publisher.inject("facility-uses", Fault(status=404, times=100))
    publisher.inject("slots", Fault(status=410, times=100))
    config = str(fast_config(tmp_path, publisher))
    result = run_harvester(db_url, "run", "--once", "--config", config)
    assert result.returncode == 1
    for feed in ("facility-uses", "slots"):
        assert f"FAILED sample {publisher.feed_url(feed)}" in result.stderr
        assert len(request_times(publisher, feed)) == 1  # RPDE: gone is not retried
    gone = {"facility_uses": ({}, "gone", "HTTP 404"), "slots": ({}, "gone", "HTTP 410")}
    assert_feeds(engine, db_url, publisher, **gone)

    seen = len(publisher.requests)
    with start_harvester(db_url, "run", "--config", config) as worker:
        time.sleep(2.5)  # several polls of the caught-up feeds (min_poll_seconds = 1)
        assert worker.stop() == 0
    later = [target for _, target in publisher.requests[seen:]]
    assert len(later) >= 4  # the healthy feeds were polled
    assert not [t for t in later if "facility-uses" in t or "/slots" in t]
    for feed in ("facility-uses", "slots"):
        assert feed_row(engine, publisher.feed_url(feed)).state == "gone"


def test_503_without_retry_after_parks_the_feed_60_to_120_minutes_by_default(
    publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    publisher.inject("slots", Fault(status=503))
    config = write_config(tmp_path / "defaults.toml", publisher.to_config_toml(), {})
    url = publisher.feed_url("slots")
    result = run_harvester(db_url, "run", "--once", "--config", str(config))
    assert result.returncode == 1
    assert f"FAILED sample {url}" in result.stderr and "503" in result.stderr
    assert len(request_times(publisher, "slots")) == 1  # not retried within the run
    assert_feeds(engine, db_url, publisher, slots=({}, "backing_off", "HTTP 503"))
    row = feed_row(engine, url)
    assert timedelta(minutes=59) <= row.retry_at - row.last_error_at <= timedelta(minutes=121)

    with start_harvester(db_url, "run", "--config", str(config)) as worker:
        time.sleep(2)  # `run` honours the stored retry_at: no request to the parked feed
        assert worker.stop() == 0
    assert len(request_times(publisher, "slots")) == 1
    assert feed_row(engine, url).state == "backing_off"


def test_503_back_off_is_configurable_and_the_feed_resumes(
    publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    publisher.inject("slots", Fault(status=503))
    url = publisher.feed_url("slots")
    config = str(fast_config(tmp_path, publisher))
    with start_harvester(db_url, "run", "--config", config) as worker:
        assert wait_for(lambda: feed_state(engine, url) == "backing_off", 15)
        row = feed_row(engine, url)
        assert timedelta(seconds=1.5) <= row.retry_at - row.last_error_at <= timedelta(seconds=3.5)
        assert wait_for(lambda: held_items(engine, url) == publisher.held("slots"), 20)
        assert worker.stop() == 0
    times = [at for at, _ in request_times(publisher, "slots")]
    assert times[1] - times[0] >= FAST["overload_retry_seconds"][0]
    assert_feeds(engine, db_url, publisher)


# --- API keys ---------------------------------------------------------------------------

SECRET = "k3y-7f1e9a-DO-NOT-LEAK"


@dataclass
class KeyedFeed:
    """A two-page feed that fails once, and a feed that refuses the key: the logs' busiest path."""

    base_url: str = ""
    items: list[dict[str, Any]] = field(default_factory=list)

    def answer(self, path: str, seen: int) -> tuple[int, dict[str, str], bytes]:
        """500 once, then page 1 (one item), then the last page; /denied is always 401."""
        if path.startswith("/denied"):
            return 401, {}, b'{"error": "bad key"}'
        if path == "/feed" and seen == 1:
            return 500, {}, b'{"error": "try again"}'
        if path == "/feed":
            page = {"next": f"{self.base_url}/feed?afterChangeNumber=1", "items": self.items}
        else:
            page = {"next": f"{self.base_url}{path}", "items": []}
        return 200, {}, orjson.dumps(page)


def test_api_key_reaches_the_publisher_and_nowhere_else(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    data = {"@type": "SessionSeries", "@id": "x:s1"}
    item = {"state": "updated", "kind": "SessionSeries", "id": "s1", "modified": 1, "data": data}
    feed = KeyedFeed(items=[item])
    with RecordingServer(feed.answer) as server:
        feed.base_url = server.base_url
        body = "\n".join([
            '[[sources]]', 'name = "keyed"',
            f'feeds = ["{server.base_url}/feed", "{server.base_url}/denied"]',
            "[sources.headers]", 'X-API-KEY = "${TEST_HARVESTER_KEY}"',
            'Authorization = "Bearer ${TEST_HARVESTER_KEY}"',
        ])  # fmt: skip
        config = write_config(tmp_path / "keyed.toml", body, FAST)
        env = {"TEST_HARVESTER_KEY": SECRET}
        result = run_harvester(db_url, "run", "--once", "--config", str(config),
                               "--log-level", "DEBUG", env=env)  # fmt: skip
        json_logs = run_harvester(db_url, "run", "--once", "--config", str(config),
                                  "--log-format", "json", env=env)  # fmt: skip
        status = run_harvester(db_url, "status", "--config", str(config), env=env)
    assert result.returncode == 1 and json_logs.returncode == 1
    assert len(server.requests) >= 4
    for _, headers in server.requests:
        assert headers["X-API-KEY"] == SECRET
        assert headers["Authorization"] == f"Bearer {SECRET}"
    assert "retrying" in result.stderr and "401" in result.stderr  # the error paths ran
    for output in (result.stdout, result.stderr, json_logs.stderr, status.stdout, status.stderr):
        assert SECRET not in output
    assert held_items(engine, f"{server.base_url}/feed") == {("SessionSeries", "s1"): data}
    assert secret_in_database(engine, SECRET) == []


def secret_in_database(engine: Engine, secret: str) -> list[str]:
    """Every table (of every schema but the catalogs) whose rows mention `secret`."""
    with engine.connect() as conn:
        listing = text(
            "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            " AND table_type = 'BASE TABLE'"
        )
        tables = conn.execute(listing).scalars().all()
        assert "harvester.feeds" in tables
        pattern = {"s": f"%{secret}%"}
        return [
            table
            for table in tables
            if conn.execute(
                text(f"SELECT count(*) FROM {table} AS t WHERE t::text LIKE :s"), pattern
            ).scalar_one()
        ]


def test_run_once_exit_and_report_name_every_failed_feed(
    publisher: SamplePublisher, db_url: str, tmp_path: Path
) -> None:
    publisher.inject("session-series", Fault(status=404))
    publisher.inject("slots", Fault(body=b"<html>not json</html>", times=10))
    result = run_harvester(
        db_url, "run", "--once", "--config", str(fast_config(tmp_path, publisher))
    )
    assert result.returncode == 1
    failed = [line for line in result.stderr.splitlines() if "FAILED" in line]
    assert len(failed) == 2
    assert publisher.feed_url("session-series") in failed[0] + failed[1]
    assert publisher.feed_url("slots") in failed[0] + failed[1]
