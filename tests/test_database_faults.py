"""Database errors are sorted by SQLSTATE at one boundary, and every failure is recorded.

An outage is waited out; the data's fault is the feed's problem (named, recorded, and set
aside where an item is the cause); a bug of ours fails loudly in the feed's last_error.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest
from helpers import (
    FAST_SETTINGS,
    assert_holds_exactly,
    feed_rows,
    parse_status,
    run_harvester,
    write_config,
)
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from harvester import database, feedstate
from harvester.config import Settings, Source
from harvester.errors import database_fault
from harvester.feedstate import FeedRow
from harvester.fetch import Fetcher
from harvester.pipeline import Harvester
from harvester.sample import FEED_NAMES, SamplePublisher
from harvester.worker import RunReport, Worker


def wrapped(error: BaseException) -> DBAPIError:
    """The error as SQLAlchemy raises it."""
    return DBAPIError.instance("SELECT 1", None, error, psycopg.Error)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sqlstate", "fault"),
    [
        ("21000", "data"),  # cardinality_violation: ON CONFLICT touching a row twice
        ("22021", "data"),  # character_not_in_repertoire
        ("22P02", "data"),  # invalid_text_representation (a bad jsonb)
        ("23514", "data"),  # check_violation
        ("54000", "data"),  # program_limit_exceeded: an index row too big
        ("42703", "bug"),  # undefined_column: our SQL is wrong
        ("42601", "bug"),  # syntax_error
        ("42501", "bug"),  # insufficient_privilege
        ("0A000", "bug"),  # feature_not_supported
        ("08006", "passing"),  # connection_failure
        ("57P01", "passing"),  # admin_shutdown (a restart, a failover)
        ("57014", "passing"),  # query_canceled (statement_timeout)
        ("55P03", "passing"),  # lock_not_available (lock_timeout)
        ("25P03", "passing"),  # idle_in_transaction_session_timeout
        ("40P01", "passing"),  # deadlock_detected
        ("40001", "passing"),  # serialization_failure
        ("53300", "passing"),  # too_many_connections
        ("3D000", "passing"),  # invalid_catalog_name: the database is not there (yet)
    ],
)
def test_database_errors_are_sorted_by_sqlstate(sqlstate: str, fault: str) -> None:
    error = psycopg.errors.lookup(sqlstate)("message")
    assert database_fault(error) == fault
    assert database_fault(wrapped(error)) == fault


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (psycopg.OperationalError("connection refused"), "passing"),
        (psycopg.InterfaceError("the connection is closed"), "passing"),
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), "data"),
        (psycopg.ProgrammingError("query has 2 placeholders but 1 parameters"), "bug"),
    ],
)
def test_errors_without_sqlstate_are_sorted_by_the_driver(error: Exception, fault: str) -> None:
    assert database_fault(wrapped(error)) == fault


def test_a_real_lock_timeout_is_passing(engine: Engine) -> None:
    with engine.connect() as holder, engine.connect() as waiter:
        holder.execute(text("SELECT pg_advisory_lock(42)"))
        waiter.execute(text("SET lock_timeout = '100ms'"))
        with pytest.raises(DBAPIError) as raised:
            waiter.execute(text("SELECT pg_advisory_lock(42)"))
        holder.execute(text("SELECT pg_advisory_unlock(42)"))
    assert database_fault(raised.value) == "passing"


def test_harvester_sessions_have_deadlines(engine: Engine) -> None:
    with engine.connect() as conn:
        shown = {name: conn.execute(text(f"SHOW {name}")).scalar_one()
                 for name in database.SESSION_TIMEOUTS}  # fmt: skip
    assert shown == {"lock_timeout": "30s", "statement_timeout": "5min",
                     "idle_in_transaction_session_timeout": "1min"}  # fmt: skip


# --- through a real harvester ---------------------------------------------------------


@pytest.fixture
def publisher() -> Iterator[SamplePublisher]:
    """A small publisher: 400 items over four feeds, pages of 50."""
    with SamplePublisher(items=400, page_size=50, last_page_max_age=0) as started:
        yield started


def config_for(tmp_path: Path, publisher: SamplePublisher) -> str:
    """The publisher's feeds with the fast test settings."""
    return str(write_config(tmp_path / "h.toml", publisher.to_config_toml(), FAST_SETTINGS))


