"""All SQL the harvester runs. Functions take a Connection: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, event, text

from harvester.config import Source
from harvester.errors import LeaseLost
from harvester.records import STAGING_COLUMNS, Row
from harvester.rpde import Rejected


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

    @property
    def write_generation(self) -> int:
        """The generation rows written now are stamped with (the backfill's, while one runs)."""
        return self.backfill_generation if self.backfill_generation is not None else self.generation


@dataclass(frozen=True)
class PageWrite:
    """What one page changes: rows to upsert or delete, rejected items, the new position."""

    rows: Sequence[Row]
    rejected: Sequence[Rejected]
    page_url: str
    next_url: str
    caught_up: bool


SOURCE_LOCK = 7310  # advisory lock class of page writes, keyed by the source's name hash

STAGING_DDL = """
CREATE TEMPORARY TABLE IF NOT EXISTS harvester_staging (
    kind text, rpde_id text, deleted boolean, modified numeric, modified_text text,
    data text, type text, role text, item_id text, identifier text,
    start_date timestamptz, end_date timestamptz, parent_ref text, problem text,
    checkout_path text, embedded_type text, offer_problem text,
    from_months integer, from_micros bigint, through_months integer, through_micros bigint,
    refs text[], start_offset integer
) ON COMMIT DELETE ROWS
"""

# The parent each named ref resolves to (rule 2): same source, the ref is its @id or one
# of its individualFacilityUse @ids; its own @id wins over an individual one, then a fixed
# order. Resolved once per distinct ref, then hash-joined to the children.
RESOLVE_PARENTS = """
resolved AS (
    SELECT DISTINCT ON (r.ref_id)
           r.ref_id, r.parent_kind, r.parent_rpde_id, r.offer_problem,
           r.from_months, r.from_micros, r.through_months, r.through_micros
    FROM harvester.parent_refs AS r
    WHERE r.source = :source AND r.ref_id IN ({refs})
    ORDER BY r.ref_id, r.is_self DESC, r.parent_kind, r.parent_rpde_id
)
"""
JOIN_RESOLVED = (
    "LEFT JOIN resolved AS par ON par.ref_id = {child}.parent_ref AND {child}.role = 'child'"
)


def window_inputs_sql(child: str) -> str:
    """The window's inputs as plain columns: the published parent's offer, else the embedded one.

    They are computed in a MATERIALIZED step so `harvester.booking_window` receives column
    references: given CASE expressions, PostgreSQL stops inlining the SQL functions and
    calls them per row (about 14 us each, half the cost of a page's upsert).
    """

    def pick(column: str) -> str:
        return (
            f"CASE WHEN par.parent_kind IS NOT NULL THEN par.{column} "
            f"ELSE {child}.{column} END AS w_{column}"
        )

    offer_ok = (
        f"CASE WHEN par.parent_kind IS NOT NULL THEN par.offer_problem IS NULL "
        f"ELSE {child}.embedded_type IS NOT NULL AND {child}.offer_problem IS NULL END"
    )
    picks = ", ".join(
        pick(c) for c in ("from_months", "from_micros", "through_months", "through_micros")
    )
    return f"{child}.problem IS NULL AS w_child_ok, {offer_ok} AS w_offer_ok, {picks}"


def window_sql(row: str) -> str:
    """The booking window of a row carrying the columns of `window_inputs_sql`."""
    return (
        f"harvester.booking_window({row}.start_date, {row}.w_child_ok, {row}.w_offer_ok, "
        f"{row}.w_from_months, {row}.w_from_micros, {row}.w_through_months, "
        f"{row}.w_through_micros, {row}.start_offset)"
    )


ITEM_COLUMNS = (
    "modified", "modified_text", "type", "role", "item_id", "identifier", "start_date",
    "end_date", "parent_ref", "problem", "checkout_path", "embedded_type", "offer_problem",
    "from_months", "from_micros", "through_months", "through_micros", "refs", "start_offset",
)  # fmt: skip

UPSERT_ITEMS = f"""
WITH {RESOLVE_PARENTS.format(refs="SELECT parent_ref FROM harvester_staging WHERE role = 'child'")},
staged AS MATERIALIZED (
    SELECT s.*, par.parent_kind AS resolved_kind, par.parent_rpde_id AS resolved_id,
           {window_inputs_sql("s")}
    FROM harvester_staging AS s
    {JOIN_RESOLVED.format(child="s")}
    WHERE NOT s.deleted
)
INSERT INTO harvester.items AS i (
    source, kind, rpde_id, feed_id, data, seen_generation, updated_at, checkout_url,
    parent_kind, parent_rpde_id, bookable, {", ".join(ITEM_COLUMNS)})
SELECT :source, s.kind, s.rpde_id, :feed_id, s.data::jsonb, :generation, now(),
       (SELECT checkout_prefix FROM harvester.sources WHERE name = :source) || s.checkout_path,
       s.resolved_kind, s.resolved_id,
       {window_sql("s")}, {", ".join("s." + c for c in ITEM_COLUMNS)}
FROM staged AS s
ON CONFLICT (source, kind, rpde_id) DO UPDATE SET
    feed_id = EXCLUDED.feed_id, data = EXCLUDED.data,
    seen_generation = EXCLUDED.seen_generation, updated_at = EXCLUDED.updated_at,
    checkout_url = EXCLUDED.checkout_url, parent_kind = EXCLUDED.parent_kind,
    parent_rpde_id = EXCLUDED.parent_rpde_id, bookable = EXCLUDED.bookable,
    {", ".join(f"{c} = EXCLUDED.{c}" for c in ITEM_COLUMNS)}
WHERE (EXCLUDED.modified < i.modified
       OR EXCLUDED.modified_text COLLATE "C" < i.modified_text) IS NOT TRUE
RETURNING i.role, i.kind, i.rpde_id
"""

# RPDE §Deleted items: a tombstone removes the item unless what is held is newer. The keys
# come as arrays: the planner then probes the primary key per tombstone instead of
# guessing at an unanalysed temporary table.
DELETE_ITEMS = """
DELETE FROM harvester.items AS i
USING unnest(CAST(:kinds AS text[]), CAST(:ids AS text[]), CAST(:modified AS numeric[]),
             CAST(:modified_text AS text[])) AS s(kind, rpde_id, modified, modified_text)
WHERE i.source = :source AND i.kind = s.kind AND i.rpde_id = s.rpde_id
  AND (s.modified < i.modified OR s.modified_text COLLATE "C" < i.modified_text) IS NOT TRUE
RETURNING i.role, i.kind, i.rpde_id
"""

MARK_SEEN = """
UPDATE harvester.items AS i SET seen_generation = :generation
FROM harvester_staging AS s
WHERE NOT s.deleted AND i.source = :source AND i.kind = s.kind AND i.rpde_id = s.rpde_id
  AND i.seen_generation < :generation
"""

DROP_PARENT_REFS = """
DELETE FROM harvester.parent_refs AS r
USING unnest(CAST(:kinds AS text[]), CAST(:ids AS text[])) AS k(kind, rpde_id)
WHERE r.source = :source AND r.parent_kind = k.kind AND r.parent_rpde_id = k.rpde_id
RETURNING r.ref_id
"""

# The refs come from the page itself: no join to items, so no plan can go astray while
# the table's statistics are still missing early in a first harvest.
ADD_PARENT_REFS = """
INSERT INTO harvester.parent_refs (
    source, ref_id, parent_kind, parent_rpde_id, is_self,
    offer_problem, from_months, from_micros, through_months, through_micros)
SELECT :source, e.*
FROM unnest(CAST(:refs AS text[]), CAST(:kinds AS text[]), CAST(:ids AS text[]),
            CAST(:selves AS boolean[]), CAST(:problems AS text[]), CAST(:from_m AS integer[]),
            CAST(:from_u AS bigint[]), CAST(:thru_m AS integer[]), CAST(:thru_u AS bigint[])) AS e
ON CONFLICT DO NOTHING
"""

# A parent changed: recompute only the children naming one of its refs (rule 2).
RECOMPUTE_CHILDREN = f"""
WITH {RESOLVE_PARENTS.format(refs="SELECT unnest(CAST(:refs AS text[]))")},
children AS MATERIALIZED (
    SELECT k.source, k.kind, k.rpde_id, k.start_date, k.start_offset,
           par.parent_kind, par.parent_rpde_id, {window_inputs_sql("k")}
    FROM harvester.items AS k
    {JOIN_RESOLVED.format(child="k")}
    WHERE k.source = :source AND k.role = 'child' AND k.parent_ref = ANY(CAST(:refs AS text[]))
)
UPDATE harvester.items AS c
SET parent_kind = x.parent_kind, parent_rpde_id = x.parent_rpde_id, bookable = x.bookable
FROM (SELECT w.*, {window_sql("w")} AS bookable FROM children AS w) AS x
WHERE c.source = x.source AND c.kind = x.kind AND c.rpde_id = x.rpde_id
  AND (c.bookable IS DISTINCT FROM x.bookable
       OR c.parent_kind IS DISTINCT FROM x.parent_kind
       OR c.parent_rpde_id IS DISTINCT FROM x.parent_rpde_id)
"""

HOLDS_PARENT = """
SELECT EXISTS (
    SELECT 1 FROM unnest(CAST(:kinds AS text[]), CAST(:ids AS text[])) AS k(kind, rpde_id)
    JOIN harvester.items AS i
      ON i.source = :source AND i.kind = k.kind AND i.rpde_id = k.rpde_id
    WHERE i.role = 'parent'
)
"""

SWEEP_UNSEEN = """
DELETE FROM harvester.items
WHERE feed_id = :feed_id AND seen_generation < :generation
RETURNING role, kind, rpde_id
"""

ADVANCE_FEED = """
UPDATE harvester.feeds
SET next_url = :next_url, pages = pages + 1, items_written = items_written + :count,
    last_page_at = now(), retry_at = NULL,
    state = CASE WHEN backfill_generation IS NOT NULL AND NOT :finish_backfill
                 THEN 'backfilling' ELSE :state END,
    caught_up_at = CASE WHEN :caught_up THEN now() ELSE caught_up_at END,
    last_error = CASE WHEN :caught_up OR :count > 0 THEN NULL ELSE last_error END,
    generation = :generation,
    backfill_generation = CASE WHEN :finish_backfill THEN NULL ELSE backfill_generation END,
    lease_until = CASE WHEN lease_owner IS NULL THEN NULL
                       ELSE now() + make_interval(secs => :lease_seconds) END
WHERE id = :feed_id AND next_url = :expected_url
  AND (lease_owner IS NULL OR lease_owner = :owner)
"""

RECORD_REJECTED = """
INSERT INTO harvester.rejected_items
    (feed_id, item_key, page_url, position, kind, rpde_id, reason, raw, seen_at)
VALUES (:feed_id, :item_key, :page_url, :position, :kind, :rpde_id, :reason, :raw, now())
ON CONFLICT (feed_id, item_key) DO UPDATE SET
    page_url = EXCLUDED.page_url, position = EXCLUDED.position, reason = EXCLUDED.reason,
    raw = EXCLUDED.raw, seen_at = EXCLUDED.seen_at
"""


def prepare_engine(engine: Engine) -> Engine:
    """Give every new connection its staging table, outside any page transaction."""

    def create_staging(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(STAGING_DDL)
        dbapi_connection.commit()

    event.listen(engine, "connect", create_staging)
    return engine


def write_page(
    conn: Connection, feed: FeedRow, page: PageWrite, *, owner: str | None = None,
    lease_seconds: float = 15.0,
) -> None:
    """Apply one page and move the feed's position, atomically (the caller commits)."""
    finishing = page.caught_up and feed.backfill_generation is not None
    exclusive = finishing or may_change_parents(conn, feed.source, page.rows)
    lock_source(conn, feed.source, exclusive=exclusive)
    if page.rows:
        apply_rows(conn, feed, page.rows)
    record_rejected(conn, feed.id, page.page_url, page.rejected)
    if finishing:
        sweep_unseen(conn, feed)
    advance_feed(conn, feed, page, owner=owner, finishing=finishing, lease_seconds=lease_seconds)


def lock_source(conn: Connection, source: str, *, exclusive: bool) -> None:
    """Order page writes of one source: a page that may change parents runs alone.

    Under READ COMMITTED a child page and a parent page committing side by side each miss
    the other's rows, and the child keeps a stale join; pages of children only share.
    """
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    conn.execute(text(f"SELECT {function}(:key, hashtext(:source))"),
                 {"key": SOURCE_LOCK, "source": source})  # fmt: skip


def apply_rows(conn: Connection, feed: FeedRow, rows: Sequence[Row]) -> None:
    """Upsert and delete a page's items, then re-join the children of changed parents."""
    copy_to_staging(conn, rows)
    params = {"source": feed.source, "feed_id": feed.id, "generation": feed.write_generation}
    upserted = conn.execute(text(UPSERT_ITEMS), params).all()
    written = {(row.kind, row.rpde_id) for row in upserted if row.role == "parent"}
    deleted = delete_items(conn, feed.source, [row for row in rows if row[2]])
    if feed.backfill_generation is not None:
        conn.execute(text(MARK_SEEN), params)
    # Only versions that won the upsert replace a parent's refs (an older one was ignored).
    new_parents = [row for row in rows if not row[2] and (row[0], row[1]) in written]
    refresh_parents(conn, feed.source, written | _deleted_parents(deleted), new_parents)


def delete_items(conn: Connection, source: str, tombstones: Sequence[Row]) -> list[Any]:
    """Apply tombstones (staging rows with deleted set); returns the removed rows' keys."""
    if not tombstones:
        return []
    columns = list(zip(*(row[:5] for row in tombstones), strict=True))
    params = {"source": source, "kinds": list(columns[0]), "ids": list(columns[1]),
              "modified": list(columns[3]), "modified_text": list(columns[4])}  # fmt: skip
    return conn.execute(text(DELETE_ITEMS), params).all()


def copy_to_staging(conn: Connection, rows: Sequence[Row]) -> None:
    """COPY the page's rows into the connection's temporary table (emptied at commit)."""
    if not rows:
        return
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(
        f"COPY harvester_staging ({', '.join(STAGING_COLUMNS)}) FROM STDIN"
    ) as copy:
        for row in rows:
            copy.write_row(row)


def refresh_parents(
    conn: Connection, source: str, keys: set[tuple[str, str]], new_parents: Sequence[Row] = ()
) -> None:
    """Replace the refs of these parents by those of `new_parents`; re-join affected children."""
    if not keys:
        return
    params = {"source": source, "kinds": [k for k, _ in keys], "ids": [i for _, i in keys]}
    dropped = conn.execute(text(DROP_PARENT_REFS), params).scalars().all()
    added = add_parent_refs(conn, source, new_parents)
    refs = sorted(set(dropped) | set(added))
    if refs:
        conn.execute(text(RECOMPUTE_CHILDREN), {"source": source, "refs": refs})


def add_parent_refs(conn: Connection, source: str, parents: Sequence[Row]) -> list[str]:
    """One ref per id a parent answers to, with a copy of its offer; returns the ref ids."""
    entries = [
        (ref, row[0], row[1], ref == row[8], *row[16:21])
        for row in parents for ref in (row[21] or [])
    ]  # fmt: skip
    if not entries:
        return []
    columns = list(zip(*entries, strict=True))
    names = ("refs", "kinds", "ids", "selves", "problems", "from_m", "from_u", "thru_m", "thru_u")
    params = {name: list(values) for name, values in zip(names, columns, strict=True)}
    params["source"] = source
    conn.execute(text(ADD_PARENT_REFS), params)
    return [entry[0] for entry in entries]


def sweep_unseen(conn: Connection, feed: FeedRow) -> int:
    """End of a backfill: remove the feed's rows the new pass did not see again."""
    params = {"feed_id": feed.id, "generation": feed.write_generation}
    removed = conn.execute(text(SWEEP_UNSEEN), params).all()
    refresh_parents(conn, feed.source, _deleted_parents(removed))
    return len(removed)


def advance_feed(
    conn: Connection, feed: FeedRow, page: PageWrite, *, owner: str | None, finishing: bool,
    lease_seconds: float,
) -> None:
    """Move the feed to `next`, only if nobody else moved it since it was read."""
    result = conn.execute(
        text(ADVANCE_FEED),
        {
            "feed_id": feed.id, "next_url": page.next_url, "expected_url": feed.next_url,
            "count": len(page.rows), "caught_up": page.caught_up,
            "state": "caught_up" if page.caught_up else "harvesting",
            "generation": feed.write_generation if finishing else feed.generation,
            "finish_backfill": finishing, "owner": owner, "lease_seconds": lease_seconds,
        },
    )  # fmt: skip
    if result.rowcount != 1:
        raise LeaseLost(f"feed {feed.id} ({feed.url}) was moved on by another worker")


def record_rejected(
    conn: Connection, feed_id: int, page_url: str, rejected: Sequence[Rejected]
) -> None:
    """Keep each rejected item with its reason, once per item (or per position if no id)."""
    if not rejected:
        return
    conn.execute(
        text(RECORD_REJECTED),
        [
            {
                "feed_id": feed_id, "item_key": _rejected_key(page_url, r), "page_url": page_url,
                "position": r.position, "kind": r.kind, "rpde_id": r.id, "reason": r.reason,
                "raw": r.raw.replace("\x00", ""),
            }
            for r in rejected
        ],
    )  # fmt: skip


# --- sources and feeds -------------------------------------------------------------------

UPSERT_SOURCE = """
INSERT INTO harvester.sources (name, checkout_prefix) VALUES (:name, :prefix)
ON CONFLICT (name) DO UPDATE SET checkout_prefix = EXCLUDED.checkout_prefix, updated_at = now()
WHERE sources.checkout_prefix IS DISTINCT FROM EXCLUDED.checkout_prefix
RETURNING name
"""

REBUILD_CHECKOUT_URLS = """
UPDATE harvester.items SET checkout_url = :prefix || checkout_path
WHERE source = :name AND role = 'child' AND checkout_url IS DISTINCT FROM :prefix || checkout_path
"""

ADD_FEED = """
INSERT INTO harvester.feeds (source, url, next_url) VALUES (:source, :url, :url)
ON CONFLICT (source, url) DO NOTHING
"""

SELECT_FEEDS = """
SELECT f.id, f.source, f.url, f.next_url, f.state, f.generation, f.backfill_generation,
       f.retry_at
FROM harvester.feeds AS f
"""


def sync_source(conn: Connection, source: Source, prefix: str | None) -> None:
    """Register a source and its feeds; a new checkout base rewrites its checkout URLs."""
    changed = conn.execute(text(UPSERT_SOURCE), {"name": source.name, "prefix": prefix}).first()
    if changed is not None:
        conn.execute(text(REBUILD_CHECKOUT_URLS), {"name": source.name, "prefix": prefix})
    for url in source.feeds:
        conn.execute(text(ADD_FEED), {"source": source.name, "url": url})


def load_feeds(conn: Connection, pairs: Sequence[tuple[str, str]] | None = None) -> list[FeedRow]:
    """Feeds by (source, url), or all of them."""
    rows = conn.execute(text(SELECT_FEEDS + " ORDER BY f.id")).all()
    feeds = [FeedRow(*row) for row in rows]
    if pairs is None:
        return feeds
    wanted = set(pairs)
    return [feed for feed in feeds if (feed.source, feed.url) in wanted]


def load_feed(conn: Connection, feed_id: int) -> FeedRow:
    """One feed's current row."""
    return FeedRow(*conn.execute(text(SELECT_FEEDS + " WHERE f.id = :id"), {"id": feed_id}).one())


def claim_feed(conn: Connection, feed_id: int, owner: str, lease_seconds: float) -> bool:
    """Take or renew the feed's lease; False while another live worker holds it."""
    result = conn.execute(
        text(
            "UPDATE harvester.feeds SET lease_owner = :owner,"
            " lease_until = now() + make_interval(secs => :seconds)"
            " WHERE id = :id AND (lease_owner IS NULL OR lease_owner = :owner"
            " OR lease_until < now())"
        ),
        {"id": feed_id, "owner": owner, "seconds": lease_seconds},
    )
    return result.rowcount == 1


def database_now(conn: Connection) -> datetime:
    """now() on the database server."""
    return conn.execute(text("SELECT now()")).scalar_one()


def caught_up_since(conn: Connection, feed_id: int, since: datetime) -> bool:
    """The feed reached its last page (and ended any backfill) at or after `since`."""
    row = conn.execute(
        text(
            "SELECT caught_up_at >= :since AND backfill_generation IS NULL"
            " FROM harvester.feeds WHERE id = :id"
        ),
        {"id": feed_id, "since": since},
    ).scalar_one_or_none()
    return bool(row)


def renew_leases(conn: Connection, feed_ids: list[int], owner: str, lease_seconds: float) -> None:
    """Extend this worker's leases on the feeds it is harvesting."""
    conn.execute(
        text(
            "UPDATE harvester.feeds SET lease_until = now() + make_interval(secs => :seconds)"
            " WHERE id = ANY(:ids) AND lease_owner = :owner"
        ),
        {"ids": feed_ids, "owner": owner, "seconds": lease_seconds},
    )


def release_feed(conn: Connection, feed_id: int, owner: str) -> None:
    """Give the lease back so another worker may take the feed at once."""
    conn.execute(
        text(
            "UPDATE harvester.feeds SET lease_owner = NULL, lease_until = NULL"
            " WHERE id = :id AND lease_owner = :owner"
        ),
        {"id": feed_id, "owner": owner},
    )


def record_feed_error(
    conn: Connection, feed_id: int, state: str, message: str, retry_at: datetime | None
) -> None:
    """Note a feed's failure and when it may be tried again (None: not until an operator acts)."""
    conn.execute(
        text(
            "UPDATE harvester.feeds SET state = :state, last_error = :message,"
            " last_error_at = now(), retry_at = :retry_at WHERE id = :id"
        ),
        {"id": feed_id, "state": state, "message": message, "retry_at": retry_at},
    )


def start_backfill(conn: Connection, feed_id: int) -> FeedRow:
    """Send the feed back to its first page; rows not seen again are swept at its end.

    A backfill already under way (say its process died) is resumed where it stopped,
    not restarted: one backfill per feed at a time.
    """
    conn.execute(
        text(
            "UPDATE harvester.feeds SET next_url = url, state = 'backfilling',"
            " backfill_generation = generation + 1, retry_at = NULL, last_error = NULL"
            " WHERE id = :id AND backfill_generation IS NULL"
        ),
        {"id": feed_id},
    )
    return load_feed(conn, feed_id)


# One pass over the items for all feeds (status is rare; no index is kept just for it).
STATUS = """
SELECT f.id, f.source, f.url, f.state, f.pages, f.last_page_at, f.caught_up_at,
       f.last_error, f.retry_at, f.backfill_generation IS NOT NULL AS backfilling,
       f.lease_owner, f.lease_until, COALESCE(i.items, 0) AS items, i.kinds,
       COALESCE(r.rejected, 0) AS rejected, now() AS now
FROM harvester.feeds AS f
LEFT JOIN (SELECT feed_id, count(*) AS items, string_agg(DISTINCT type, ',') AS kinds
           FROM harvester.items GROUP BY feed_id) AS i ON i.feed_id = f.id
LEFT JOIN (SELECT feed_id, count(*) AS rejected FROM harvester.rejected_items
           GROUP BY feed_id) AS r ON r.feed_id = f.id
ORDER BY f.source, f.id
"""

NOT_BOOKABLE_REASONS = """
SELECT kind, reason, count(*) AS n FROM public.opportunity_status
WHERE NOT bookable GROUP BY kind, reason ORDER BY n DESC, kind, reason
"""


def feed_status(conn: Connection) -> list[Any]:
    """One row per feed for `harvester status`."""
    return list(conn.execute(text(STATUS)).all())


def not_bookable_reasons(conn: Connection) -> list[Any]:
    """Held children that are not bookable now, counted by kind and reason."""
    return list(conn.execute(text(NOT_BOOKABLE_REASONS)).all())


def bookable_now(conn: Connection, limit: int) -> list[Any]:
    """The soonest bookable opportunities."""
    return list(
        conn.execute(
            text("SELECT * FROM bookable_now ORDER BY start_date, id LIMIT :limit"),
            {"limit": limit},
        ).all()
    )


def count_bookable_now(conn: Connection) -> int:
    """How many opportunities are bookable now."""
    return int(conn.execute(text("SELECT count(*) FROM bookable_now")).scalar_one())


def may_change_parents(conn: Connection, source: str, rows: Sequence[Row]) -> bool:
    """The page holds a parent, or a tombstone of an item held as a parent.

    A tombstone carries no data, and kinds are ambiguous (Legend's SessionSeries feed
    says `ScheduledSession.SessionSeries`), so what it deletes is looked up.
    """
    if any(row[7] == "parent" for row in rows):
        return True
    tombstones = [row for row in rows if row[2]]
    if not tombstones:
        return False
    params = {
        "source": source, "kinds": [row[0] for row in tombstones],
        "ids": [row[1] for row in tombstones],
    }  # fmt: skip
    return bool(conn.execute(text(HOLDS_PARENT), params).scalar())


def _deleted_parents(deleted: Sequence[Any]) -> set[tuple[str, str]]:
    return {(row.kind, row.rpde_id) for row in deleted if row.role == "parent"}


def _rejected_key(page_url: str, rejected: Rejected) -> str:
    if rejected.id is not None:
        return f"{rejected.kind or ''}\x1f{rejected.id}"
    return f"{page_url}#{rejected.position}"
