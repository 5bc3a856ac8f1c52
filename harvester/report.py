"""What the commands print: feed status lines, bookable opportunities, progress."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from harvester import rpde
from harvester.feedstate import FeedRow
from harvester.pipeline import Harvester, Progress

logger = logging.getLogger(__name__)
PROGRESS_LOG_SECONDS = 10.0  # a feed's progress record off a terminal, at most this often
RATE_SECONDS = 10.0  # the progress rate is over the last this many seconds


def print_status(rows: Sequence[Any], out: TextIO) -> None:
    """One line per feed: source, kind, items, state, last page, lag, rejected, feed, error."""
    if not rows:
        print("no feeds yet: run `harvester run --config FILE`", file=out)
        return
    header = ("SOURCE", "KIND", "ITEMS", "STATE", "LAST PAGE", "LAG", "REJECTED", "FEED",
              "LAST ERROR")  # fmt: skip
    print_columns([header] + [status_fields(row) for row in rows], out)


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


def status_objects(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """`status --json`: one object per feed, the same facts as the lines, machine-typed."""
    return [
        {
            "source": row.source, "kind": row.kinds, "url": row.url, "items": row.items,
            "state": "backfilling" if row.backfilling and row.state != "gone" else row.state,
            "pages": row.pages, "rejected": row.rejected,
            "last_page_at": _iso(row.last_page_at), "caught_up_at": _iso(row.caught_up_at),
            "lag_seconds": lag_seconds(row.caught_up_at, row.now),
            "last_error": row.last_error, "retry_at": _iso(row.retry_at),
        }
        for row in rows
    ]  # fmt: skip


# From worst to best: a source's state in `status --summary` is its worst feed's.
STATE_ORDER = ("error", "gone", "backing_off", "database", "elsewhere", "backfilling",
               "harvesting", "new", "caught_up")  # fmt: skip


def summary_objects(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """`status --summary`: one object per source: feeds, items, rejected, worst state,
    and how many feeds are in it."""
    sources: dict[str, list[dict[str, Any]]] = {}
    for feed in status_objects(rows):
        sources.setdefault(feed["source"], []).append(feed)
    return [source_summary(name, feeds) for name, feeds in sources.items()]


def source_summary(name: str, feeds: list[dict[str, Any]]) -> dict[str, Any]:
    """One source's line of `status --summary`."""
    states = [feed["state"] for feed in feeds]
    worst = min(states, key=lambda state: STATE_ORDER.index(state) if state in STATE_ORDER
                else 0)  # fmt: skip
    lags = [feed["lag_seconds"] for feed in feeds if feed["lag_seconds"] is not None]
    return {
        "source": name, "feeds": len(feeds), "items": sum(feed["items"] for feed in feeds),
        "rejected": sum(feed["rejected"] for feed in feeds), "state": worst,
        "in_worst_state": states.count(worst), "lag_seconds": max(lags, default=None),
    }  # fmt: skip


def print_summary(rows: Sequence[Any], out: TextIO) -> None:
    """One line per source: feeds, items, its worst feed state (and how many are in it)."""
    summaries = summary_objects(rows)
    if not summaries:
        print("no feeds yet: run `harvester run --config FILE`", file=out)
        return
    header = ("SOURCE", "FEEDS", "ITEMS", "REJECTED", "WORST STATE", "MAX LAG")
    lines = [header] + [(
        summary["source"], str(summary["feeds"]), str(summary["items"]), str(summary["rejected"]),
        f"{summary['state']} ({summary['in_worst_state']})",
        "-" if summary["lag_seconds"] is None else format_span(summary["lag_seconds"]),
    ) for summary in summaries]  # fmt: skip
    print_columns(lines, out)


def print_columns(lines: Sequence[Sequence[str]], out: TextIO) -> None:
    """Lines of cells in aligned columns (the last one, free text, is not padded)."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[-1]]).rstrip(), file=out)


def lag_seconds(caught_up_at: datetime | None, now: datetime) -> float | None:
    """Seconds since the feed was last known to be caught up (None: never yet)."""
    if caught_up_at is None:
        return None
    return round(max(timedelta(0), now - caught_up_at).total_seconds(), 3)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


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
    seconds = int(lag_seconds(caught_up_at, now) or 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


@dataclass
class FeedTrack:
    """What the progress display knows of one feed's harvest."""

    label: str
    progress: Progress
    samples: deque[tuple[float, int]] = field(default_factory=deque)  # (monotonic, items)

    def sample(self, now: float) -> None:
        """Note the items so far; keep the last RATE_SECONDS of samples."""
        self.samples.append((now, self.progress.items))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_SECONDS:
            self.samples.popleft()

    def figures(self, now: float, wall: datetime) -> dict[str, Any]:
        """Pages, items, the recent rate, how far behind, the clock (stopped once done)."""
        progress = self.progress
        (start, first), (end, last) = self.samples[0], self.samples[-1]
        recent = (last - first) / (end - start) if end > start else 0.0
        ended = progress.finished_at if progress.finished_at is not None else now
        return {
            "pages": progress.pages, "items": progress.items,
            "items_per_second": round(recent), "behind_seconds": behind(progress, wall),
            "seconds": round(ended - progress.started_at, 1),
            "done": progress.finished_at is not None, "swept": progress.swept,
        }  # fmt: skip


