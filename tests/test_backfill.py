"""`harvester backfill`: re-read feeds from their first page while readers keep their answers.

Items that vanish from a publisher without a tombstone (or whose tombstone expired while
the harvester was down) are removed when the backfill of their feed reaches its last
page; until then, and for everything else, `bookable_now` keeps answering as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from helpers import (
    FAST_SETTINGS,
    assert_holds_exactly,
    feed_rows,
    libpq_url,
    parse_status,
    run_harvester,
    start_harvester,
    wait_for,
    write_config,
)
from sqlalchemy import Engine, text

from harvester.sample import FEED_NAMES, Fault, SamplePublisher

PAGE_SIZE = 50
FAST = FAST_SETTINGS
SERIES, SESSIONS = "session-series", "scheduled-sessions"

Row = tuple[str, str]  # (kind, id) of a bookable_now row


@pytest.fixture
def publisher() -> Iterator[SamplePublisher]:
    """3,000 items in pages of 50."""
    with SamplePublisher(items=3_000, page_size=PAGE_SIZE) as started:
        yield started


@pytest.fixture
def harvested(publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path) -> str:
    """The publisher harvested in full once; the config's path."""
    config = write_config(tmp_path / "harvester.toml", publisher.to_config_toml(), FAST)
    result = run_harvester(db_url, "run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert_holds_exactly(engine, publisher)
    return str(config)


def away_from_quarter_hours(margin: float = 40.0) -> None:
    """Wait out a quarter hour that is near: the sample's booking windows open and close
    on quarter hours, and a count must not move for that reason during a test."""
    now = datetime.now(UTC)
    left = 900 - ((now.minute % 15) * 60 + now.second + now.microsecond / 1e6)
    if left < margin:
        time.sleep(left + 1)


def bookable(engine: Engine) -> set[tuple[str, str, str]]:
    """(kind, id, parent_id) of every row of bookable_now."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, id, parent_id FROM bookable_now")).all()
    return {(kind, id_, parent) for kind, id_, parent in rows}


def data_id(data: dict[str, Any]) -> str:
    """An item's JSON-LD @id."""
    return str(data.get("@id") or data.get("id"))


class Reader:
    """A downstream app asking `SELECT count(*) FROM bookable_now` over and over."""

    def __init__(self, db_url: str) -> None:
        self.url = libpq_url(db_url)
        self.counts: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.read, daemon=True)

    def read(self) -> None:
        """Count as often as the server answers, one fresh snapshot per query."""
        with psycopg.connect(self.url, autocommit=True, application_name="reader") as conn:
            while not self.done.is_set():
                self.counts.append(conn.execute("SELECT count(*) FROM bookable_now").fetchone()[0])
                time.sleep(0.005)

    def __enter__(self) -> Reader:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=10)


def first_page_requests(publisher: SamplePublisher, feed: str, since: int = 0) -> int:
    """Requests for the feed's first page (no position) after request number `since`."""
    path = urlsplit(publisher.feed_url(feed)).path
    return sum(1 for _, target in publisher.requests[since:] if target == path)


def test_backfill_removes_vanished_items_while_readers_keep_their_answers(
    publisher: SamplePublisher, harvested: str, db_url: str, engine: Engine
) -> None:
    away_from_quarter_hours()
    before = bookable(engine)
    parents = {parent for _, _, parent in before}
    series = [i for i in publisher.items(SERIES) if i["state"] == "updated"]
    gone_series = [i for i in series if data_id(i["data"]) in parents][:4]  # bookable children
    sessions = [i for i in publisher.items(SESSIONS) if i["state"] == "updated"]
    bookable_ids = {id_ for _, id_, _ in before}
    gone_sessions = [i for i in sessions if data_id(i["data"]) in bookable_ids][:15]
    gone_sessions += [i for i in sessions if data_id(i["data"]) not in bookable_ids][:5]
    for item in gone_series:
        publisher.forget(SERIES, item["id"])
    for item in gone_sessions:
        publisher.forget(SESSIONS, item["id"])
    lost_parents = {data_id(i["data"]) for i in gone_series}
    lost_children = {data_id(i["data"]) for i in gone_sessions}
    after = {row for row in before if row[2] not in lost_parents and row[1] not in lost_children}
    allowed = {  # before; either feed swept; both swept
        len(before),
        len({row for row in before if row[2] not in lost_parents}),
        len({row for row in before if row[1] not in lost_children}),
        len(after),
    }
    assert len(after) < len(before) - 15  # the vanished items did matter
    for feed in FEED_NAMES:  # slow pages, so the reader sees the backfill at work
        publisher.inject(feed, Fault(delay=0.03, times=1_000))
    seen = len(publisher.requests)

    urls = [publisher.feed_url(SERIES), publisher.feed_url(SESSIONS)]
    with Reader(db_url) as reader:
        result = run_harvester(db_url, "backfill", "--config", harvested,
                               "--feed", urls[0], "--feed", urls[1])  # fmt: skip
        time.sleep(0.1)
    assert result.returncode == 0, result.stderr

    assert len(reader.counts) > 50
    assert 0 not in reader.counts
    assert set(reader.counts) <= allowed, sorted(set(reader.counts) - allowed)
    assert reader.counts[0] == len(before) and reader.counts[-1] == len(after)
    assert bookable(engine) == after  # exactly the vanished items' effect, nothing else
    assert_holds_exactly(engine, publisher)
    assert first_page_requests(publisher, "slots", seen) == 0  # only the chosen feeds
    assert first_page_requests(publisher, SERIES, seen) == 1
    for url in urls:  # progress lines on a pipe: pages, items, rate, and the end
        done = [
            line for line in result.stderr.splitlines() if f"{url}: " in line and "done in" in line
        ]
        assert done and " items/s, behind " in done[-1], result.stderr
    status = parse_status(run_harvester(db_url, "status").stdout)
    assert [status.lines[url][3] for url in urls] == ["caught_up", "caught_up"]
    rows = feed_rows(engine)
    assert [rows[url].backfill_generation for url in urls] == [None, None]


