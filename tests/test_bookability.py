"""The contract's bookability rules as pure functions: one table row per rule and edge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import isodate
import pytest

from harvester import bookability
from harvester.bookability import Child, Offer, Span

Json = dict[str, Any]

FLAG = "imin:isPotentiallyBookable"
UNDERSCORE = "_imin:isPotentiallyBookable"
SERIES_ID = "https://pub.example/session-series/1"
FACILITY_ID = "https://pub.example/facility-uses/1"
COURT_ID = "https://pub.example/facility-uses/1/courts/2"
START = datetime(2030, 3, 31, 10, 0, tzinfo=UTC)
START_TEXT = "2030-03-31T10:00:00Z"
US = timedelta(microseconds=1)
ABSENT = object()  # a field left out of the data


def public_adult(flag: Any = True, key: str = FLAG, **window: str) -> Json:
    """A publicAdult offer band with its flag and booking-window fields."""
    band: Json = {"type": "AggregateOffer", "price": 5.0, **window}
    if flag is not ABSENT:
        band[key] = flag
    return band


def parent(
    band: Json | None = None, kind: str = "SessionSeries", id_key: str = "@id", **extra: Any
) -> Json:
    """A SessionSeries/FacilityUse with `imin:aggregateOffer.publicAdult` = band (None: none)."""
    offer: Json = {"type": "imin:AggregateOffer", "publicJunior": public_adult()}
    if band is not None:
        offer["publicAdult"] = band
    own_id = SERIES_ID if kind == "SessionSeries" else FACILITY_ID
    return {"@type": kind, id_key: own_id, "imin:aggregateOffer": offer, **extra}


def session(**fields: Any) -> Json:
    """A bookable-shaped ScheduledSession; a field set to ABSENT is left out."""
    data: Json = {
        "@type": "ScheduledSession", "@id": "https://pub.example/sessions/1",
        "identifier": "https://upstream.example/sessions/1", "superEvent": SERIES_ID,
        "startDate": START_TEXT, "endDate": "2030-03-31T11:00:00Z", FLAG: True,
        "eventStatus": "https://schema.org/EventScheduled",
    }  # fmt: skip
    data.update(fields)
    return {key: value for key, value in data.items() if value is not ABSENT}


def answer(child_data: Json, parent_data: Json | None, at: datetime) -> bool:
    """The pure answer for a ScheduledSession and its (published) parent at `at`."""
    child = bookability.read_child("ScheduledSession", child_data)
    offer = bookability.read_offer(parent_data) if parent_data is not None else None
    return bookability.is_bookable_at(child, offer, at)


def window(**fields: str) -> Json:
    """A bookable parent whose publicAdult carries these window fields."""
    return parent(public_adult(**fields))


# --- rules 4 and 5: the booking window -------------------------------------------------------

WINDOW_CASES = [
    # Rule 4: a window opening exactly at T is open (T ≥ start - validFrom).
    ("opens exactly at T", window(validFromBeforeStartDate="P1W"), START - timedelta(days=7), True),
    # One microsecond before it opens: not yet.
    ("just before opening", window(validFromBeforeStartDate="P1W"), START - timedelta(days=7) - US,
     False),
    # Rule 5: starting exactly at T is too late (T < start).
    ("starts exactly at T", window(validFromBeforeStartDate="P1W"), START, False),
    # The last microsecond before the start is still bookable.
    ("just before start", window(validFromBeforeStartDate="P1W"), START - US, True),
    # No validFromBeforeStartDate: no lower bound at all, years ahead is fine.
    ("no validFrom, years ahead", window(), START - timedelta(days=3650), True),
    # No validFrom still closes at the start.
    ("no validFrom, at start", window(), START, False),
    # PT36H: exactly 36 hours.
    ("PT36H opens", window(validFromBeforeStartDate="PT36H"), START - timedelta(hours=36), True),
    ("PT36H before", window(validFromBeforeStartDate="PT36H"), START - timedelta(hours=36) - US,
     False),
    # P1DT12H: days and hours, the same 36 hours.
    ("P1DT12H opens", window(validFromBeforeStartDate="P1DT12H"), START - timedelta(hours=36),
     True),
    ("P1DT12H before", window(validFromBeforeStartDate="P1DT12H"),
     START - timedelta(hours=36) - US, False),
    # P7D: seven days.
    ("P7D opens", window(validFromBeforeStartDate="P7D"), START - timedelta(days=7), True),
    ("P7D before", window(validFromBeforeStartDate="P7D"), START - timedelta(days=7) - US, False),
    # P1M across a month end: 31 March minus a calendar month is 28 February (clamped).
    ("P1M clamps to Feb 28", window(validFromBeforeStartDate="P1M"),
     datetime(2030, 2, 28, 10, 0, tzinfo=UTC), True),
    ("P1M not on Feb 27", window(validFromBeforeStartDate="P1M"),
     datetime(2030, 2, 28, 10, 0, tzinfo=UTC) - US, False),
    # validThroughBeforeStartDate: the window closes two hours before the start.
    ("validThrough closes", window(validFromBeforeStartDate="P1W",
                                   validThroughBeforeStartDate="PT2H"),
     START - timedelta(hours=2), False),
    ("validThrough still open", window(validFromBeforeStartDate="P1W",
                                       validThroughBeforeStartDate="PT2H"),
     START - timedelta(hours=2) - US, True),
    # validThrough without validFrom: no lower bound, still closes early.
    ("validThrough only", window(validThroughBeforeStartDate="PT2H"),
     START - timedelta(days=400), True),
    # validThrough longer than validFrom: the window is empty, never bookable.
    ("empty window", window(validFromBeforeStartDate="PT1H", validThroughBeforeStartDate="PT2H"),
     START - timedelta(minutes=90), False),
    # A duration that does not parse: not bookable at all.
    ("unparseable validFrom", window(validFromBeforeStartDate="one week"),
     START - timedelta(hours=1), False),
    ("unparseable validThrough", window(validThroughBeforeStartDate="2 hours"),
     START - timedelta(hours=3), False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("parent_data", "at", "expected"),
    [case[1:] for case in WINDOW_CASES],
    ids=[case[0] for case in WINDOW_CASES],
)
def test_booking_window_edges(parent_data: Json, at: datetime, expected: bool) -> None:
    """Rules 4-5 at and around each edge of the window."""
    assert answer(session(), parent_data, at) is expected


@pytest.mark.parametrize(
    ("valid_from", "valid_through", "start", "lower", "upper"),
    [
        # No fields: open from forever until the start.
        (None, None, START, None, START),
        # P1W: from a week before, until the start.
        ("P1W", None, START, START - timedelta(days=7), START),
        # validThrough moves the upper bound: start - validThrough.
        ("P1W", "PT2H", START, START - timedelta(days=7), START - timedelta(hours=2)),
        # P1M from 31 March lands on 28 February in a common year...
        ("P1M", None, START, datetime(2030, 2, 28, 10, tzinfo=UTC), START),
        # ...and on 29 February in a leap year.
        ("P1M", None, datetime(2028, 3, 30, 8, tzinfo=UTC),
         datetime(2028, 2, 29, 8, tzinfo=UTC), datetime(2028, 3, 30, 8, tzinfo=UTC)),
        # P1M over a year end.
        ("P1M", None, datetime(2030, 1, 15, 9, tzinfo=UTC),
         datetime(2029, 12, 15, 9, tzinfo=UTC), datetime(2030, 1, 15, 9, tzinfo=UTC)),
        # Months and time together: P1M1D is a calendar month then a day.
        ("P1M1D", None, START, datetime(2030, 2, 27, 10, tzinfo=UTC), START),
    ],
)  # fmt: skip
def test_booking_window_bounds(
    valid_from: str | None, valid_through: str | None, start: datetime,
    lower: datetime | None, upper: datetime,
) -> None:  # fmt: skip
    """bookable_from / bookable_until as the contract defines them."""
    fields = {"validFromBeforeStartDate": valid_from, "validThroughBeforeStartDate": valid_through}
    offer = bookability.read_offer(window(**{k: v for k, v in fields.items() if v}))
    assert offer.problem is None
    assert bookability.booking_window(start, offer) == (lower, upper)


@pytest.mark.parametrize(
    "duration",
    # Every form the contract names, plus months with time, years and fractions.
    ["P1W", "PT36H", "P1DT12H", "P1M", "P7D", "P2M", "P1Y", "P1M1DT1H", "PT0.5H", "P0D"],
)
@pytest.mark.parametrize(
    "start_text",
    [
        # A month end in UTC.
        "2030-03-31T10:00:00Z",
        # Local 1 March just after midnight: the UTC instant is still in February.
        "2030-03-01T00:30:00+01:00",
        # Local 31 March just after midnight (UTC 30 March).
        "2030-03-31T00:30:00+01:00",
        # West of UTC: local 30 March late evening is 31 March in UTC.
        "2028-03-30T23:30:00-05:00",
        # A leap day.
        "2028-02-29T12:00:00+00:00",
    ],
)
def test_durations_match_isodate(duration: str, start_text: str) -> None:
    """start - duration equals isodate's answer, calendar months on the start's own clock."""
    start = datetime.fromisoformat(start_text)
    span, problem = bookability.parse_span(duration)
    assert problem is None and span is not None
    expected = start - isodate.parse_duration(duration)
    assert bookability.subtract_span(start, span) == expected


@pytest.mark.parametrize(
    ("text", "span"),
    [
        # Weeks are seven days of exact time.
        ("P1W", Span(0, 7 * 86_400_000_000)),
        # Hours.
        ("PT36H", Span(0, 36 * 3_600_000_000)),
        # Days and hours.
        ("P1DT12H", Span(0, 36 * 3_600_000_000)),
        # A calendar month stays a month, not 30 days.
        ("P1M", Span(1, 0)),
        # Years are twelve months.
        ("P1Y2M", Span(14, 0)),
        # Surrounding spaces are tolerated.
        (" P7D ", Span(0, 7 * 86_400_000_000)),
    ],
)
def test_parse_span(text: str, span: Span) -> None:
    """ISO 8601 durations split into calendar months and exact microseconds."""
    assert bookability.parse_span(text) == (span, None)


@pytest.mark.parametrize(
    "text",
    # Words, a bare number, an empty string, a period without P, and a non-string.
    ["one week", "7", "", "1W", 7, "P1.5M"],
)
def test_unparseable_durations(text: Any) -> None:
    """A duration that does not parse is reported, never raised."""
    span, problem = bookability.parse_span(text)
    assert span is None and problem


def test_durations_beyond_a_thousand_years_are_refused() -> None:
    """PostgreSQL holds no date before 4713 BC: such a span is a problem, not a crash."""
    assert bookability.parse_span("P1000Y")[1] is None
    assert bookability.parse_span("P1001Y") == (None, "longer than 1000 years")
    assert bookability.parse_span("PT10000000H") == (None, "longer than 1000 years")
    offer = bookability.read_offer(window(validThroughBeforeStartDate="P5000Y"))
    assert offer.problem == "parent validThroughBeforeStartDate is longer than 1000 years"


@pytest.mark.parametrize(
    ("start", "from_months", "through_months", "expected"),
    [
        # The lower bound would fall before year 1: no lower bound a datetime can name.
        (datetime(5, 3, 1, tzinfo=UTC), 12 * 10, None, (None, datetime(5, 3, 1, tzinfo=UTC))),
        # The window would close before year 1: never bookable.
        (datetime(5, 3, 1, tzinfo=UTC), None, 12 * 10, None),
        # Near the other end of the calendar, subtracting stays in range.
        (datetime(9999, 12, 31, tzinfo=UTC), 1, None,
         (datetime(9999, 11, 30, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC))),
    ],
)  # fmt: skip
def test_window_bounds_at_the_ends_of_the_calendar(
    start: datetime, from_months: int | None, through_months: int | None, expected: Any
) -> None:
    """Windows reaching past year 1 are answered, never raised."""
    assert bookability.window_bounds(start, from_months, 0, through_months, 0) == expected


def test_unparseable_duration_gives_the_reason() -> None:
    """The parent's offer names the field that broke it."""
    offer = bookability.read_offer(window(validFromBeforeStartDate="one week"))
    assert offer.problem == "parent validFromBeforeStartDate is not an ISO 8601 duration"
    assert bookability.booking_window(START, offer) is None


