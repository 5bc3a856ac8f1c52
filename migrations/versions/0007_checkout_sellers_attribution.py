"""Checkout sessions, bookable sellers (rule 7) and attribution.

- `items.seller_ref` (a parent's seller, or a child's embedded parent's) and
  `parent_refs.seller_ref`, so a child's join also gives `items.seller`: the seller of the
  parent that applies (records.join). Rule 7 is checked as rows are read, against the
  source's bookable sellers (`role = 'seller'`, from the feed whose `purpose` says so),
  only where `sources.checks_sellers`: a seller removed takes its opportunities out at once.
- `items.refused_at`: a checkout answered 400 for it. The child is out of `bookable_at`
  until it is written again (the upsert clears it) or its parent is updated since.
- `feeds.license` (the RPDE page's) and `harvester.datasets` (a source's attribution
  feed) give `bookable_at` its `attribution_name`, `attribution_url` and `license`.
- An index for rule 7's probe of a source's sellers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

Every revision must keep working with the code of the revision before it (workers are
upgraded one at a time) and must not hold long locks on `harvester.items`. Revision 0006's
workers write no seller and never refuse: with `checks_sellers` false (the default until a
source configures a sellers feed) their rows read as before. The indexes are built in the
migration's transaction, which blocks writes to items while each is built (about a second
per million rows here).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

EMBEDDED_PARENT = "c.data -> (CASE c.type WHEN 'Slot' THEN 'facilityUse' ELSE 'superEvent' END)"

# Inlined by the planner (single SELECT, STABLE, LANGUAGE sql): the start_date index still
# finds the rows and orders them for `LIMIT n`.
BOOKABLE_AT = f"""
CREATE FUNCTION public.bookable_at(at timestamptz)
RETURNS TABLE (
    source text, kind text, id text, identifier text,
    start_date timestamptz, end_date timestamptz,
    parent_id text, parent_kind text,
    bookable_from timestamptz, bookable_until timestamptz,
    checkout_url text, data jsonb, parent_data jsonb,
    attribution_name text, attribution_url text, license text)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT c.source, c.type, c.item_id, c.identifier, c.start_date, c.end_date,
         COALESCE(p.item_id, c.parent_ref), COALESCE(p.type, c.embedded_type),
         lower(c.bookable), upper(c.bookable), s.checkout_prefix || c.checkout_path, c.data,
         COALESCE(p.data, {EMBEDDED_PARENT}),
         COALESCE(d.publisher_name, d.name), d.url, COALESCE(d.license, f.license)
  FROM harvester.items AS c
  LEFT JOIN harvester.sources AS s ON s.name = c.source
  LEFT JOIN harvester.items AS p
    ON p.source = c.source AND p.kind = c.parent_kind AND p.rpde_id = c.parent_rpde_id
  LEFT JOIN harvester.feeds AS f ON f.id = c.feed_id
  LEFT JOIN harvester.datasets AS d
    ON d.source = c.source
   AND d.identifier = COALESCE(
         c.data -> 'imin:dataSource' ->> 'identifier',
         COALESCE(p.data, {EMBEDDED_PARENT}) -> 'imin:dataSource' ->> 'identifier')
  WHERE c.bookable IS NOT NULL AND c.bookable @> at AND c.start_date > at
    AND (c.refused_at IS NULL OR c.refused_at < (
         SELECT r.updated_at FROM harvester.items AS r
         WHERE r.source = c.source AND r.kind = c.parent_kind AND r.rpde_id = c.parent_rpde_id))
    AND (s.checks_sellers IS NOT TRUE OR EXISTS (
         SELECT 1 FROM harvester.items AS z
         WHERE z.source = c.source AND z.role = 'seller' AND z.item_id = c.seller))
$$
"""
BOOKABLE_NOW = "CREATE VIEW public.bookable_now AS SELECT * FROM public.bookable_at(now())"

# The instant's reasons follow the stored one: a refusal, rule 7, then the window.
OPPORTUNITY_STATUS = """
CREATE OR REPLACE VIEW public.opportunity_status AS
  SELECT c.source, c.type AS kind, c.item_id AS id, c.identifier, c.start_date,
         COALESCE(p.item_id, c.parent_ref) AS parent_id,
         r.reason IS NULL AS bookable, r.reason
  FROM harvester.items AS c
  LEFT JOIN harvester.items AS p
    ON p.source = c.source AND p.kind = c.parent_kind AND p.rpde_id = c.parent_rpde_id
  LEFT JOIN harvester.sources AS s ON s.name = c.source
  CROSS JOIN LATERAL (SELECT CASE
      WHEN c.bookable IS NULL
        THEN COALESCE(c.reason, 'not bookable (written by an older harvester)')
      WHEN c.refused_at IS NOT NULL AND (p.updated_at IS NULL OR c.refused_at >= p.updated_at)
        THEN 'refused by checkout'
      WHEN s.checks_sellers AND c.seller IS NULL THEN 'parent names no seller'
      WHEN s.checks_sellers AND NOT EXISTS (
           SELECT 1 FROM harvester.items AS z
           WHERE z.source = c.source AND z.role = 'seller' AND z.item_id = c.seller)
        THEN 'seller not bookable: ' || c.seller
      WHEN lower(c.bookable) > now() THEN 'booking window not open yet'
      WHEN NOT c.bookable @> now() THEN 'booking window closed'
    END AS reason) AS r
  WHERE c.role = 'child'
