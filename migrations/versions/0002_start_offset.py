"""Calendar months of a booking window count on the startDate's own clock, not UTC's.

`P1M` before `2030-03-01T00:30:00+01:00` is `2030-02-01T00:30:00+01:00` (ISO 8601, and
isodate's answer); counted on the UTC calendar it was three days earlier. The child's
UTC offset is kept in `items.start_offset` and given to the new 8-argument
`harvester.booking_window`. The 7-argument form stays (UTC, as before) so code of the
previous revision keeps working; rows written before this revision have no offset and
keep their UTC window until rewritten (`harvester backfill` rewrites them all).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Every revision must keep working with the code of the revision before it (workers are
upgraded one at a time) and must not hold long locks on `harvester.items`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# `at - months - micros` on the wall clock of UTC offset `utc_offset` seconds. All of it is
# timestamp (not timestamptz) arithmetic, which is IMMUTABLE: so the planner inlines it.
MINUS_SPAN = """
CREATE FUNCTION harvester.minus_span(
    at timestamptz, months integer, micros bigint, utc_offset integer)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT ((at AT TIME ZONE make_interval(secs => COALESCE(utc_offset, 0)))
          - make_interval(months => months) - micros * interval '1 microsecond')
         AT TIME ZONE make_interval(secs => COALESCE(utc_offset, 0))
$$
"""

# Contract rules 4-5, as in 0001, with months on the start's own clock.
BOOKING_WINDOW = """
CREATE FUNCTION harvester.booking_window(
    start timestamptz, child_ok boolean, offer_ok boolean,
    from_months integer, from_micros bigint, through_months integer, through_micros bigint,
    start_offset integer)
RETURNS tstzrange LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN start IS NULL OR child_ok IS NOT TRUE OR offer_ok IS NOT TRUE THEN NULL
    WHEN from_months IS NOT NULL
         AND harvester.minus_span(start, from_months, from_micros, start_offset)
             >= least(start,
                      harvester.minus_span(start, through_months, through_micros, start_offset))
      THEN NULL
    ELSE tstzrange(
      harvester.minus_span(start, from_months, from_micros, start_offset),
      least(start, harvester.minus_span(start, through_months, through_micros, start_offset)),
      '[)')
  END
$$
"""


def upgrade() -> None:
    # A nullable column with no default: a catalogue change, no table rewrite.
    op.add_column("items", sa.Column("start_offset", sa.Integer), schema="harvester")
    op.execute(MINUS_SPAN)
    op.execute(BOOKING_WINDOW)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION harvester.booking_window("
        "timestamptz, boolean, boolean, integer, bigint, integer, bigint, integer)"
    )
    op.execute("DROP FUNCTION harvester.minus_span(timestamptz, integer, bigint, integer)")
    op.drop_column("items", "start_offset", schema="harvester")
