"""bookable_at / bookable_now / opportunity_status through the real store on PostgreSQL.

Items go in as the harvester writes them (records.to_rows, then pagewrite.write_page in one
transaction per page); the answers are checked against the pure rules in
harvester.bookability for the same data, and against the contract's columns.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from harvester import bookability, feedstate, pagewrite, parents, records, sql
from harvester.config import Source
from harvester.feedstate import FeedRow
from harvester.pagewrite import PageWrite
from harvester.rpde import Item
from harvester.sample import SamplePublisher

Json = dict[str, Any]

FLAG = "imin:isPotentiallyBookable"
UNDERSCORE = "_imin:isPotentiallyBookable"
HOST = "https://pub.example"
FEEDS = {
    "series": f"{HOST}/session-series",
    "sessions": f"{HOST}/scheduled-sessions",
    "facilities": f"{HOST}/facility-uses",
    "slots": f"{HOST}/slots",
}
KINDS = {
    "series": "SessionSeries",
    "sessions": "ScheduledSession",
    "facilities": "FacilityUse",
    "slots": "FacilityUse/Slot",
}
SERIES_ID = f"{HOST}/session-series/1"
FACILITY_ID = f"{HOST}/facility-uses/1"
COURT_ID = f"{HOST}/facility-uses/1/courts/2"
START = datetime(2030, 3, 31, 10, 0, tzinfo=UTC)
START_TEXT = "2030-03-31T10:00:00Z"
US = timedelta(microseconds=1)
ABSENT = object()
BASE = "checkout.example.com"
PREFIX = "https://checkout.example.com/"
_modified = itertools.count(1_000)


# --- writing through the real store ----------------------------------------------------------


@dataclass
class Harness:
    """One source's four feeds, written page by page as the harvester does."""

    engine: Engine
    source: str = "src"
    base: str | None = BASE
    feeds: dict[str, FeedRow] = field(default_factory=dict)
    pages: itertools.count = field(default_factory=lambda: itertools.count(1))
    parents: parents.ParentCache | None = None  # a worker's cache; None: a fresh one per page

    def __post_init__(self) -> None:
        with self.engine.begin() as conn:
            self.sync(conn, self.base)

    def sync(self, conn: Connection, base: str | None) -> None:
        """Register (or re-register) the source with a checkout base; reload its feeds."""
        source = Source(name=self.source, feeds=tuple(FEEDS.values()), checkout_base_url=base)
        feedstate.sync_source(conn, source, bookability.checkout_prefix(base))
        rows = feedstate.load_feeds(conn, [(self.source, url) for url in FEEDS.values()])
        by_url = {row.url: row for row in rows}
        self.feeds = {name: by_url[url] for name, url in FEEDS.items()}

    def write(self, feed: str, items: list[Item], conn: Connection | None = None) -> None:
        """One page of `items` on `feed`, committed with the feed's position."""
        if conn is None:
            with self.engine.begin() as own:
                self.write(feed, items, own)
            return
        row = self.feeds[feed]
        next_url = f"{row.url}?page={next(self.pages)}"
        page = PageWrite(records.to_rows(items)[0], [], row.next_url, next_url, False)
        pagewrite.write_page(conn, row, page, parents=self.parents)
        self.feeds[feed] = replace(row, next_url=next_url)

    def upsert(self, feed: str, rpde_id: str, data: Json, kind: str | None = None,
               conn: Connection | None = None) -> None:  # fmt: skip
        """An `updated` item."""
        self.write(feed, [updated(feed, rpde_id, data, kind)], conn)

    def delete(self, feed: str, rpde_id: str, kind: str | None = None,
               conn: Connection | None = None) -> None:  # fmt: skip
        """A tombstone."""
        item = Item("deleted", kind or KINDS[feed], rpde_id, next(_modified), None, None)
        self.write(feed, [item], conn)


def updated(feed: str, rpde_id: str, data: Json, kind: str | None = None) -> Item:
    """An RPDE `updated` item with a fresh `modified`."""
    return Item("updated", kind or KINDS[feed], rpde_id, next(_modified), None, data)


def bookable_at(conn: Connection | Engine, at: datetime, source: str | None = None) -> set[str]:
    """The ids of `bookable_at(at)` (optionally of one source)."""
    if isinstance(conn, Engine):
        with conn.connect() as own:
            return bookable_at(own, at, source)
    rows = conn.execute(text("SELECT source, id FROM bookable_at(:at)"), {"at": at}).all()
    return {row.id for row in rows if source is None or row.source == source}


def rows_at(engine: Engine, at: datetime) -> list[Any]:
    """Every column of `bookable_at(at)`."""
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT * FROM bookable_at(:at) ORDER BY source, id"),
                                 {"at": at}).all())  # fmt: skip


