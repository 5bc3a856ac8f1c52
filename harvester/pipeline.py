"""One feed, page by page: fetch, check, and commit each page with the feed's new position.

The next page is fetched and parsed in the background while the current one is written,
so the publisher and PostgreSQL work at the same time. Only a committed page moves the
feed on: a crash anywhere re-fetches from the stored position, and the upsert's
`modified` rule makes the replay harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from harvester import backlog, metrics, pagewrite, parents, records, rpde
from harvester.config import Settings, Source
from harvester.errors import database_fault
from harvester.feedstate import FeedRow
from harvester.fetch import Fetcher, retrying
from harvester.gate import PriorityGate
from harvester.pagewrite import PageWrite
from harvester.readahead import PageStream

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How long, per harvest, a feed of children gives way to its source's parent feeds.
PARENT_WAIT_SECONDS = 120.0
# While a feed is behind, the pages already read are committed together, up to this many
# items: one lock, COPY, upsert, position update and commit for several pages. How far
# ahead a feed reads is bounded in bytes (a feed of large pages reads one ahead).
BATCH_ITEMS = 2_000
READ_AHEAD_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class Parsed:
    """A fetched page, checked and turned into rows, ready to write.

    The parsed items are not kept: their rows hold what is written, in a third of the
    memory, and a page waits here while the one before it is written.
    """

    url: str
    next_url: str
    is_last: bool  # RPDE's last page
    repeats_itself: bool  # items, and `next` names the page itself
    rows: list[records.Row]
    rejected: list[rpde.Rejected]
    max_age: float | None
    size: int  # the body's bytes
    license: str | None = None  # the page's RPDE `license`

    @classmethod
    def of(
        cls, page: rpde.Page, max_age: float | None, size: int, purpose: str = "opportunities"
    ) -> Parsed:
        """Turn a checked page into rows; items that cannot be stored join the rejected."""
        rows, unstorable = records.to_rows(page.items, purpose)
        return cls(page.url, page.next_url, page.is_last, page.repeats_itself, rows,
                   [*page.rejected, *unstorable], max_age, size, page.license)  # fmt: skip

    @property
    def ends_feed(self) -> bool:
        """No page follows: RPDE's last page, or one with items naming itself as next."""
        return self.is_last or self.repeats_itself

    @cached_property
    def roles(self) -> frozenset[str | None]:
        """The roles of the page's items: child, parent, other (None for a tombstone)."""
        return frozenset({row.role for row in self.rows})

    @property
    def holds_parents(self) -> bool:
        """The page has a SessionSeries, FacilityUse or IndividualFacilityUse."""
        return "parent" in self.roles

    @property
    def holds_children(self) -> bool:
        """The page has a ScheduledSession or Slot."""
        return "child" in self.roles


class ParseBudget:
    """How many pages are parsed at once in this process.

    Parsing takes about six times a page's size at its peak (the JSON parser's tree, the
    items, their rows), and each feed in flight parses its next page while the last is
    written: with dozens of feeds in flight, pages parsed side by side would add up to
    hundreds of MB. Parsing holds the GIL, so parsing them side by side gains nothing: at
    most `slots` pages are parsed at once, and pages from `large_bytes` up one at a time.
    """

    def __init__(self, slots: int = 4, large_bytes: int = 1024 * 1024) -> None:
        self.large_bytes = large_bytes
        self.turns = PriorityGate(slots)
        self.large_turn = threading.BoundedSemaphore(1)

    @contextmanager
    def slot(self, size: int, urgency: float = 0.0) -> Iterator[None]:
        """Hold a turn while a page of `size` bytes is parsed (the most urgent feed first)."""
        with self.turns.turn(urgency):
            if size < self.large_bytes:
                yield
                return
            with self.large_turn:
                yield


PARSES = ParseBudget()
# Pages written at once by this process. More writers than this only contend inside
# PostgreSQL (it spent 61 s of CPU on the ecosystem run with one writer per feed in
# flight, 54 s with 4), and a turn goes to the feed with the most left.
WRITES = PriorityGate(4)


