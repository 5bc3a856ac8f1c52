"""All SQL the harvester runs. Functions take a Connection: the caller owns the transaction."""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import DBAPIError

from harvester import records
from harvester.config import Source
from harvester.errors import LeaseLost, database_fault
from harvester.records import (
    DATA,
    ITEM_ID,
    KIND,
    MODIFIED,
    MODIFIED_TEXT,
    OFFER,
    PARENT_REF,
    REFS,
    ROLE,
    RPDE_ID,
    STAGING_COLUMNS,
    Row,
)
from harvester.rpde import RAW_EXCERPT_CHARS, Rejected


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


class Written(NamedTuple):
    """What a page write did: the feed's new row, and the rows the database refused."""

    feed: FeedRow
    refused: list[Rejected]


SOURCE_LOCK = 7310  # advisory lock class of page writes, keyed by the source's name hash
PARENT_CACHE_ENTRIES = 150_000  # resolved refs a worker keeps, all sources (~0.3 KB each)

# The staging table's column types, in the order of records.STAGING_COLUMNS. Rows go in
# by binary COPY: no text to format in Python, nor to parse in PostgreSQL.
STAGING_TYPES = (
    "text", "text", "numeric", "text", "text", "text", "text",
    "text", "text", "timestamptz", "timestamptz", "text", "text",
    "text", "text", "text", "integer", "bigint",
    "integer", "bigint", "text[]", "integer",
    "text", "text", "timestamptz", "timestamptz", "text",
)  # fmt: skip
STAGING_DDL = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS harvester_staging (
    {", ".join(f"{n} {t}" for n, t in zip(STAGING_COLUMNS, STAGING_TYPES, strict=True))}
) ON COMMIT DELETE ROWS
"""
CLEAR_STAGING = "DELETE FROM harvester_staging"
COPY_STAGING = (
    f"COPY harvester_staging ({', '.join(STAGING_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
)


class ParentCache:
    """Resolved parent refs per source, reused while the source's parents_version stands.

    Every change to a source's refs draws a new version (triggers on parent_refs, from a
    sequence: a rolled-back change's number never returns). A page of children reads the
    version under its shared source lock, while no parent change can commit, so what was
    resolved under the same version is still true.
    """

    def __init__(self, limit: int = PARENT_CACHE_ENTRIES) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.sources: dict[str, tuple[int, dict[str, Row | None]]] = {}

    def entries(self, source: str, version: int) -> dict[str, Row | None]:
        """The refs resolved under this version (a new, empty map for a new version)."""
        with self.lock:
            if sum(len(entries) for _, entries in self.sources.values()) > self.limit:
                self.sources.clear()  # memory stays bounded; what is needed is resolved again
            held = self.sources.get(source)
            if held is None or held[0] != version:
                held = (version, {})
                self.sources[source] = held
            return held[1]


def window_range(lower: str, upper: str) -> str:
    """The stored form of a booking window [lower, upper): NULL when there is none."""
    return f"CASE WHEN {upper} IS NOT NULL THEN tstzrange({lower}, {upper}, '[)') END"


ITEM_COLUMNS = (
    "modified", "modified_text", "type", "role", "item_id", "identifier", "start_date",
    "end_date", "parent_ref", "problem", "checkout_path", "embedded_type", "offer_problem",
    "from_months", "from_micros", "through_months", "through_micros", "refs", "start_offset",
    "parent_kind", "parent_rpde_id", "reason",
)  # fmt: skip

# Staged rows of one role ('child' or not) into items; a held row is replaced only by a
# version whose `modified` is not older (RPDE §Items). Children come joined and with
# their booking window; parents report which versions won, to replace their refs.
UPSERT_ITEMS = f"""
INSERT INTO harvester.items AS i (
    source, kind, rpde_id, feed_id, data, seen_generation, updated_at,
    bookable, {", ".join(ITEM_COLUMNS)})
