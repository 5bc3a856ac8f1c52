"""Real `harvester run` processes on one PostgreSQL: leases, kills, shutdown, outages, polls."""

from __future__ import annotations

import itertools
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from helpers import (
    FAST_SETTINGS,
    HarvesterProcess,
    held_items,
    libpq_url,
    run_harvester,
    start_harvester,
    wait_for,
    write_config,
)
from sqlalchemy import Engine, make_url, text

from harvester.sample import FEED_NAMES, Fault, SamplePublisher
from harvester.sample.server import parse_position

PAGE_SIZE = 50
FAST = FAST_SETTINGS
PAGE_DELAY = 0.03  # seconds each page takes to serve: harvests last a few seconds


@contextmanager
def slow_publisher(delay: float) -> Iterator[SamplePublisher]:
    """6,000 items in pages of 50 (about 120 pages), each page served `delay` s late."""
    with SamplePublisher(items=6_000, page_size=PAGE_SIZE, last_page_max_age=0) as started:
        for feed in FEED_NAMES:
            started.inject(feed, Fault(delay=delay, times=1_000_000))
        yield started


@pytest.fixture
def publisher() -> Iterator[SamplePublisher]:
    """The slow publisher: a harvest lasts a few seconds."""
    with slow_publisher(PAGE_DELAY) as started:
        yield started


def config_for(tmp_path: Path, publisher: SamplePublisher, **settings: Any) -> str:
    """The publisher's four feeds with small test settings."""
    path = write_config(tmp_path / "harvester.toml", publisher.to_config_toml(), FAST | settings)
    return str(path)


# --- reading the database -----------------------------------------------------------------


def query(db_url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on its own short connection (not named 'harvester')."""
    with psycopg.connect(libpq_url(db_url), autocommit=True, application_name="test") as conn:
        return conn.execute(sql, params).fetchall()


def feeds(db_url: str) -> dict[str, tuple[Any, ...]]:
    """url → (state, lease_owner, pages, items_written, next_url)."""
    rows = query(db_url, "SELECT url, state, lease_owner, pages, items_written, next_url"
                         " FROM harvester.feeds")  # fmt: skip
    return {row[0]: row[1:] for row in rows}


def owner_pid(owner: str | None) -> int | None:
    """The process id in a lease owner (host:pid:random)."""
    return int(owner.split(":")[-2]) if owner else None


def harvester_backends(db_url: str) -> int:
    """Connections that say they are the harvester, on this test's database."""
    name = make_url(db_url).database
    sql = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'harvester' AND datname = %(name)s"
    )
    return query(db_url, sql, name=name)[0][0]


def all_exact(engine: Engine, publisher: SamplePublisher) -> bool:
    """Every feed holds exactly the publisher's items."""
    return all(
        held_items(engine, publisher.feed_url(feed)) == publisher.held(feed) for feed in FEED_NAMES
    )


def assert_exact(engine: Engine, db_url: str, publisher: SamplePublisher) -> None:
    """Right data, right state, and every content page committed exactly once."""
    rows = feeds(db_url)
    for feed in FEED_NAMES:
        url = publisher.feed_url(feed)
        assert held_items(engine, url) == publisher.held(feed), feed
        state, _, pages, items_written, next_url = rows[url]
        assert state == "caught_up"
        published = list(publisher.items(feed))
        assert items_written == len(published)  # no page's items were written twice
        served = [t for _, t in publisher.requests if urlsplit(t).path.endswith(f"/{feed}")]
        last = next_url.removeprefix(publisher.base_url)
        content_pages = set(served) - {last}
        assert len(content_pages) == math.ceil(len(published) / PAGE_SIZE)
        # Every content page once, plus one commit per poll of the last page, at most.
        assert len(content_pages) < pages <= len(content_pages) + served.count(last)
    assert stale_children(engine) == 0


def stale_children(engine: Engine) -> int:
    """Children whose stored parent join differs from one computed afresh (rolled back)."""
    from harvester import parents

    with engine.connect() as conn:
        refs = conn.execute(text("SELECT array_agg(DISTINCT parent_ref) FROM harvester.items"
                                 " WHERE role = 'child'")).scalar()  # fmt: skip
        count = parents.rejoin_children(conn, "sample", refs or [])
        conn.rollback()
    return count