def test_a_bug_in_our_sql_fails_loudly_and_is_recorded(
    publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    """Class 42 is not an outage: no back-off loop, the feed in error saying why."""
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE harvester.items RENAME COLUMN problem TO problem_gone"))
    result = run_harvester(db_url, "run", "--once", "--config", config_for(tmp_path, publisher))
    assert result.returncode == 1
    assert "database unavailable" not in result.stderr
    assert "Traceback" in result.stderr  # loud: the operator sees where
    rows = feed_rows(engine)
    status = parse_status(run_harvester(db_url, "status").stdout)
    for feed in FEED_NAMES:
        url = publisher.feed_url(feed)
        assert rows[url].state == "error"
        assert "internal error (a harvester bug): UndefinedColumn" in rows[url].last_error
        assert "UndefinedColumn" in status.errors[url]
        assert "SELECT" not in rows[url].last_error  # one line, no SQL


def test_an_item_the_database_refuses_is_set_aside_by_a_real_harvester(
    publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    victim = next(item for item in publisher.items("slots") if item["state"] == "updated")
    with engine.begin() as conn:
        conn.execute(
            text("ALTER TABLE harvester.items ADD CONSTRAINT refuse_one"
                 f" CHECK (rpde_id <> '{victim['id']}')")
        )  # fmt: skip
    result = run_harvester(db_url, "run", "--once", "--config", config_for(tmp_path, publisher))
    assert result.returncode == 0, result.stderr
    with engine.connect() as conn:
        rejected = conn.execute(text("SELECT rpde_id, reason FROM harvester.rejected_items")).all()
        held = conn.execute(text("SELECT count(*) FROM harvester.items")).scalar_one()
    assert [(rpde_id, "refuse_one" in reason) for rpde_id, reason in rejected] == [
        (str(victim["id"]), True)
    ]
    assert held == sum(len(publisher.held(feed)) for feed in FEED_NAMES) - 1
    assert {row.state for row in feed_rows(engine).values()} == {"caught_up"}


def test_an_unexpected_error_is_recorded_in_last_error(
    publisher: SamplePublisher, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug outside SQL (here a RuntimeError from the page's conversion) is written down."""
    from harvester import pipeline

    def broken(*_args: Any) -> Any:
        raise RuntimeError("a bug in the row builder")

    monkeypatch.setattr(pipeline.records, "to_rows", broken)
    harvester, feeds = sample_harvester(engine, publisher, Settings(retry_attempts=1))
    report = run_once(harvester, feeds)
    assert len(report.failures) == len(feeds)
    for row in feed_rows(engine).values():
        assert row.state == "error"
        assert "unexpected error (a harvester bug): RuntimeError: a bug in the row builder" in (
            row.last_error
        )


def test_feeds_of_one_host_take_turns_and_each_resumes_where_it_stopped(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four feeds on one host, one at a time, first turns of one batch: each starts
    before any finishes, then each runs on to its end, most left first; every item is
    held once."""
    from harvester import pipeline

    monkeypatch.setattr(pipeline, "BATCH_ITEMS", 1)  # a batch is one page
    monkeypatch.setattr(pipeline, "READ_AHEAD_BYTES", 1)  # one page read ahead
    with SamplePublisher(items=2_000, page_size=10, last_page_max_age=0) as publisher:
        take_turns(engine, publisher, monkeypatch)


def take_turns(engine: Engine, publisher: SamplePublisher, monkeypatch: pytest.MonkeyPatch) -> None:
    from harvester import pipeline

    harvester, feeds = sample_harvester(engine, publisher, Settings(max_connections_per_host=1))
    turns: list[tuple[int, bool]] = []
    harvest = harvester.harvest

    def recorded(feed: FeedRow) -> pipeline.Progress:
        progress = harvest(feed)
        turns.append((feed.id, progress.handed_over))
        return progress

    monkeypatch.setattr(harvester, "harvest", recorded)
    report = run_once(harvester, feeds)
    assert report.failures == {}
    # Every feed had its first turn before any feed had a second: none waited for the
    # others to finish. Then no more turns were handed over: those left ran to their end.
    assert len({feed_id for feed_id, _ in turns[: len(feeds)]}) == len(feeds)
    assert [over for _, over in turns] == [True] * (len(feeds) - 1) + [False] * len(feeds)
    assert_holds_exactly(engine, publisher)


def sample_harvester(
    engine: Engine, publisher: SamplePublisher, settings: Settings
) -> tuple[Harvester, list[FeedRow]]:
    """An in-process harvester of the publisher's feeds (one source), and those feeds."""
    source = Source(name="sample", feeds=tuple(publisher.feed_urls.values()))
    with engine.begin() as conn:
        feedstate.sync_source(conn, source, None)
        feeds = feedstate.load_feeds(conn)
    harvester = Harvester(engine=engine, fetcher=Fetcher(settings), settings=settings,
                          sources={"sample": source}, stop=threading.Event())  # fmt: skip
    return harvester, feeds


def run_once(harvester: Harvester, feeds: list[FeedRow]) -> RunReport:
    """`run --once` over the feeds, in process; the client is closed after."""
    try:
        return Worker(harvester, feeds, once=True).run()
    finally:
        harvester.fetcher.close()


def test_a_lease_renewal_never_makes_a_starting_feeds_claim_fail(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal locks its feeds' rows and a claim skips a locked row (another worker's):
    a renewal that took in a feed just started, before its claim, made that claim fail
    and the feed wait half a lease. Only feeds whose lease is taken are renewed."""
    source = Source(name="src", feeds=("https://publisher.example/feed",))
    with engine.begin() as conn:
        feedstate.sync_source(conn, source, None)
        (feed,) = feedstate.load_feeds(conn)
        # Its last harvest here took the lease, which holds until it runs out.
        assert feedstate.claim_feed(conn, feed.id, "me", 15.0)
    settings = Settings()
    harvester = Harvester(engine=engine, fetcher=Fetcher(settings), settings=settings,
                          sources={"src": source}, owner="me", stop=threading.Event())  # fmt: skip
    worker = Worker(harvester, [feed], once=False)
    renewed: list[list[int]] = []
    renew = feedstate.renew_leases

    def slow_renewal(conn: Any, ids: list[int], owner: str, seconds: float) -> None:
        renewed.append(list(ids))
        renew(conn, ids, owner, seconds)
        threading.Event().wait(0.5)  # its transaction, and the rows' locks, stay open

    monkeypatch.setattr(feedstate, "renew_leases", slow_renewal)
    worker.running.add(feed.id)  # started: its harvest thread is about to claim it
    renewal = threading.Thread(target=worker.renew_leases)
    renewal.start()
    threading.Event().wait(0.1)
    assert worker.claim(feed.id)
    renewal.join(5)
    assert renewed == []
    worker.next_renewal = 0.0
    worker.renew_leases()
    assert renewed == [[feed.id]]
    harvester.fetcher.close()
