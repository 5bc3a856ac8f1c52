"""The long-running loop: every feed of every source, each on its own schedule.

A feed is harvested to its last page, then polled no more often than every
`min_poll_seconds` (or the last page's max-age, when longer). One feed's trouble parks
that feed and never stops the others. Several worker processes may share a database:
a feed is written only by the worker holding its lease, renewed with every page.
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout

from harvester import backlog, feedstate, metrics, redact
from harvester.errors import (
    FatalFeedError,
    FeedError,
    FeedGone,
    FeedOverloaded,
    HarvesterError,
    InternalError,
    LeaseLost,
    RetriableFeedError,
    database_fault,
)
from harvester.feedstate import FeedRow
from harvester.pipeline import Harvester, Progress, run_in_background
from harvester.rpde import host_key

logger = logging.getLogger(__name__)

RANK_SECONDS = 0.5  # how often the feeds' urgency is worked out again (backlog.rank_feeds)
ERROR_RETRY_SECONDS = 3600.0  # a feed in error is tried again hourly by `run`
DATABASE_RETRY_SECONDS = (1.0, 30.0)  # back-off range while the database is away


@dataclass
class FeedOutcome:
    """How a feed's last harvest ended."""

    feed: FeedRow
    progress: Progress | None = None
    error: Exception | None = None
    retry_in: float | None = None  # None: do not retry (gone)
    state: str = "caught_up"


@dataclass
class RunReport:
    """What `run --once` reports: the feeds that failed, and why."""

    failures: dict[str, str] = field(default_factory=dict)
    pages: int = 0
    items: int = 0