SELECT :source, s.kind, s.rpde_id, :feed_id, s.data::jsonb, :generation, now(),
       {window_range("s.bookable_from", "s.bookable_until")},
       {", ".join("s." + c for c in ITEM_COLUMNS)}
FROM harvester_staging AS s
WHERE (s.role = 'child') = :children
ON CONFLICT (source, kind, rpde_id) DO UPDATE SET
    feed_id = EXCLUDED.feed_id, data = EXCLUDED.data,
    seen_generation = EXCLUDED.seen_generation, updated_at = EXCLUDED.updated_at,
    bookable = EXCLUDED.bookable,
    {", ".join(f"{c} = EXCLUDED.{c}" for c in ITEM_COLUMNS)}
WHERE (EXCLUDED.modified < i.modified
       OR EXCLUDED.modified_text COLLATE "C" < i.modified_text) IS NOT TRUE
"""
RETURNING_PARENTS = " RETURNING i.role, i.kind, i.rpde_id"

# The parent each ref resolves to (rule 2): same source, the ref is its @id or one of its
# individualFacilityUse @ids; its own @id wins over an individual one, then a fixed order.
# One index probe per ref, by a lateral join: no plan can turn it into a scan, even while
# a first harvest has left the tables without statistics.
RESOLVE_REFS = """
SELECT k.ref AS ref_id, p.parent_kind, p.parent_rpde_id, p.offer_problem,
       p.from_months, p.from_micros, p.through_months, p.through_micros
FROM unnest(CAST(:refs AS text[])) AS k(ref)
CROSS JOIN LATERAL (
    SELECT r.* FROM harvester.parent_refs AS r
    WHERE r.source = :source AND r.ref_id = k.ref
    ORDER BY r.is_self DESC, r.parent_kind, r.parent_rpde_id
    LIMIT 1
) AS p
"""

PARENTS_VERSION = "SELECT parents_version FROM harvester.sources WHERE name = :source"

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
WHERE i.source = :source AND i.kind = s.kind AND i.rpde_id = s.rpde_id
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

# A parent changed: the children naming one of its refs are read, joined again in Python
# (records.join, the one home of rules 2-5) and written back where the join changed.
# The children of each ref are found by one index probe per ref (a lateral join): given
# `parent_ref = ANY(:refs)` and a table not yet analysed in a first harvest, the planner
# scanned every child of the source for each parent page (3 s a page at 500,000 children).
CHILDREN_OF_REFS = """
SELECT k.kind, k.rpde_id, k.start_date, k.start_offset, k.problem, k.parent_ref,
       k.embedded_type, k.offer_problem, k.from_months, k.from_micros, k.through_months,
       k.through_micros, k.parent_kind, k.parent_rpde_id, lower(k.bookable), upper(k.bookable),
       k.reason
FROM unnest(CAST(:refs AS text[])) AS q(ref)
CROSS JOIN LATERAL (
    SELECT * FROM harvester.items AS c
    WHERE c.source = :source AND c.role = 'child' AND c.parent_ref = q.ref
    OFFSET 0  -- kept a subquery, so it stays one probe per ref, never a join to plan
) AS k
"""

REJOIN_CHILDREN = f"""
UPDATE harvester.items AS c
SET parent_kind = u.parent_kind, parent_rpde_id = u.parent_rpde_id,
    bookable = {window_range("u.bookable_from", "u.bookable_until")}, reason = u.reason
FROM unnest(CAST(:kinds AS text[]), CAST(:ids AS text[]), CAST(:parent_kinds AS text[]),
            CAST(:parent_ids AS text[]), CAST(:froms AS timestamptz[]),
            CAST(:untils AS timestamptz[]), CAST(:reasons AS text[]))
     AS u(kind, rpde_id, parent_kind, parent_rpde_id, bookable_from, bookable_until, reason)
WHERE c.source = :source AND c.kind = u.kind AND c.rpde_id = u.rpde_id
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