def behind(progress: Progress, wall: datetime) -> float | None:
    """How far the newest `modified` written is behind now, when `modified` reads as a
    time (Unix seconds or milliseconds, or .NET ticks); None when it is a change number.
    A publisher's clock ahead of ours counts as not behind."""
    modified = progress.newest_modified
    seconds = None if modified is None else rpde.modified_seconds(modified)
    return None if seconds is None else round(max(0.0, wall.timestamp() - seconds), 1)


def describe_figures(figures: dict[str, Any]) -> str:
    """One progress line's figures, for a log record or a terminal row."""
    lag = figures["behind_seconds"]
    done = f", done in {figures['seconds']:g}s" if figures["done"] else ""
    swept = f", {figures['swept']} removed" if figures["swept"] else ""
    return (f"{figures['pages']} pages, {figures['items']} items, "
            f"{figures['items_per_second']:,} items/s, "
            f"behind {'-' if lag is None else format_span(lag)}{done}{swept}")  # fmt: skip


def format_span(seconds: float) -> str:
    """A duration for people: 45s, 12m, 3h, 5d."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


@contextmanager
def progress_display(harvester: Harvester, mode: str | None) -> Iterator[None]:
    """Per-feed progress: a live table on a terminal (`live`), periodic log records with
    the figures as fields otherwise (`log`, and always under JSON logs), or none."""
    if mode is None:
        yield
        return
    tracks: dict[int, FeedTrack] = {}
    lock = threading.Lock()

    def track_of(feed: FeedRow, progress: Progress) -> FeedTrack:
        with lock:
            track = tracks.get(feed.id)
            if track is None or track.progress is not progress:  # a new harvest of it
                track = tracks[feed.id] = FeedTrack(f"{feed.source} {feed.url}", progress)
            track.sample(time.monotonic())
            return track

    display = _live_progress if mode == "live" else _logged_progress
    with display(harvester, track_of, tracks, lock):
        yield


@contextmanager
def _live_progress(
    harvester: Harvester, track_of: Callable[[FeedRow, Progress], FeedTrack],
    tracks: dict[int, FeedTrack], lock: threading.Lock,
) -> Iterator[None]:  # fmt: skip
    from rich.live import Live

    with Live(progress_table(tracks, lock), refresh_per_second=4, transient=False) as live:

        def on_page(feed: FeedRow, progress: Progress) -> None:
            track_of(feed, progress)
            live.update(progress_table(tracks, lock))

        harvester.on_page = on_page
        yield
        live.update(progress_table(tracks, lock))


def progress_table(tracks: dict[int, FeedTrack], lock: threading.Lock) -> Any:
    """The live table: a row per feed; a finished feed's clock is stopped."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, expand=False)
    for column in ("FEED", "PAGES", "ITEMS", "ITEMS/S", "BEHIND", "TIME", ""):
        table.add_column(column, overflow="fold", justify="left" if column == "FEED" else "right")
    now, wall = time.monotonic(), datetime.now(UTC)
    with lock:
        rows = [(track.label, track.figures(now, wall)) for track in tracks.values()]
    for label, figures in rows:
        lag = figures["behind_seconds"]
        state = "done" + (f", {figures['swept']} removed" if figures["swept"] else "")
        table.add_row(
            label, f"{figures['pages']:,}", f"{figures['items']:,}",
            f"{figures['items_per_second']:,}", "-" if lag is None else format_span(lag),
            f"{figures['seconds']:.0f}s", state if figures["done"] else "",
        )  # fmt: skip
    return table


@contextmanager
def _logged_progress(
    harvester: Harvester, track_of: Callable[[FeedRow, Progress], FeedTrack],
    tracks: dict[int, FeedTrack], lock: threading.Lock,
) -> Iterator[None]:  # fmt: skip
    last_logged: dict[int, float] = {}

    def on_page(feed: FeedRow, progress: Progress) -> None:
        track = track_of(feed, progress)
        now = time.monotonic()
        recent = now - last_logged.get(feed.id, 0.0) < PROGRESS_LOG_SECONDS
        if progress.finished_at is None and recent:
            return
        last_logged[feed.id] = now
        figures = track.figures(now, datetime.now(UTC))
        logger.info(
            "%s: %s", feed.url, describe_figures(figures),
            extra={"event": "progress", "source": feed.source, "feed": feed.url, **figures},
        )  # fmt: skip

    harvester.on_page = on_page
    yield
