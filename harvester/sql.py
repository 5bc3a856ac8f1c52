"""Every statement the harvester runs against its tables, in one place.

Statements use `:name` parameters (SQLAlchemy's style; fastpath.run converts them for
psycopg). Callers own the transaction.
"""

from __future__ import annotations

from sqlalchemy.dialects import postgresql

from harvester import schema
from harvester.records import Row


def window_range(lower: str, upper: str) -> str:
    """The stored form of a booking window [lower, upper): NULL when there is none."""
    return f"CASE WHEN {upper} IS NOT NULL THEN tstzrange({lower}, {upper}, '[)') END"


# Staged rows go in by binary COPY (no text to format in Python, nor to parse in
# PostgreSQL) into a temporary table of records.Row's fields, typed as in schema.items.
# The staged-only fields: the data as JSON text, and the booking window's two ends.
_STAGED_ONLY_TYPES = {
    "data": "text",
    "bookable_from": "timestamptz",
    "bookable_until": "timestamptz",
}


def staging_type(field: str) -> str:
    """The staging column type of a row field: items' own type, or a staged-only one."""
    if field in _STAGED_ONLY_TYPES:
        return _STAGED_ONLY_TYPES[field]
    return schema.items.c[field].type.compile(dialect=postgresql.dialect()).lower()


STAGING_COLUMNS = Row._fields
STAGING_TYPES = tuple(staging_type(field) for field in STAGING_COLUMNS)
STAGING_DDL = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS harvester_staging (
    {", ".join(f"{n} {t}" for n, t in zip(STAGING_COLUMNS, STAGING_TYPES, strict=True))}
) ON COMMIT DELETE ROWS
"""
CLEAR_STAGING = "DELETE FROM harvester_staging"
COPY_STAGING = f"COPY harvester_staging ({', '.join(STAGING_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
# The upsert's plain columns: every field items keeps as it is staged (not the key, not data).
ITEM_COLUMNS = tuple(
    field for field in STAGING_COLUMNS
    if field in schema.items.c and field not in ("kind", "rpde_id", "data")
)  # fmt: skip


# The filter facts and `inherits` (harvester.facts), as `refill` writes them.
FACT_COLUMNS = STAGING_COLUMNS[
    STAGING_COLUMNS.index("name") : STAGING_COLUMNS.index("inherits") + 1
]
# Each goes as an array (unnest); activity, itself an array, as its JSON text.
FACT_TYPES = {c: t for c, t in zip(STAGING_COLUMNS, STAGING_TYPES, strict=True)} | {
    "activity": "text"
}


# The incoming version is an update of the held one: newer, or (a publisher's slip) the
# same `modified` with other data. A backfill re-sending what is held is not: the row's
# `updated_at` stays, and so does a checkout's refusal (lifted by the next update).
_IS_UPDATE = """((EXCLUDED.modified > i.modified
         OR EXCLUDED.modified_text COLLATE "C" > i.modified_text) IS TRUE
        OR EXCLUDED.data IS DISTINCT FROM i.data)"""

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
    seen_generation = EXCLUDED.seen_generation,
    updated_at = CASE WHEN {_IS_UPDATE} THEN EXCLUDED.updated_at ELSE i.updated_at END,
    refused_at = CASE WHEN {_IS_UPDATE} THEN NULL ELSE i.refused_at END,
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
       p.from_months, p.from_micros, p.through_months, p.through_micros, p.seller_ref
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
    offer_problem, from_months, from_micros, through_months, through_micros, seller_ref)
SELECT :source, e.*
FROM unnest(CAST(:refs AS text[]), CAST(:kinds AS text[]), CAST(:ids AS text[]),
            CAST(:selves AS boolean[]), CAST(:problems AS text[]), CAST(:from_m AS integer[]),
            CAST(:from_u AS bigint[]), CAST(:thru_m AS integer[]), CAST(:thru_u AS bigint[]),
            CAST(:sellers AS text[])) AS e
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
       k.through_micros, k.seller_ref, k.parent_kind, k.parent_rpde_id, lower(k.bookable),
       upper(k.bookable), k.reason, k.seller
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
    bookable = {window_range("u.bookable_from", "u.bookable_until")}, reason = u.reason,
    seller = u.seller
FROM unnest(CAST(:kinds AS text[]), CAST(:ids AS text[]), CAST(:parent_kinds AS text[]),
            CAST(:parent_ids AS text[]), CAST(:froms AS timestamptz[]),
            CAST(:untils AS timestamptz[]), CAST(:reasons AS text[]), CAST(:sellers AS text[]))
     AS u(kind, rpde_id, parent_kind, parent_rpde_id, bookable_from, bookable_until, reason,
          seller)
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
    last_page_at = now(), retry_at = NULL, license = COALESCE(:license, license),
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
RETURNING id, source, url, next_url, state, generation, backfill_generation, retry_at, purpose
"""


