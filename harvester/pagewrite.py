"""Writing pages: items upserted or deleted, children joined, and the feed moved on, in
the caller's transaction (a page and its position commit together)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from harvester import parents as parent_refs
from harvester import records, sql
from harvester.errors import LeaseLost, database_fault
from harvester.fastpath import copy_to_staging, run
from harvester.feedstate import FeedRow
from harvester.parents import ParentCache
from harvester.records import Row
from harvester.rpde import RAW_EXCERPT_CHARS, Rejected


@dataclass(frozen=True)
class PageWrite:
    """What one page changes: rows to upsert or delete, rejected items, the new position."""

    rows: Sequence[Row]
    rejected: Sequence[Rejected]
    page_url: str
    next_url: str
    caught_up: bool
    license: str | None = None  # the page's RPDE `license`, kept on the feed for attribution


class Written(NamedTuple):
    """What a page write did: the feed's new row, the rows the database refused, and the
    rows a finished backfill swept (not seen again)."""

    feed: FeedRow
    refused: list[Rejected]
    swept: int = 0


SOURCE_LOCK = 7310  # advisory lock class of page writes, keyed by the source's name hash


def write_page(
    conn: Connection,
    feed: FeedRow,
    page: PageWrite,
    *,
    owner: str | None = None,
    lease_seconds: float = 15.0,
    parents: ParentCache | None = None,
    one_by_one: bool = False,
) -> Written:
    """Apply one page and move the feed's position, atomically (the caller commits)."""
    return write_pages(conn, feed, [page], owner=owner, lease_seconds=lease_seconds,
                       parents=parents, one_by_one=one_by_one)  # fmt: skip


def write_pages(
    conn: Connection,
    feed: FeedRow,
    pages: Sequence[PageWrite],
    *,
    owner: str | None = None,
    lease_seconds: float = 15.0,
    parents: ParentCache | None = None,
    one_by_one: bool = False,
) -> Written:
    """Apply consecutive pages and move the feed past the last, atomically (the caller
    commits): one lock, one COPY and upsert per role, one position update.

    With `one_by_one` (for pages the database refused as a whole), each row is applied
    under its own savepoint, and a row refused for its data is set aside with the
    database's reason. Returns the feed's new row and the rows set aside so.
    """
    rows, last = latest_rows(pages), pages[-1]
    finishing = last.caught_up and feed.backfill_generation is not None
    exclusive = finishing or any(row.role == "parent" for row in rows)
    lock_source(conn, feed.source, exclusive=exclusive)
    # Asked under the shared lock, while no parent can appear or go: a parent page that
    # commits just before it would otherwise be deleted under a shared lock, beside child
    # pages still joining to it. PostgreSQL breaks the deadlock of two pages upgrading.
    if not exclusive and parent_refs.deletes_a_parent(conn, feed.source, rows):
        lock_source(conn, feed.source, exclusive=True)
    refused: list[Rejected] = []
    if rows and one_by_one:
        refused = apply_rows_one_by_one(conn, feed, rows, parents or ParentCache())
    elif rows:
        apply_rows(conn, feed, rows, parents or ParentCache())
    for page in pages:
        record_rejected(conn, feed.id, page.page_url,
                        [*page.rejected, *(refused if page is last else ())])  # fmt: skip
    swept = sweep_unseen(conn, feed) if finishing else 0
    license = next((page.license for page in reversed(pages) if page.license), None)
    moved = advance_feed(conn, feed, last.next_url, len(rows), len(pages), last.caught_up,
                         owner=owner, finishing=finishing, lease_seconds=lease_seconds,
                         license=license)  # fmt: skip
    return Written(moved, refused, swept)


def latest_rows(pages: Sequence[PageWrite]) -> Sequence[Row]:
    """The pages' rows, one per item: a later page's version replaces an earlier one's, as
    writing the pages one by one would (RPDE orders a feed's items oldest first)."""
    if len(pages) == 1:
        return pages[0].rows  # a page's own items are unique already (rpde.latest_per_key)
    latest: dict[tuple[str, str], Row] = {}
    for page in pages:
        for row in page.rows:
            latest.pop((row.kind, row.rpde_id), None)
            latest[(row.kind, row.rpde_id)] = row
    return list(latest.values())


def apply_rows_one_by_one(
    conn: Connection, feed: FeedRow, rows: Sequence[Row], parents: ParentCache
) -> list[Rejected]:
    """`apply_rows` a row at a time, each under a savepoint; the rows refused for their data."""
    refused: list[Rejected] = []
    for position, row in enumerate(rows):
        try:
            with conn.begin_nested():
                run(conn, sql.CLEAR_STAGING)  # rows of the savepoints before are written already
                apply_rows(conn, feed, [row], parents)
        except DBAPIError as exc:
            if database_fault(exc) != "data":
                raise
            refused.append(refused_row(position, row, exc))
    return refused


def refused_row(position: int, row: Row, error: DBAPIError) -> Rejected:
    """A row the database refused, as a rejected item with the database's own reason."""
    reason = str(error.orig or error).strip().splitlines()[0]
    excerpt = (row.data or "")[:RAW_EXCERPT_CHARS]
    return Rejected(position, row.kind, row.rpde_id, f"refused by the database: {reason}",
                    excerpt)  # fmt: skip


