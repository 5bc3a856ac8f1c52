"""Bookable children are read by their start date alone; checkout URLs are built as read.

- The GiST index on `bookable` goes: a booking window always closes by its start date
  (contract rules 4-5), so the children bookable at T are among those starting after T,
  which the btree on `start_date` already finds (and orders, for `LIMIT n`). The GiST
  entries cost a page of 500 children about 1.5 ms of PostgreSQL's time, 40 % of the
  upkeep of its secondary indexes. (A btree carrying the window, `INCLUDE (bookable)`,
  cost 1.9 ms a page more than the plain one, which deduplicates equal start dates and
  stays a fifth of its size.)
- `bookable_at` builds `checkout_url` from the source's `checkout_prefix` and the child's
  `checkout_path`: the harvester no longer writes 120 bytes of URL into every child, and a
  new `checkout_base_url` takes effect at once, with no rewrite of the source's children.
  The column stays, no longer written, while workers of revision 0004 may still write it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Every revision must keep working with the code of the revision before it (workers are
upgraded one at a time) and must not hold long locks on `harvester.items`.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Inlined by the planner (single SELECT, STABLE, LANGUAGE sql), so ORDER BY/LIMIT and the
# start_date index apply: `start_date > at` is implied by the window and is the index's
# range; the window itself is checked on the row. `checkout_url` and the join that gives
# it are the two things this revision changes (revision 0001 read the stored column).
BOOKABLE_AT = """
CREATE OR REPLACE FUNCTION public.bookable_at(at timestamptz)
RETURNS TABLE (
    source text, kind text, id text, identifier text,
    start_date timestamptz, end_date timestamptz,
    parent_id text, parent_kind text,
    bookable_from timestamptz, bookable_until timestamptz,
    checkout_url text, data jsonb, parent_data jsonb)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT c.source, c.type, c.item_id, c.identifier, c.start_date, c.end_date,
         COALESCE(p.item_id, c.parent_ref), COALESCE(p.type, c.embedded_type),
         lower(c.bookable), upper(c.bookable), {checkout_url}, c.data,
         COALESCE(p.data,
                  c.data -> (CASE c.type WHEN 'Slot' THEN 'facilityUse' ELSE 'superEvent' END))
  FROM harvester.items AS c{sources}
  LEFT JOIN harvester.items AS p
    ON p.source = c.source AND p.kind = c.parent_kind AND p.rpde_id = c.parent_rpde_id
  WHERE c.bookable IS NOT NULL AND c.bookable @> at AND c.start_date > at
$$
"""
BUILT_URL = "s.checkout_prefix || c.checkout_path"
JOIN_SOURCES = "\n  LEFT JOIN harvester.sources AS s ON s.name = c.source"

# What revision 0004's workers left in checkout_url, for the downgrade to read again.
REBUILD_CHECKOUT_URLS = """
UPDATE harvester.items AS i SET checkout_url = s.checkout_prefix || i.checkout_path
FROM harvester.sources AS s
WHERE s.name = i.source AND i.role = 'child'
  AND i.checkout_url IS DISTINCT FROM s.checkout_prefix || i.checkout_path
"""


def upgrade() -> None:
    op.execute("DROP INDEX harvester.ix_items_bookable")
    op.execute(BOOKABLE_AT.format(checkout_url=BUILT_URL, sources=JOIN_SOURCES))


def downgrade() -> None:
    op.execute(REBUILD_CHECKOUT_URLS)
    op.execute(BOOKABLE_AT.format(checkout_url="c.checkout_url", sources=""))
    op.execute(
        "CREATE INDEX ix_items_bookable ON harvester.items USING gist (bookable)"
        " WHERE bookable IS NOT NULL"
    )