def test_a_second_backfill_resumes_the_one_under_way(
    publisher: SamplePublisher, harvested: str, db_url: str, engine: Engine
) -> None:
    sessions = [i for i in publisher.items(SESSIONS) if i["state"] == "updated"]
    for item in sessions[::40]:  # vanish all along the feed
        publisher.forget(SESSIONS, item["id"])
    publisher.inject(SESSIONS, Fault(delay=0.15, times=1_000))
    url = publisher.feed_url(SESSIONS)
    seen = len(publisher.requests)
    pages_before = feed_rows(engine)[url].pages
    args = ("backfill", "--config", harvested, "--feed", url)
    with start_harvester(db_url, *args) as first, start_harvester(db_url, *args) as second:
        assert wait_for(lambda: feed_rows(engine)[url].pages >= pages_before + 5, 30)
        assert feed_rows(engine)[url].backfill_generation is not None
        assert parse_status(run_harvester(db_url, "status").stdout).lines[url][3] == "backfilling"
        assert first.poll() is None and second.poll() is None  # one waits for the other
        owner = int(feed_rows(engine)[url].lease_owner.split(":")[-2])
        busy, waiting = (first, second) if owner == first.pid else (second, first)
        assert owner == busy.pid
        busy.kill()  # the one under way dies; the other carries on from its position
        killed = len(publisher.requests)
        stored = feed_rows(engine)[url].next_url
        assert waiting.wait(timeout=60) == 0, waiting.output()[1]
    assert first_page_requests(publisher, SESSIONS, seen) == 1  # resumed, never restarted
    after_kill = {publisher.base_url + t for _, t in publisher.requests[killed:]}
    assert stored in after_kill  # taken up at the dead one's stored position
    assert_holds_exactly(engine, publisher)  # the sweep still knew what the first pass saw
    assert feed_rows(engine)[url].backfill_generation is None


@pytest.mark.parametrize(
    ("choice", "feeds"),
    [
        (["--source", "b"], ["facility-uses", "slots"]),  # every feed of one source
        (["--feed", "session-series"], ["session-series"]),  # one feed by its URL
        (["--source", "a", "--feed", "scheduled-sessions"], ["scheduled-sessions"]),  # both
    ],
)
def test_backfill_chooses_feeds_by_source_and_url(
    choice: list[str], feeds: list[str], publisher: SamplePublisher, db_url: str,
    engine: Engine, tmp_path: Path,
) -> None:  # fmt: skip
    config = two_sources(tmp_path, publisher)
    assert run_harvester(db_url, "run", "--once", "--config", config).returncode == 0
    seen = len(publisher.requests)
    args = [publisher.feed_url(a) if a in FEED_NAMES else a for a in choice]
    result = run_harvester(db_url, "backfill", "--config", config, *args)
    assert result.returncode == 0, result.stderr
    again = {feed for feed in FEED_NAMES if first_page_requests(publisher, feed, seen)}
    assert again == set(feeds)
    assert_holds_exactly(engine, publisher)


@pytest.mark.parametrize(
    "choice",
    [
        ["--source", "nosuch"],  # no source of that name
        ["--feed", "http://127.0.0.1:9/feeds/nosuch"],  # no feed at that URL
        ["--source", "a", "--feed", "slots"],  # a feed of another source
    ],
)
def test_backfill_of_nothing_exits_2(
    choice: list[str], publisher: SamplePublisher, db_url: str, tmp_path: Path
) -> None:
    config = two_sources(tmp_path, publisher)
    args = [publisher.feed_url(a) if a in FEED_NAMES else a for a in choice]
    result = run_harvester(db_url, "backfill", "--config", config, *args)
    assert result.returncode == 2
    assert "no configured feed matches" in result.stderr
    assert publisher.requests == []


def two_sources(tmp_path: Path, publisher: SamplePublisher) -> str:
    """Source a: series and sessions; source b: facility uses and slots."""
    urls = publisher.feed_urls
    body = "\n".join([
        '[[sources]]', 'name = "a"',
        f'feeds = ["{urls["session-series"]}", "{urls["scheduled-sessions"]}"]', "",
        '[[sources]]', 'name = "b"',
        f'feeds = ["{urls["facility-uses"]}", "{urls["slots"]}"]',
    ])  # fmt: skip
    return str(write_config(tmp_path / "two.toml", body, FAST))