RECORD_REJECTED = """
INSERT INTO harvester.rejected_items
    (feed_id, item_key, page_url, position, kind, rpde_id, reason, raw, seen_at)
VALUES (:feed_id, :item_key, :page_url, :position, :kind, :rpde_id, :reason, :raw, now())
ON CONFLICT (feed_id, item_key) DO UPDATE SET
    page_url = EXCLUDED.page_url, position = EXCLUDED.position, reason = EXCLUDED.reason,
    raw = EXCLUDED.raw, seen_at = EXCLUDED.seen_at
"""


# --- the page path: statements run on the transaction's psycopg connection --------------
# SQLAlchemy's compilation and result wrapping cost about 70 us of CPU per statement, and
# a page runs six or more: its statements go to psycopg directly, in the same transaction.


# --- sources and feeds -------------------------------------------------------------------

# bookable_at builds checkout URLs from the prefix as it reads: a new one applies at once.
UPSERT_SOURCE = """
INSERT INTO harvester.sources (name, checkout_prefix, checks_sellers)
VALUES (:name, :prefix, :checks_sellers)
ON CONFLICT (name) DO UPDATE SET checkout_prefix = EXCLUDED.checkout_prefix,
    checks_sellers = EXCLUDED.checks_sellers, updated_at = now()
WHERE (sources.checkout_prefix, sources.checks_sellers)
      IS DISTINCT FROM (EXCLUDED.checkout_prefix, EXCLUDED.checks_sellers)
"""


ADD_FEED = """
INSERT INTO harvester.feeds (source, url, next_url, purpose) VALUES (:source, :url, :url, :purpose)
ON CONFLICT (source, url) DO UPDATE SET purpose = EXCLUDED.purpose
WHERE feeds.purpose <> EXCLUDED.purpose
"""


SELECT_FEEDS = """
SELECT f.id, f.source, f.url, f.next_url, f.state, f.generation, f.backfill_generation,
       f.retry_at, f.purpose
FROM harvester.feeds AS f
"""


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


# A scrape must answer quickly, whatever the database is doing.
CAUGHT_UP_TIMES = """
SELECT source, url, caught_up_at FROM harvester.feeds
WHERE caught_up_at IS NOT NULL ORDER BY source, url
"""


# A new backfill also clears the lease: a worker holding a page of the old pass must not
# commit it (ADVANCE_FEED compares generations too). A backfill under way is left as it is.
START_BACKFILL = """
UPDATE harvester.feeds
SET next_url = url, state = 'backfilling', backfill_generation = generation + 1,
    retry_at = NULL, last_error = NULL, lease_owner = NULL, lease_until = NULL
WHERE id = :id AND backfill_generation IS NULL
"""


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
UNION ALL
-- A catalog or dataset site the last discovery could not read: a failure like a feed's.
SELECT NULL, :discovery, d.url, 'error', 0, NULL, NULL, d.reason, NULL, false, NULL, NULL, 0,
       d.kind, 0, now()
FROM harvester.discovery_failures AS d
ORDER BY 2, 1, 3
"""


NOT_BOOKABLE_REASONS = """
SELECT kind, reason, count(*) AS n FROM public.opportunity_status
WHERE NOT bookable GROUP BY kind, reason ORDER BY n DESC, kind, reason
"""


# A page's source lock (pagewrite.lock_source): exclusive for pages that may change parents.
LOCK_SOURCE = "SELECT pg_advisory_xact_lock(:key, hashtext(:source))"
LOCK_SOURCE_SHARED = "SELECT pg_advisory_xact_lock_shared(:key, hashtext(:source))"

CAUGHT_UP_SINCE = """
SELECT caught_up_at >= :since AND backfill_generation IS NULL FROM harvester.feeds WHERE id = :id
"""

RELEASE_FEED = """
UPDATE harvester.feeds SET lease_owner = NULL, lease_until = NULL
WHERE id = :id AND lease_owner = :owner
"""

RECORD_FEED_ERROR = """
UPDATE harvester.feeds SET state = :state, last_error = :message, last_error_at = now(),
    retry_at = :retry_at
