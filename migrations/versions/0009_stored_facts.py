"""Filter columns stored as rows are written, bookable_near on a stored point, and
sources discovered from OpenActive data catalogs.

Revision 0008 dug each filter column out of jsonb as rows were read: some twenty path
lookups per row, about half of `bookable_near`'s time. Now `harvester.facts` reads them
once, as an item is written, into columns of `items` (a child's own, else its embedded
parent's; a parent's own, else its superEvent's), and the views take the child's own, then
its published parent's, then its embedded parent's: `inherits` marks, bit by column, what
a child took from its embedded parent, so that a published parent still beats it.

- `items` gains `name`, `activity`, `latitude`, `longitude`, `price`, `currency`,
  `age_min`, `age_max`, `organizer_name`, `data_source` and `inherits`.
- The GiST indexes are on `point(longitude, latitude)`; a child's holds only children with a
  booking window.
- `bookable_at` (so `bookable_now`) and `bookable_near` keep their columns and comments.
- `ix_items_unrefilled`: the rows still to be derived again (empty once they are).
- 0008's jsonb helpers go; `km_between` and `box_around` stay.
- `sources` gains what discovery keeps of a Dataset: the `catalog` that listed it (NULL for
  a configured source), its `site_url`, and its own attribution (`attribution_name`,
  `attribution_url`, `license`), which `bookable_at` shows when no attribution feed gives a
  row's; `harvester.discovery_failures` holds the catalogs and sites that could not be read.

Revision ID: 0009
Revises: 0008

Rows written before this revision have NULL facts until they are derived again: the
harvester does that right after migrating (`database.refill_facts`, in batches, from each
row's stored data). Adding nullable columns rewrites nothing; the new indexes are empty
when built. Revision 0008's workers keep writing (their upserts leave the new columns).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# In harvester.facts.COLUMNS order: bit i of `inherits` is column i.
FACTS = (
    ("name", "text"), ("activity", "text[]"), ("latitude", "float8"), ("longitude", "float8"),
    ("price", "numeric"), ("currency", "text"), ("age_min", "integer"), ("age_max", "integer"),
    ("organizer_name", "text"), ("data_source", "text"),
)  # fmt: skip
POINT = "point({alias}longitude, {alias}latitude)"
INDEXES = (
    f"CREATE INDEX ix_items_child_point ON harvester.items USING gist (({POINT.format(alias='')}))"
    " WHERE role = 'child' AND bookable IS NOT NULL AND latitude IS NOT NULL",
    "CREATE INDEX ix_items_unrefilled ON harvester.items (role)"
    " WHERE inherits IS NULL AND role IN ('child', 'parent')",
    f"CREATE INDEX ix_items_parent_point ON harvester.items USING gist (({POINT.format(alias='')}))"
    " WHERE role = 'parent' AND latitude IS NOT NULL",
)


def fact(position: int) -> str:
    """A fact of a child: its own, then its published parent's, then its embedded parent's."""
    column = FACTS[position][0]
    return (
        f"CASE WHEN c.inherits & {1 << position} = 0 THEN COALESCE(c.{column}, p.{column})"
        f" ELSE COALESCE(p.{column}, c.{column}) END"
    )


RETURNS = """
    source text, kind text, id text, identifier text,
    start_date timestamptz, end_date timestamptz,
    parent_id text, parent_kind text,
    bookable_from timestamptz, bookable_until timestamptz,
    checkout_url text, data jsonb, parent_data jsonb,
    attribution_name text, attribution_url text, license text,
    name text, activity text[], latitude float8, longitude float8,
    price numeric, currency text, age_min integer, age_max integer, organizer_name text"""
PARENT_DATA = (
    "COALESCE(p.data, c.data -> (CASE c.type WHEN 'Slot' THEN 'facilityUse' ELSE 'superEvent' END))"
)
# The child's Dataset, one column at a time: scalar subqueries, which a count(*) never
# runs, where a join would be planned for every row.
DATASET = (
    "(SELECT {column} FROM harvester.datasets AS d"
    f" WHERE d.source = c.source AND d.identifier = {fact(9)})"
)
ROWS = f"""
  SELECT c.source, c.type AS kind, c.item_id AS id, c.identifier, c.start_date, c.end_date,
         COALESCE(p.item_id, c.parent_ref) AS parent_id,
         COALESCE(p.type, c.embedded_type) AS parent_kind,
         lower(c.bookable) AS bookable_from, upper(c.bookable) AS bookable_until,
         s.checkout_prefix || c.checkout_path AS checkout_url, c.data, {PARENT_DATA} AS parent_data,
         COALESCE({DATASET.format(column="COALESCE(d.publisher_name, d.name)")},
                  s.attribution_name) AS attribution_name,
         COALESCE({DATASET.format(column="d.url")}, s.attribution_url) AS attribution_url,
         COALESCE({DATASET.format(column="d.license")}, s.license, f.license) AS license,
         {", ".join(f"{fact(i)} AS {column}" for i, (column, _) in enumerate(FACTS[:9]))}
  FROM harvester.items AS c
  LEFT JOIN harvester.sources AS s ON s.name = c.source
  LEFT JOIN harvester.items AS p
    ON p.source = c.source AND p.kind = c.parent_kind AND p.rpde_id = c.parent_rpde_id
  LEFT JOIN harvester.feeds AS f ON f.id = c.feed_id"""
# Only children have a booking window. A refusal stands until the parent is updated after
# it: asked of the parent by key, and only for the rare refused child. Rule 7 applies to
# the sources with a sellers feed: a list read once per query (a hashed subplan).
BOOKABLE = """
  c.bookable IS NOT NULL AND c.bookable @> at AND c.start_date > at
    AND (c.refused_at IS NULL OR c.refused_at < (
         SELECT r.updated_at FROM harvester.items AS r
         WHERE r.source = c.source AND r.kind = c.parent_kind AND r.rpde_id = c.parent_rpde_id))
    AND (c.source NOT IN (SELECT k.name FROM harvester.sources AS k WHERE k.checks_sellers)
         OR EXISTS (
         SELECT 1 FROM harvester.items AS z
         WHERE z.source = c.source AND z.role = 'seller' AND z.item_id = c.seller))"""

BOOKABLE_AT = f"""
CREATE OR REPLACE FUNCTION public.bookable_at(at timestamptz)
RETURNS TABLE ({RETURNS})
LANGUAGE sql STABLE PARALLEL SAFE AS $$
{ROWS}
  WHERE {BOOKABLE}
