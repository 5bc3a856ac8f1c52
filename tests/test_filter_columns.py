"""Columns an app filters on, inherited child > parent > parent's superEvent, and
bookable_near by distance; on the real store and views, written as the harvester writes."""

from __future__ import annotations

import importlib.util
import itertools
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from harvester import database, facts, feedstate, pagewrite, records, refill, sql
from harvester.config import Source
from harvester.pagewrite import PageWrite
from harvester.rpde import Item

HOST = "https://pub.example"
FEEDS = (f"{HOST}/series", f"{HOST}/sessions", f"{HOST}/facility-uses", f"{HOST}/slots")
_modified = itertools.count(1)
BOOKABLE_OFFER = {"publicAdult": {"imin:isPotentiallyBookable": True, "price": 7.5,
                                  "priceCurrency": "GBP"}}  # fmt: skip
# Two places 3.8 km apart in Leeds, and one in York (about 36 km away).
LEEDS, HEADINGLEY, YORK = (53.7960, -1.5480), (53.8190, -1.5900), (53.9600, -1.0870)


def km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine, mean Earth radius), to 0.1 km."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(
        (lon2 - lon1) / 2) ** 2  # fmt: skip
    return round(2 * 6371.0088 * math.asin(math.sqrt(h)), 1)


TO_HEADINGLEY, TO_YORK = km(LEEDS, HEADINGLEY), km(LEEDS, YORK)


def geo(place: tuple[float, float]) -> dict[str, Any]:
    return {"geo": {"latitude": place[0], "longitude": place[1]}}


def write(engine: Engine, url: str, items: list[dict[str, Any]], kind: str) -> None:
    """One page of `items` (data objects with @id) on the feed at `url`."""
    with engine.begin() as conn:
        source = Source(name="src", feeds=FEEDS)
        feedstate.sync_source(conn, source, None)
        feed = next(row for row in feedstate.load_feeds(conn) if row.url == url)
        rows, _ = records.to_rows([
            Item("updated", kind, data["@id"], next(_modified), None, data) for data in items
        ])  # fmt: skip
        page = PageWrite(rows, [], feed.next_url, f"{url}?p={next(_modified)}", False)
        pagewrite.write_page(conn, feed, page)


def session(number: int, series: str | dict[str, Any], **extra: Any) -> dict[str, Any]:
    start = (datetime.now(UTC) + timedelta(days=2, hours=number)).isoformat()
    return {"@type": "ScheduledSession", "@id": f"{HOST}/sessions/{number}",
            "superEvent": series, "startDate": start, "imin:isPotentiallyBookable": True,
            **extra}  # fmt: skip


def columns(engine: Engine) -> dict[str, Any]:
    query = """SELECT id, name, activity, latitude, longitude, price, currency, age_min,
                      age_max, organizer_name FROM bookable_now"""
    with engine.connect() as conn:
        return {row.id.rsplit("/", 1)[-1]: row for row in conn.execute(text(query))}


def test_each_column_is_the_childs_else_the_parents_else_its_super_events(
    engine: Engine,
) -> None:
    event_series = {"@type": "EventSeries", "name": "Grand series", "ageRange": {"minValue": 18},
                    "location": geo(YORK), "organizer": {"name": "Super Org"}}  # fmt: skip
    write(engine, FEEDS[0], [{
        "@type": "SessionSeries", "@id": f"{HOST}/series/1", "name": "Yoga Flow",
        "activity": [{"prefLabel": "Yoga"}, {"prefLabel": "Pilates"}, {"id": "no-label"}],
        "location": geo(LEEDS), "superEvent": event_series,
        "imin:aggregateOffer": BOOKABLE_OFFER,
    }], "SessionSeries")  # fmt: skip
    write(engine, FEEDS[1], [
        session(1, f"{HOST}/series/1"),
        session(2, f"{HOST}/series/1", name="Own name", location=geo(HEADINGLEY),
                ageRange={"minValue": "16", "maxValue": 65}, organizer={"name": "Own Org"},
                offers=[{"price": 3, "priceCurrency": "EUR"}]),
    ], "ScheduledSession")  # fmt: skip
    rows = columns(engine)
    inherited, own = rows["1"], rows["2"]
    assert (inherited.name, inherited.activity) == ("Yoga Flow", ["Yoga", "Pilates"])
    assert (inherited.latitude, inherited.longitude) == LEEDS
    # Not on the child nor the series: the series' superEvent's.
    assert (inherited.age_min, inherited.age_max, inherited.organizer_name) == (
        18, None, "Super Org")  # fmt: skip
    # The publicAdult offer (the parent's) beats nothing of the child's own here.
    assert (inherited.price, inherited.currency) == (7.5, "GBP")
    assert (own.name, (own.latitude, own.longitude), own.organizer_name) == (
        "Own name", HEADINGLEY, "Own Org")  # fmt: skip
    assert (own.age_min, own.age_max) == (16, 65)
    assert (own.price, own.currency) == (3, "EUR")  # the child's own offers[] first