# The page commits only if the feed is as its worker read it: the same position, the same
# generation and backfill (a backfill started since, or finished by another worker, must
# not be undone by a stale page), and, for a worker with an owner, its own lease.
ADVANCE_FEED = """
UPDATE harvester.feeds
SET next_url = :next_url, pages = pages + :pages, items_written = items_written + :count,
    last_page_at = now(), retry_at = NULL,
    state = CASE WHEN backfill_generation IS NOT NULL AND NOT :finish_backfill
                 THEN 'backfilling' ELSE :state END,
    caught_up_at = CASE WHEN :caught_up THEN now() ELSE caught_up_at END,
    last_error = CASE WHEN :caught_up OR :count > 0 THEN NULL ELSE last_error END,
    generation = CASE WHEN :finish_backfill THEN backfill_generation ELSE generation END,
    backfill_generation = CASE WHEN :finish_backfill THEN NULL ELSE backfill_generation END,
    lease_until = CASE WHEN lease_owner IS NULL THEN NULL
                       ELSE now() + make_interval(secs => :lease_seconds) END
WHERE id = :feed_id AND next_url = :expected_url AND generation = :read_generation
  AND backfill_generation IS NOT DISTINCT FROM CAST(:read_backfill AS integer)
  AND (CAST(:owner AS text) IS NULL OR lease_owner = :owner)
RETURNING id, source, url, next_url, state, generation, backfill_generation, retry_at
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


# --- the page path: statements run on the transaction's psycopg connection --------------
# SQLAlchemy's compilation and result wrapping cost about 70 us of CPU per statement, and
# a page runs six or more: its statements go to psycopg directly, in the same transaction.

_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")  # `:name`, not the `::` of a cast


@functools.cache
def psycopg_sql(sql: str) -> str:
    """A statement's `:name` parameters in psycopg's `%(name)s` style (a literal % doubled)."""
    return _PARAMETER.sub(r"%(\1)s", sql.replace("%", "%%"))


def run(conn: Connection, sql: str, params: Mapping[str, Any] | None = None) -> psycopg.Cursor[Any]:
    """Execute on the connection's psycopg connection; errors come as SQLAlchemy's would."""
    raw = conn.connection.driver_connection
    try:
        return raw.execute(psycopg_sql(sql), params)  # type: ignore[union-attr]
    except psycopg.Error as exc:
        raise wrap_error(conn, sql, exc) from exc


def wrap_error(conn: Connection, sql: str, exc: psycopg.Error) -> BaseException:
    """The SQLAlchemy exception for a psycopg one, the connection invalidated if it is lost."""
    lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
    if lost:
        conn.invalidate(exc)  # the pool opens a new one, as for SQLAlchemy's own statements
    return DBAPIError.instance(sql, None, exc, psycopg.Error, hide_parameters=True,
                               connection_invalidated=lost, dialect=conn.dialect)  # fmt: skip


def write_page(
    conn: Connection, feed: FeedRow, page: PageWrite, *, owner: str | None = None,
    lease_seconds: float = 15.0, parents: ParentCache | None = None, one_by_one: bool = False,
) -> Written:
    """Apply one page and move the feed's position, atomically (the caller commits)."""
    return write_pages(conn, feed, [page], owner=owner, lease_seconds=lease_seconds,
                       parents=parents, one_by_one=one_by_one)  # fmt: skip