"""

# Revision 0005's function and 0006's status view, for the downgrade.
OLD_BOOKABLE_AT = f"""
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
         lower(c.bookable), upper(c.bookable), s.checkout_prefix || c.checkout_path, c.data,
         COALESCE(p.data, {EMBEDDED_PARENT})
  FROM harvester.items AS c
  LEFT JOIN harvester.sources AS s ON s.name = c.source
  LEFT JOIN harvester.items AS p
    ON p.source = c.source AND p.kind = c.parent_kind AND p.rpde_id = c.parent_rpde_id
  WHERE c.bookable IS NOT NULL AND c.bookable @> at AND c.start_date > at
$$
"""
OLD_OPPORTUNITY_STATUS = """
CREATE VIEW public.opportunity_status AS
  SELECT c.source, c.type AS kind, c.item_id AS id, c.identifier, c.start_date,
         COALESCE(p.item_id, c.parent_ref) AS parent_id,
         COALESCE(c.bookable @> now(), false) AS bookable,
         CASE
           WHEN c.bookable @> now() THEN NULL
           WHEN c.bookable IS NULL
             THEN COALESCE(c.reason, 'not bookable (written by an older harvester)')
           WHEN lower(c.bookable) > now() THEN 'booking window not open yet'
           ELSE 'booking window closed'
         END AS reason
  FROM harvester.items AS c
  LEFT JOIN harvester.items AS p
    ON p.source = c.source AND p.kind = c.parent_kind AND p.rpde_id = c.parent_rpde_id
  WHERE c.role = 'child'
"""

ITEM_COLUMNS = (("seller_ref", sa.Text), ("seller", sa.Text),
                ("refused_at", sa.TIMESTAMP(timezone=True)))  # fmt: skip
INDEXES = (
    "CREATE INDEX ix_items_seller ON harvester.items (source, item_id) WHERE role = 'seller'",
)


def upgrade() -> None:
    # Nullable columns without defaults (or constant ones): catalogue changes, no rewrite.
    for name, kind in ITEM_COLUMNS:
        op.add_column("items", sa.Column(name, kind), schema="harvester")
    op.add_column("parent_refs", sa.Column("seller_ref", sa.Text), schema="harvester")
    checks = sa.Column("checks_sellers", sa.Boolean, nullable=False, server_default="false")
    op.add_column("sources", checks, schema="harvester")
    purpose = sa.Column("purpose", sa.Text, nullable=False, server_default="opportunities")
    op.add_column("feeds", purpose, schema="harvester")
    op.add_column("feeds", sa.Column("license", sa.Text), schema="harvester")
    op.create_table(
        "datasets",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("identifier", sa.Text, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("url", sa.Text),
        sa.Column("license", sa.Text),
        sa.Column("publisher_name", sa.Text),
        sa.Column(
            "refreshed_at",
            sa.TIMESTAMP(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.PrimaryKeyConstraint("source", "identifier", name="pk_datasets"),
        schema="harvester",
    )
    for statement in INDEXES:
        op.execute(statement)
    op.execute("DROP VIEW public.bookable_now")
    op.execute("DROP FUNCTION public.bookable_at(timestamptz)")
    op.execute(BOOKABLE_AT)
    op.execute(BOOKABLE_NOW)
    op.execute(OPPORTUNITY_STATUS)


def downgrade() -> None:
    op.execute("DROP VIEW public.opportunity_status")
    op.execute(OLD_OPPORTUNITY_STATUS)
    op.execute("DROP VIEW public.bookable_now")
    op.execute("DROP FUNCTION public.bookable_at(timestamptz)")
    op.execute(OLD_BOOKABLE_AT)
    op.execute(BOOKABLE_NOW)
    for name in ("ix_items_seller",):
        op.execute(f"DROP INDEX harvester.{name}")
    op.drop_table("datasets", schema="harvester")
    op.drop_column("feeds", "license", schema="harvester")
    op.drop_column("feeds", "purpose", schema="harvester")
    op.drop_column("sources", "checks_sellers", schema="harvester")
    op.drop_column("parent_refs", "seller_ref", schema="harvester")
    for name, _ in reversed(ITEM_COLUMNS):
        op.drop_column("items", name, schema="harvester")