def new_owner() -> str:
    """A worker's identity in leases: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class Refresh:
    """The feeds to harvest, found again every `seconds` (discovery from data catalogs)."""

    find: Callable[[], list[FeedRow]]
    seconds: float
    next_at: float = 0.0
    running: bool = False
    found: list[FeedRow] | None = None


class Worker:
    """Schedules the feeds over harvesting threads: at most `max_connections_per_host` feeds
    of a host at once (each has one request in flight, the next page read while the last is
    written), and at most `workers` in all. So slow hosts are harvested side by side, and
    the threads follow the work: hosts x per-host limit, not a constant."""

    def __init__(
        self, harvester: Harvester, feeds: list[FeedRow], *, once: bool,
        refresh: Refresh | None = None,
    ) -> None:  # fmt: skip
        self.harvester = harvester
        self.settings = harvester.settings
        self.once = once
        self.feeds: dict[int, FeedRow] = {}
        self.due: list[tuple[float, int]] = []
        self.running: set[int] = set()
        # Of those, the feeds whose lease is taken: only theirs are renewed. A renewal
        # locks its rows, and a claim skips a locked row (another worker's, it presumes),
        # so renewing a feed whose claim was still to come made that claim fail.
        self.claimed: set[int] = set()
        self.finished: set[int] = set()
        self.report = RunReport()
        self.host_running: Counter[str] = Counter()
        self.waiting: dict[int, None] = {}  # due, waiting for room (insertion-ordered)
        self.host_of: dict[int, str] = {}
        self.refresh = refresh
        self.started: set[int] = set()  # feeds that have had a turn in this run
        self.next_ranking = 0.0
        harvester.host_waited_for = self.host_has_unstarted
        if refresh is not None:
            refresh.next_at = time.monotonic() + refresh.seconds
        self.add_feeds(feeds)
        self.wake = threading.Condition()
        self.outcomes: list[FeedOutcome] = []
        self.database_failures = 0
        self.next_renewal = 0.0
        self.started_at = self.database_now() if once else None

    def add_feeds(self, feeds: list[FeedRow]) -> None:
        """Take on these feeds (those not already held), each at its stored turn."""
        for feed in feeds:
            if feed.id not in self.feeds:
                self.feeds[feed.id] = feed
                self.host_of[feed.id] = host_key(feed.url)
                self.schedule_stored(feed)

    def set_feeds(self, feeds: list[FeedRow]) -> None:
        """Harvest exactly these feeds from now on: new ones join, the others are dropped
        (one in hand finishes its page; its row is gone, so nothing more is written)."""
        wanted = {feed.id for feed in feeds}
        for feed_id in [feed_id for feed_id in self.feeds if feed_id not in wanted]:
            del self.feeds[feed_id]
            self.finished.discard(feed_id)
            self.waiting.pop(feed_id, None)
            self.harvester.backlogs.pop(feed_id, None)
            if feed_id not in self.running:  # else needed until its outcome frees its host
                del self.host_of[feed_id]
        self.add_feeds(feeds)

    def run(self) -> RunReport:
        """Harvest until stopped (or, with once, until every feed is done)."""
        try:
            while not self.harvester.stopping() and not self.all_done():
                self.collect_outcomes()
                self.refresh_feeds()
                self.renew_leases()
                self.rank_feeds(time.monotonic())
                self.start_due_feeds()
                metrics.HEALTH.tick(self.database_failures == 0)
                self.wait_for_work()
        finally:
            self.drain()
        return self.report

    def database_now(self) -> datetime | None:
        """The database's clock, which every worker shares (None if it cannot be read)."""
        try:
            with self.harvester.engine.begin() as conn:
                return feedstate.database_now(conn)
        except (DBAPIError, SQLAlchemyTimeout):
            return None

    def schedule_stored(self, feed: FeedRow) -> None:
        """First turn of a feed: gone feeds are not retried; backing-off ones wait (run only)."""
        if feed.state == "gone":
            logger.warning(
                "%s: gone (HTTP 404/410); not retried. `harvester backfill --feed URL` resets it",
                feed.url, extra={"event": "feed_gone", "feed": feed.url},
            )  # fmt: skip
            self.finished.add(feed.id)
            if self.once:
                self.report.failures[f"{feed.source} {feed.url}"] = "the feed is gone (404/410)"
            return
        delay = 0.0
        if not self.once and feed.retry_at is not None:
            delay = max(0.0, (feed.retry_at - datetime.now(UTC)).total_seconds())
        self.schedule(feed.id, delay)

    def all_done(self) -> bool:
        """With once: every feed reached its last page or failed."""
        return self.once and len(self.finished) == len(self.feeds)

    def refresh_feeds(self) -> None:
        """Find the feeds again when it is time (in the background: discovery reads many
        documents), and take on what was found last time."""
        refresh = self.refresh
        if refresh is None:
            return
        if refresh.found is not None:
            found, refresh.found = refresh.found, None
            self.set_feeds(found)
        if refresh.running or time.monotonic() < refresh.next_at:
            return
        refresh.running = True
        refresh.next_at = time.monotonic() + refresh.seconds
        run_in_background(self.find_feeds)

    def find_feeds(self) -> None:
        """The background half of refresh_feeds: a failure keeps the feeds as they are."""
        assert self.refresh is not None
        try:
            found = self.refresh.find()
        except Exception:  # discovery names its own failures; a bug must not stop harvesting
            logger.exception("finding the feeds again failed", extra={"event": "refresh_failed"})
            found = None
        with self.wake:
            self.refresh.found, self.refresh.running = found, False
            self.wake.notify_all()

    def start_due_feeds(self) -> None:
        """Start the feeds whose time has come, most urgent first, within the host and
        thread budgets."""
        now = time.monotonic()
        while self.due and self.due[0][0] <= now:
            _, feed_id = heapq.heappop(self.due)
            if (
                feed_id not in self.running
                and feed_id not in self.finished
                and feed_id in self.feeds
            ):
                self.waiting[feed_id] = None
        if not self.waiting or len(self.running) >= self.settings.workers:
            return
        ranks = self.harvester.ranks
        # sorted() is stable: among equals, the feed waiting longest starts first.
        for feed_id in sorted(self.waiting, key=lambda f: ranks.get(f, 0.0), reverse=True):
            if len(self.running) >= self.settings.workers:
                break
            host = self.host_of[feed_id]
            if self.host_running[host] < self.settings.max_connections_per_host:
                self.start(feed_id, host)

    def rank_feeds(self, now: float) -> None:
        """Work out every feed's urgency again (at most every RANK_SECONDS): the order in
        which waiting feeds start and harvests get their parse and write turns."""
        if now < self.next_ranking:
            return
        self.next_ranking = now + RANK_SECONDS
        holds_parents = self.harvester.parents_first.holds_parents
        placements = {feed_id: backlog.Placement(self.host_of[feed_id], feed.source,
                                                 holds_parents.get(feed_id, False))
                      for feed_id, feed in self.feeds.items()}  # fmt: skip
        self.harvester.ranks = backlog.rank_feeds(
            placements, self.harvester.backlogs, time.time(),
            self.settings.max_connections_per_host,
        )  # fmt: skip

    def start(self, feed_id: int, host: str) -> None:
        """Start one feed's harvest in its own thread."""
        del self.waiting[feed_id]
        # Claimed by the harvest's own thread: hundreds of feeds start side by side,
        # not one lease statement after another in this loop.
        self.running.add(feed_id)
        self.started.add(feed_id)
        self.host_running[host] += 1
        run_in_background(lambda feed=self.feeds[feed_id]: self.harvest(feed))

    def claim(self, feed_id: int) -> bool:
        """Take the feed's lease (always true without an owner: a single worker)."""
        owner = self.harvester.owner
        if owner is None:
            return True
        try:
            with self.harvester.engine.begin() as conn:
                claimed = feedstate.claim_feed(conn, feed_id, owner, self.settings.lease_seconds)
        except (DBAPIError, SQLAlchemyTimeout) as exc:
            self.loop_database_failure(exc)
            return False
        if claimed:
            self.claimed.add(feed_id)
        return claimed

    def renew_leases(self) -> None:
        """Keep the leases of feeds in hand alive between pages (a slow publisher, a retry)."""
        owner = self.harvester.owner
        now = time.monotonic()
        if owner is None or not self.claimed or now < self.next_renewal:
            return
        self.next_renewal = now + self.settings.lease_seconds / 3
        try:
            with self.harvester.engine.begin() as conn:
                claimed = sorted(self.claimed)
                feedstate.renew_leases(conn, claimed, owner, self.settings.lease_seconds)
        except (DBAPIError, SQLAlchemyTimeout) as exc:
            self.loop_database_failure(exc)

    def done_elsewhere(self, feed_id: int) -> bool:
        """With once: another live worker holds the feed and has since brought it to its end."""
        if self.started_at is None:
            return False
        try:
            with self.harvester.engine.begin() as conn:
                done = feedstate.caught_up_since(conn, feed_id, self.started_at)
        except (DBAPIError, SQLAlchemyTimeout) as exc:
            self.loop_database_failure(exc)
            return False
        if done:
            logger.info(
                "%s: brought to its last page by another worker", self.feeds[feed_id].url,
                extra={"event": "feed_done_elsewhere"},
            )  # fmt: skip
        return done

    def harvest(self, feed: FeedRow) -> None:
        """One harvest task: run the feed to its last page and hand back the outcome."""
        outcome = self.harvest_feed(feed)
        with self.wake:
            self.outcomes.append(outcome)
            self.wake.notify_all()

    def harvest_feed(self, feed: FeedRow) -> FeedOutcome:
        """Take the feed's lease, harvest from the stored position; classify what went wrong."""
        try:
            if not self.claim(feed.id):
                if self.once and self.done_elsewhere(feed.id):
                    return FeedOutcome(feed, retry_in=None, state="done_elsewhere")
                return FeedOutcome(feed, retry_in=self.settings.lease_seconds / 2,
                                   state="elsewhere")  # fmt: skip
            with self.harvester.engine.begin() as conn:
                stored = feedstate.find_feed(conn, feed.id)
            if stored is None:  # no longer listed by its catalog: its rows went with it
                return FeedOutcome(feed, retry_in=None, state="retired")
            feed = stored
            progress = self.harvester.harvest(feed)
            retry_in = 0.0 if progress.handed_over else self.poll_interval(progress)
            return FeedOutcome(feed, progress, retry_in=retry_in)
        except FeedError as exc:
            return self.feed_failed(feed, exc)
        except LeaseLost as exc:
            logger.info("%s", exc, extra={"event": "lease_lost", "feed": feed.url})
            return FeedOutcome(feed, retry_in=self.settings.lease_seconds, state="elsewhere")
        except (DBAPIError, SQLAlchemyTimeout) as exc:
            return self.database_failed(feed, exc)
        except Exception as exc:  # an unforeseen bug must not kill the other feeds
            logger.exception("%s: unexpected error", feed.url, extra={"event": "feed_crashed"})
            return self.feed_failed(
                feed,
                InternalError(
                    f"{feed.next_url}: unexpected error (a harvester bug): {describe(exc)}"
                ),
            )

    def database_failed(self, feed: FeedRow, error: Exception) -> FeedOutcome:
        """Sort a database error by its SQLSTATE: an outage, the page's data, or our bug."""
        fault = database_fault(error)
        reason = describe(error)
        if fault == "data":
            return self.feed_failed(
                feed,
                FatalFeedError(
                    f"{feed.next_url}: refused by the database: {reason}", url=feed.next_url
                ),
            )
        if fault == "bug":
            logger.error(
                "%s: the database refused a statement of ours: %s",
                feed.url,
                reason,
                exc_info=error,
                extra={"event": "feed_crashed", "feed": feed.url},
            )
            return self.feed_failed(
                feed, InternalError(f"{feed.next_url}: internal error (a harvester bug): {reason}")
            )
        delay = self.note_database_failure(error)
        self.store_error(feed, "database", f"database unavailable: {reason}", None)
        return FeedOutcome(feed, error=error, retry_in=delay, state="database")

    def poll_interval(self, progress: Progress) -> float:
        """RPDE/imin: at most one poll of a last page per 8 s; longer if max-age says so."""
        interval = self.settings.min_poll_seconds
        if progress.max_age is not None:
            interval = max(interval, min(progress.max_age, self.settings.max_poll_seconds))
        return interval

    def feed_failed(self, feed: FeedRow, error: HarvesterError) -> FeedOutcome:
        """Park the feed as RPDE asks and record why."""
        state, retry_in = classify(error, self.settings.overload_retry_seconds)
        retry_at = datetime.now(UTC) + timedelta(seconds=retry_in) if retry_in else None
        message = redact.scrub(str(error))
        logger.error(
            "%s", message,
            extra={"event": "feed_failed", "feed": feed.url, "state": state},
        )  # fmt: skip
        metrics.record_error(feed.source, feed.url, state)
        self.store_error(feed, state, message, retry_at)
        return FeedOutcome(feed, error=error, retry_in=retry_in, state=state)

    def store_error(
        self, feed: FeedRow, state: str, message: str, retry_at: datetime | None
    ) -> None:
        """Write the failure to the feed's row for `status` (the database may be away)."""
        try:
            with self.harvester.engine.begin() as conn:
                feedstate.record_feed_error(conn, feed.id, state, redact.scrub(message), retry_at)
        except (DBAPIError, SQLAlchemyTimeout) as exc:
            logger.warning(
                "%s: could not record the failure: %s",
                feed.url,
                describe(exc),
                extra={"event": "feed_error_not_recorded", "feed": feed.url},
            )

    def loop_database_failure(self, error: Exception) -> None:
        """A scheduling statement failed: wait out an outage; a bug of ours stops the run."""
        if database_fault(error) == "bug":
            raise InternalError(f"a scheduling statement failed: {describe(error)}") from error
        self.note_database_failure(error)

    def note_database_failure(self, error: Exception) -> float:
        """Log that the database is away; the next try waits a growing, jittered delay."""
        self.database_failures += 1
        low, high = DATABASE_RETRY_SECONDS
        delay = min(high, low * 2 ** min(self.database_failures, 8)) * random.uniform(0.5, 1)
        logger.warning(
            "database unavailable, retrying in %.1fs: %s", delay, describe(error),
            extra={"event": "database_unavailable"},
        )  # fmt: skip
        return delay

    def collect_outcomes(self) -> None:
        """Take finished harvests and schedule each feed's next turn."""
        with self.wake:
            outcomes, self.outcomes = self.outcomes, []
        for outcome in outcomes:
            feed_id = outcome.feed.id
            self.running.discard(feed_id)
            self.claimed.discard(feed_id)
            self.host_running[self.host_of[feed_id]] -= 1
            if feed_id in self.feeds:
                self.settle(outcome)
            else:  # dropped by set_feeds meanwhile; its last pages may have noted a backlog
                del self.host_of[feed_id]
                self.harvester.backlogs.pop(feed_id, None)

    def host_has_unstarted(self, feed: FeedRow) -> bool:
        """A feed of this feed's host waits for its first turn. Only a first turn preempts:
        once every feed of a host has started, the most urgent run on to their end."""
        host = self.host_of.get(feed.id)
        return any(feed_id not in self.started and self.host_of.get(feed_id) == host
                   for feed_id in list(self.waiting))  # fmt: skip

    def settle(self, outcome: FeedOutcome) -> None:
        """Count, report and reschedule one outcome."""
        feed, progress = outcome.feed, outcome.progress
        if progress is not None:
            self.report.pages += progress.pages
            self.report.items += progress.items
            self.database_failures = 0
        if outcome.state == "database" and not self.harvester.stopping():
            self.schedule(feed.id, outcome.retry_in or 1.0)
            return
        if self.once and (outcome.error is not None or (progress and progress.caught_up)):
            self.finished.add(feed.id)
            if outcome.error is not None:
                self.report.failures[f"{feed.source} {feed.url}"] = str(outcome.error)
            return
        if outcome.retry_in is None:
            self.finished.add(feed.id)  # gone: RPDE says do not retry
            return
        self.schedule(feed.id, outcome.retry_in)

    def schedule(self, feed_id: int, delay: float) -> None:
        """Make the feed due after `delay` seconds."""
        heapq.heappush(self.due, (time.monotonic() + delay, feed_id))

    def wait_for_work(self) -> None:
        """Sleep until a harvest finishes, a feed falls due, or shutdown."""
        if self.all_done():
            return  # with once: the last outcome was just collected; exit without a nap
        timeout = 1.0
        if self.due and len(self.running) < self.settings.workers:
            timeout = min(timeout, max(0.0, self.due[0][0] - time.monotonic()))
        with self.wake:
            if not self.outcomes:
                self.wake.wait(timeout)

    def drain(self) -> None:
        """On shutdown: let each harvest commit its page in hand, then release leases."""
        deadline = time.monotonic() + 10.0
        while self.running and time.monotonic() < deadline:
            self.collect_outcomes()
            self.wait_for_work()
        self.collect_outcomes()
        self.release_leases()

    def release_leases(self) -> None:
        """Give every feed back so another worker can take it over at once."""
        owner = self.harvester.owner
        if owner is None:
            return
        try:
            with self.harvester.engine.begin() as conn:
                for feed_id in self.feeds:
                    feedstate.release_feed(conn, feed_id, owner)
        except (DBAPIError, SQLAlchemyTimeout):
            pass  # the leases expire on their own


def describe(error: BaseException) -> str:
    """One line for an error: a database error's own first line (no SQL, no parameters)."""
    original = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def classify(error: HarvesterError, overload: tuple[float, float]) -> tuple[str, float | None]:
    """The feed's state after an error, and when to try again (None: never)."""
    if isinstance(error, FeedGone):
        return "gone", None
    if isinstance(error, FeedOverloaded):
        return "backing_off", random.uniform(*overload)  # RPDE: random 60-120 minutes
    if isinstance(error, RetriableFeedError):
        return "backing_off", max(error.retry_after or 0.0, 300.0 * random.uniform(0.5, 1.0))
    return "error", ERROR_RETRY_SECONDS  # fatal: an operator may mend it; tried hourly