def write_pages(
    conn: Connection, feed: FeedRow, pages: Sequence[PageWrite], *, owner: str | None = None,
    lease_seconds: float = 15.0, parents: ParentCache | None = None, one_by_one: bool = False,
) -> Written:
    """Apply consecutive pages and move the feed past the last, atomically (the caller
    commits): one lock, one COPY and upsert per role, one position update.

    With `one_by_one` (for pages the database refused as a whole), each row is applied
    under its own savepoint, and a row refused for its data is set aside with the
    database's reason. Returns the feed's new row and the rows set aside so.
    """
    rows, last = latest_rows(pages), pages[-1]
    finishing = last.caught_up and feed.backfill_generation is not None
    exclusive = finishing or any(row[ROLE] == "parent" for row in rows)
    lock_source(conn, feed.source, exclusive=exclusive)
    # Asked under the shared lock, while no parent can appear or go: a parent page that
    # commits just before it would otherwise be deleted under a shared lock, beside child
    # pages still joining to it. PostgreSQL breaks the deadlock of two pages upgrading.
    if not exclusive and deletes_a_parent(conn, feed.source, rows):
        lock_source(conn, feed.source, exclusive=True)
    refused: list[Rejected] = []
    if rows and one_by_one:
        refused = apply_rows_one_by_one(conn, feed, rows, parents or ParentCache())
    elif rows:
        apply_rows(conn, feed, rows, parents or ParentCache())
    for page in pages:
        record_rejected(conn, feed.id, page.page_url,
                        [*page.rejected, *(refused if page is last else ())])  # fmt: skip
    if finishing:
        sweep_unseen(conn, feed)
    moved = advance_feed(conn, feed, last.next_url, len(rows), len(pages), last.caught_up,
                         owner=owner, finishing=finishing, lease_seconds=lease_seconds)  # fmt: skip
    return Written(moved, refused)


def latest_rows(pages: Sequence[PageWrite]) -> Sequence[Row]:
    """The pages' rows, one per item: a later page's version replaces an earlier one's, as
    writing the pages one by one would (RPDE orders a feed's items oldest first)."""
    if len(pages) == 1:
        return pages[0].rows  # a page's own items are unique already (rpde.latest_per_key)
    latest: dict[tuple[str, str], Row] = {}
    for page in pages:
        for row in page.rows:
            latest.pop((row[KIND], row[RPDE_ID]), None)
            latest[(row[KIND], row[RPDE_ID])] = row
    return list(latest.values())


def apply_rows_one_by_one(
    conn: Connection, feed: FeedRow, rows: Sequence[Row], parents: ParentCache
) -> list[Rejected]:
    """`apply_rows` a row at a time, each under a savepoint; the rows refused for their data."""
    refused: list[Rejected] = []
    for position, row in enumerate(rows):
        try:
            with conn.begin_nested():
                run(conn, CLEAR_STAGING)  # rows of the savepoints before are written already
                apply_rows(conn, feed, [row], parents)
        except DBAPIError as exc:
            if database_fault(exc) != "data":
                raise
            refused.append(refused_row(position, row, exc))
    return refused


def refused_row(position: int, row: Row, error: DBAPIError) -> Rejected:
    """A row the database refused, as a rejected item with the database's own reason."""
    reason = str(error.orig or error).strip().splitlines()[0]
    excerpt = (row[DATA] or "")[:RAW_EXCERPT_CHARS]
    return Rejected(position, row[KIND], row[RPDE_ID], f"refused by the database: {reason}",
                    excerpt)  # fmt: skip


def lock_source(conn: Connection, source: str, *, exclusive: bool) -> None:
    """Order page writes of one source: a page that may change parents runs alone.

    Under READ COMMITTED a child page and a parent page committing side by side each miss
    the other's rows, and the child keeps a stale join; pages of children only share.
    """
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    run(conn, f"SELECT {function}(:key, hashtext(:source))",
        {"key": SOURCE_LOCK, "source": source})


