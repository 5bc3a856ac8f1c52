"""Initial schema: feeds, items, parent references, rejected items, and the SQL interface.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = pg.TIMESTAMP(timezone=True)
SCHEMA = "harvester"

# months on the UTC calendar (clamped to the month's end), then exact microseconds.
MINUS_SPAN = """
CREATE FUNCTION harvester.minus_span(at timestamptz, months integer, micros bigint)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT ((at AT TIME ZONE 'UTC') - make_interval(months => months)
          - micros * interval '1 microsecond') AT TIME ZONE 'UTC'
$$
"""

# Contract rules 4-5: [start - validFrom, min(start, start - validThrough)); NULL = never.
BOOKING_WINDOW = """
CREATE FUNCTION harvester.booking_window(
    start timestamptz, child_ok boolean, offer_ok boolean,
    from_months integer, from_micros bigint, through_months integer, through_micros bigint)
RETURNS tstzrange LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN start IS NULL OR child_ok IS NOT TRUE OR offer_ok IS NOT TRUE THEN NULL
    WHEN from_months IS NOT NULL
         AND harvester.minus_span(start, from_months, from_micros)
             >= least(start, harvester.minus_span(start, through_months, through_micros))
      THEN NULL
    ELSE tstzrange(
      harvester.minus_span(start, from_months, from_micros),
      least(start, harvester.minus_span(start, through_months, through_micros)),
      '[)')
  END
$$
"""

# Inlined by the planner (single SELECT, STABLE, LANGUAGE sql), so ORDER BY/LIMIT and the
# GiST index on `bookable` apply. `start_date > at` is implied by the window; it lets the
# start_date index serve ORDER BY start_date LIMIT n.
BOOKABLE_AT = """
CREATE FUNCTION public.bookable_at(at timestamptz)
RETURNS TABLE (
    source text, kind text, id text, identifier text,
    start_date timestamptz, end_date timestamptz,
    parent_id text, parent_kind text,
    bookable_from timestamptz, bookable_until timestamptz,
    checkout_url text, data jsonb, parent_data jsonb)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT c.source, c.type, c.item_id, c.identifier, c.start_date, c.end_date,
         COALESCE(p.item_id, c.parent_ref), COALESCE(p.type, c.embedded_type),
         lower(c.bookable), upper(c.bookable), c.checkout_url, c.data,
         COALESCE(p.data,
                  c.data -> (CASE c.type WHEN 'Slot' THEN 'facilityUse' ELSE 'superEvent' END))
  FROM harvester.items AS c
  LEFT JOIN harvester.items AS p
    ON p.source = c.source AND p.kind = c.parent_kind AND p.rpde_id = c.parent_rpde_id
  WHERE c.bookable IS NOT NULL AND c.bookable @> at AND c.start_date > at
$$
"""

BOOKABLE_NOW = """
CREATE VIEW public.bookable_now AS
  SELECT * FROM public.bookable_at(now())
"""

# Every held child with, when it is not bookable now, the first rule it fails.
OPPORTUNITY_STATUS = """
CREATE VIEW public.opportunity_status AS
  SELECT c.source, c.type AS kind, c.item_id AS id, c.identifier, c.start_date,
         COALESCE(p.item_id, c.parent_ref) AS parent_id,
         COALESCE(c.bookable @> now(), false) AS bookable,
         CASE
           WHEN c.bookable @> now() THEN NULL
           WHEN c.problem IS NOT NULL THEN c.problem
           WHEN c.parent_ref IS NULL THEN 'no parent reference'
           WHEN p.rpde_id IS NULL AND c.embedded_type IS NULL THEN 'parent not held'
           WHEN p.rpde_id IS NOT NULL AND p.offer_problem IS NOT NULL THEN p.offer_problem
           WHEN p.rpde_id IS NULL AND c.offer_problem IS NOT NULL THEN c.offer_problem
           WHEN c.bookable IS NULL THEN 'booking window is empty'
           WHEN lower(c.bookable) > now() THEN 'booking window not open yet'
           ELSE 'booking window closed'
         END AS reason
  FROM harvester.items AS c
  LEFT JOIN harvester.items AS p
    ON p.source = c.source AND p.kind = c.parent_kind AND p.rpde_id = c.parent_rpde_id
  WHERE c.role = 'child'
