"""With 300,000 children, the bookability queries are index lookups: asserted from EXPLAIN.

The data is loaded by SQL (generate_series, windows from harvester.booking_window) and
analysed; the tests read `EXPLAIN (FORMAT JSON)` and never time anything. Run with
`pytest -s` to see the plans.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, make_url, text

from harvester import database, parents, sql

CHILDREN = 300_000
PARENTS = 3_000
SOURCE = "big"
HOST = "https://pub.example"
WEEK_MICROS = 7 * 86_400 * 1_000_000
BOOKING_INDEXES = {"ix_items_start_date"}

# Parent i: a SessionSeries; one in ten is not bookable (publicAdult flag false).
LOAD_PARENTS = f"""
INSERT INTO harvester.items (
    source, kind, rpde_id, feed_id, data, type, role, item_id, refs,
    offer_problem, from_months, from_micros)
SELECT :source, 'SessionSeries', 'p' || i, :series_feed,
       jsonb_build_object('@type', 'SessionSeries', '@id', '{HOST}/session-series/' || i),
       'SessionSeries', 'parent', '{HOST}/session-series/' || i,
       ARRAY['{HOST}/session-series/' || i],
       CASE WHEN i % 10 = 0 THEN 'parent publicAdult not potentially bookable' END,
       0, {WEEK_MICROS}
FROM generate_series(0, :parents - 1) AS i
"""

LOAD_PARENT_REFS = """
INSERT INTO harvester.parent_refs (
    source, ref_id, parent_kind, parent_rpde_id, is_self,
    offer_problem, from_months, from_micros, through_months, through_micros)
SELECT source, item_id, kind, rpde_id, true,
       offer_problem, from_months, from_micros, through_months, through_micros
FROM harvester.items WHERE role = 'parent'
"""

# Child i: starts spread over a year either side of :at; parent i % :parents; one in ten
# has its own flag off. Its window is a week (P1W) when it and its parent allow booking.
LOAD_CHILDREN = f"""
INSERT INTO harvester.items (
    source, kind, rpde_id, feed_id, data, type, role, item_id, identifier, start_date,
    end_date, parent_ref, problem, checkout_path, parent_kind,
    parent_rpde_id, start_offset, bookable)
SELECT :source, 'ScheduledSession', 's' || i, :sessions_feed,
       jsonb_build_object('@type', 'ScheduledSession', '@id', '{HOST}/sessions/' || i,
                          'identifier', i),
       'ScheduledSession', 'child', '{HOST}/sessions/' || i, i::text, start,
       start + interval '1 hour', '{HOST}/session-series/' || (i % :parents),
       CASE WHEN i % 10 = 3 THEN 'not potentially bookable' END,
       'v1/scheduled-sessions/' || i,
       'SessionSeries', 'p' || (i % :parents), 0,
       CASE WHEN i % 10 <> 3 AND (i % :parents) % 10 <> 0
            THEN tstzrange(start - {WEEK_MICROS} * interval '1 microsecond', start, '[)') END
FROM (SELECT i, CAST(:at AS timestamptz) - interval '365 days'
                 + (i * 730.0 / :children) * interval '1 day'
                 + (i % 97) * interval '1 minute' AS start
      FROM generate_series(0, :children - 1) AS i
      OFFSET 0) AS s  -- a fence: inlined, `start` would be recomputed in every use
"""


@dataclass(frozen=True)
class Loaded:
    """The loaded database and the instant its data is centred on."""

    engine: Engine
    at: datetime


@pytest.fixture(scope="module")
def loaded(pg_server: str, template_url: str) -> Iterator[Loaded]:
    """One database for the module: 300,000 children and 3,000 parents, analysed."""
    name = f"harvester_plans_{uuid.uuid4().hex[:12]}"
    template = make_url(template_url).database
    admin = database.make_engine(
        make_url(pg_server).set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    url = make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    engine = database.make_engine(url)
    try:
        yield Loaded(engine, load(engine))
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def load(engine: Engine) -> datetime:
    """Insert parents, their refs and the children; analyse; return the centre instant."""
    with engine.begin() as conn:
        at = conn.execute(text("SELECT now()")).scalar_one()
        conn.execute(text("INSERT INTO harvester.sources (name, checkout_prefix)"
                          " VALUES (:s, 'https://checkout.example/')"), {"s": SOURCE})  # fmt: skip
        feeds = {
            name: conn.execute(
                text("INSERT INTO harvester.feeds (source, url, next_url)"
                     " VALUES (:s, :u, :u) RETURNING id"),
                {"s": SOURCE, "u": f"{HOST}/{name}"},
            ).scalar_one()
            for name in ("series", "sessions")
        }  # fmt: skip
        params = {"source": SOURCE, "parents": PARENTS, "children": CHILDREN, "at": at,
                  "series_feed": feeds["series"], "sessions_feed": feeds["sessions"]}  # fmt: skip
        conn.execute(text(LOAD_PARENTS), params)
        conn.execute(text(LOAD_PARENT_REFS))
        conn.execute(text(LOAD_CHILDREN), params)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE harvester.items"))
        conn.execute(text("ANALYZE harvester.parent_refs"))
    return at


# --- reading plans --------------------------------------------------------------------------------


def explain(conn: Connection, sql: str, params: dict[str, Any], title: str) -> dict[str, Any]:
    """The JSON plan of `sql`; prints the text plan for the record."""
    plan_text = conn.execute(text(f"EXPLAIN {sql}"), params).scalars().all()
    print(f"\n--- {title}\n" + "\n".join(plan_text))
    raw = conn.execute(text(f"EXPLAIN (FORMAT JSON) {sql}"), params).scalar_one()
    document = raw if isinstance(raw, list) else json.loads(raw)
    return document[0]["Plan"]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan tree, depth first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def summary(plan: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """(node type, relation, index) of every node."""
    return [(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in nodes(plan)]


def seq_scans_of_items(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Sequential scans of harvester.items anywhere in the plan."""
    return [n for n in nodes(plan)
            if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "items"]  # fmt: skip