@dataclass
class Progress:
    """What a harvest of one feed did; read by status lines, metrics and the progress bar."""

    pages: int = 0
    items: int = 0
    rejected: int = 0
    caught_up: bool = False
    max_age: float | None = None
    last_page_at: float = 0.0  # time.monotonic()
    started_at: float = field(default_factory=time.monotonic)
    waited: float = 0.0  # seconds spent giving way to the source's parent feeds
    newest_modified: int | None = None  # the largest integer `modified` written so far
    swept: int = 0  # rows a finished backfill removed (not seen again)
    handed_over: bool = False  # stopped short of the last page for a feed of its host
    finished_at: float | None = None  # time.monotonic() when the harvest ended

    @property
    def working_seconds(self) -> float:
        """Seconds of the harvest so far, less its waits for parent feeds."""
        return max(0.0, time.monotonic() - self.started_at - self.waited)


class ParentsFirst:
    """Children's pages give way while a parent feed of their source is mid-harvest.

    A child written before its parent is written twice: held as an orphan, then re-joined
    when the parent arrives. Written after it, once. So while a feed of this process is
    paging through parents, the source's child feeds wait, for a bounded time. A feed
    not yet seen to hold children is presumed to hold parents until its first page
    says, so children also wait for a slow first page of a parent feed. Only harvests
    running here count: a feed that failed, finished or waits for a worker holds no one.
    """

    def __init__(self, patience: float = PARENT_WAIT_SECONDS) -> None:
        self.patience = patience
        self.busy: dict[str, set[int]] = {}
        self.holds_parents: dict[int, bool] = {}  # by feed id, once a page showed it
        self.changed = threading.Condition()

    def start(self, feed: FeedRow) -> None:
        """A harvest of `feed` begins: busy until its first page, unless known for children."""
        self.mark(feed, busy=self.holds_parents.get(feed.id, True))

    def saw(self, feed: FeedRow, parsed: Parsed, last: bool) -> None:
        """A page of `feed` was parsed: it is busy while it brings parents."""
        if parsed.rows:
            self.holds_parents[feed.id] = parsed.holds_parents
        self.mark(feed, busy=parsed.holds_parents and not last)

    def mark(self, feed: FeedRow, busy: bool) -> None:
        """Note whether `feed` has (or may have) more parent pages to come."""
        with self.changed:
            feeds = self.busy.setdefault(feed.source, set())
            if busy:
                feeds.add(feed.id)
            else:
                feeds.discard(feed.id)
            self.changed.notify_all()

    def wait(self, source: str, until: float, stopping: Callable[[], bool]) -> None:
        """Block while a parent feed of `source` is busy, until the monotonic `until`."""
        with self.changed:
            while self.busy.get(source) and not stopping():
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return
                self.changed.wait(min(remaining, 0.2))


