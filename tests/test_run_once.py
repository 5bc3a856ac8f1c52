"""`harvester run --once` as a user runs it: a real process, a sample publisher, PostgreSQL.

A fresh database is filled with exactly what the publisher holds; a second run applies
exactly the publisher's changes and nothing else; a third writes nothing. A feed that
is gone fails the run, by name, without stopping the others. Both database URL forms
work, from the environment and from the flag.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    Changes,
    PublisherProcess,
    assert_holds_exactly,
    canonical,
    clean_env,
    delete_item,
    feed_rows,
    harvester_command,
    held_by_feed,
    libpq_url,
    parse_status,
    run_harvester,
    sqlalchemy_url,
    update_item,
    write_config,
    written_counts,
)
from sqlalchemy import Engine, make_url, text

from harvester import __version__
from harvester.database import make_engine
from harvester.sample import FEED_NAMES, Fault, SamplePublisher

ITEMS = 1_200
PAGE_SIZE = 100
SETTINGS = {"min_poll_seconds": 1, "retry_attempts": 2, "retry_max_seconds": 2}

Snapshot = dict[tuple[str, str, str], str]  # (feed, kind, id) -> canonical JSON of data


@pytest.fixture
def publisher() -> Iterator[SamplePublisher]:
    """A sample publisher of 1,200 items in pages of 100, last pages not cached."""
    with SamplePublisher(items=ITEMS, page_size=PAGE_SIZE, last_page_max_age=0) as started:
        yield started


@pytest.fixture
def config(publisher: SamplePublisher, tmp_path: Path) -> str:
    """The publisher's four feeds, as a config file path."""
    return str(write_config(tmp_path / "feeds.toml", publisher.to_config_toml(), SETTINGS))


def run_once(db_url: str, config: str) -> subprocess.CompletedProcess[str]:
    """`harvester run --once --config CONFIG --database-url DB_URL`."""
    return run_harvester(db_url, "run", "--once", "--config", config)


def snapshot(engine: Engine, publisher: SamplePublisher) -> Snapshot:
    """Everything held, by (feed, kind, id), as canonical JSON."""
    return {
        (feed, kind, rpde_id): canonical(data)
        for feed, held in held_by_feed(engine, publisher).items()
        for (kind, rpde_id), data in held.items()
    }


def bookable_under(engine: Engine, parent_id: str) -> int:
    """How many opportunities bookable now have this parent."""
    with engine.connect() as conn:
        query = "SELECT count(*) FROM bookable_now WHERE parent_id = :parent"
        return int(conn.execute(text(query), {"parent": parent_id}).scalar_one())


def busiest_bookable_series(engine: Engine) -> tuple[str, str]:
    """(rpde id, @id) of the published SessionSeries with the most sessions bookable now."""
    query = (
        "SELECT p.rpde_id, p.item_id FROM bookable_now AS b"
        " JOIN harvester.items AS p ON p.item_id = b.parent_id AND p.kind = 'SessionSeries'"
        " GROUP BY p.rpde_id, p.item_id ORDER BY count(*) DESC, p.rpde_id LIMIT 1"
    )
    with engine.connect() as conn:
        rpde_id, item_id = conn.execute(text(query)).one()
    return rpde_id, item_id


