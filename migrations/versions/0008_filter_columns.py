"""Columns an app filters on, a fast query by distance, and comments on the public SQL.

- `bookable_at` (and so `bookable_now`) gain `name`, `activity`, `latitude`, `longitude`,
  `price`, `currency`, `age_min`, `age_max` and `organizer_name`, each taken from the
  child, else its parent, else the parent's own `superEvent`, the way OpenActive
  inheritance works (`harvester.inherited`, the one home of that rule), read as rows are.
- `bookable_near(lat, lon, km, at)`: the rows of `bookable_at(at)` within `km`
  of a point, nearest first, with `distance_km`. The embedded server ships no PostGIS,
  cube or earthdistance, so the index is core PostgreSQL's: GiST over `point`s, one on
  the locations children carry themselves (or through an embedded parent), one on
  parents'; a box around the circle is searched on both, then distances are exact.
- `COMMENT ON` every public view, function and view column.

Revision ID: 0008
Revises: 0007

Every revision must keep working with the code of the revision before it (workers are
upgraded one at a time) and must not hold long locks on `harvester.items`. Nothing here
changes a table; the indexes are built in the migration's transaction (writes to items
wait while they are built: about a second per million rows here).
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FUNCTIONS = r"""
CREATE FUNCTION harvester.inherited(child jsonb, parent jsonb, path text[])
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT COALESCE(child #> path, parent #> path, parent -> 'superEvent' #> path)
$$;
COMMENT ON FUNCTION harvester.inherited(jsonb, jsonb, text[]) IS
  'A field of an opportunity: the child''s, else its parent''s, else the parent''s superEvent''s';

CREATE FUNCTION harvester.as_number(value jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN jsonb_typeof(value) = 'number' THEN (value #>> '{}')::numeric
    WHEN jsonb_typeof(value) = 'string' AND value #>> '{}' ~ '^\s*-?\d{1,15}(\.\d{1,15})?\s*$'
      THEN (value #>> '{}')::numeric
  END
$$;

CREATE FUNCTION harvester.as_integer(value jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN abs(harvester.as_number(value)) < 2147483647
              THEN round(harvester.as_number(value))::integer END
$$;

-- float8 rather than numeric: a coordinate is read for every row returned.
CREATE FUNCTION harvester.as_float(value jsonb) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN jsonb_typeof(value) = 'number' THEN (value #>> '{}')::float8
    WHEN jsonb_typeof(value) = 'string' AND value #>> '{}' ~ '^\s*-?\d{1,3}(\.\d{1,15})?\s*$'
      THEN (value #>> '{}')::float8
  END
$$;

-- PL/pgSQL: each coordinate is read once (an inlined SQL body would read each twice).
CREATE FUNCTION harvester.geo_point(geo jsonb) RETURNS point
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  lat float8 := harvester.as_float(geo -> 'latitude');
  lon float8 := harvester.as_float(geo -> 'longitude');
BEGIN
  IF lat BETWEEN -90 AND 90 AND lon BETWEEN -180 AND 180 THEN
    RETURN point(lon, lat);
  END IF;
  RETURN NULL;
END
$$;

CREATE FUNCTION harvester.embedded_parent(data jsonb, type text) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE jsonb_typeof(data -> (CASE type WHEN 'Slot' THEN 'facilityUse' ELSE 'superEvent' END))
    WHEN 'object' THEN data -> (CASE type WHEN 'Slot' THEN 'facilityUse' ELSE 'superEvent' END) END
$$;

CREATE FUNCTION harvester.pref_labels(activity jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT array_agg(a ->> 'prefLabel') FILTER (WHERE a ->> 'prefLabel' IS NOT NULL)
  FROM jsonb_array_elements(CASE jsonb_typeof(activity) WHEN 'array' THEN activity
                                WHEN 'object' THEN jsonb_build_array(activity)
                                ELSE '[]'::jsonb END) AS a
$$;

CREATE FUNCTION harvester.offer_of(node jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT COALESCE(node -> 'imin:aggregateOffer' -> 'publicAdult',
                  CASE jsonb_typeof(node -> 'offers') WHEN 'array' THEN node -> 'offers' -> 0
                                                      WHEN 'object' THEN node -> 'offers' END)
$$;

CREATE FUNCTION harvester.km_between(lat1 float8, lon1 float8, lat2 float8, lon2 float8)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT 2 * 6371.0088 * asin(least(1, sqrt(
    sin(radians(lat2 - lat1) / 2) ^ 2
    + cos(radians(lat1)) * cos(radians(lat2)) * sin(radians(lon2 - lon1) / 2) ^ 2)))
$$;

CREATE FUNCTION harvester.box_around(lat float8, lon float8, km float8) RETURNS box
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT box(point(lon - km / (111.32 * greatest(cos(radians(lat)), 0.01)), lat - km / 111.32),
             point(lon + km / (111.32 * greatest(cos(radians(lat)), 0.01)), lat + km / 111.32))
$$;
"""
# Where a child is, as far as the child itself tells (its own location, or its embedded
# parent's): the child index's expression; a parent's location: the parent index's. The
# child index holds only children that carry a place or an embedded parent: a cheap test,
# made first, so that writing a child that has neither costs no jsonb digging.
CARRIES_PLACE = (
    "(data ? 'location' OR jsonb_typeof(data -> 'superEvent') = 'object'"
    " OR jsonb_typeof(data -> 'facilityUse') = 'object')"
)
CHILD_GEO = (
    "harvester.geo_point(harvester.inherited(data, harvester.embedded_parent(data, type),"
    " '{location,geo}'))"
)
PARENT_GEO = "harvester.geo_point(harvester.inherited(NULL, data, '{location,geo}'))"
INDEXES = (
    f"CREATE INDEX ix_items_child_geo ON harvester.items USING gist (({CHILD_GEO}))"
    f" WHERE role = 'child' AND {CARRIES_PLACE} AND {CHILD_GEO} IS NOT NULL",
    f"CREATE INDEX ix_items_parent_geo ON harvester.items USING gist (({PARENT_GEO}))"
    f" WHERE role = 'parent' AND {PARENT_GEO} IS NOT NULL",
)

PARENT_DATA = (
    "COALESCE(p.data, c.data -> (CASE c.type WHEN 'Slot' THEN 'facilityUse' ELSE 'superEvent' END))"
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
# One SELECT list and FROM for both functions: the rows an app reads are built once.
# Written out where used, not as lateral subqueries: a count(*) then needs no join to
# parents at all (a lateral subquery's value would keep the join in every plan).
GEO = f"harvester.geo_point(harvester.inherited(c.data, {PARENT_DATA}, '{{location,geo}}'))"
OFFER = (
    f"COALESCE(harvester.offer_of(c.data), harvester.offer_of({PARENT_DATA}),"
    f" harvester.offer_of({PARENT_DATA} -> 'superEvent'))"
)
# The child's dataset (its imin:dataSource, inherited), one column of it at a time: scalar
# subqueries, which a count(*) never runs, where a join would be planned for every row.
DATASET = (
    "(SELECT {column} FROM harvester.datasets AS d WHERE d.source = c.source AND d.identifier"
    f" = harvester.inherited(c.data, {PARENT_DATA}, '{{imin:dataSource,identifier}}') #>> '{{}}')"
)
ROWS = f"""
  SELECT c.source, c.type AS kind, c.item_id AS id, c.identifier, c.start_date, c.end_date,
         COALESCE(p.item_id, c.parent_ref) AS parent_id,
         COALESCE(p.type, c.embedded_type) AS parent_kind,
         lower(c.bookable) AS bookable_from, upper(c.bookable) AS bookable_until,
         s.checkout_prefix || c.checkout_path AS checkout_url, c.data, {PARENT_DATA} AS parent_data,
         {DATASET.replace("{column}", "COALESCE(d.publisher_name, d.name)")} AS attribution_name,
         {DATASET.replace("{column}", "d.url")} AS attribution_url,
         COALESCE({DATASET.replace("{column}", "d.license")}, f.license) AS license,
         harvester.inherited(c.data, {PARENT_DATA}, '{{name}}') #>> '{{}}' AS name,
         harvester.pref_labels(harvester.inherited(c.data, {PARENT_DATA}, '{{activity}}'))
           AS activity,
         ({GEO})[1] AS latitude, ({GEO})[0] AS longitude,
         harvester.as_number(({OFFER}) -> 'price') AS price,
         ({OFFER}) ->> 'priceCurrency' AS currency,
         harvester.as_integer(harvester.inherited(c.data, {PARENT_DATA}, '{{ageRange,minValue}}'))
           AS age_min,
         harvester.as_integer(harvester.inherited(c.data, {PARENT_DATA}, '{{ageRange,maxValue}}'))
           AS age_max,
         COALESCE(harvester.inherited(c.data, {PARENT_DATA}, '{{organizer,name}}'),
                  harvester.inherited(c.data, {PARENT_DATA}, '{{provider,name}}')) #>> '{{}}'
           AS organizer_name
  FROM harvester.items AS c
  LEFT JOIN harvester.sources AS s ON s.name = c.source
  LEFT JOIN harvester.items AS p
    ON p.source = c.source AND p.kind = c.parent_kind AND p.rpde_id = c.parent_rpde_id
  LEFT JOIN harvester.feeds AS f ON f.id = c.feed_id"""
# Only children have a booking window. A refusal stands until the parent is updated after
# it: asked of the parent by key, and only for the rare refused child. Rule 7 applies to
# the sources with a sellers feed: a list read once per query (a hashed subplan), not a
# join to sources for every row. So a count joins nothing.
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
CREATE FUNCTION public.bookable_at(at timestamptz)
RETURNS TABLE ({RETURNS})
LANGUAGE sql STABLE PARALLEL SAFE AS $$
{ROWS}
  WHERE {BOOKABLE}
$$
"""
# Candidates from both indexes (the box around the circle; only children with a window to
# come), then the exact distance. Each candidate is read by its key (a lateral probe): no
# plan can turn it into a scan, even before the tables have statistics. PL/pgSQL, so that
# its plan is made once per session: planning the inlined rows takes longer than running
# them for a few hundred opportunities.
BOOKABLE_NEAR = f"""
CREATE FUNCTION public.bookable_near(
    lat float8, lon float8, km float8, at timestamptz DEFAULT now())
RETURNS TABLE ({RETURNS}, distance_km float8)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  WITH near AS (
    SELECT n.source, n.kind, n.rpde_id FROM harvester.items AS n
    WHERE n.role = 'child' AND {CARRIES_PLACE.replace("data", "n.data")}
      AND {CHILD_GEO.replace("data", "n.data").replace("type)", "n.type)")}
          <@ harvester.box_around(lat, lon, km)
      AND n.bookable IS NOT NULL AND n.start_date > at
    UNION
    SELECT n.source, n.kind, n.rpde_id
    FROM harvester.items AS q
    JOIN harvester.parent_refs AS r
      ON r.source = q.source AND r.parent_kind = q.kind AND r.parent_rpde_id = q.rpde_id
    JOIN harvester.items AS n
      ON n.source = r.source AND n.role = 'child' AND n.parent_ref = r.ref_id
    WHERE q.role = 'parent' AND {PARENT_GEO.replace("data", "q.data")}
          <@ harvester.box_around(lat, lon, km)
      AND n.bookable IS NOT NULL AND n.start_date > at
  )
  SELECT * FROM (
    SELECT b.*, harvester.km_between(lat, lon, b.latitude, b.longitude) AS distance_km
    FROM near CROSS JOIN LATERAL ({ROWS}
      WHERE c.source = near.source AND c.kind = near.kind AND c.rpde_id = near.rpde_id
        AND {BOOKABLE}) AS b
  ) AS within
  WHERE within.distance_km <= km
  ORDER BY within.distance_km, within.start_date;
END
$$
"""
BOOKABLE_NOW = "CREATE VIEW public.bookable_now AS SELECT * FROM public.bookable_at(now())"

COLUMNS = {
    "source": "The source's name, as configured",
    "kind": "ScheduledSession or Slot",
    "id": "The child's JSON-LD @id",
    "identifier": "The child's data.identifier, as text",
    "start_date": "When it starts",
    "end_date": "When it ends; null when absent",
    "parent_id": "The SessionSeries / FacilityUse @id",
    "parent_kind": "SessionSeries, FacilityUse or IndividualFacilityUse",
    "bookable_from": "start - validFromBeforeStartDate; null when there is no lower bound",
    "bookable_until": "start, or start - validThroughBeforeStartDate when that is given",
    "checkout_url": "The guest checkout URL; null without a checkout_base_url",
    "data": "The child's data",
    "parent_data": "The parent's data (the embedded parent's when none is published)",
    "attribution_name": "Whom to credit: the Dataset's publisher name, else its name",
    "attribution_url": "The Dataset's @id/url",
    "license": "The Dataset's licence, else the RPDE page's",
    "name": "name: the child's, else its parent's, else the parent's superEvent's",
    "activity": "The prefLabels of activity (inherited like name)",
    "latitude": "location.geo.latitude (for a Slot, its FacilityUse's), inherited like name",
    "longitude": "location.geo.longitude, inherited like latitude",
    "price": "The publicAdult offer's price, else the first offers[] entry's",
    "currency": "That offer's priceCurrency",
    "age_min": "ageRange.minValue (inherited like name)",
    "age_max": "ageRange.maxValue (inherited like name)",
    "organizer_name": "organizer.name, else provider.name (inherited like name)",
}
COMMENTS = (
    "COMMENT ON FUNCTION public.bookable_at(timestamptz) IS 'The opportunities bookable at an"
    " instant (the contract''s rules 1-7), with checkout URLs, attribution and filter columns'",
    "COMMENT ON VIEW public.bookable_now IS 'The opportunities bookable now: bookable_at(now())'",
    "COMMENT ON FUNCTION public.bookable_near(float8, float8, float8, timestamptz) IS 'The"
    " rows of bookable_at(at) within km of a point, nearest first, with distance_km'",
    "COMMENT ON VIEW public.opportunity_status IS 'Every held child: bookable now or not, and"
    " why not'",
    *(
        f"COMMENT ON COLUMN public.bookable_now.{column} IS '{text.replace(chr(39), chr(39) * 2)}'"
        for column, text in COLUMNS.items()
    ),
    *(
        f"COMMENT ON COLUMN public.opportunity_status.{column} IS"
        f" '{COLUMNS[column].replace(chr(39), chr(39) * 2)}'"
        for column in ("source", "kind", "id", "identifier", "start_date", "parent_id")
    ),
    "COMMENT ON COLUMN public.opportunity_status.bookable IS 'In bookable_now at this moment'",
    "COMMENT ON COLUMN public.opportunity_status.reason IS 'Why it is not bookable now; null"
    " when it is'",
)

# Revision 0007's function, for the downgrade.
OLD_BOOKABLE_AT = f"""
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
         {PARENT_DATA},
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
         {PARENT_DATA}
           -> 'imin:dataSource' ->> 'identifier')
  WHERE c.bookable IS NOT NULL AND c.bookable @> at AND c.start_date > at
    AND (c.refused_at IS NULL OR c.refused_at < (
         SELECT r.updated_at FROM harvester.items AS r
         WHERE r.source = c.source AND r.kind = c.parent_kind AND r.rpde_id = c.parent_rpde_id))
    AND (s.checks_sellers IS NOT TRUE OR EXISTS (
         SELECT 1 FROM harvester.items AS z
         WHERE z.source = c.source AND z.role = 'seller' AND z.item_id = c.seller))
$$
"""
DROPPED_FUNCTIONS = (
    "inherited(jsonb, jsonb, text[])", "as_integer(jsonb)", "as_number(jsonb)", "as_float(jsonb)",
    "geo_point(jsonb)", "embedded_parent(jsonb, text)", "pref_labels(jsonb)",
    "offer_of(jsonb)", "km_between(float8, float8, float8, float8)",
    "box_around(float8, float8, float8)",
)  # fmt: skip


def upgrade() -> None:
    op.execute(FUNCTIONS)
    for statement in INDEXES:
        op.execute(statement)
    op.execute("DROP VIEW public.bookable_now")
    op.execute("DROP FUNCTION public.bookable_at(timestamptz)")
    op.execute(BOOKABLE_AT)
    op.execute(BOOKABLE_NOW)
    op.execute(BOOKABLE_NEAR)
    for statement in COMMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP FUNCTION public.bookable_near(float8, float8, float8, timestamptz)")
    op.execute("DROP VIEW public.bookable_now")
    op.execute("DROP FUNCTION public.bookable_at(timestamptz)")
    op.execute(OLD_BOOKABLE_AT)
    op.execute(BOOKABLE_NOW)
    op.execute("DROP INDEX harvester.ix_items_child_geo")
    op.execute("DROP INDEX harvester.ix_items_parent_geo")
    for function in DROPPED_FUNCTIONS:
        op.execute(f"DROP FUNCTION harvester.{function}")