@dataclass
class Harvester:
    """What harvesting needs: the database, the HTTP client, settings, and a stop signal."""

    engine: Engine
    fetcher: Fetcher
    settings: Settings
    sources: dict[str, Source]
    owner: str | None = None
    stop: threading.Event | None = None
    on_page: Callable[[FeedRow, Progress], None] | None = None
    # Whether a feed of this feed's host waits for its first turn (worker.Worker).
    host_waited_for: Callable[[FeedRow], bool] | None = None
    # What each feed's pages so far say of its size, and the urgency of each feed's turns
    # (backlog.rank_feeds, worked out by the worker; feeds not ranked share one urgency).
    backlogs: dict[int, backlog.Backlog] = field(default_factory=dict)
    ranks: dict[int, float] = field(default_factory=dict)
    parents_first: ParentsFirst = field(default_factory=ParentsFirst)
    parent_cache: parents.ParentCache = field(default_factory=parents.ParentCache)

    def stopping(self) -> bool:
        """True once shutdown was asked for."""
        return self.stop is not None and self.stop.is_set()

    def sleep(self, seconds: float) -> None:
        """Wait, but wake at once on shutdown."""
        if self.stop is None:
            time.sleep(seconds)
        else:
            self.stop.wait(seconds)

    def harvest(self, feed: FeedRow) -> Progress:
        """Harvest `feed` until its last page, shutdown, or an error (raised)."""
        try:
            progress = self.harvest_pages(feed)
        finally:
            self.parents_first.mark(feed, busy=False)
        if progress.items or progress.pages > 1:  # not a mere poll of a last page
            log_harvest(feed, progress)
        return progress

    def harvest_pages(self, feed: FeedRow) -> Progress:
        """The page loop of `harvest`: pages are read ahead while the ready ones are written."""
        progress = Progress()
        patience = time.monotonic() + self.parents_first.patience
        self.parents_first.start(feed)
        stream = PageStream(lambda url: self.fetch_parsed(feed, url), feed.next_url,
                            self.stopping, READ_AHEAD_BYTES)  # fmt: skip
        try:
            while not self.stopping():
                first = stream.take()
                if first is None:
                    break
                progress.waited += self.give_way(feed, first, patience)
                with self.write_turn(feed, stream):
                    # Gathered once the turn is had: what was read meanwhile joins the batch.
                    batch = extend_batch(stream, first)
                    for parsed in batch[1:]:
                        self.parents_first.saw(feed, parsed, parsed.ends_feed)
                    feed, batch, swept = self.write(feed, batch)
                progress.swept += swept
                for parsed in batch:
                    self.count(feed, progress, parsed, parsed.ends_feed)
                ended = batch[-1].ends_feed
                del batch, parsed, first  # written: freed before the next batch is waited for
                if ended:
                    break
                if not progress.handed_over and self.hands_over(feed, progress):
                    progress.handed_over = True
                    stream.finish()  # what it has read is still written
        finally:
            stream.close()
        progress.handed_over = progress.handed_over and not progress.caught_up
        return progress

    def hands_over(self, feed: FeedRow, progress: Progress) -> bool:
        """A harvest gives its host's turn, once it has written what it read, to a feed of
        that host not read yet: so every feed's first page comes early and shows how much
        it has left (backlog), and a large feed never waits behind all those listed before
        it. It resumes from its committed position."""
        return self.host_waited_for is not None and self.host_waited_for(feed)

    @contextmanager
    def write_turn(self, feed: FeedRow, stream: PageStream[Parsed]) -> Iterator[None]:
        """Hold one of the process's write turns (WRITES); the feed reads no further while
        it waits for one."""
        with stream.paused():
            WRITES.acquire(self.urgency(feed))
        try:
            yield
        finally:
            WRITES.release()

    def urgency(self, feed: FeedRow) -> float:
        """How urgent the feed's turns at parsing and writing are (backlog.rank_feeds)."""
        return self.ranks.get(feed.id, 0.0)

    def give_way(self, feed: FeedRow, parsed: Parsed, until: float) -> float:
        """Parents go first: mark a parent feed busy, or let a page of children wait.

        Returns the seconds waited.
        """
        self.parents_first.saw(feed, parsed, parsed.ends_feed)
        if not parsed.holds_children or parsed.holds_parents:
            return 0.0
        started = time.monotonic()
        self.parents_first.wait(feed.source, until, self.stopping)
        return time.monotonic() - started

    def fetch_parsed(self, feed: FeedRow, url: str) -> Parsed:
        """Fetch (with bounded retries), check and convert one page."""
        source = self.sources[feed.source]
        for attempt in retrying(self.settings, self.sleep, self.stopping):
            with attempt:
                response = self.fetcher.get(url, source.headers)
                size = len(response.body)
                with PARSES.slot(size, self.urgency(feed)):
                    page = rpde.parse_page(url, response.body)
                    parsed = Parsed.of(page, response.max_age, size, feed.purpose)
        rpde.check_origin(feed.url, parsed.next_url)
        return parsed

    def write(self, feed: FeedRow, batch: list[Parsed]) -> tuple[FeedRow, list[Parsed], int]:
        """Commit the pages and the feed's new position in one transaction.

        Pages the database refuses for their data are written again item by item, the
        refused items set aside: one bad item never costs its page. Returns the moved
        feed, the pages as written (the refused items among the last one's rejected) and
        how many rows a backfill ending here swept.
        """
        for parsed in batch:
            if parsed.repeats_itself:
                logger.warning(
                    "%s: page with items names itself as next; treated as the last page",
                    parsed.url, extra={"event": "page_repeats_itself", "feed": feed.url},
                )  # fmt: skip
        writes = [PageWrite(parsed.rows, parsed.rejected, parsed.url, parsed.next_url,
                            parsed.ends_feed, parsed.license) for parsed in batch]  # fmt: skip
        try:
            written = self.commit_pages(feed, writes, one_by_one=False)
        except DBAPIError as exc:
            if database_fault(exc) != "data":
                raise
            logger.warning(
                "%s: the database refused the page (%s); writing it item by item", batch[0].url,
                type(exc.orig or exc).__name__, extra={"event": "page_refused", "feed": feed.url},
            )  # fmt: skip
            written = self.commit_pages(feed, writes, one_by_one=True)
            last = batch[-1]
            batch = [*batch[:-1], replace(last, rejected=[*last.rejected, *written.refused])]
        if written.swept:
            logger.info(
                "%s: backfill done; %d rows not seen again removed", feed.url, written.swept,
                extra={"event": "backfill_swept", "feed": feed.url, "removed": written.swept},
            )  # fmt: skip
        return written.feed, batch, written.swept

    def commit_pages(
        self, feed: FeedRow, writes: list[PageWrite], *, one_by_one: bool
    ) -> pagewrite.Written:
        """One transaction: the pages' rows and the feed's position."""
        with self.engine.begin() as conn:
            return pagewrite.write_pages(
                conn, feed, writes, owner=self.owner, lease_seconds=self.settings.lease_seconds,
                parents=self.parent_cache, one_by_one=one_by_one,
            )  # fmt: skip

    def count(self, feed: FeedRow, progress: Progress, parsed: Parsed, last: bool) -> None:
        """Update the progress and log the page."""
        progress.pages += 1
        progress.items += len(parsed.rows)
        # How far behind the feed is, when `modified` is a time (report.behind).
        modified = [row.modified for row in parsed.rows if row.modified is not None]
        span = (min(modified), max(modified)) if modified else None
        if span is not None:
            progress.newest_modified = max(span[1], progress.newest_modified or span[1])
        self.backlogs.setdefault(feed.id, backlog.Backlog()).note_page(span, len(parsed.rows), last)
        if last:
            progress.finished_at = time.monotonic()
        progress.rejected += len(parsed.rejected)
        progress.caught_up = last
        progress.max_age = parsed.max_age
        progress.last_page_at = time.monotonic()
        metrics.record_page(feed.source, feed.url, parsed.rows, len(parsed.rejected), last)
        for rejected in parsed.rejected:
            logger.warning(
                "%s: item %s set aside: %s", parsed.url, rejected.id or f"#{rejected.position}",
                rejected.reason, extra={"event": "item_rejected", "feed": feed.url},
            )  # fmt: skip
        logger.debug(
            "%s: %d items", parsed.url, len(parsed.rows),
            extra={"event": "page_stored", "feed": feed.url, "items": len(parsed.rows)},
        )  # fmt: skip
        if self.on_page is not None:
            self.on_page(feed, progress)