$$
"""
# The children near a point, whole rows: those whose own (or embedded parent's) place is
# in the box around the circle, and those whose published parent's place is (each child
# once: found by its resolved parent, and only if its own place did not find it already).
# Read where they lie, as `c` of ROWS: each row is visited once, with no second probe.
NEAR_CHILDREN = f"""
    SELECT n.* FROM harvester.items AS n
    WHERE n.role = 'child' AND n.bookable IS NOT NULL AND n.latitude IS NOT NULL
      AND {POINT.format(alias="n.")} <@ harvester.box_around(lat, lon, km)
      AND n.start_date > at
    UNION ALL
    SELECT n.* FROM harvester.items AS q
    JOIN harvester.parent_refs AS r
      ON r.source = q.source AND r.parent_kind = q.kind AND r.parent_rpde_id = q.rpde_id
    JOIN harvester.items AS n
      ON n.source = r.source AND n.role = 'child' AND n.parent_ref = r.ref_id
     AND n.parent_kind = q.kind AND n.parent_rpde_id = q.rpde_id
    WHERE q.role = 'parent' AND q.latitude IS NOT NULL
      AND {POINT.format(alias="q.")} <@ harvester.box_around(lat, lon, km)
      AND n.bookable IS NOT NULL AND n.start_date > at
      AND NOT (n.latitude IS NOT NULL
               AND {POINT.format(alias="n.")} <@ harvester.box_around(lat, lon, km))"""
# Then the exact distance, on the place each row shows. PL/pgSQL, so that its plan is made
# once per session.
BOOKABLE_NEAR = f"""
CREATE OR REPLACE FUNCTION public.bookable_near(
    lat float8, lon float8, km float8, at timestamptz DEFAULT now())