def apply_rows(conn: Connection, feed: FeedRow, rows: Sequence[Row], parents: ParentCache) -> None:
    """Upsert and delete a page's items: parents and others first, then children joined."""
    params = {"source": feed.source, "feed_id": feed.id, "generation": feed.write_generation}
    tombstones, others, children = split_rows(rows)
    written = upsert_staged(conn, params, [records.stage(row) for row in others], children=False)
    deleted = delete_items(conn, feed.source, tombstones)
    # Only versions that won the upsert replace a parent's refs (an older one was ignored).
    new_parents = [row for row in others if (row[KIND], row[RPDE_ID]) in written]
    refresh_parents(conn, feed.source, written | _deleted_parents(deleted), new_parents)
    if children:
        resolved = resolve_parents(conn, feed.source, children, parents)
        joined = [records.join_child(row, resolved.get(row[PARENT_REF])) for row in children]
        upsert_staged(conn, params, joined, children=True)
    if feed.backfill_generation is not None:
        run(conn, MARK_SEEN, params)


def split_rows(rows: Sequence[Row]) -> tuple[list[Row], list[Row], list[Row]]:
    """A page's tombstones, its live parents and others, and its live children."""
    tombstones: list[Row] = []
    others: list[Row] = []
    children: list[Row] = []
    for row in rows:
        if records.is_tombstone(row):
            tombstones.append(row)
        elif row[ROLE] == "child":
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
        run(conn, UPSERT_ITEMS, {**params, "children": True})
        return set()
    upserted = run(conn, UPSERT_ITEMS + RETURNING_PARENTS, {**params, "children": False})
    return {(kind, rpde_id) for role, kind, rpde_id in upserted if role == "parent"}


def resolve_parents(
    conn: Connection, source: str, children: Sequence[Row], parents: ParentCache
) -> dict[str, Row | None]:
    """The published parent each child's ref names (None: none held), through the cache."""
    version = run(conn, PARENTS_VERSION, {"source": source}).fetchone()[0]  # type: ignore[index]
    known = parents.entries(source, version)
    missing = {row[PARENT_REF] for row in children if row[PARENT_REF] not in known}
    missing.discard(None)
    if missing:
        found = run(conn, RESOLVE_REFS, {"source": source, "refs": sorted(missing)})
        # Kinds repeat: one string each, not one per cached ref.
        resolved = {row[0]: (sys.intern(row[1]), *row[2:]) for row in found}
        for ref in missing:
            known[ref] = resolved.get(ref)
    return known


def delete_items(conn: Connection, source: str, tombstones: Sequence[Row]) -> list[Any]:
    """Apply tombstones (rows with deleted set); returns the removed rows' keys."""
    if not tombstones:
        return []
    params = {"source": source, "kinds": [row[KIND] for row in tombstones],
              "ids": [row[RPDE_ID] for row in tombstones],
              "modified": [row[MODIFIED] for row in tombstones],
              "modified_text": [row[MODIFIED_TEXT] for row in tombstones]}  # fmt: skip
    return run(conn, DELETE_ITEMS, params).fetchall()


def copy_to_staging(conn: Connection, rows: Sequence[Row]) -> None:
    """COPY staged rows into the connection's temporary table (emptied at commit)."""
    raw = conn.connection.driver_connection
    try:
        with raw.cursor() as cursor, cursor.copy(COPY_STAGING) as copy:  # type: ignore[union-attr]
            copy.set_types(STAGING_TYPES)
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:
        raise wrap_error(conn, COPY_STAGING, exc) from exc


def refresh_parents(
    conn: Connection, source: str, keys: set[tuple[str, str]], new_parents: Sequence[Row] = ()
) -> None:
    """Replace the refs of these parents by those of `new_parents`; re-join affected children."""
    if not keys:
        return
    params = {"source": source, "kinds": [k for k, _ in keys], "ids": [i for _, i in keys]}
    dropped = [ref for (ref,) in run(conn, DROP_PARENT_REFS, params)]
    added = add_parent_refs(conn, source, new_parents)
    refs = sorted(set(dropped) | set(added))
    if refs:
        rejoin_children(conn, source, refs)