def indexes_used(plan: dict[str, Any]) -> set[str]:
    """Index names any node of the plan reads."""
    return {n["Index Name"] for n in nodes(plan) if "Index Name" in n}


# --- the data is what the plans are about ---------------------------------------------------------


def test_loaded_data_is_mostly_not_bookable(loaded: Loaded) -> None:
    """300,000 children, about 1% bookable at the centre instant (by the windows themselves)."""
    with loaded.engine.connect() as conn:
        counts = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE role = 'child') AS children,"
                " count(*) FILTER (WHERE bookable @> CAST(:at AS timestamptz)) AS bookable,"
                " count(*) FILTER (WHERE role = 'child' AND bookable IS NULL) AS never"
                " FROM harvester.items"
            ),
            {"at": loaded.at},
        ).one()
        via_function = conn.execute(
            text("SELECT count(*) FROM bookable_at(:at)"), {"at": loaded.at}
        ).scalar_one()
    assert counts.children == CHILDREN
    assert 0 < counts.bookable < CHILDREN // 50
    assert counts.never > CHILDREN // 10
    assert via_function == counts.bookable


# --- the plans ------------------------------------------------------------------------------


def test_bookable_at_uses_an_index(loaded: Loaded) -> None:
    """bookable_at(T): an index lookup on harvester.items, no sequential scan of it."""
    with loaded.engine.connect() as conn:
        plan = explain(conn, "SELECT * FROM bookable_at(:at)", {"at": loaded.at},
                       "SELECT * FROM bookable_at(T)")  # fmt: skip
    print(summary(plan))
    assert seq_scans_of_items(plan) == []
    assert indexes_used(plan) & BOOKING_INDEXES


def test_bookable_now_first_page_uses_an_index(loaded: Loaded) -> None:
    """bookable_now ORDER BY start_date LIMIT 50: an index, no sequential scan of items."""
    with loaded.engine.connect() as conn:
        plan = explain(conn, "SELECT * FROM bookable_now ORDER BY start_date LIMIT 50", {},
                       "SELECT * FROM bookable_now ORDER BY start_date LIMIT 50")  # fmt: skip
        rows = (
            conn.execute(text("SELECT start_date FROM bookable_now ORDER BY start_date LIMIT 50"))
            .scalars()
            .all()
        )
    print(summary(plan))
    assert seq_scans_of_items(plan) == []
    assert indexes_used(plan) & BOOKING_INDEXES
    assert len(rows) == 50 and rows == sorted(rows)


def test_parent_change_recomputes_through_the_parent_ref_index(loaded: Loaded) -> None:
    """sql.CHILDREN_OF_REFS for a few refs finds the children by ix_items_parent_ref."""
    refs = [f"{HOST}/session-series/{i}" for i in (1, 2, 10)]
    with loaded.engine.connect() as conn:
        plan = explain(conn, sql.CHILDREN_OF_REFS, {"source": SOURCE, "refs": refs},
                       "sql.CHILDREN_OF_REFS (3 refs)")  # fmt: skip
    print(summary(plan))
    assert seq_scans_of_items(plan) == []
    assert "ix_items_parent_ref" in indexes_used(plan)


def test_recompute_changes_only_that_parents_children(loaded: Loaded) -> None:
    """Running the recompute after a parent's offer breaks touches its 100 children only."""
    ref = f"{HOST}/session-series/7"
    with loaded.engine.connect() as conn:
        # What parents.refresh_parents does when a parent's offer breaks: item and refs copy.
        conn.execute(text("UPDATE harvester.items SET offer_problem = 'broken'"
                          " WHERE source = :s AND rpde_id = 'p7'"), {"s": SOURCE})  # fmt: skip
        conn.execute(text("UPDATE harvester.parent_refs SET offer_problem = 'broken'"
                          " WHERE source = :s AND parent_rpde_id = 'p7'"),
                     {"s": SOURCE})  # fmt: skip
        changed = parents.rejoin_children(conn, SOURCE, [ref])
        still = conn.execute(
            text("SELECT count(*) FROM harvester.items WHERE parent_ref = :r"
                 " AND bookable IS NOT NULL"), {"r": ref},
        ).scalar_one()  # fmt: skip
        conn.rollback()
    assert changed == CHILDREN // PARENTS  # series 7's children all had a window
    assert still == 0