RETURNS TABLE ({RETURNS}, distance_km float8)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  SELECT * FROM (
    SELECT b.*, harvester.km_between(lat, lon, b.latitude, b.longitude) AS distance_km
    FROM ({ROWS.replace("FROM harvester.items AS c", f"FROM ({NEAR_CHILDREN}) AS c", 1)}
          WHERE {BOOKABLE}) AS b
  ) AS within
  WHERE within.distance_km <= km
  ORDER BY within.distance_km, within.start_date;
END
$$
"""
JSONB_HELPERS = (
    "inherited(jsonb, jsonb, text[])", "as_integer(jsonb)", "as_number(jsonb)",
    "as_float(jsonb)", "geo_point(jsonb)", "embedded_parent(jsonb, text)", "pref_labels(jsonb)",
    "offer_of(jsonb)",
)  # fmt: skip


SOURCE_COLUMNS = ("catalog", "site_url", "attribution_name", "attribution_url", "license")
DISCOVERY_FAILURES = """
CREATE TABLE harvester.discovery_failures (
    catalog text NOT NULL,
    url text NOT NULL,
    kind text NOT NULL,
    reason text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_discovery_failures PRIMARY KEY (catalog, url)
)"""


def upgrade() -> None:
    columns = ", ".join(f"ADD COLUMN {name} {kind}" for name, kind in FACTS)
    op.execute(f"ALTER TABLE harvester.items {columns}, ADD COLUMN inherits smallint")
    columns = ", ".join(f"ADD COLUMN {name} text" for name in SOURCE_COLUMNS)
    op.execute(f"ALTER TABLE harvester.sources {columns}")
    op.execute(DISCOVERY_FAILURES)
    op.execute("DROP INDEX harvester.ix_items_child_geo")
    op.execute("DROP INDEX harvester.ix_items_parent_geo")
    for statement in INDEXES:
        op.execute(statement)
    op.execute(BOOKABLE_AT)
    op.execute(BOOKABLE_NEAR)
    for function in JSONB_HELPERS:
        op.execute(f"DROP FUNCTION harvester.{function}")


def downgrade() -> None:
    previous = revision_0008()
    op.execute(helpers_of(previous))
    op.execute(previous.BOOKABLE_AT.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute(previous.BOOKABLE_NEAR.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute("DROP INDEX harvester.ix_items_child_point")
    op.execute("DROP INDEX harvester.ix_items_parent_point")
    op.execute("DROP INDEX harvester.ix_items_unrefilled")
    for statement in previous.INDEXES:
        op.execute(statement)
    columns = ", ".join(f"DROP COLUMN {name}" for name, _ in FACTS)
    op.execute(f"ALTER TABLE harvester.items {columns}, DROP COLUMN inherits")
    op.execute("DROP TABLE harvester.discovery_failures")
    columns = ", ".join(f"DROP COLUMN {name}" for name in SOURCE_COLUMNS)
    op.execute(f"ALTER TABLE harvester.sources {columns}")


def revision_0008() -> ModuleType:
    """Revision 0008's script, whose functions and indexes a downgrade restores."""
    path = Path(__file__).with_name("0008_filter_columns.py")
    spec = importlib.util.spec_from_file_location("harvester_revision_0008", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def helpers_of(previous: ModuleType) -> str:
    """0008's jsonb helpers, without the two functions this revision keeps."""
    statements = previous.FUNCTIONS.split("\nCREATE FUNCTION ")
    kept = ("harvester.km_between", "harvester.box_around")
    return "\n".join(
        ("" if index == 0 else "CREATE FUNCTION ") + statement
        for index, statement in enumerate(statements)
        if not statement.startswith(kept)
    )