def rejoin_children(conn: Connection, source: str, refs: list[str]) -> int:
    """Join again the children naming these refs; write back those whose join changed.

    Returns how many were rewritten.
    """
    params = {"source": source, "refs": refs}
    children = run(conn, CHILDREN_OF_REFS, params).fetchall()
    if not children:
        return 0
    resolved = {row[0]: row[1:] for row in run(conn, RESOLVE_REFS, params)}
    changed = []
    for child in children:
        start, offset, *facts = child[2:12]
        start = records.on_own_clock(start, offset)
        joined = records.join(start, facts[0], facts[1], facts[2], tuple(facts[3:8]),
                              resolved.get(facts[1]))  # fmt: skip
        if joined != tuple(child[12:17]):
            changed.append((child[0], child[1], *joined))
    if changed:
        names = ("kinds", "ids", "parent_kinds", "parent_ids", "froms", "untils", "reasons")
        transposed = zip(*changed, strict=True)
        columns = {name: list(values) for name, values in zip(names, transposed, strict=True)}
        run(conn, REJOIN_CHILDREN, {"source": source, **columns})
    return len(changed)


def add_parent_refs(conn: Connection, source: str, parents: Sequence[Row]) -> list[str]:
    """One ref per id a parent answers to, with a copy of its offer; returns the ref ids."""
    entries = [
        (ref, row[KIND], row[RPDE_ID], ref == row[ITEM_ID], *row[OFFER])
        for row in parents for ref in (row[REFS] or [])
    ]  # fmt: skip
    if not entries:
        return []
    columns = list(zip(*entries, strict=True))
    names = ("refs", "kinds", "ids", "selves", "problems", "from_m", "from_u", "thru_m", "thru_u")
    params = {name: list(values) for name, values in zip(names, columns, strict=True)}
    params["source"] = source
    run(conn, ADD_PARENT_REFS, params)
    return [entry[0] for entry in entries]


def sweep_unseen(conn: Connection, feed: FeedRow) -> int:
    """End of a backfill: remove the feed's rows the new pass did not see again."""
    params = {"feed_id": feed.id, "generation": feed.write_generation}
    removed = run(conn, SWEEP_UNSEEN, params).fetchall()
    refresh_parents(conn, feed.source, _deleted_parents(removed))
    return len(removed)