def status(engine: Engine) -> dict[tuple[str, str], tuple[bool, str | None]]:
    """(source, id) → (bookable now, reason) from opportunity_status."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT source, id, bookable, reason FROM opportunity_status"))
        return {(row.source, row.id): (row.bookable, row.reason) for row in rows}


# --- data --------------------------------------------------------------------------------------


def band(flag: Any = True, key: str = FLAG, **window: str) -> Json:
    """A publicAdult offer band."""
    offer: Json = {"type": "AggregateOffer", "price": 5.0, **window}
    if flag is not ABSENT:
        offer[key] = flag
    return offer


def series(adult: Json | None = None, own_id: str = SERIES_ID, **extra: Any) -> Json:
    """A SessionSeries whose publicAdult is `adult` (None: children only)."""
    offer: Json = {"publicJunior": band()}
    if adult is not None:
        offer["publicAdult"] = adult
    return {"@type": "SessionSeries", "@id": own_id, "imin:aggregateOffer": offer, **extra}


def facility(adult: Json | None = None, courts: tuple[str, ...] = (), **extra: Any) -> Json:
    """A FacilityUse (imin's `type`/`id` style) listing individual courts."""
    data = series(adult, FACILITY_ID, **extra)
    data.pop("@type"), data.pop("@id")
    data |= {"type": "FacilityUse", "id": FACILITY_ID}
    if courts:
        data["individualFacilityUse"] = [{"type": "IndividualFacilityUse", "id": c} for c in courts]
    return data


def session(number: int = 1, **fields: Any) -> Json:
    """A ScheduledSession of series 1 starting at START; ABSENT removes a field."""
    data: Json = {
        "@type": "ScheduledSession", "@id": f"{HOST}/scheduled-sessions/{number}",
        "identifier": f"https://upstream.example/sessions/{number}", "superEvent": SERIES_ID,
        "startDate": START_TEXT, "endDate": "2030-03-31T11:00:00Z", FLAG: True,
    }  # fmt: skip
    data.update(fields)
    return {key: value for key, value in data.items() if value is not ABSENT}


def slot(number: int = 1, **fields: Any) -> Json:
    """A Slot of FacilityUse 1 starting at START."""
    data: Json = {
        "@type": "Slot", "@id": f"{HOST}/slots/{number}", "identifier": 8_900_000 + number,
        "facilityUse": FACILITY_ID, "startDate": START_TEXT, FLAG: True,
    }  # fmt: skip
    data.update(fields)
    return {key: value for key, value in data.items() if value is not ABSENT}


def at_start(delta: timedelta, start: datetime | None = None) -> datetime:
    """An instant relative to the start."""
    return (start or START) - delta


# --- the pure answer for the same data ------------------------------------------------------------


def pure_offer(child: bookability.Child, parents: list[bookability.Parent]) -> Any:
    """Rule 2 in Python: a published parent naming the ref, else the embedded one."""
    named = [p for p in parents if child.parent_ref is not None and child.parent_ref in p.refs]
    if named:
        own = [p for p in named if p.id == child.parent_ref]
        return (own or named)[0].offer
    return child.embedded_offer


def pure_bookable(
    kind: str, data: Json, parents: list[tuple[str, Json]], at: datetime
) -> tuple[bool, tuple[datetime | None, datetime] | None]:
    """(bookable at `at`, booking window) by the pure functions."""
    item_type = bookability.type_of(kind, data)
    child = bookability.read_child(item_type, data)
    read = [bookability.read_parent(bookability.type_of(k, d), d) for k, d in parents]
    offer = pure_offer(child, read)
    bookable = bookability.is_bookable_at(child, offer, at)
    window = None
    if child.problem is None and child.start_date is not None and offer is not None:
        window = bookability.booking_window(child.start_date, offer)
    return bookable, window


@dataclass(frozen=True)
class Case:
    """A child and its published parent (if any), in the feeds they come from."""

    child_feed: str
    child: Json
    parent_feed: str | None = None
    parent: Json | None = None
    child_kind: str | None = None


def s_case(child: Json, parent: Json | None = None) -> Case:
    """A session case."""
    return Case("sessions", child, "series" if parent is not None else None, parent)


def f_case(child: Json, parent: Json | None = None, kind: str | None = None) -> Case:
    """A slot case."""
    return Case("slots", child, "facilities" if parent is not None else None, parent, kind)


EMBEDDED = {
    "@type": "SessionSeries", "@id": f"{HOST}/session-series/embedded", "name": "Yoga",
    "imin:aggregateOffer": {"publicAdult": band(validFromBeforeStartDate="P1W")},
}  # fmt: skip

CASES = {
    # Rule 4: P1W window.
    "P1W": s_case(session(), series(band(validFromBeforeStartDate="P1W"))),
    # PT36H.
    "PT36H": s_case(session(), series(band(validFromBeforeStartDate="PT36H"))),
    # Days and hours.
    "P1DT12H": s_case(session(), series(band(validFromBeforeStartDate="P1DT12H"))),
    # P7D.
    "P7D": s_case(session(), series(band(validFromBeforeStartDate="P7D"))),
    # Calendar month from a month end (31 March → 28 February).
    "P1M month end": s_case(session(), series(band(validFromBeforeStartDate="P1M"))),
    # Calendar month on the start's own clock: local 1 March 00:30+01:00 → 1 February.
    "P1M local clock": s_case(session(startDate="2030-03-01T00:30:00+01:00"),
                              series(band(validFromBeforeStartDate="P1M"))),
    # West of UTC: local 30 March 23:30-05:00 (UTC 31 March) → local 29 February (leap year).
    "P1M west": s_case(session(startDate="2028-03-30T23:30:00-05:00"),
                       series(band(validFromBeforeStartDate="P1M"))),
    # No validFrom: no lower bound.
    "no validFrom": s_case(session(), series(band())),
    # validThrough closes the window early.
    "validThrough": s_case(session(), series(band(validFromBeforeStartDate="P1W",
                                                  validThroughBeforeStartDate="PT2H"))),
    # validThrough longer than validFrom: empty window.
    "empty window": s_case(session(), series(band(validFromBeforeStartDate="PT1H",
                                                  validThroughBeforeStartDate="PT2H"))),
    # An unparseable duration.
    "bad duration": s_case(session(), series(band(validFromBeforeStartDate="a week"))),
    # Rule 1: underscore flag on the child.
    "child underscore": s_case(session(**{FLAG: ABSENT, UNDERSCORE: True}), series(band())),
    # Child flag false / missing.
    "child flag false": s_case(session(**{FLAG: False}), series(band())),
    "child flag missing": s_case(session(**{FLAG: ABSENT}), series(band())),
    # Rule 3: underscore flag on publicAdult; false; missing; no publicAdult.
    "adult underscore": s_case(session(), series(band(key=UNDERSCORE))),
    "adult flag false": s_case(session(), series(band(flag=False))),
    "adult flag missing": s_case(session(), series(band(flag=ABSENT))),
    "children only": s_case(session(), series(None)),
    # Rule 6: cancelled/postponed in every spelling; scheduled is fine.
    "cancelled https": s_case(session(eventStatus="https://schema.org/EventCancelled"),
                              series(band())),
    "cancelled http": s_case(session(eventStatus="http://schema.org/EventCancelled"),
                             series(band())),
    "cancelled bare": s_case(session(eventStatus="EventCancelled"), series(band())),
    "postponed https": s_case(session(eventStatus="https://schema.org/EventPostponed"),
                              series(band())),
    "postponed bare": s_case(session(eventStatus="EventPostponed"), series(band())),
    "scheduled": s_case(session(eventStatus="https://schema.org/EventScheduled"), series(band())),
    # `id` instead of `@id` on child and parent.
    "id not @id": s_case(session(**{"@id": ABSENT, "id": f"{HOST}/scheduled-sessions/1"}),
                         {**{k: v for k, v in series(band()).items() if k != "@id"},
                          "id": SERIES_ID}),
    # superEvent as an object reference.
    "superEvent object": s_case(session(superEvent={"@type": "SessionSeries", "@id": SERIES_ID}),
                                series(band(validFromBeforeStartDate="P1W"))),
    # An embedded parent and no published one.
    "embedded parent": s_case(session(superEvent=EMBEDDED)),
    # An orphan: no parent held.
    "orphan": s_case(session()),
    # Shapes kept aside.
    "no startDate": s_case(session(startDate=ABSENT), series(band())),
    "no timezone": s_case(session(startDate="2030-03-31T10:00:00"), series(band())),
    "no identifier": s_case(session(identifier=ABSENT), series(band())),  # bookable: no rule
    "numeric identifier": s_case(session(identifier=310000001), series(band())),
    # Slots: on the FacilityUse itself, on an individual court, and with the kind's type only.
    "slot on facility": f_case(slot(), facility(band(validFromBeforeStartDate="P1W"))),
    "slot on court": f_case(slot(facilityUse=COURT_ID, **{FLAG: ABSENT, UNDERSCORE: True}),
                            facility(band(validFromBeforeStartDate="PT36H"), (COURT_ID,)),
                            "IndividualFacilityUse/Slot"),
    "slot typed by kind": f_case({k: v for k, v in slot().items() if k != "@type"},
                                 facility(band()), "FacilityUse.Slot"),
    "slot on unknown court": f_case(slot(facilityUse=f"{HOST}/courts/none"),
                                    facility(band(), (COURT_ID,))),
}  # fmt: skip


def instants(window: tuple[datetime | None, datetime] | None, start: datetime) -> list[datetime]:
    """Instants around the start and around each edge of the window."""
    points = [start - timedelta(days=d) for d in (400, 40, 8, 3, 1)]
    points += [start - US, start, start + timedelta(hours=1)]
    if window is not None:
        lower, upper = window
        points += [upper - US, upper]
        if lower is not None:
            points += [lower - US, lower, lower + US]
    return points


@pytest.mark.parametrize("order", ["parent first", "child first"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_sql_matches_the_pure_rules(engine: Engine, case: Case, order: str) -> None:
    """For each rule, bookable_at(T) agrees with is_bookable_at at every edge, and the bounds.

    Parent first, the child is joined as it is written (records.join_child, in Python);
    child first, it is re-joined when its parent arrives (harvester.booking_window, in SQL).
    """
    harness = Harness(engine)
    parents: list[tuple[str, Json]] = []
    kind = case.child_kind or KINDS[case.child_feed]
    if order == "child first":
        harness.upsert(case.child_feed, "c1", case.child, kind)
    if case.parent is not None and case.parent_feed is not None:
        harness.upsert(case.parent_feed, "p1", case.parent)
        parents.append((KINDS[case.parent_feed], case.parent))
    if order == "parent first":
        harness.upsert(case.child_feed, "c1", case.child, kind)
    child_type = bookability.type_of(kind, case.child)
    child = bookability.read_child(child_type, case.child)
    start = child.start_date or START
    _, window = pure_bookable(kind, case.child, parents, START)
    seen_bookable = False
    for at in instants(window, start):
        expected, _ = pure_bookable(kind, case.child, parents, at)
        rows = [row for row in rows_at(engine, at)]
        assert (len(rows) == 1) is expected, (at, rows)
        if expected:
            seen_bookable = True
            row = rows[0]
            assert row.id == child.id
            assert (row.bookable_from, row.bookable_until) == window
            assert row.identifier == child.identifier
    # The case is bookable somewhere exactly when the pure rules give it a window.
    assert seen_bookable is (window is not None)


# --- a worker's cache of resolved parents --------------------------------------------------------


def test_cached_joins_follow_parent_changes_made_by_another_worker(engine: Engine) -> None:
    """A worker keeps resolved parents in memory; a change made elsewhere is never missed."""
    harness = Harness(engine)
    mine, theirs = parents.ParentCache(), parents.ParentCache()

    def write(cache: parents.ParentCache, feed: str, rpde_id: str, data: Json | None) -> None:
        harness.parents = cache
        if data is None:
            harness.delete(feed, rpde_id)
        else:
            harness.upsert(feed, rpde_id, data)

    inside = at_start(timedelta(days=3))
    write(mine, "series", "p1", series(band(validFromBeforeStartDate="P1W")))
    write(mine, "sessions", "c1", session(1))
    assert bookable_at(engine, inside) == {f"{HOST}/scheduled-sessions/1"}
    write(theirs, "series", "p1", series(band(flag=False)))  # no longer bookable
    write(mine, "sessions", "c2", session(2))  # my cache knew p1 as bookable
    assert bookable_at(engine, inside) == set()
    write(theirs, "series", "p1", None)
    write(mine, "sessions", "c3", session(3, superEvent=EMBEDDED))
    assert bookable_at(engine, inside) == {f"{HOST}/scheduled-sessions/3"}
    write(theirs, "series", "p2", series(band(), own_id=EMBEDDED["@id"]))  # now published
    write(mine, "sessions", "c4", session(4, superEvent=EMBEDDED))
    assert bookable_at(engine, inside) == {f"{HOST}/scheduled-sessions/{n}" for n in (3, 4)}
    # The published parent has no validFrom, the embedded one had P1W: no lower bound now.
    assert bookable_at(engine, at_start(timedelta(days=30))) == {
        f"{HOST}/scheduled-sessions/{n}" for n in (3, 4)
    }


def test_a_parent_tombstone_racing_the_parents_insert_takes_the_exclusive_lock(
    engine: Engine,
) -> None:
    """A page deleting a parent another page is inserting right then still runs alone.

    Whether a tombstone deletes a parent is asked under the page's lock: asked before it,
    the parent was not yet visible, and the delete then ran under a shared lock beside
    child pages still joining to it.
    """
    harness = Harness(engine)
    advisory = ("SELECT mode, granted FROM pg_locks WHERE locktype = 'advisory'"
                " AND pid = pg_backend_pid()")  # fmt: skip
    held: list[str] = []
    with engine.begin() as inserting:
        harness.upsert("series", "p1", series(band()), conn=inserting)  # holds the lock

        def delete_it() -> None:
            with engine.begin() as deleting:
                harness.delete("sessions", "p1", kind=KINDS["series"], conn=deleting)
                held.extend(mode for mode, granted in deleting.execute(text(advisory)) if granted)

        deleter = threading.Thread(target=delete_it)
        deleter.start()
        assert wait_until(lambda: advisory_waiters(engine) == 1, 10)
    deleter.join(10)
    assert not deleter.is_alive()
    assert "ExclusiveLock" in held
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM harvester.items")).scalar_one() == 0


def advisory_waiters(engine: Engine) -> int:
    """Sessions waiting for an advisory lock."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            ).scalar_one()
        )


def wait_until(condition: Any, timeout: float) -> bool:
    """Poll until the condition holds (True) or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def parents_version(conn: Connection | Engine, source: str = "src") -> int:
    """The source's stored parents_version."""
    if isinstance(conn, Engine):
        with conn.connect() as own:
            return parents_version(own, source)
    return int(conn.execute(text(sql.PARENTS_VERSION), {"source": source}).scalar_one())


def test_parents_version_changes_with_every_ref_change_and_never_repeats(engine: Engine) -> None:
    """Drawn from a sequence: a rolled-back change's version is never seen as current."""
    harness, other = Harness(engine), Harness(engine, source="other")
    other.upsert("series", "p1", series(band()))
    others_version = parents_version(engine, "other")
    start = parents_version(engine)
    harness.upsert("sessions", "c1", session())  # children only: no change
    assert parents_version(engine) == start
    positions = dict(harness.feeds)
    with engine.connect() as conn, conn.begin() as transaction:
        harness.upsert("series", "p1", series(band()), conn=conn)
        rolled_back = parents_version(conn)
        transaction.rollback()
    harness.feeds = positions  # the feed did not move either
    assert rolled_back != start and parents_version(engine) == start
    harness.upsert("series", "p1", series(band()))
    after_write = parents_version(engine)
    harness.delete("series", "p1")
    assert len({start, rolled_back, after_write, parents_version(engine)}) == 4
    assert parents_version(engine, "other") == others_version


def test_parent_cache_starts_afresh_for_a_new_version_or_when_full() -> None:
    """What was resolved under one version is never served under another; size is bounded."""
    cache = parents.ParentCache(limit=3)
    entries = cache.entries("src", 1)
    entries.update({"a": None, "b": None})
    assert cache.entries("src", 1) is entries
    assert cache.entries("other", 1) == {}
    assert cache.entries("src", 2) == {}
    cache.entries("src", 2).update({"a": None, "b": None})
    cache.entries("other", 1).update({"c": None, "d": None})  # 4 in all, over the limit
    assert cache.entries("src", 2) == {} and cache.entries("other", 1) == {}


# --- the contract's columns ----------------------------------------------------------------------

COLUMN_TYPES = {
    "source": "text", "kind": "text", "id": "text", "identifier": "text",
    "start_date": "timestamp with time zone", "end_date": "timestamp with time zone",
    "parent_id": "text", "parent_kind": "text",
    "bookable_from": "timestamp with time zone", "bookable_until": "timestamp with time zone",
    "checkout_url": "text", "data": "jsonb", "parent_data": "jsonb",
}  # fmt: skip


def soon(days: float) -> str:
    """An ISO start date `days` from the real now (for bookable_now)."""
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def test_bookable_now_columns_and_types(engine: Engine) -> None:
    """bookable_now and bookable_at carry the contract's columns with the contract's types."""
    harness = Harness(engine)
    harness.upsert("series", "p1", series(band(validFromBeforeStartDate="P1W")))
    harness.upsert("sessions", "c1", session(startDate=soon(3), endDate=ABSENT))
    with engine.connect() as conn:
        view = conn.execute(text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute AS a"
            " WHERE a.attrelid = 'public.bookable_now'::regclass AND a.attnum > 0"
            " AND NOT a.attisdropped ORDER BY a.attnum"
        )).all()  # fmt: skip
        typed = ", ".join(f"pg_typeof({name})::text AS {name}" for name in COLUMN_TYPES)
        function = conn.execute(text(f"SELECT {typed} FROM bookable_at(now())")).one()
        row = conn.execute(text("SELECT * FROM bookable_now")).one()
    assert {name: kind for name, kind in view if name in COLUMN_TYPES} == COLUMN_TYPES
    assert function._asdict() == COLUMN_TYPES
    start = datetime.fromisoformat(session(startDate=soon(3))["startDate"])
    assert row.source == "src" and row.kind == "ScheduledSession"
    assert row.id == f"{HOST}/scheduled-sessions/1"
    assert row.identifier == "https://upstream.example/sessions/1"
    assert abs(row.start_date - start) < timedelta(seconds=5)
    assert row.end_date is None  # absent in the data
    assert (row.parent_id, row.parent_kind) == (SERIES_ID, "SessionSeries")
    assert row.bookable_from == row.start_date - timedelta(days=7)
    assert row.bookable_until == row.start_date
    assert row.checkout_url == PREFIX + "v1/scheduled-sessions/" + bookability.encode_component(
        "https://upstream.example/sessions/1"
    )
    assert row.data["@id"] == row.id and row.parent_data["@id"] == SERIES_ID


@pytest.mark.parametrize(
    ("adult", "bookable_from", "bookable_until"),
    [
        # No validFrom: bookable_from is NULL; until is the start.
        (band(), None, START),
        # validFrom only.
        (band(validFromBeforeStartDate="P1W"), START - timedelta(days=7), START),
        # validThrough: until is start - validThrough.
        (band(validThroughBeforeStartDate="PT2H"), None, START - timedelta(hours=2)),
        # Both.
        (band(validFromBeforeStartDate="P1M", validThroughBeforeStartDate="P1D"),
         datetime(2030, 2, 28, 10, tzinfo=UTC), START - timedelta(days=1)),
    ],
)  # fmt: skip
def test_bookable_from_and_until(
    engine: Engine, adult: Json, bookable_from: datetime | None, bookable_until: datetime
) -> None:
    """bookable_from is NULL without validFrom; bookable_until is start or start - validThrough."""
    harness = Harness(engine)
    harness.upsert("series", "p1", series(adult))
    harness.upsert("sessions", "c1", session())
    (row,) = rows_at(engine, bookable_until - timedelta(hours=1))
    assert (row.bookable_from, row.bookable_until) == (bookable_from, bookable_until)


# --- order and change -----------------------------------------------------------------------------

OPEN = START - timedelta(days=1)  # inside a P1W window


def test_children_before_parents(engine: Engine) -> None:
    """A child held before its parent becomes bookable in the parent page's own transaction."""
    harness = Harness(engine)
    harness.upsert("sessions", "c1", session(1))
    harness.upsert("sessions", "c2", session(2, superEvent={"@id": SERIES_ID}))
    assert bookable_at(engine, OPEN) == set()
    with engine.connect() as conn:
        held = conn.execute(text(
            "SELECT count(*) FROM harvester.items WHERE role = 'child' AND bookable IS NULL"
        )).scalar_one()  # fmt: skip
    assert held == 2
    with engine.begin() as conn:
        harness.upsert("series", "p1", series(band(validFromBeforeStartDate="P1W")), conn=conn)
        # Inside the parent's transaction the children already answer...
        assert len(bookable_at(conn, OPEN)) == 2
        # ...while other sessions still see the old answer until it commits.
        assert bookable_at(engine, OPEN) == set()
    assert bookable_at(engine, OPEN) == {f"{HOST}/scheduled-sessions/{n}" for n in (1, 2)}


def test_orphan_reason_then_parent(engine: Engine) -> None:
    """opportunity_status says the parent is missing, then nothing once it arrives."""
    harness = Harness(engine)
    harness.upsert("sessions", "c1", session(startDate=soon(2)))
    key = ("src", f"{HOST}/scheduled-sessions/1")
    assert status(engine)[key] == (False, "parent not held")
    harness.upsert("series", "p1", series(band(validFromBeforeStartDate="P1W")))
    assert status(engine)[key] == (True, None)


def test_parent_deleted_recreated_and_switched(engine: Engine) -> None:
    """Deleting, re-creating and switching a parent changes its children's answer."""
    harness = Harness(engine)
    children = {f"{HOST}/scheduled-sessions/{n}" for n in (1, 2, 3)}
    for number in (1, 2, 3):
        harness.upsert("sessions", f"c{number}", session(number))
    bookable_series = series(band(validFromBeforeStartDate="P1W"))
    harness.upsert("series", "p1", bookable_series)
    assert bookable_at(engine, OPEN) == children
    # Deleted: every child stops being bookable.
    harness.delete("series", "p1")
    assert bookable_at(engine, OPEN) == set()
    # Re-created: bookable again.
    harness.upsert("series", "p1", bookable_series)
    assert bookable_at(engine, OPEN) == children
    # Switched to not bookable...
    harness.upsert("series", "p1", series(band(flag=False, validFromBeforeStartDate="P1W")))
    assert bookable_at(engine, OPEN) == set()
    # ...and back.
    harness.upsert("series", "p1", bookable_series)
    assert bookable_at(engine, OPEN) == children
    # A changed window moves every child's answer: P1D no longer covers OPEN - 1 day.
    harness.upsert("series", "p1", series(band(validFromBeforeStartDate="P1D")))
    assert bookable_at(engine, OPEN) == children
    assert bookable_at(engine, OPEN - timedelta(days=1)) == set()


def test_parent_deleted_before_its_children_arrive_again(engine: Engine) -> None:
    """A child written after its parent's tombstone is not bookable."""
    harness = Harness(engine)
    harness.upsert("series", "p1", series(band()))
    harness.delete("series", "p1")
    harness.upsert("sessions", "c1", session())
    assert bookable_at(engine, OPEN) == set()


def test_child_moved_and_deleted(engine: Engine) -> None:
    """A child moved to another start time follows it; a deleted child is gone."""
    harness = Harness(engine)
    harness.upsert("series", "p1", series(band(validFromBeforeStartDate="P1W")))
    harness.upsert("sessions", "c1", session())
    child_id = f"{HOST}/scheduled-sessions/1"
    assert bookable_at(engine, OPEN) == {child_id}
    later = START + timedelta(days=10)
    harness.upsert("sessions", "c1", session(startDate=later.isoformat()))
    assert bookable_at(engine, OPEN) == set()
    assert bookable_at(engine, later - timedelta(days=1)) == {child_id}
    (row,) = rows_at(engine, later - timedelta(days=1))
    assert row.start_date == later and row.bookable_from == later - timedelta(days=7)
    harness.delete("sessions", "c1")
    assert bookable_at(engine, later - timedelta(days=1)) == set()
    with engine.connect() as conn:
        held = conn.execute(text("SELECT count(*) FROM opportunity_status")).scalar_one()
    assert held == 0


def test_older_child_update_does_not_win(engine: Engine) -> None:
    """An update with an older `modified` leaves the newer start time in place."""
    harness = Harness(engine)
    harness.upsert("series", "p1", series(band(validFromBeforeStartDate="P1W")))
    newer = updated("sessions", "c1", session())
    older = updated("sessions", "c1", session(startDate="2031-01-01T10:00:00Z"))._replace(
        modified_number=newer.modified_number - 1
    )
    harness.write("sessions", [newer])
    harness.write("sessions", [older])
    assert bookable_at(engine, OPEN) == {f"{HOST}/scheduled-sessions/1"}


def test_slot_on_an_individual_court(engine: Engine) -> None:
    """A slot naming an individualFacilityUse joins the FacilityUse that lists it."""
    harness = Harness(engine)
    harness.upsert("slots", "10", slot(facilityUse=COURT_ID), "IndividualFacilityUse/Slot")
    assert bookable_at(engine, OPEN) == set()
    harness.upsert("facilities", "f1", facility(band(validFromBeforeStartDate="P1W"), (COURT_ID,)))
    (row,) = rows_at(engine, OPEN)
    assert (row.kind, row.id) == ("Slot", f"{HOST}/slots/1")
    assert (row.parent_id, row.parent_kind) == (FACILITY_ID, "FacilityUse")
    assert row.parent_data["id"] == FACILITY_ID
    assert row.checkout_url == PREFIX + "v1/slots/8900001"
    # The court is dropped from the FacilityUse: the slot has no parent any more.
    harness.upsert("facilities", "f1", facility(band(validFromBeforeStartDate="P1W")))
    assert bookable_at(engine, OPEN) == set()
    # Listed again: bookable again.
    harness.upsert("facilities", "f1", facility(band(validFromBeforeStartDate="P1W"), (COURT_ID,)))
    assert bookable_at(engine, OPEN) == {f"{HOST}/slots/1"}


def test_embedded_parent_only_while_no_published_one(engine: Engine) -> None:
    """The embedded parent decides until a published parent with its @id is held."""
    harness = Harness(engine)
    child_id = f"{HOST}/scheduled-sessions/1"
    harness.upsert("sessions", "c1", session(superEvent=EMBEDDED))
    (row,) = rows_at(engine, OPEN)
    assert (row.parent_id, row.parent_kind) == (EMBEDDED["@id"], "SessionSeries")
    assert row.parent_data["name"] == "Yoga"
    # A published, not bookable parent with the embedded @id takes over.
    published = series(band(flag=False), own_id=EMBEDDED["@id"], name="Published")
    harness.upsert("series", "p9", published)
    assert bookable_at(engine, OPEN) == set()
    # A published bookable one with a narrower window: its window, its data.
    harness.upsert("series", "p9", series(band(validFromBeforeStartDate="PT36H"),
                                          own_id=EMBEDDED["@id"], name="Published"))  # fmt: skip
    assert bookable_at(engine, OPEN) == {child_id}
    assert bookable_at(engine, START - timedelta(days=3)) == set()
    (row,) = rows_at(engine, OPEN)
    assert row.parent_data["name"] == "Published"
    # The published one deleted: the embedded parent is used again.
    harness.delete("series", "p9")
    assert bookable_at(engine, START - timedelta(days=3)) == {child_id}


def test_sources_do_not_join_across(engine: Engine) -> None:
    """Two sources reusing ids and parent ids each join only their own parents."""
    first = Harness(engine, source="alpha", base="alpha.example")
    second = Harness(engine, source="beta", base=None)
    for harness in (first, second):
        harness.upsert("sessions", "c1", session())
    first.upsert("series", "p1", series(band(validFromBeforeStartDate="P1W")))
    child_id = f"{HOST}/scheduled-sessions/1"
    assert bookable_at(engine, OPEN, "alpha") == {child_id}
    assert bookable_at(engine, OPEN, "beta") == set()
    # beta's own parent, not bookable, changes nothing for alpha.
    second.upsert("series", "p1", series(band(flag=False)))
    assert bookable_at(engine, OPEN, "alpha") == {child_id}
    assert bookable_at(engine, OPEN, "beta") == set()
    # beta's parent made bookable; then alpha's deleted: only beta's child remains.
    second.upsert("series", "p1", series(band()))
    first.delete("series", "p1")
    rows = rows_at(engine, OPEN)
    assert [(row.source, row.id, row.checkout_url) for row in rows] == [("beta", child_id, None)]


@pytest.mark.parametrize("children_first", [False, True], ids=["parents-first", "children-first"])
def test_opportunity_status_reasons(engine: Engine, children_first: bool) -> None:
    """Each held child not bookable now says why; bookable ones have no reason. The same
    whether the children arrive before their parents or after: one join decides both."""
    harness = Harness(engine)

    def write_parents() -> None:
        harness.upsert("series", "p1", series(band(validFromBeforeStartDate="P1W")))
        harness.upsert("series", "p2", series(None, own_id=f"{HOST}/session-series/2"))
        harness.upsert("series", "p3", series(band(flag=False), own_id=f"{HOST}/session-series/3"))
        harness.upsert("series", "p4", series(band(validFromBeforeStartDate="soon"),
                                              own_id=f"{HOST}/session-series/4"))  # fmt: skip

    if not children_first:
        write_parents()
    children = {
        1: (session(1, startDate=soon(2)), None),
        2: (session(2, startDate=soon(30)), "booking window not open yet"),
        3: (session(3, startDate=soon(-1)), "booking window closed"),
        4: (session(4, startDate=soon(2), eventStatus="EventCancelled"), "cancelled or postponed"),
        5: (session(5, startDate=soon(2), **{FLAG: False}), "not potentially bookable"),
        6: (session(6, startDate="2030-01-01T10:00:00"), "startDate has no timezone"),
        7: (
            session(7, startDate=soon(2), superEvent=f"{HOST}/session-series/none"),
            "parent not held",
        ),
        8: (
            session(8, startDate=soon(2), superEvent=f"{HOST}/session-series/2"),
            "parent has no publicAdult offer",
        ),
        9: (
            session(9, startDate=soon(2), superEvent=f"{HOST}/session-series/3"),
            "parent publicAdult not potentially bookable",
        ),
        10: (
            session(10, startDate=soon(2), superEvent=f"{HOST}/session-series/4"),
            "parent validFromBeforeStartDate is not an ISO 8601 duration",
        ),
        11: (session(11, startDate=soon(2), identifier=ABSENT), None),  # no rule asks for one
        12: (session(12, startDate=ABSENT), "no startDate"),
    }
    harness.write("sessions", [updated("sessions", f"c{n}", d) for n, (d, _) in children.items()])
    if children_first:
        write_parents()
    got = status(engine)
    expected = {
        ("src", f"{HOST}/scheduled-sessions/{n}"): (reason is None, reason)
        for n, (_, reason) in children.items()
    }
    assert got == expected


# --- checkout URLs through SQL ----------------------------------------------------------------


def test_checkout_base_change_rewrites_urls(engine: Engine) -> None:
    """A source without a base has NULL URLs; a new base rewrites every stored URL."""
    harness = Harness(engine, base=None)
    harness.upsert("series", "p1", series(band()))
    harness.upsert("sessions", "c1", session(identifier="a b/c"))
    harness.upsert("facilities", "f1", facility(band()))
    harness.upsert("slots", "10", slot(identifier=42))

    def urls() -> dict[str, str | None]:
        return {row.kind: row.checkout_url for row in rows_at(engine, OPEN)}

    assert urls() == {"ScheduledSession": None, "Slot": None}
    with engine.begin() as conn:
        harness.sync(conn, "https://book.example/shop/")
    assert urls() == {
        "ScheduledSession": "https://book.example/shop/v1/scheduled-sessions/a%20b%2Fc",
        "Slot": "https://book.example/shop/v1/slots/42",
    }
    with engine.begin() as conn:
        harness.sync(conn, "other.example")
    # Rows written after the change use the new base too.
    harness.upsert("sessions", "c2", session(2, identifier="x"))
    assert {row.id: row.checkout_url for row in rows_at(engine, OPEN)} == {
        f"{HOST}/scheduled-sessions/1": "https://other.example/v1/scheduled-sessions/a%20b%2Fc",
        f"{HOST}/scheduled-sessions/2": "https://other.example/v1/scheduled-sessions/x",
        f"{HOST}/slots/1": "https://other.example/v1/slots/42",
    }
    with engine.begin() as conn:
        harness.sync(conn, None)
    assert set(urls().values()) == {None}


# --- end to end: `harvester run --once` on the sample publisher -------------------------------


def expected_bookable(publisher: SamplePublisher, at: datetime) -> dict[tuple[str, str], str]:
    """(kind, @id) → checkout path of every child the pure rules call bookable at `at`."""
    parents = [
        (kind, data)
        for feed in ("session-series", "facility-uses")
        for (kind, _), data in publisher.held(feed).items()
    ]
    read = [bookability.read_parent(bookability.type_of(k, d), d) for k, d in parents]
    found: dict[tuple[str, str], str] = {}
    for feed in ("scheduled-sessions", "slots"):
        for (kind, _), data in publisher.held(feed).items():
            item_type = bookability.type_of(kind, data)
            child = bookability.read_child(item_type, data)
            if bookability.is_bookable_at(child, pure_offer(child, read), at):
                path = bookability.checkout_path(item_type, child.identifier)
                assert child.id is not None and path is not None
                found[(item_type, child.id)] = path
    return found


@pytest.mark.slow
def test_run_once_on_the_sample_publisher(db_url: str, engine: Engine, tmp_path: Path) -> None:
    """A real `harvester run --once`: bookable_at(T) equals the pure rules over what is held."""
    now = datetime.now(UTC)
    with SamplePublisher(items=6_000, now=now, page_size=400) as publisher:
        config = tmp_path / "feeds.toml"
        config.write_text(publisher.to_config_toml("sample", "checkout.sample.example"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HARVESTER_", "DATABASE_"))}
        result = subprocess.run(
            [sys.executable, "-m", "harvester", "run", "--once", "--config", str(config),
             "--database-url", db_url, "--log-level", "WARNING"],
            capture_output=True, text=True, timeout=300, env=env, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        instants = [now, now + timedelta(days=3), now + timedelta(days=12), now - timedelta(days=1)]
        for at in instants:
            expected = expected_bookable(publisher, at)
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT kind, id, checkout_url, source FROM bookable_at(:at)"), {"at": at}
                ).all()
            got = {(row.kind, row.id): row.checkout_url for row in rows}
            assert {row.source for row in rows} <= {"sample"}
            assert set(got) == set(expected), at
            prefix = "https://checkout.sample.example/"
            assert got == {key: prefix + path for key, path in expected.items()}
        assert len(expected_bookable(publisher, now)) > 50  # the sample really has bookable items