# --- rules 1, 3 and 6: flags, publicAdult, eventStatus ---------------------------------------

AT = START - timedelta(hours=3)

FLAG_CASES = [
    # The ordinary case: both flags true.
    ("both true", session(), parent(public_adult()), True),
    # Rule 1: the underscore spelling on the child counts.
    ("child underscore flag", session(**{FLAG: ABSENT, UNDERSCORE: True}),
     parent(public_adult()), True),
    # Rule 3: the underscore spelling on publicAdult counts.
    ("publicAdult underscore flag", session(), parent(public_adult(key=UNDERSCORE)), True),
    # Child flag false.
    ("child flag false", session(**{FLAG: False}), parent(public_adult()), False),
    # Child underscore flag false.
    ("child underscore false", session(**{FLAG: ABSENT, UNDERSCORE: False}),
     parent(public_adult()), False),
    # Child flag missing.
    ("child flag missing", session(**{FLAG: ABSENT}), parent(public_adult()), False),
    # publicAdult flag false.
    ("publicAdult flag false", session(), parent(public_adult(flag=False)), False),
    # publicAdult underscore flag false.
    ("publicAdult underscore false", session(), parent(public_adult(False, UNDERSCORE)), False),
    # publicAdult flag missing.
    ("publicAdult flag missing", session(), parent(public_adult(flag=ABSENT)), False),
    # Children-only: no publicAdult (publicJunior alone is not enough).
    ("publicAdult missing", session(), parent(None), False),
    # No aggregate offer at all.
    ("no aggregateOffer", session(), {"@type": "SessionSeries", "@id": SERIES_ID}, False),
    # Rule 2: no parent held.
    ("no parent", session(), None, False),
    # Rule 6: cancelled and postponed in https, http and bare forms.
    ("cancelled https", session(eventStatus="https://schema.org/EventCancelled"),
     parent(public_adult()), False),
    ("cancelled http", session(eventStatus="http://schema.org/EventCancelled"),
     parent(public_adult()), False),
    ("cancelled bare", session(eventStatus="EventCancelled"), parent(public_adult()), False),
    ("postponed https", session(eventStatus="https://schema.org/EventPostponed"),
     parent(public_adult()), False),
    ("postponed http", session(eventStatus="http://schema.org/EventPostponed"),
     parent(public_adult()), False),
    ("postponed bare", session(eventStatus="EventPostponed"), parent(public_adult()), False),
    # Rescheduled or absent status does not stop a booking.
    ("rescheduled", session(eventStatus="https://schema.org/EventRescheduled"),
     parent(public_adult()), True),
    ("no eventStatus", session(eventStatus=ABSENT), parent(public_adult()), True),
    # The child's id may be written `id`.
    ("child id not @id", session(**{"@id": ABSENT, "id": "https://pub.example/sessions/1"}),
     parent(public_adult()), True),
    # The parent's id written `id` (imin's internal style) changes nothing in the offer.
    ("parent id not @id", session(), parent(public_adult(), id_key="id"), True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("child_data", "parent_data", "expected"),
    [case[1:] for case in FLAG_CASES],
    ids=[case[0] for case in FLAG_CASES],
)
def test_flags_offer_and_status(child_data: Json, parent_data: Json | None, expected: bool) -> None:
    """Rules 1, 3 and 6 inside an open window."""
    assert answer(child_data, parent_data, AT) is expected


@pytest.mark.parametrize(
    ("band", "problem"),
    [
        # Children-only parents say so.
        (None, "parent has no publicAdult offer"),
        # A false flag.
        (public_adult(flag=False), "parent publicAdult not potentially bookable"),
        # A missing flag.
        (public_adult(flag=ABSENT), "parent publicAdult not potentially bookable"),
        # A usable offer has no problem.
        (public_adult(), None),
    ],
)
def test_offer_problems(band: Json | None, problem: str | None) -> None:
    """Why a parent's offer cannot be booked, as opportunity_status reports it."""
    assert bookability.read_offer(parent(band)).problem == problem


# --- shapes that are kept aside -----------------------------------------------------------------

SHAPE_CASES = [
    # No startDate.
    ("no startDate", session(startDate=ABSENT), "no startDate"),
    # A date-time without a timezone.
    ("no timezone", session(startDate="2030-03-31T10:00:00"), "startDate has no timezone"),
    # A date only.
    ("date only", session(startDate="2030-03-31"), "startDate has no timezone"),
    # Not a date at all.
    ("garbage date", session(startDate="next Tuesday"), "startDate is not an ISO 8601 date-time"),
    # A number instead of a string.
    ("numeric date", session(startDate=1_900_000_000), "startDate is not a string"),
    # No identifier, a blank one, no @id: none of the six rules asks for them (the
    # checkout URL is null without an identifier), so the child is bookable.
    ("no identifier", session(identifier=ABSENT), None),
    ("blank identifier", session(identifier="  "), None),
    ("no @id", session(**{"@id": ABSENT}), None),
    # Child flag off is reported.
    ("flag off", session(**{FLAG: False}), "not potentially bookable"),
    # Cancelled is reported.
    ("cancelled", session(eventStatus="EventCancelled"), "cancelled or postponed"),
    # A good child has no problem.
    ("good", session(), None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("child_data", "problem"),
    [case[1:] for case in SHAPE_CASES],
    ids=[case[0] for case in SHAPE_CASES],
)
def test_child_problems(child_data: Json, problem: str | None) -> None:
    """Broken shapes become a reason, never an exception, and are never bookable."""
    child = bookability.read_child("ScheduledSession", child_data)
    assert child.problem == problem
    bookable = bookability.is_bookable_at(child, bookability.read_offer(window()), AT)
    assert bookable is (problem is None)


@pytest.mark.parametrize(
    ("start_text", "expected"),
    [
        # Z is UTC.
        ("2030-03-31T10:00:00Z", START),
        # An offset is the same instant, kept on its own clock.
        ("2030-03-31T11:00:00+01:00", START),
        # Fractional seconds.
        ("2030-03-31T10:00:00.250Z", START + timedelta(milliseconds=250)),
    ],
)
def test_start_dates_with_timezones(start_text: str, expected: datetime) -> None:
    """startDate with a timezone is read as that instant."""
    child = bookability.read_child("ScheduledSession", session(startDate=start_text))
    assert child.problem is None
    assert child.start_date == expected


@pytest.mark.parametrize(
    ("identifier", "text"),
    [
        # A URL string stays as given.
        ("https://upstream.example/s/1?x=1", "https://upstream.example/s/1?x=1"),
        # An integer is written as its digits.
        (310000042, "310000042"),
        # A number bigger than 2^53 keeps every digit.
        (12345678901234567890, "12345678901234567890"),
        # A whole float is its integer digits.
        (42.0, "42"),
        # A schema:PropertyValue carries the value.
        ({"@type": "PropertyValue", "value": 7}, "7"),
        # A boolean is not an identifier.
        (True, None),
    ],
)
def test_identifier_as_text(identifier: Any, text: str | None) -> None:
    """`identifier` as text: numeric identifiers as their digits."""
    child = bookability.read_child("ScheduledSession", session(identifier=identifier))
    assert child.identifier == text


# --- rule 2: how a child names its parent -----------------------------------------------------

EMBEDDED_SERIES: Json = {
    "@type": "SessionSeries", "@id": "https://pub.example/session-series/embedded",
    "name": "Yoga",
    "imin:aggregateOffer": {"publicAdult": public_adult(validFromBeforeStartDate="P1W")},
}  # fmt: skip

REFERENCE_CASES = [
    # superEvent as a URL string.
    ("string", SERIES_ID, SERIES_ID, None),
    # superEvent as an object reference carrying @id (not an embedded parent).
    ("object @id", {"@type": "SessionSeries", "@id": SERIES_ID}, SERIES_ID, None),
    # ...or carrying `id`.
    ("object id", {"type": "SessionSeries", "id": SERIES_ID}, SERIES_ID, None),
    # superEvent embedding the whole parent with its own offer.
    ("embedded", EMBEDDED_SERIES, EMBEDDED_SERIES["@id"], "SessionSeries"),
    # An embedded parent with no @type is taken as a SessionSeries.
    ("embedded untyped", {k: v for k, v in EMBEDDED_SERIES.items() if k != "@type"},
     EMBEDDED_SERIES["@id"], "SessionSeries"),
    # No superEvent.
    ("absent", ABSENT, None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("super_event", "ref", "embedded_type"),
    [case[1:] for case in REFERENCE_CASES],
    ids=[case[0] for case in REFERENCE_CASES],
)
def test_super_event_forms(super_event: Any, ref: str | None, embedded_type: str | None) -> None:
    """The parent reference, and whether the child carries an embedded parent."""
    child = bookability.read_child("ScheduledSession", session(superEvent=super_event))
    assert child.parent_ref == ref
    assert child.embedded_type == embedded_type
    assert (child.embedded_offer is not None) is (embedded_type is not None)


def test_embedded_parent_offer_decides() -> None:
    """An embedded parent's own publicAdult window applies when it is the parent."""
    child = bookability.read_child("ScheduledSession", session(superEvent=EMBEDDED_SERIES))
    assert isinstance(child, Child) and isinstance(child.embedded_offer, Offer)
    offer = child.embedded_offer
    assert bookability.is_bookable_at(child, offer, START - timedelta(days=7))
    assert not bookability.is_bookable_at(child, offer, START - timedelta(days=7) - US)


def slot(facility_use: Any, **fields: Any) -> Json:
    """A Slot on `facility_use` (`type`/`id` keys, as imin writes them internally)."""
    return {
        "type": "Slot", "id": "https://pub.example/slots/1", "identifier": 8900001,
        "facilityUse": facility_use, "startDate": START_TEXT, UNDERSCORE: True, **fields,
    }  # fmt: skip


def facility_use(individual: list[Json]) -> Json:
    """A bookable FacilityUse listing these individual facilities."""
    return parent(public_adult(), kind="FacilityUse", individualFacilityUse=individual)


@pytest.mark.parametrize(
    ("individual", "refs"),
    [
        # No individual facilities: only its own @id.
        ([], (FACILITY_ID,)),
        # Individual facilities by @id.
        ([{"@type": "IndividualFacilityUse", "@id": COURT_ID}], (FACILITY_ID, COURT_ID)),
        # ...and by `id`.
        ([{"type": "IndividualFacilityUse", "id": COURT_ID}], (FACILITY_ID, COURT_ID)),
        # A plain URL entry, and a duplicate of it.
        ([COURT_ID, {"@id": COURT_ID}], (FACILITY_ID, COURT_ID)),
        # An entry without an id adds nothing.
        ([{"name": "Court 9"}], (FACILITY_ID,)),
    ],
)
def test_parent_refs(individual: list[Json], refs: tuple[str, ...]) -> None:
    """The ids a child may name to reach this parent: its own and its individualFacilityUse[]."""
    read = bookability.read_parent("FacilityUse", facility_use(individual))
    assert read.id == FACILITY_ID
    assert read.refs == refs
    assert read.offer.problem is None


@pytest.mark.parametrize(
    "reference",
    [
        # The slot names the individual court by URL...
        COURT_ID,
        # ...or by an object reference.
        {"type": "IndividualFacilityUse", "id": COURT_ID},
    ],
)
def test_slot_on_an_individual_facility(reference: Any) -> None:
    """A Slot naming an individualFacilityUse reaches the FacilityUse that lists it."""
    child = bookability.read_child("Slot", slot(reference))
    parent_facts = bookability.read_parent(
        "FacilityUse", facility_use([{"type": "IndividualFacilityUse", "id": COURT_ID}])
    )
    assert child.problem is None
    assert child.identifier == "8900001"
    assert child.parent_ref in parent_facts.refs
    assert bookability.is_bookable_at(child, parent_facts.offer, AT)


# --- types from data and kind ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [
        # The kind spellings the contract lists, with no type in the data.
        ("FacilityUse/Slot", None, "Slot"),
        ("IndividualFacilityUse/Slot", None, "Slot"),
        ("FacilityUse.Slot", None, "Slot"),
        ("session", None, "ScheduledSession"),
        ("ScheduledSession", None, "ScheduledSession"),
        ("SessionSeries", None, "SessionSeries"),
        ("FacilityUse", None, "FacilityUse"),
        ("IndividualFacilityUse", None, "IndividualFacilityUse"),
        # ScheduledSession.SessionSeries with no data type: a session (its parent embedded).
        ("ScheduledSession.SessionSeries", None, "ScheduledSession"),
        # The data's @type wins over the kind: Legend's series feed uses this kind.
        ("ScheduledSession.SessionSeries", {"@type": "SessionSeries"}, "SessionSeries"),
        ("ScheduledSession.SessionSeries", {"@type": "ScheduledSession"}, "ScheduledSession"),
        # `type` (imin's internal style) counts as @type.
        ("FacilityUse/Slot", {"type": "Slot"}, "Slot"),
        # A schema: prefix is dropped.
        ("session", {"@type": "schema:ScheduledSession"}, "ScheduledSession"),
        # A type list: the first string.
        ("FacilityUse", {"@type": ["FacilityUse", "Thing"]}, "FacilityUse"),
        # An unknown data type falls back to the kind.
        ("session", {"@type": "Event"}, "ScheduledSession"),
        # Nothing known: the kind as given.
        ("Course", None, "Course"),
    ],
)
def test_type_of(kind: str, data: Json | None, expected: str) -> None:
    """An item's type: data @type/type, else its RPDE kind, whatever the spelling."""
    assert bookability.type_of(kind, data) == expected


# --- startDate offsets are instants ------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "at_hours", "expected"),
    [
        # +01:00 start: the same instant as 09:00Z; window P1D opens 09:00Z the day before.
        (timezone(timedelta(hours=1)), -24, True),
        (timezone(timedelta(hours=1)), -24.001, False),
        # -05:00 start, just before the start instant.
        (timezone(timedelta(hours=-5)), -0.001, True),
        (timezone(timedelta(hours=-5)), 0, False),
    ],
)
def test_offsets_are_instants(offset: timezone, at_hours: float, expected: bool) -> None:
    """A startDate with an offset is compared as an instant."""
    start = START.astimezone(offset)
    child_data = session(startDate=start.isoformat())
    at = START + timedelta(hours=at_hours)
    assert answer(child_data, window(validFromBeforeStartDate="P1D"), at) is expected