def test_unusable_values_are_null_not_errors(engine: Engine) -> None:
    write(engine, FEEDS[0], [{
        "@type": "SessionSeries", "@id": f"{HOST}/series/1", "name": {"en": "not text"},
        "location": {"geo": {"latitude": 123.0, "longitude": "west"}},
        "imin:aggregateOffer": {"publicAdult": {"imin:isPotentiallyBookable": True,
                                                "price": "free"}},
        "ageRange": {"minValue": "ten", "maxValue": 1e20},
    }], "SessionSeries")  # fmt: skip
    write(engine, FEEDS[1], [session(1, f"{HOST}/series/1")], "ScheduledSession")
    row = columns(engine)["1"]
    assert (row.latitude, row.longitude, row.price, row.age_min, row.age_max) == (None,) * 5
    assert row.name is None  # a name that is not text is unusable too


def test_a_slot_is_where_its_facility_use_is(engine: Engine) -> None:
    write(engine, FEEDS[2], [{
        "@type": "FacilityUse", "@id": f"{HOST}/facility-uses/1", "name": "Courts",
        "location": geo(YORK), "provider": {"name": "Leisure Trust"},
        "imin:aggregateOffer": BOOKABLE_OFFER,
    }], "FacilityUse")  # fmt: skip
    start = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    write(engine, FEEDS[3], [{
        "@type": "Slot", "@id": f"{HOST}/slots/1", "facilityUse": f"{HOST}/facility-uses/1",
        "startDate": start, "imin:isPotentiallyBookable": True,
    }], "FacilityUse/Slot")  # fmt: skip
    row = columns(engine)["1"]
    assert ((row.latitude, row.longitude), row.organizer_name) == (YORK, "Leisure Trust")


def test_a_published_parent_beats_an_embedded_one_after_the_childs_own(engine: Engine) -> None:
    embedded = {"@type": "SessionSeries", "@id": f"{HOST}/series/1", "name": "Old copy",
                "location": geo(YORK), "ageRange": {"minValue": 12},
                "imin:aggregateOffer": BOOKABLE_OFFER}  # fmt: skip
    write(engine, FEEDS[1], [session(1, embedded), session(2, embedded, name="Own name")],
          "ScheduledSession")  # fmt: skip
    rows = columns(engine)
    assert (rows["1"].name, rows["1"].latitude, rows["1"].age_min) == ("Old copy", YORK[0], 12)
    write(engine, FEEDS[0], [{**embedded, "name": "Published", "location": geo(LEEDS),
                              "ageRange": {}}], "SessionSeries")  # fmt: skip
    rows = columns(engine)
    # The published parent's, field by field; the embedded copy only where it says nothing.
    assert (rows["1"].name, rows["1"].latitude, rows["1"].age_min) == ("Published", LEEDS[0], 12)
    assert rows["2"].name == "Own name"