def advance_feed(
    conn: Connection, feed: FeedRow, next_url: str, count: int, pages: int, caught_up: bool, *,
    owner: str | None, finishing: bool, lease_seconds: float,
) -> FeedRow:
    """Move the feed to `next_url`, only if nobody moved it since it was read; its new row."""
    result = run(
        conn, ADVANCE_FEED,
        {
            "feed_id": feed.id, "next_url": next_url, "expected_url": feed.next_url,
            "read_generation": feed.generation, "read_backfill": feed.backfill_generation,
            "count": count, "pages": pages, "caught_up": caught_up,
            "state": "caught_up" if caught_up else "harvesting",
            "finish_backfill": finishing, "owner": owner, "lease_seconds": lease_seconds,
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
        text(RECORD_REJECTED),
        [
            {
                "feed_id": feed_id, "item_key": _rejected_key(page_url, r), "page_url": page_url,
                "position": r.position, "kind": r.kind, "rpde_id": r.id, "reason": r.reason,
                "raw": r.raw,
            }
            for r in rejected
        ],
    )  # fmt: skip


# --- sources and feeds -------------------------------------------------------------------

# bookable_at builds checkout URLs from the prefix as it reads: a new one applies at once.
UPSERT_SOURCE = """
INSERT INTO harvester.sources (name, checkout_prefix) VALUES (:name, :prefix)
ON CONFLICT (name) DO UPDATE SET checkout_prefix = EXCLUDED.checkout_prefix, updated_at = now()
WHERE sources.checkout_prefix IS DISTINCT FROM EXCLUDED.checkout_prefix
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
    """Register a source (and its checkout base) and its feeds."""
    conn.execute(text(UPSERT_SOURCE), {"name": source.name, "prefix": prefix})
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


# A feed row locked by another worker's page is skipped, never waited for: the scheduling
# loop must not stall behind another process (it tries again later).
CLAIM_FEED = """
UPDATE harvester.feeds AS f
SET lease_owner = :owner, lease_until = now() + make_interval(secs => :seconds)
FROM (SELECT id FROM harvester.feeds
      WHERE id = :id AND (lease_owner IS NULL OR lease_owner = :owner OR lease_until < now())
      FOR UPDATE SKIP LOCKED) AS free
WHERE f.id = free.id
"""

# A row this worker's own page is committing is skipped too: that commit renews it.
RENEW_LEASES = """
UPDATE harvester.feeds AS f
SET lease_until = now() + make_interval(secs => :seconds)
FROM (SELECT id FROM harvester.feeds WHERE id = ANY(:ids) AND lease_owner = :owner
      FOR UPDATE SKIP LOCKED) AS mine
WHERE f.id = mine.id
"""


def claim_feed(conn: Connection, feed_id: int, owner: str, lease_seconds: float) -> bool:
    """Take or renew the feed's lease; False while another live worker holds it."""
    params = {"id": feed_id, "owner": owner, "seconds": lease_seconds}
    result = conn.execute(text(CLAIM_FEED), params)
    return result.rowcount == 1


# A scrape must answer quickly, whatever the database is doing.
CAUGHT_UP_TIMES = """
SELECT source, url, caught_up_at FROM harvester.feeds
WHERE caught_up_at IS NOT NULL ORDER BY source, url
"""


def caught_up_times(conn: Connection) -> list[Any]:
    """(source, url, caught_up_at) of every feed that has reached its last page."""
    conn.execute(text("SET LOCAL statement_timeout = '5s'"))
    return list(conn.execute(text(CAUGHT_UP_TIMES)).all())


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
    conn.execute(text(RENEW_LEASES), {"ids": feed_ids, "owner": owner, "seconds": lease_seconds})


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


# A new backfill also clears the lease: a worker holding a page of the old pass must not
# commit it (ADVANCE_FEED compares generations too). A backfill under way is left as it is.
START_BACKFILL = """
UPDATE harvester.feeds
SET next_url = url, state = 'backfilling', backfill_generation = generation + 1,
    retry_at = NULL, last_error = NULL, lease_owner = NULL, lease_until = NULL
WHERE id = :id AND backfill_generation IS NULL
"""


def start_backfill(conn: Connection, feed_id: int) -> FeedRow:
    """Send the feed back to its first page; rows not seen again are swept at its end.

    A backfill already under way (say its process died) is resumed where it stopped,
    not restarted: one backfill per feed at a time.
    """
    conn.execute(text(START_BACKFILL), {"id": feed_id})
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


def deletes_a_parent(conn: Connection, source: str, rows: Sequence[Row]) -> bool:
    """The page holds a tombstone of an item held as a parent.

    A tombstone carries no data, and kinds are ambiguous (Legend's SessionSeries feed
    says `ScheduledSession.SessionSeries`), so what it deletes is looked up.
    """
    tombstones = [row for row in rows if records.is_tombstone(row)]
    if not tombstones:
        return False
    params = {
        "source": source, "kinds": [row[KIND] for row in tombstones],
        "ids": [row[RPDE_ID] for row in tombstones],
    }  # fmt: skip
    return bool(run(conn, HOLDS_PARENT, params).fetchone()[0])  # type: ignore[index]


def _deleted_parents(deleted: Sequence[Any]) -> set[tuple[str, str]]:
    return {(kind, rpde_id) for role, kind, rpde_id in deleted if role == "parent"}


def _rejected_key(page_url: str, rejected: Rejected) -> str:
    if rejected.id is not None:
        return f"{rejected.kind or ''}\x1f{rejected.id}"
    # The key is indexed and a page URL has no bound: its digest stands for it.
    return f"{hashlib.sha256(page_url.encode()).hexdigest()}#{rejected.position}"