def lock_source(conn: Connection, source: str, *, exclusive: bool) -> None:
    """Order page writes of one source: a page that may change parents runs alone.

    Under READ COMMITTED a child page and a parent page committing side by side each miss
    the other's rows, and the child keeps a stale join; pages of children only share.
    """
    statement = sql.LOCK_SOURCE if exclusive else sql.LOCK_SOURCE_SHARED
    run(conn, statement, {"key": SOURCE_LOCK, "source": source})


def apply_rows(conn: Connection, feed: FeedRow, rows: Sequence[Row], parents: ParentCache) -> None:
    """Upsert and delete a page's items: parents and others first, then children joined."""
    params = {"source": feed.source, "feed_id": feed.id, "generation": feed.write_generation}
    tombstones, others, children = split_rows(rows)
    written = upsert_staged(conn, params, others, children=False)
    deleted = delete_items(conn, feed.source, tombstones)
    # Only versions that won the upsert replace a parent's refs (an older one was ignored).
    new_parents = [row for row in others if (row.kind, row.rpde_id) in written]
    parent_refs.refresh_parents(
        conn, feed.source, written | parent_refs.deleted_parents(deleted), new_parents
    )
    if children:
        resolved = parent_refs.resolve_parents(conn, feed.source, children, parents)
        joined = [records.join_child(row, resolved.get(row.parent_ref)) for row in children]
        upsert_staged(conn, params, joined, children=True)
    if feed.backfill_generation is not None:
        run(conn, sql.MARK_SEEN, params)


def split_rows(rows: Sequence[Row]) -> tuple[list[Row], list[Row], list[Row]]:
    """A page's tombstones, its live parents and others, and its live children."""
    tombstones: list[Row] = []
    others: list[Row] = []
    children: list[Row] = []
    for row in rows:
        if records.is_tombstone(row):
            tombstones.append(row)
        elif row.role == "child":
            children.append(row)
        else:
            others.append(row)
    return tombstones, others, children


def upsert_staged(
    conn: Connection, params: dict[str, Any], rows: Sequence[Row], *, children: bool
) -> set[tuple[str, str]]:
    """Stage rows of one role and upsert them; the (kind, rpde_id) of parents written."""
    if not rows:
        return set()
    copy_to_staging(conn, rows)
    if children:
        run(conn, sql.UPSERT_ITEMS, {**params, "children": True})
        return set()
    upserted = run(conn, sql.UPSERT_ITEMS + sql.RETURNING_PARENTS, {**params, "children": False})
    return {(kind, rpde_id) for role, kind, rpde_id in upserted if role == "parent"}


def delete_items(conn: Connection, source: str, tombstones: Sequence[Row]) -> list[Any]:
    """Apply tombstones (rows with deleted set); returns the removed rows' keys."""
    if not tombstones:
        return []
    params = {"source": source, "kinds": [row.kind for row in tombstones],
              "ids": [row.rpde_id for row in tombstones],
              "modified": [row.modified for row in tombstones],
              "modified_text": [row.modified_text for row in tombstones]}  # fmt: skip
    return run(conn, sql.DELETE_ITEMS, params).fetchall()


def sweep_unseen(conn: Connection, feed: FeedRow) -> int:
    """End of a backfill: remove the feed's rows the new pass did not see again."""
    params = {"feed_id": feed.id, "generation": feed.write_generation}
    removed = run(conn, sql.SWEEP_UNSEEN, params).fetchall()
    parent_refs.refresh_parents(conn, feed.source, parent_refs.deleted_parents(removed))
    return len(removed)


def advance_feed(
    conn: Connection,
    feed: FeedRow,
    next_url: str,
    count: int,
    pages: int,
    caught_up: bool,
    *,
    owner: str | None,
    finishing: bool,
    lease_seconds: float,
    license: str | None = None,
) -> FeedRow:
    """Move the feed to `next_url`, only if nobody moved it since it was read; its new row."""
    result = run(
        conn, sql.ADVANCE_FEED,
        {
            "feed_id": feed.id, "next_url": next_url, "expected_url": feed.next_url,
            "read_generation": feed.generation, "read_backfill": feed.backfill_generation,
            "count": count, "pages": pages, "caught_up": caught_up,
            "state": "caught_up" if caught_up else "harvesting",
            "finish_backfill": finishing, "owner": owner, "lease_seconds": lease_seconds,
            "license": license,
        },
    )  # fmt: skip
    moved = result.fetchone()
    if moved is None:
        raise LeaseLost(
            f"feed {feed.id} ({feed.url}) was moved on, backfilled or taken over since this "
            "page was read: the page is dropped and the feed read again"
        )
    return FeedRow(*moved)


def record_rejected(
    conn: Connection, feed_id: int, page_url: str, rejected: Sequence[Rejected]
) -> None:
    """Keep each rejected item with its reason, once per item (or per position if no id)."""
    if not rejected:
        return
    conn.execute(
        text(sql.RECORD_REJECTED),
        [
            {
                "feed_id": feed_id, "item_key": _rejected_key(page_url, r), "page_url": page_url,
                "position": r.position, "kind": r.kind, "rpde_id": r.id, "reason": r.reason,
                "raw": r.raw,
            }
            for r in rejected
        ],
    )  # fmt: skip


def _rejected_key(page_url: str, rejected: Rejected) -> str:
    if rejected.id is not None:
        return f"{rejected.kind or ''}\x1f{rejected.id}"
    # The key is indexed and a page URL has no bound: its digest stands for it.
    return f"{hashlib.sha256(page_url.encode()).hexdigest()}#{rejected.position}"
