"""Progress on long work: per feed, pages, items, the recent rate and how far behind;
a finished feed's clock stops; off a terminal, log records with those figures as fields;
a backfill reports what its sweep removed."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import run_harvester, write_config

from harvester import report
from harvester.feedstate import FeedRow
from harvester.pipeline import Progress
from harvester.sample import SamplePublisher

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("modified", "behind"),
    [
        (int(NOW.timestamp()) - 7200, 7200.0),  # Unix seconds
        (int(NOW.timestamp() * 1000) - 90_000, 90.0),  # milliseconds
        (621_355_968_000_000_000 + int(NOW.timestamp() - 60) * 10**7, 60.0),  # .NET ticks
        (int(NOW.timestamp()) + 3600, 0.0),  # a publisher's clock ahead: not behind
        (123_456, None),  # a change number: no time to compare
        (None, None),
    ],
)
def test_how_far_behind_when_modified_is_a_time(modified: int | None, behind: float) -> None:
    assert report.behind(Progress(newest_modified=modified), NOW) == behind


def test_the_rate_is_recent_and_a_finished_feed_stops_its_clock() -> None:
    progress = Progress(started_at=100.0)
    track = report.FeedTrack("src feed", progress)
    for second, items in ((100.0, 0), (101.0, 500), (105.0, 1_000), (115.0, 11_000)):
        progress.items = items
        track.sample(second)
    # Only the last ten seconds count: 10,000 items in 10 s, not 11,000 in 15 s.
    assert track.figures(115.0, NOW)["items_per_second"] == 1_000
    progress.finished_at = 115.0
    assert track.figures(500.0, NOW)["seconds"] == 15.0
    assert track.figures(500.0, NOW)["done"] is True


def test_off_a_terminal_progress_is_log_records_with_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Hooks:
        on_page = None

    harvester = Hooks()
    feed = FeedRow(1, "src", "https://pub/feed", "https://pub/feed", "harvesting", 0, None)
    progress = Progress(pages=3, items=1_500, newest_modified=int(NOW.timestamp()))
    caplog.set_level(logging.INFO, logger="harvester.report")
    with report.progress_display(harvester, "log"):  # type: ignore[arg-type]
        harvester.on_page(feed, progress)  # type: ignore[misc]
        harvester.on_page(feed, progress)  # type: ignore[misc] # within 10 s: not again
        progress.finished_at = progress.started_at + 2
        harvester.on_page(feed, progress)  # type: ignore[misc] # done: always
    records = [record for record in caplog.records if getattr(record, "event", "") == "progress"]
    assert len(records) == 2
    assert (records[0].pages, records[0].items, records[0].feed) == (3, 1_500, "https://pub/feed")
    assert records[0].done is False and records[1].done is True
    assert records[1].behind_seconds is not None


def test_live_mode_draws_a_table_of_the_feeds() -> None:
    tracks = {1: report.FeedTrack("src https://pub/feed", Progress(pages=2, items=1_000))}
    tracks[1].sample(0.0)
    table = report.progress_table(tracks, threading.Lock())
    assert [column.header for column in table.columns][:5] == [
        "FEED",
        "PAGES",
        "ITEMS",
        "ITEMS/S",
        "BEHIND",
    ]
    assert table.row_count == 1


def test_a_backfill_logs_progress_and_what_its_sweep_removed(db_url: str, tmp_path: Path) -> None:
    with SamplePublisher(items=400) as publisher:
        config = write_config(tmp_path / "h.toml", publisher.to_config_toml())
        assert run_harvester(db_url, "run", "--once", "--config", str(config)).returncode == 0
        gone = [item["id"] for item in list(publisher.items("scheduled-sessions"))[:7]]
        for item_id in gone:
            publisher.forget("scheduled-sessions", item_id)
        result = run_harvester(db_url, "backfill", "--config", str(config),
                               "--log-format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    progress = [
        r for r in records if r["event"] == "progress" and "scheduled-sessions" in r["feed"]
    ]
    assert progress and progress[-1]["done"] is True and progress[-1]["swept"] == 7
    assert {"pages", "items", "items_per_second", "behind_seconds", "seconds"} <= set(progress[-1])
    swept = [r for r in records if r["event"] == "backfill_swept"]
    assert [r["removed"] for r in swept if "scheduled-sessions" in r["feed"]] == [7]