def extend_batch(stream: PageStream[Parsed], first: Parsed) -> list[Parsed]:
    """The page `first`, and those already read after it, up to BATCH_ITEMS items in all.

    A batch ends at a feed's end and at a large page (PARSES): large pages are not
    gathered, so memory stays that of one written page and one read ahead.
    """
    batch, items = [first], len(first.rows)
    while not batch[-1].ends_feed and batch[-1].size < PARSES.large_bytes:
        following = stream.take_ready()
        if following is None:
            break
        batch.append(following)
        items += len(following.rows)
        if items >= BATCH_ITEMS or following.size >= PARSES.large_bytes:
            break
    return batch


def log_harvest(feed: FeedRow, progress: Progress) -> None:
    """One INFO record per harvest that brought pages: what it did and how fast."""
    seconds = progress.working_seconds
    logger.info(
        "%s: %d pages, %d items in %.1f s (%.0f items/s)%s", feed.url, progress.pages,
        progress.items, seconds, progress.items / max(seconds, 1e-6),
        ", caught up" if progress.caught_up else ", turn handed over" if progress.handed_over
        else "",
        extra={"event": "feed_harvested", "feed": feed.url, "pages": progress.pages,
               "items": progress.items, "seconds": round(seconds, 3),
               "waited": round(progress.waited, 3), "caught_up": progress.caught_up,
               "handed_over": progress.handed_over},
    )  # fmt: skip


def run_in_background(function: Callable[[], T]) -> Future[T]:
    """Run in a daemon thread, so an HTTP request in flight never delays shutdown."""
    future: Future[T] = Future()

    def target() -> None:
        try:
            future.set_result(function())
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            future.set_exception(exc)

    threading.Thread(target=target, name="harvester-fetch", daemon=True).start()
    return future