# --- several workers ------------------------------------------------------------------------


class LeaseWatcher:
    """Samples harvester.feeds in the background: which worker held each feed as it moved."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.writers: dict[str, set[int]] = {}  # url → pids that held it while pages grew
        self.owners: list[tuple[float, str, int | None]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def __enter__(self) -> LeaseWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=10)

    def watch(self) -> None:
        """Every 50 ms: note the owner of each feed whose page count moved."""
        pages: dict[str, int] = {}
        while not self.done.is_set():
            try:
                rows = feeds(self.db_url)
            except psycopg.Error:
                rows = {}
            for url, (_, owner, count, _, _) in rows.items():
                self.owners.append((time.monotonic(), url, owner_pid(owner)))
                if count > pages.get(url, 0) and owner is not None:
                    self.writers.setdefault(url, set()).add(owner_pid(owner) or 0)
                pages[url] = count
            time.sleep(0.05)


def test_two_workers_share_the_feeds_and_commit_each_page_once(
    publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    config = config_for(tmp_path, publisher, workers=1)  # each process: one feed at a time
    assert run_harvester(db_url, "migrate").returncode == 0
    with LeaseWatcher(db_url) as watcher:
        workers = [start_harvester(db_url, "run", "--config", config) for _ in range(2)]
        try:
            assert wait_for(lambda: all_exact(engine, publisher), 60)
            assert [worker.stop() for worker in workers] == [0, 0]
        finally:
            for worker in workers:
                worker.close()
    pids = {worker.pid for worker in workers}
    assert set().union(*watcher.writers.values()) == pids  # both workers wrote pages
    assert_exact(engine, db_url, publisher)


def test_a_killed_workers_feeds_are_taken_over_within_seconds(
    publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    config = config_for(tmp_path, publisher)
    slots = publisher.feed_url("slots")
    with start_harvester(db_url, "run", "--config", config) as first:
        assert wait_for(lambda: feeds(db_url).get(slots, (0, 0, 0))[2] >= 5, 30)
        with start_harvester(db_url, "run", "--config", config) as second:
            time.sleep(1.5)  # the second worker is up, finding every feed leased
            assert owner_pid(feeds(db_url)[slots][1]) == first.pid
            assert first.kill() == -signal.SIGKILL
            killed_at = time.monotonic()
            assert wait_for(lambda: owner_pid(feeds(db_url)[slots][1]) == second.pid, 15)
            took_over = time.monotonic() - killed_at
            assert took_over <= FAST["lease_seconds"] + 4  # seconds after the lease expired
            assert wait_for(lambda: all_exact(engine, publisher), 60)
            assert second.stop() == 0, second.output()[1]
    assert_exact(engine, db_url, publisher)


def committed_prefix(publisher: SamplePublisher, feed: str, next_url: str) -> dict[Any, Any]:
    """What a harvester holds whose stored position is `next_url`: every item before it."""
    state = publisher.states[feed]
    position = parse_position(state.feed, urlsplit(next_url).query)
    everything = list(publisher.items(feed))
    rest = sum(1 for _ in state.snapshot().iter_after(position))
    held: dict[Any, Any] = {}
    for item in everything[: len(everything) - rest]:
        key = (item["kind"], str(item["id"]))
        if item["state"] == "updated":
            held[key] = item["data"]
        else:
            held.pop(key, None)
    return held


def test_sigterm_commits_the_page_in_hand_exits_0_and_closes_its_connections(
    publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    config = config_for(tmp_path, publisher)
    slots = publisher.feed_url("slots")
    with start_harvester(db_url, "run", "--config", config) as worker:
        assert wait_for(lambda: feeds(db_url).get(slots, (0, 0, 0))[2] >= 10, 30)
        engine.dispose()  # only the worker's connections are named 'harvester' now
        assert harvester_backends(db_url) >= 1
        asked = time.monotonic()
        assert worker.stop() == 0, worker.output()[1]
        assert time.monotonic() - asked < 5
    assert harvester_backends(db_url) == 0  # closed cleanly, not left to time out
    rows = feeds(db_url)
    assert rows[slots][0] == "harvesting"  # stopped mid-feed
    for feed in FEED_NAMES:
        url = publisher.feed_url(feed)
        assert held_items(engine, url) == committed_prefix(publisher, feed, rows[url][4]), feed
    seen = len(publisher.requests)
    again = run_harvester(db_url, "run", "--once", "--config", config)
    assert again.returncode == 0, again.stderr
    first_slots_request = next(t for _, t in publisher.requests[seen:] if "/slots" in t)
    assert publisher.base_url + first_slots_request == rows[slots][4]  # resumed, not restarted
    assert_exact(engine, db_url, publisher)


def test_database_connections_killed_mid_harvest_are_reopened(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    """pg_terminate_backend on every harvester connection, repeatedly: a restart or a
    failover as the client sees it."""
    terminate = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'harvester' AND datname = %(name)s"
    )
    with slow_publisher(0.1) as publisher:  # ~6 s of harvest
        config = config_for(tmp_path, publisher)
        slots = publisher.feed_url("slots")
        engine.dispose()  # only the worker's connections are named 'harvester' now
        with start_harvester(db_url, "run", "--once", "--config", config) as worker:
            assert wait_for(lambda: feeds(db_url).get(slots, (0, 0, 0))[2] >= 3, 30)
            terminated = 0
            for _ in range(6):  # ~2.5 s of outages while pages are being written
                terminated += query(db_url, terminate, name=make_url(db_url).database)[0][0]
                time.sleep(0.4)
            assert worker.poll() is None  # all of it mid-harvest
            code = worker.wait(timeout=120)
            err = worker.output()[1]
        # Killed connections are either caught mid-transaction (logged "database
        # unavailable", page retried) or replaced by the pool's pre-ping before use; which
        # one happens is a matter of timing, so only the outcome is asserted.
        assert terminated >= 6
        assert code == 0, err
        assert_exact(engine, db_url, publisher)


# --- polling when caught up -------------------------------------------------------------


def poll_gaps(publisher: SamplePublisher, feed: str) -> list[float]:
    """Seconds between consecutive requests for the feed's last page."""
    last = max(
        (t for _, t in publisher.requests if urlsplit(t).path.endswith(f"/{feed}")),
        key=lambda t: sum(1 for _, s in publisher.requests if s == t),
    )
    times = [at for at, t in publisher.requests if t == last]
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.slow
def test_a_caught_up_feed_is_polled_at_the_minimum_interval_or_its_max_age(
    db_url: str, tmp_path: Path
) -> None:
    cases = {
        # name: (last page max-age, [harvester] settings, least gap, most gap)
        "two_seconds": (0, {"min_poll_seconds": 2}, 2.0, 3.5),
        "default_8s": (0, {}, 8.0, 9.5),
        "max_age_5s": (5, {"min_poll_seconds": 2}, 5.0, 6.5),
    }
    publishers = {name: SamplePublisher(items=40, last_page_max_age=age).start()
                  for name, (age, *_) in cases.items()}  # fmt: skip
    workers: list[HarvesterProcess] = []
    try:
        for name, (_, settings, *_) in cases.items():
            body = publishers[name].to_config_toml(source_name=name)
            config = write_config(tmp_path / f"{name}.toml", body, settings)
            workers.append(start_harvester(db_url, "run", "--config", str(config)))
        time.sleep(21)
        assert [worker.stop() for worker in workers] == [0, 0, 0]
    finally:
        for worker in workers:
            worker.close()
        for started in publishers.values():
            started.stop()
    for name, (_, _, least, most) in cases.items():
        for feed in FEED_NAMES:
            gaps = poll_gaps(publishers[name], feed)
            assert len(gaps) >= 2, (name, feed, gaps)
            assert all(least <= gap <= most for gap in gaps), (name, feed, gaps)
