"""Why a child is never bookable is decided where it is joined, and stored with it.

- `items.reason`: written with the child's parent and booking window by the one
  implementation of rules 2-5 (`records.join`, on every write and every re-join after a
  parent changes). `opportunity_status` reads it and adds only what depends on the
  instant (a window not open yet, or closed); it no longer re-decides, in SQL, which
  offer applies (a published parent beats an embedded one).
- Children already held get their reason from the view's old rules, once, here. Rows
  that workers of revision 0005 write afterwards carry none until they are written again;
  the view says so rather than guess.
- Leftovers go: `items.checkout_url` (written by revision 0004's workers only; 0005
  builds the URL as it reads) and revision 0001's UTC-only `booking_window` and
  `minus_span`, which nothing calls. Revision 0002's `booking_window` stays while workers
  of revision 0005 may still call it when a parent changes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Every revision must keep working with the code of the revision before it (workers are
upgraded one at a time) and must not hold long locks on `harvester.items`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

VIEW = """
CREATE OR REPLACE VIEW public.opportunity_status AS
  SELECT c.source, c.type AS kind, c.item_id AS id, c.identifier, c.start_date,
         COALESCE(p.item_id, c.parent_ref) AS parent_id,
         COALESCE(c.bookable @> now(), false) AS bookable,
         {reason} AS reason
  FROM harvester.items AS c
  LEFT JOIN harvester.items AS p
    ON p.source = c.source AND p.kind = c.parent_kind AND p.rpde_id = c.parent_rpde_id
  WHERE c.role = 'child'
"""

STORED_REASON = """CASE
           WHEN c.bookable @> now() THEN NULL
           WHEN c.bookable IS NULL
             THEN COALESCE(c.reason, 'not bookable (written by an older harvester)')
           WHEN lower(c.bookable) > now() THEN 'booking window not open yet'
           ELSE 'booking window closed'
         END"""

# Revision 0001's rules, as its view applied them: the reasons of the children held now.
OLD_REASON = """CASE
           WHEN c.bookable @> now() THEN NULL
           WHEN c.problem IS NOT NULL THEN c.problem
           WHEN c.parent_ref IS NULL THEN 'no parent reference'
           WHEN p.rpde_id IS NULL AND c.embedded_type IS NULL THEN 'parent not held'
           WHEN p.rpde_id IS NOT NULL AND p.offer_problem IS NOT NULL THEN p.offer_problem
           WHEN p.rpde_id IS NULL AND c.offer_problem IS NOT NULL THEN c.offer_problem
           WHEN c.bookable IS NULL THEN 'booking window is empty'
           WHEN lower(c.bookable) > now() THEN 'booking window not open yet'
           ELSE 'booking window closed'
         END"""

# Only children that are never bookable carry a reason: one pass, row locks only.
FILL_REASONS = f"""
UPDATE harvester.items AS c SET reason = r.reason
FROM (SELECT c.source, c.kind, c.rpde_id, {OLD_REASON} AS reason
      FROM harvester.items AS c
      LEFT JOIN harvester.items AS p
        ON p.source = c.source AND p.kind = c.parent_kind AND p.rpde_id = c.parent_rpde_id
      WHERE c.role = 'child' AND c.bookable IS NULL) AS r
WHERE c.source = r.source AND c.kind = r.kind AND c.rpde_id = r.rpde_id
"""

UTC_MINUS_SPAN = """
CREATE FUNCTION harvester.minus_span(at timestamptz, months integer, micros bigint)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT ((at AT TIME ZONE 'UTC') - make_interval(months => months)
          - micros * interval '1 microsecond') AT TIME ZONE 'UTC'
$$
"""

UTC_BOOKING_WINDOW = """
CREATE FUNCTION harvester.booking_window(
    start timestamptz, child_ok boolean, offer_ok boolean,
    from_months integer, from_micros bigint, through_months integer, through_micros bigint)
RETURNS tstzrange LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT harvester.booking_window(start, child_ok, offer_ok, from_months, from_micros,
                                  through_months, through_micros, 0)
$$
"""


def upgrade() -> None:
    # Nullable, no default: a catalogue change, no table rewrite.
    op.add_column("items", sa.Column("reason", sa.Text), schema="harvester")
    op.execute(FILL_REASONS)
    op.execute(VIEW.format(reason=STORED_REASON))
    op.drop_column("items", "checkout_url", schema="harvester")
    op.execute(
        "DROP FUNCTION harvester.booking_window("
        "timestamptz, boolean, boolean, integer, bigint, integer, bigint)"
    )
    op.execute("DROP FUNCTION harvester.minus_span(timestamptz, integer, bigint)")


def downgrade() -> None:
    # The old overloads return as UTC forms of revision 0002's (the same answers).
    op.execute(UTC_MINUS_SPAN)
    op.execute(UTC_BOOKING_WINDOW)
    op.add_column("items", sa.Column("checkout_url", sa.Text), schema="harvester")
    op.execute(
        "UPDATE harvester.items AS i SET checkout_url = s.checkout_prefix || i.checkout_path"
        " FROM harvester.sources AS s WHERE s.name = i.source AND i.role = 'child'"
    )
    op.execute(VIEW.format(reason=OLD_REASON))
    op.drop_column("items", "reason", schema="harvester")