def test_rows_held_from_before_the_facts_are_derived_again(engine: Engine) -> None:
    write(engine, FEEDS[0], [{"@type": "SessionSeries", "@id": f"{HOST}/series/1",
                              "name": "Yoga Flow", "activity": {"prefLabel": "Yoga"},
                              "imin:aggregateOffer": BOOKABLE_OFFER}], "SessionSeries")  # fmt: skip
    write(engine, FEEDS[1], [session(n, f"{HOST}/series/1", location=geo(LEEDS))
                             for n in range(5)], "ScheduledSession")  # fmt: skip
    before = columns(engine)
    cleared = ", ".join(f"{column} = NULL" for column in (*facts.COLUMNS, "inherits"))
    with engine.begin() as conn:  # as revision 0008's code left them
        conn.execute(text(f"UPDATE harvester.items SET {cleared}"))
    assert {row.name for row in columns(engine).values()} == {None}
    assert refill.refill_facts(engine, batch=2) == 6
    assert columns(engine) == before
    assert before["3"].activity == ["Yoga"] and near(engine, LEEDS, 1)[0] == ("0", 0.0)
    assert refill.refill_facts(engine) == 0


def test_the_rows_facts_are_in_the_order_of_the_columns_and_the_migration() -> None:
    fields = records.Row._fields
    assert fields[fields.index("name") : fields.index("inherits")] == facts.COLUMNS
    assert (*facts.COLUMNS, "inherits") == sql.FACT_COLUMNS
    script = database.migrations_path() / "versions" / "0009_stored_facts.py"
    spec = importlib.util.spec_from_file_location("revision_0009", script)
    assert spec is not None and spec.loader is not None
    revision = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(revision)
    assert tuple(name for name, _ in revision.FACTS) == facts.COLUMNS


def near(engine: Engine, place: tuple[float, float], km: float) -> list[tuple[str, float]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, distance_km FROM bookable_near(:lat, :lon, :km)"),
            {"lat": place[0], "lon": place[1], "km": km},
        )
        return [(row.id.rsplit("/", 1)[-1], round(row.distance_km, 1)) for row in rows]


def test_bookable_near_finds_by_the_childs_parents_or_embedded_location(engine: Engine) -> None:
    series = {"@type": "SessionSeries", "@id": f"{HOST}/series/1", "location": geo(LEEDS),
              "imin:aggregateOffer": BOOKABLE_OFFER}  # fmt: skip
    embedded = {**series, "@id": f"{HOST}/series/9", "location": geo(YORK)}
    write(engine, FEEDS[0], [series], "SessionSeries")
    write(engine, FEEDS[1], [
        session(1, f"{HOST}/series/1"),  # at the series: Leeds
        session(2, f"{HOST}/series/1", location=geo(HEADINGLEY)),  # its own place
        session(3, embedded),  # no published parent: the embedded one's place, York
    ], "ScheduledSession")  # fmt: skip
    assert near(engine, LEEDS, 1) == [("1", 0.0)]
    assert near(engine, LEEDS, 5) == [("1", 0.0), ("2", TO_HEADINGLEY)]  # nearest first
    assert near(engine, HEADINGLEY, 1) == [("2", 0.0)]
    assert near(engine, YORK, 2) == [("3", 0.0)]
    assert sorted(near(engine, LEEDS, 50)) == [("1", 0.0), ("2", TO_HEADINGLEY), ("3", TO_YORK)]
    # A session whose own place is far from its series' is found at its own place only.
    write(engine, FEEDS[1], [session(1, f"{HOST}/series/1", location=geo(YORK))],
          "ScheduledSession")  # fmt: skip
    assert near(engine, LEEDS, 5) == [("2", TO_HEADINGLEY)]


def test_every_public_view_function_and_view_column_has_a_comment(engine: Engine) -> None:
    query = """
        SELECT c.relname || '.' || a.attname AS name
        FROM pg_class AS c JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0
        WHERE c.relnamespace = 'public'::regnamespace AND c.relname IN
              ('bookable_now', 'opportunity_status')
          AND col_description(c.oid, a.attnum) IS NULL
        UNION ALL
        SELECT p.proname FROM pg_proc AS p
        WHERE p.pronamespace = 'public'::regnamespace AND obj_description(p.oid) IS NULL
        UNION ALL
        SELECT c.relname FROM pg_class AS c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v'
          AND obj_description(c.oid) IS NULL
    """
    with engine.connect() as conn:
        assert conn.execute(text(query)).scalars().all() == []