WHERE id = :id
"""

# A metrics scrape must answer quickly, whatever the database is doing.
QUICK_TIMEOUT = "SET LOCAL statement_timeout = '5s'"
DATABASE_NOW = "SELECT now()"
SOONEST_BOOKABLE = "SELECT * FROM bookable_now ORDER BY start_date, id LIMIT :limit"
COUNT_BOOKABLE = "SELECT count(*) FROM bookable_now"

# --- checkout sessions (checkout.py) -----------------------------------------------------
# An opportunity by its @id (in any source, or the one given) or by identifier within a
# source, among those bookable now (the start_date index's range: no index on ids, which
# every write would pay for; a checkout is rare beside the writes).
_BY_KEY = {
    "id": "id = :key AND (CAST(:source AS text) IS NULL OR source = :source)",
    "identifier": "identifier = :key AND source = :source",
}
FIND_BOOKABLE = {
    field: "SELECT source, kind, id, data -> 'identifier', checkout_url, start_date"
    f" FROM public.bookable_now WHERE {where} LIMIT 2"
    for field, where in _BY_KEY.items()
}
OPPORTUNITY_REASON = {
    field: f"SELECT reason FROM public.opportunity_status WHERE {where} LIMIT 1"
    for field, where in _BY_KEY.items()
}
# A checkout answered 400: out of bookable_at until the child or its parent is updated.
# Found by its start date too, which the start_date index answers (ids have no index:
# one per item would cost every write).
REFUSE_OPPORTUNITY = {
    "id": "UPDATE harvester.items SET refused_at = now()"
    " WHERE bookable IS NOT NULL AND start_date = :start_date AND role = 'child'"
    " AND source = :source AND item_id = :key",
    "identifier": "UPDATE harvester.items SET refused_at = now()"
    " WHERE bookable IS NOT NULL AND start_date = :start_date AND role = 'child'"
    " AND source = :source AND identifier = :key",
}

# --- attribution (attribution.py) --------------------------------------------------------
DELETE_DATASETS = "DELETE FROM harvester.datasets WHERE source = :source"
INSERT_DATASET = """
INSERT INTO harvester.datasets (source, identifier, name, url, license, publisher_name)
VALUES (:source, :identifier, :name, :url, :license, :publisher_name)
"""


# Rows written before revision 0009 carry no filter facts (`inherits` is NULL): a batch
# of them at a time, each derived again from its stored data (refill.refill_facts).
UNREFILLED = """
SELECT source, kind, rpde_id, type, data::text FROM harvester.items
WHERE inherits IS NULL AND role IN ('child', 'parent')
LIMIT :limit FOR UPDATE SKIP LOCKED
"""
REFILL_FACTS = f"""
UPDATE harvester.items AS i
SET {", ".join(f"{c} = f.{c}" for c in FACT_COLUMNS if c != "activity")},
    activity = CASE WHEN f.activity IS NOT NULL
                    THEN ARRAY(SELECT jsonb_array_elements_text(f.activity::jsonb)) END
FROM unnest(CAST(:sources AS text[]), CAST(:kinds AS text[]), CAST(:ids AS text[]),
            {", ".join(f"CAST(:{c} AS {FACT_TYPES[c]}[])" for c in FACT_COLUMNS)})
     AS f(source, kind, rpde_id, {", ".join(FACT_COLUMNS)})
WHERE i.source = f.source AND i.kind = f.kind AND i.rpde_id = f.rpde_id
"""


# Discovery (discovery.py): a source a data catalog lists, and what it no longer lists.
MARK_DISCOVERED = """
UPDATE harvester.sources
SET catalog = :catalog, site_url = :site_url, attribution_name = :attribution_name,
    attribution_url = :attribution_url, license = :license
WHERE name = :name
  AND (catalog, site_url, attribution_name, attribution_url, license) IS DISTINCT FROM
      (:catalog, :site_url, :attribution_name, :attribution_url, :license)
"""
FEEDS_OF_SOURCE = "SELECT id, url FROM harvester.feeds WHERE source = :source ORDER BY id"
DISCOVERED_SOURCES = """
SELECT name, site_url FROM harvester.sources WHERE catalog = :catalog ORDER BY name
"""
# Retiring takes the source's exclusive page lock first (pagewrite.lock_source): a page
# being written commits before; one written after finds its feed gone (LeaseLost).
RETIRE_SOURCE = (
    "DELETE FROM harvester.rejected_items"
    " WHERE feed_id IN (SELECT id FROM harvester.feeds WHERE source = :source)",
    "DELETE FROM harvester.feeds WHERE source = :source",
    "DELETE FROM harvester.parent_refs WHERE source = :source",
    "DELETE FROM harvester.datasets WHERE source = :source",
    "DELETE FROM harvester.sources WHERE name = :source",
)
RETIRE_SOURCE_ITEMS = """
WITH gone AS (DELETE FROM harvester.items WHERE source = :source RETURNING 1)
SELECT count(*) FROM gone
"""
RETIRE_FEED = (
    "DELETE FROM harvester.rejected_items WHERE feed_id = :feed_id",
    "DELETE FROM harvester.feeds WHERE id = :feed_id",
)
RETIRE_FEED_ITEMS = """
DELETE FROM harvester.items WHERE feed_id = :feed_id RETURNING role, kind, rpde_id
"""
CLEAR_DISCOVERY_FAILURES = "DELETE FROM harvester.discovery_failures WHERE catalog = :catalog"
ADD_DISCOVERY_FAILURE = """
INSERT INTO harvester.discovery_failures (catalog, url, kind, reason)
VALUES (:catalog, :url, :kind, :reason)
ON CONFLICT (catalog, url) DO UPDATE SET kind = EXCLUDED.kind, reason = EXCLUDED.reason,
    failed_at = now()
"""
HELD_DISCOVERED = """
SELECT s.name, array_agg(f.url ORDER BY f.id) FROM harvester.sources AS s
JOIN harvester.feeds AS f ON f.source = s.name
WHERE s.catalog = ANY(CAST(:catalogs AS text[]))
GROUP BY s.name ORDER BY s.name
"""
