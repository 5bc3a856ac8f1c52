"""Feeds and sources: registration, leases, failures, backfills, and what status reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from harvester import sql
from harvester.config import Source

DISCOVERY = "(discovery)"  # the source `status` names a discovery failure by


@dataclass(frozen=True)
class FeedRow:
    """A feed's stored position and bookkeeping."""

    id: int
    source: str
    url: str
    next_url: str
    state: str
    generation: int
    backfill_generation: int | None
    retry_at: datetime | None = None
    purpose: str = "opportunities"  # or sellers: a bookable sellers feed (rule 7)

    @property
    def write_generation(self) -> int:
        """The generation rows written now are stamped with (the backfill's, while one runs)."""
        return self.backfill_generation if self.backfill_generation is not None else self.generation


def sync_source(conn: Connection, source: Source, prefix: str | None) -> None:
    """Register a source (and its checkout base) and its feeds."""
    checks_sellers = source.bookable_sellers_feed is not None
    params = {"name": source.name, "prefix": prefix, "checks_sellers": checks_sellers}
    conn.execute(text(sql.UPSERT_SOURCE), params)
    for url, purpose in source.feed_purposes():
        conn.execute(text(sql.ADD_FEED), {"source": source.name, "url": url, "purpose": purpose})


def load_feeds(conn: Connection, pairs: Sequence[tuple[str, str]] | None = None) -> list[FeedRow]:
    """Feeds by (source, url), or all of them."""
    rows = conn.execute(text(sql.SELECT_FEEDS + " ORDER BY f.id")).all()
    feeds = [FeedRow(*row) for row in rows]
    if pairs is None:
        return feeds
    wanted = set(pairs)
    return [feed for feed in feeds if (feed.source, feed.url) in wanted]


def load_feed(conn: Connection, feed_id: int) -> FeedRow:
    """One feed's current row."""
    return FeedRow(
        *conn.execute(text(sql.SELECT_FEEDS + " WHERE f.id = :id"), {"id": feed_id}).one()
    )


def find_feed(conn: Connection, feed_id: int) -> FeedRow | None:
    """One feed's current row; None once the feed is retired (its catalog dropped it)."""
    row = conn.execute(text(sql.SELECT_FEEDS + " WHERE f.id = :id"), {"id": feed_id}).first()
    return FeedRow(*row) if row is not None else None


def claim_feed(conn: Connection, feed_id: int, owner: str, lease_seconds: float) -> bool:
    """Take or renew the feed's lease; False while another live worker holds it."""
    params = {"id": feed_id, "owner": owner, "seconds": lease_seconds}
    result = conn.execute(text(sql.CLAIM_FEED), params)
    return result.rowcount == 1


def caught_up_times(conn: Connection) -> list[Any]:
    """(source, url, caught_up_at) of every feed that has reached its last page."""
    conn.execute(text(sql.QUICK_TIMEOUT))
    return list(conn.execute(text(sql.CAUGHT_UP_TIMES)).all())


def database_now(conn: Connection) -> datetime:
    """now() on the database server."""
    return conn.execute(text(sql.DATABASE_NOW)).scalar_one()


def caught_up_since(conn: Connection, feed_id: int, since: datetime) -> bool:
    """The feed reached its last page (and ended any backfill) at or after `since`."""
    params = {"id": feed_id, "since": since}
    row = conn.execute(text(sql.CAUGHT_UP_SINCE), params).scalar_one_or_none()
    return bool(row)


def renew_leases(conn: Connection, feed_ids: list[int], owner: str, lease_seconds: float) -> None:
    """Extend this worker's leases on the feeds it is harvesting."""
    conn.execute(
        text(sql.RENEW_LEASES), {"ids": feed_ids, "owner": owner, "seconds": lease_seconds}
    )


def release_feed(conn: Connection, feed_id: int, owner: str) -> None:
    """Give the lease back so another worker may take the feed at once."""
    conn.execute(text(sql.RELEASE_FEED), {"id": feed_id, "owner": owner})


def record_feed_error(
    conn: Connection, feed_id: int, state: str, message: str, retry_at: datetime | None
) -> None:
    """Note a feed's failure and when it may be tried again (None: not until an operator acts)."""
    params = {"id": feed_id, "state": state, "message": message, "retry_at": retry_at}
    conn.execute(text(sql.RECORD_FEED_ERROR), params)


def start_backfill(conn: Connection, feed_id: int) -> FeedRow:
    """Send the feed back to its first page; rows not seen again are swept at its end.

    A backfill already under way (say its process died) is resumed where it stopped,
    not restarted: one backfill per feed at a time.
    """
    conn.execute(text(sql.START_BACKFILL), {"id": feed_id})
    return load_feed(conn, feed_id)


def feed_status(conn: Connection) -> list[Any]:
    """One row per feed for `harvester status`, then one per catalog or dataset site the
    last discovery could not read (source DISCOVERY)."""
    return list(conn.execute(text(sql.STATUS), {"discovery": DISCOVERY}).all())


def not_bookable_reasons(conn: Connection) -> list[Any]:
    """Held children that are not bookable now, counted by kind and reason."""
    return list(conn.execute(text(sql.NOT_BOOKABLE_REASONS)).all())


def bookable_now(conn: Connection, limit: int) -> list[Any]:
    """The soonest bookable opportunities."""
    return list(conn.execute(text(sql.SOONEST_BOOKABLE), {"limit": limit}).all())


def count_bookable_now(conn: Connection) -> int:
    """How many opportunities are bookable now."""
    return int(conn.execute(text(sql.COUNT_BOOKABLE)).scalar_one())