def some_ids(publisher: SamplePublisher, feed: str, count: int, avoid: str = "") -> list[str]:
    """Ids of `count` items the publisher holds in `feed`, spread over it, never `avoid`."""
    ids = [item_id for _, item_id in sorted(publisher.held(feed)) if item_id != avoid]
    return ids[:: len(ids) // count][:count]


def change_publisher(publisher: SamplePublisher, series_id: str) -> Changes:
    """Updates and deletions in every feed, one new session, and a parent losing its offer."""
    changes = Changes()
    for feed in FEED_NAMES:
        first, second, third = some_ids(publisher, feed, 3, avoid=series_id)
        update_item(publisher, feed, first, changes)
        update_item(publisher, feed, second, changes)
        delete_item(publisher, feed, third, changes)
    # A new session: an id the feed never had (data copied from another session).
    session = publisher.get("scheduled-sessions", some_ids(publisher, "scheduled-sessions", 1)[0])
    assert session is not None
    publisher.upsert("scheduled-sessions", "sched-new-1", {**session, "@id": "new/1"})
    changes.note("updated", "scheduled-sessions", ("ScheduledSession", "sched-new-1"))
    # The parent change: the series no longer offers a publicAdult price.
    series = publisher.get("session-series", series_id)
    assert series is not None
    offer = {k: v for k, v in series["imin:aggregateOffer"].items() if k != "publicAdult"}
    update_item(publisher, "session-series", series_id, changes, **{"imin:aggregateOffer": offer})
    return changes


def expected_keys(changes: Changes) -> set[tuple[str, str, str]]:
    """The (feed, kind, id) keys the changes touch."""
    return {(feed, *key) for feed in FEED_NAMES for key in changes.keys(feed)}


def test_run_once_fills_then_applies_exactly_the_changes_then_nothing(
    empty_db_url: str, publisher: SamplePublisher, config: str
) -> None:
    first = run_once(empty_db_url, config)  # a database with no schema: run migrates it
    assert first.returncode == 0, first.stderr
    engine = make_engine(empty_db_url)
    try:
        assert_holds_exactly(engine, publisher)
        assert written_counts(first.stdout)[1] == sum(
            len(list(publisher.items(feed))) for feed in FEED_NAMES
        )  # every item of every page, tombstones included
        before = snapshot(engine, publisher)
        series_id, series_ref = busiest_bookable_series(engine)
        assert bookable_under(engine, series_ref) > 0

        changes = change_publisher(publisher, series_id)
        second = run_once(empty_db_url, config)
        assert second.returncode == 0, second.stderr
        after = snapshot(engine, publisher)
        changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
        assert changed == expected_keys(changes)  # only the changed keys differ
        assert_holds_exactly(engine, publisher)  # and they match the publisher
        assert written_counts(second.stdout)[1] == len(changed)
        assert bookable_under(engine, series_ref) == 0  # the parent change reached its children

        third = run_once(empty_db_url, config)
        assert third.returncode == 0, third.stderr
        assert written_counts(third.stdout) == (len(FEED_NAMES), 0)  # each last page, empty
        assert snapshot(engine, publisher) == after
    finally:
        engine.dispose()


def test_a_gone_feed_fails_the_run_by_name_and_the_others_are_harvested(
    db_url: str, engine: Engine, publisher: SamplePublisher, config: str
) -> None:
    gone = publisher.feed_url("session-series")
    publisher.inject("session-series", Fault(status=404, times=1_000))
    result = run_once(db_url, config)
    assert result.returncode == 1
    assert f"FAILED sample {gone}" in result.stderr
    assert "404" in result.stderr
    others = [feed for feed in FEED_NAMES if feed != "session-series"]
    assert_holds_exactly(engine, publisher, others)
    assert held_by_feed(engine, publisher, ["session-series"]) == {"session-series": {}}

    status = run_harvester(db_url, "status")
    assert status.returncode == 0, status.stderr
    parsed = parse_status(status.stdout)
    assert parsed.lines[gone][3] == "gone"
    assert "404" in parsed.errors[gone]
    for feed in others:
        url = publisher.feed_url(feed)
        assert parsed.lines[url][3] == "caught_up" and url not in parsed.errors
    assert feed_rows(engine)[gone].state == "gone"


def url_forms(db_url: str) -> dict[str, str]:
    """The test database's URL in libpq and SQLAlchemy form."""
    return {"libpq": libpq_url(db_url), "sqlalchemy": sqlalchemy_url(db_url)}


@pytest.mark.parametrize(
    ("form", "via"),
    [
        ("libpq", "env"),  # DATABASE_URL=postgresql://...
        ("libpq", "flag"),  # --database-url postgresql://...
        ("sqlalchemy", "env"),  # DATABASE_URL=postgresql+psycopg://...
        ("sqlalchemy", "flag"),  # --database-url postgresql+psycopg://...
    ],
)
def test_both_database_url_forms_work_from_env_and_flag(
    db_url: str, engine: Engine, form: str, via: str, tmp_path: Path
) -> None:
    url = url_forms(db_url)[form]
    assert url.startswith("postgresql+psycopg://" if form == "sqlalchemy" else "postgresql://")
    # The publisher as its own process, as `python -m harvester.sample` runs it.
    with PublisherProcess(items=300, page_size=50, last_page_max_age=0) as child:
        twin = child.twin
        config = write_config(tmp_path / "feeds.toml", twin.to_config_toml(), SETTINGS)
        result = run_harvester(url, "run", "--once", "--config", str(config), via=via)
    assert result.returncode == 0, result.stderr
    assert_holds_exactly(engine, twin)
    status = run_harvester(url, "status", via=via)
    assert status.returncode == 0, status.stderr
    assert set(parse_status(status.stdout).lines) == set(twin.feed_urls.values())


def test_database_url_flag_wins_over_the_environment(
    db_url: str, engine: Engine, publisher: SamplePublisher, config: str
) -> None:
    # DATABASE_URL names a database that does not exist; --database-url the real one.
    wrong = make_url(libpq_url(db_url)).set(database="no_such_database_here")
    env = {"DATABASE_URL": wrong.render_as_string(hide_password=False)}
    result = run_harvester(libpq_url(db_url), "run", "--once", "--config", config, env=env)
    assert result.returncode == 0, result.stderr
    assert_holds_exactly(engine, publisher)


def test_a_database_that_does_not_answer_exits_3(publisher: SamplePublisher, config: str) -> None:
    # Nothing listens on port 1: a database error, said as such, exit code 3.
    url = "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=2"
    result = run_harvester(url, "run", "--once", "--config", config, timeout=60)
    assert result.returncode == 3
    assert "database" in result.stderr.lower()


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "harvester"],  # python -m harvester
        harvester_command(),  # the console script
    ],
)
def test_version(command: list[str]) -> None:
    result = subprocess.run(
        [*command, "--version"], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"harvester {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)
