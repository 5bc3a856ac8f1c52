"""What the commands print: feed status lines, bookable opportunities, progress."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TextIO

from harvester.feedstate import FeedRow
from harvester.pipeline import Harvester, Progress

logger = logging.getLogger(__name__)
PROGRESS_LOG_SECONDS = 10.0


def print_status(rows: Sequence[Any], out: TextIO) -> None:
    """One line per feed: source, kind, items, state, last page, lag, rejected, feed, error."""
    if not rows:
        print("no feeds yet: run `harvester run --config FILE`", file=out)
        return
    header = ("SOURCE", "KIND", "ITEMS", "STATE", "LAST PAGE", "LAG", "REJECTED", "FEED",
              "LAST ERROR")  # fmt: skip
    lines = [header] + [status_fields(row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[-1]]).rstrip(), file=out)


def status_fields(row: Any) -> tuple[str, ...]:
    """The printable fields of one feed's status row."""
    state = "backfilling" if row.backfilling and row.state != "gone" else row.state
    error = "-"
    if row.last_error:
        retry = f" (next try {format_time(row.retry_at)})" if row.retry_at else ""
        error = f"{row.last_error}{retry}"
    return (
        row.source,
        row.kinds or "-",
        str(row.items),
        state,
        format_time(row.last_page_at),
        format_lag(row.caught_up_at, row.now),
        str(row.rejected),
        row.url,
        " ".join(error.split()),  # one line, whatever the message held
    )


def print_reasons(rows: Sequence[Any], out: TextIO) -> None:
    """Held opportunities that are not bookable now, by reason."""
    if rows:
        print("\nheld but not bookable now:", file=out)
    for row in rows:
        print(f"  {row.n:>8}  {row.kind:<16} {row.reason}", file=out)


def print_bookable(rows: Sequence[Any], total: int, out: TextIO) -> None:
    """The soonest bookable opportunities with their checkout URLs."""
    print(f"\nbookable now: {total}", file=out)
    for row in rows:
        name = (row.data or {}).get("name") or (row.parent_data or {}).get("name") or ""
        start = row.start_date.strftime("%Y-%m-%d %H:%M UTC")
        print(f"  {row.kind:<16} {start}  {str(name)[:32]:<32}  {row.checkout_url}", file=out)


def format_time(moment: datetime | None) -> str:
    """A timestamp to the second, in UTC."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "-"


def format_lag(caught_up_at: datetime | None, now: datetime) -> str:
    """How long since the feed was last known to be caught up."""
    if caught_up_at is None:
        return "-"
    seconds = int(max(timedelta(0), now - caught_up_at).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


@contextmanager
def progress_display(harvester: Harvester, *, enabled: bool) -> Iterator[None]:
    """A progress bar on a terminal, plain log lines otherwise (pages, items, rate)."""
    if not enabled:
        yield
        return
    if sys.stderr.isatty():
        with _rich_progress(harvester):
            yield
    else:
        with _logged_progress(harvester):
            yield


@contextmanager
def _rich_progress(harvester: Harvester) -> Iterator[None]:
    from rich.progress import Progress as Bar
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    started = time.monotonic()
    with Bar(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as bar:
        tasks: dict[int, Any] = {}
        lock = threading.Lock()

        def on_page(feed: FeedRow, progress: Progress) -> None:
            with lock:
                if feed.id not in tasks:
                    tasks[feed.id] = bar.add_task(feed.url)
            bar.update(tasks[feed.id], description=_describe(feed, progress, started))

        harvester.on_page = on_page
        yield


@contextmanager
def _logged_progress(harvester: Harvester) -> Iterator[None]:
    started = time.monotonic()
    last_logged: dict[int, float] = {}

    def on_page(feed: FeedRow, progress: Progress) -> None:
        now = time.monotonic()
        if progress.caught_up or now - last_logged.get(feed.id, 0.0) >= PROGRESS_LOG_SECONDS:
            last_logged[feed.id] = now
            logger.info(_describe(feed, progress, started), extra={"event": "progress"})

    harvester.on_page = on_page
    yield


def _describe(feed: FeedRow, progress: Progress, started: float) -> str:
    rate = progress.items / max(1e-6, time.monotonic() - started)
    done = " (done)" if progress.caught_up else ""
    return f"{feed.url}: {progress.pages} pages, {progress.items} items, {rate:,.0f} items/s{done}"
