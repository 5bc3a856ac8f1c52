"""The tables, as SQLAlchemy Core metadata: the source of truth the migrations must match.

Internal tables live in the `harvester` schema; what downstream apps read (the view
`bookable_now`, the function `bookable_at`, the view `opportunity_status`) is in
`public`, created by the migrations with full SQL text.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION, JSONB, TIMESTAMP, TSTZRANGE

SCHEMA = "harvester"
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(schema=SCHEMA, naming_convention=NAMING)
TIMESTAMPTZ = TIMESTAMP(timezone=True)
# Where an opportunity is, from its stored facts (a core `point`: the embedded server ships
# no PostGIS, cube or earthdistance).
POINT = "point(longitude, latitude)"


def offer_columns() -> list[Column[object]]:
    """A publicAdult offer as the booking window reads it: usable or why not, and its spans."""
    return [
        Column("offer_problem", Text),
        Column("from_months", Integer),
        Column("from_micros", BigInteger),
        Column("through_months", Integer),
        Column("through_micros", BigInteger),
    ]


sources = Table(
    "sources",
    metadata,
    Column("name", Text, primary_key=True),
    Column("checkout_prefix", Text),  # https://{checkout_base_url}/ or NULL
    Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=func.now()),
    # Drawn anew (by triggers on parent_refs) whenever the source's parent refs change.
    Column("parents_version", BigInteger, nullable=False, server_default="0"),
    # Rule 7 applies: the source has a bookable sellers feed.
    Column("checks_sellers", Boolean, nullable=False, server_default="false"),
    # A source discovered from a data catalog (NULL: configured): the [[catalogs]] URL that
    # found it, its dataset site, and its Dataset's attribution (bookable_at shows it when
    # no attribution feed gives a row's).
    Column("catalog", Text),
    Column("site_url", Text),
    Column("attribution_name", Text),
    Column("attribution_url", Text),
    Column("license", Text),
)

feeds = Table(
    "feeds",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source", Text, ForeignKey("harvester.sources.name"), nullable=False),
    Column("url", Text, nullable=False),  # the configured first page
    Column("next_url", Text, nullable=False),  # RPDE: the only position a consumer keeps
    Column("state", Text, nullable=False, server_default="new"),
    Column("generation", Integer, nullable=False, server_default="0"),
    Column("backfill_generation", Integer),  # set while a backfill is under way
    Column("pages", BigInteger, nullable=False, server_default="0"),
    Column("items_written", BigInteger, nullable=False, server_default="0"),
    Column("last_page_at", TIMESTAMPTZ),
    Column("caught_up_at", TIMESTAMPTZ),
    Column("retry_at", TIMESTAMPTZ),
    Column("last_error", Text),
    Column("last_error_at", TIMESTAMPTZ),
    Column("lease_owner", Text),
    Column("lease_until", TIMESTAMPTZ),
    Column("created_at", TIMESTAMPTZ, nullable=False, server_default=func.now()),
    # opportunities, or sellers (a bookable sellers feed: its items are sellers, rule 7).
    Column("purpose", Text, nullable=False, server_default="opportunities"),
    Column("license", Text),  # the RPDE `license` of its latest page that gave one
    UniqueConstraint("source", "url"),
)

items = Table(
    "items",
    metadata,
    Column("source", Text, nullable=False),
    Column("kind", Text, nullable=False),  # the RPDE kind, as the publisher spells it
    Column("rpde_id", Text, nullable=False),
    Column("feed_id", Integer, nullable=False),
    # RPDE `modified`: integers exactly (may exceed 2^63), anything else as text.
    Column("modified", Numeric),
    Column("modified_text", Text),
    Column("data", JSONB, nullable=False),
    Column("type", Text, nullable=False),  # ScheduledSession, Slot, SessionSeries, ...
    Column("role", Text, nullable=False),  # child, parent or other
    Column("seen_generation", Integer, nullable=False, server_default="0"),
    # When this version arrived: a re-sent copy of it (a backfill) leaves it as it is.
    Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=func.now()),
    Column("item_id", Text),  # data @id
    Column("identifier", Text),
    Column("start_date", TIMESTAMPTZ),
    Column("start_offset", Integer),  # startDate's UTC offset (s): months count on its clock
    Column("end_date", TIMESTAMPTZ),
    Column("parent_ref", Text),  # superEvent / facilityUse @id
    Column("problem", Text),  # why this item itself cannot be booked
    Column("checkout_path", Text),
    Column("embedded_type", Text),  # a child's embedded parent's type
    # The publicAdult offer: a parent's own, or a child's embedded parent's.
    *offer_columns(),
    Column("refs", ARRAY(Text)),  # a parent's @id and its individualFacilityUse @ids
    Column("seller_ref", Text),  # a parent's seller; a child's embedded parent's
    Column("parent_kind", Text),  # a child's resolved published parent
    Column("parent_rpde_id", Text),
    Column("bookable", TSTZRANGE),  # when this child can be booked; NULL: never
    Column("reason", Text),  # when never: why (records.join); read by opportunity_status
    Column("seller", Text),  # the seller of the parent that applies; rule 7 checks it as read
    # A checkout refused it (HTTP 400): not bookable until it or its parent is updated.
    Column("refused_at", TIMESTAMPTZ),
    # What apps filter on (harvester.facts): a child's own or its embedded parent's, a
    # parent's own or its superEvent's; bookable_at takes the published parent's after the
    # child's own. `inherits`: the facts a child took from its embedded parent (bit per
    # column); NULL until the row is derived by this revision's code (database.refill).
    Column("name", Text),
    Column("activity", ARRAY(Text)),
    Column("latitude", DOUBLE_PRECISION),
    Column("longitude", DOUBLE_PRECISION),
    Column("price", Numeric),
    Column("currency", Text),
    Column("age_min", Integer),
    Column("age_max", Integer),
    Column("organizer_name", Text),
    Column("data_source", Text),  # imin:dataSource.identifier: attribution's Dataset
    Column("inherits", SmallInteger),
    PrimaryKeyConstraint("source", "kind", "rpde_id"),
    # bookable_at(T) reads it from T on: a window always closes by its start date.
    Index("ix_items_start_date", "start_date", postgresql_where=text("bookable IS NOT NULL")),
    Index("ix_items_parent_ref", "source", "parent_ref", postgresql_where=text("role = 'child'")),
    Index("ix_items_seller", "source", "item_id", postgresql_where=text("role = 'seller'")),
    # bookable_near's: where children with a window are by what they carry themselves
    # (their own place, or their embedded parent's), and where parents are.
    Index(
        "ix_items_child_point",
        text(POINT),
        postgresql_using="gist",
        postgresql_where=text("role = 'child' AND bookable IS NOT NULL AND latitude IS NOT NULL"),
    ),
    # Rows whose facts are still to be derived (refill): empty once done, and ever after.
    Index(
        "ix_items_unrefilled",
        "role",
        postgresql_where=text("inherits IS NULL AND role IN ('child', 'parent')"),
    ),
    Index(
        "ix_items_parent_point",
        text(POINT),
        postgresql_using="gist",
        postgresql_where=text("role = 'parent' AND latitude IS NOT NULL"),
    ),
)

parent_refs = Table(
    "parent_refs",
    metadata,
    Column("source", Text, nullable=False),
    Column("ref_id", Text, nullable=False),
    Column("parent_kind", Text, nullable=False),
    Column("parent_rpde_id", Text, nullable=False),
    Column("is_self", Boolean, nullable=False),  # the ref is the parent's own @id
    *offer_columns(),  # a copy of the parent's, so a child's join reads only this table
    Column("seller_ref", Text),  # likewise
    PrimaryKeyConstraint("source", "ref_id", "parent_kind", "parent_rpde_id"),
    Index("ix_parent_refs_parent", "source", "parent_kind", "parent_rpde_id"),
)

# The catalogs and dataset sites the last discovery of each [[catalogs]] entry could not
# read (replaced whole at each discovery): failures like a feed's, shown by `status`.
discovery_failures = Table(
    "discovery_failures",
    metadata,
    Column("catalog", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("kind", Text, nullable=False),  # catalog, or dataset site
    Column("reason", Text, nullable=False),
    Column("failed_at", TIMESTAMPTZ, nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("catalog", "url"),
)

rejected_items = Table(
    "rejected_items",
    metadata,
    Column("feed_id", Integer, nullable=False),
    Column("item_key", Text, nullable=False),
    Column("page_url", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("kind", Text),
    Column("rpde_id", Text),
    Column("reason", Text, nullable=False),
    Column("raw", Text, nullable=False),
    Column("seen_at", TIMESTAMPTZ, nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("feed_id", "item_key"),
)

# Attribution (a licence condition): the Datasets of a source's attribution feed, replaced
# whole at each refresh. Children name theirs by `imin:dataSource.identifier`.
datasets = Table(
    "datasets",
    metadata,
    Column("source", Text, nullable=False),
    Column("identifier", Text, nullable=False),
    Column("name", Text),
    Column("url", Text),
    Column("license", Text),
    Column("publisher_name", Text),
    Column("refreshed_at", TIMESTAMPTZ, nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("source", "identifier"),
)