"""


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    create_tables()
    for statement in (MINUS_SPAN, BOOKING_WINDOW, BOOKABLE_AT, BOOKABLE_NOW, OPPORTUNITY_STATUS):
        op.execute(statement)


def create_tables() -> None:
    op.create_table(
        "sources",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("checkout_prefix", sa.Text),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("name", name="pk_sources"),
        schema=SCHEMA,
    )
    op.create_table(
        "feeds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("next_url", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="new"),
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("backfill_generation", sa.Integer),
        sa.Column("pages", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("items_written", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_page_at", TZ),
        sa.Column("caught_up_at", TZ),
        sa.Column("retry_at", TZ),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_at", TZ),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_until", TZ),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_feeds"),
        sa.ForeignKeyConstraint(
            ["source"], ["harvester.sources.name"], name="fk_feeds_source_sources"
        ),
        sa.UniqueConstraint("source", "url", name="uq_feeds_source_url"),
        schema=SCHEMA,
    )
    op.create_table(
        "items",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("rpde_id", sa.Text, nullable=False),
        sa.Column("feed_id", sa.Integer, nullable=False),
        sa.Column("modified", sa.Numeric),
        sa.Column("modified_text", sa.Text),
        sa.Column("data", pg.JSONB, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("seen_generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("item_id", sa.Text),
        sa.Column("identifier", sa.Text),
        sa.Column("start_date", TZ),
        sa.Column("end_date", TZ),
        sa.Column("parent_ref", sa.Text),
        sa.Column("problem", sa.Text),
        sa.Column("checkout_path", sa.Text),
        sa.Column("checkout_url", sa.Text),
        sa.Column("embedded_type", sa.Text),
        sa.Column("offer_problem", sa.Text),
        sa.Column("from_months", sa.Integer),
        sa.Column("from_micros", sa.BigInteger),
        sa.Column("through_months", sa.Integer),
        sa.Column("through_micros", sa.BigInteger),
        sa.Column("refs", pg.ARRAY(sa.Text)),
        sa.Column("parent_kind", sa.Text),
        sa.Column("parent_rpde_id", sa.Text),
        sa.Column("bookable", pg.TSTZRANGE),
        sa.PrimaryKeyConstraint("source", "kind", "rpde_id", name="pk_items"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_items_bookable",
        "items",
        ["bookable"],
        schema=SCHEMA,
        postgresql_using="gist",
        postgresql_where=sa.text("bookable IS NOT NULL"),
    )
    op.create_index(
        "ix_items_start_date",
        "items",
        ["start_date"],
        schema=SCHEMA,
        postgresql_where=sa.text("bookable IS NOT NULL"),
    )
    op.create_index(
        "ix_items_parent_ref",
        "items",
        ["source", "parent_ref"],
        schema=SCHEMA,
        postgresql_where=sa.text("role = 'child'"),
    )
    op.create_table(
        "parent_refs",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("ref_id", sa.Text, nullable=False),
        sa.Column("parent_kind", sa.Text, nullable=False),
        sa.Column("parent_rpde_id", sa.Text, nullable=False),
        sa.Column("is_self", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint(
            "source", "ref_id", "parent_kind", "parent_rpde_id", name="pk_parent_refs"
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_parent_refs_parent",
        "parent_refs",
        ["source", "parent_kind", "parent_rpde_id"],
        schema=SCHEMA,
    )
    op.create_table(
        "rejected_items",
        sa.Column("feed_id", sa.Integer, nullable=False),
        sa.Column("item_key", sa.Text, nullable=False),
        sa.Column("page_url", sa.Text, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("kind", sa.Text),
        sa.Column("rpde_id", sa.Text),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
        sa.Column("seen_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("feed_id", "item_key", name="pk_rejected_items"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.execute("DROP VIEW public.opportunity_status")
    op.execute("DROP VIEW public.bookable_now")
    op.execute("DROP FUNCTION public.bookable_at(timestamptz)")
    op.execute("DROP FUNCTION harvester.booking_window")
    op.execute("DROP FUNCTION harvester.minus_span")
    for table in ("rejected_items", "parent_refs", "items", "feeds", "sources"):
        op.drop_table(table, schema=SCHEMA)
