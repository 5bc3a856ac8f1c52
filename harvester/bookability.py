"""What an item says about bookability, as pure functions of its data.

Children (ScheduledSession, Slot) and parents (SessionSeries, FacilityUse,
IndividualFacilityUse) are read here into flat facts, and the booking window of rules 4-5
is computed here (`window_bounds`). `records.join` joins a child to its parent with these
rules, on every write and every re-join, and the store keeps the window as a tstzrange,
so the answer for any instant is an index lookup and never goes stale as the clock moves.
The only reasons a child is not bookable are the contract's six rules and the shape
faults they imply (no startDate, a date without a timezone, a duration that does not
parse); a child without an @id or an identifier is bookable (its checkout URL is null).
"""

from __future__ import annotations

import calendar
import functools
import re
import string
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple
from urllib.parse import quote

import isodate

CHILD_TYPES = ("ScheduledSession", "Slot")
PARENT_TYPES = ("SessionSeries", "FacilityUse", "IndividualFacilityUse")
FACILITY_TYPES = ("FacilityUse", "IndividualFacilityUse")  # their seller is the provider
KNOWN_TYPES = frozenset(CHILD_TYPES + PARENT_TYPES)
BOOKABLE_FLAGS = ("imin:isPotentiallyBookable", "_imin:isPotentiallyBookable")
# schema.org statuses that stop a booking; publishers write them with https, http or bare.
STOPPED_STATUSES = frozenset({"EventCancelled", "EventPostponed"})
_STOPPED_ENDINGS = tuple(STOPPED_STATUSES)
CHECKOUT_PATHS = {"ScheduledSession": "v1/scheduled-sessions/", "Slot": "v1/slots/"}
PARENT_FIELDS = {"ScheduledSession": "superEvent", "Slot": "facilityUse"}
DEFAULT_PARENTS = {"ScheduledSession": "SessionSeries", "Slot": "FacilityUse"}
# Characters JavaScript's encodeURIComponent leaves alone, besides letters, digits and -_.
URI_COMPONENT_SAFE = "!~*'()"
# encodeURIComponent of each ASCII character: itself for letters, digits and -_.!~*'(),
# else %XX. A list, which str.translate indexes faster than a dict.
_UNRESERVED = string.ascii_letters + string.digits + "-_." + URI_COMPONENT_SAFE
_ASCII_ENCODED = [chr(code) if chr(code) in _UNRESERVED else f"%{code:02X}" for code in range(128)]
_ALL_UNRESERVED = re.compile(f"[{re.escape(_UNRESERVED)}]*")
# UTC offsets by fixed-offset zone: a feed writes a handful, a million times over.
_OFFSET_SECONDS: dict[timezone, int] = {}
# Longer booking spans are refused: PostgreSQL cannot hold a start date minus 5,000 years.
MAX_SPAN_MONTHS = 1000 * 12
SPAN_TOO_LONG = "longer than 1000 years"


@dataclass(frozen=True, slots=True)
class Span:
    """An ISO 8601 duration split into calendar months and exact microseconds."""

    months: int
    micros: int


@dataclass(frozen=True, slots=True)
class Offer:
    """A parent's publicAdult offer as the rules read it: usable or not, and its window."""

    problem: str | None
    valid_from: Span | None = None
    valid_through: Span | None = None


class Child(NamedTuple):
    """The facts of one ScheduledSession or Slot (a NamedTuple: one is built per child)."""

    type: str
    id: str | None
    identifier: str | None
    start_date: datetime | None
    end_date: datetime | None
    parent_ref: str | None
    problem: str | None  # why this child itself cannot be booked, or None
    embedded_type: str | None  # the embedded parent's type, when the child carries one
    embedded_offer: Offer | None
    embedded_seller: str | None  # the embedded parent's seller (rule 7)


@dataclass(frozen=True, slots=True)
class Parent:
    """The facts of one SessionSeries, FacilityUse or IndividualFacilityUse."""

    type: str
    id: str | None
    refs: tuple[str, ...]  # its own @id and its individualFacilityUse[] @ids
    offer: Offer
    seller: str | None = None  # rule 7: the organisation that sells it


def type_of(kind: str, data: dict[str, Any] | None) -> str:
    """The item's type: its data's @type/type, else read from its RPDE kind."""
    declared = _declared_type(data)
    if declared in KNOWN_TYPES:
        return declared
    return type_from_kind(kind) or declared or kind


def type_from_kind(kind: str) -> str | None:
    """Read a type from the RPDE kind spellings seen in the wild (`FacilityUse/Slot`, ...)."""
    parts = [part for part in kind.replace(".", "/").split("/") if part]
    if not parts:
        return None
    if parts[-1].lower() == "slot":
        return "Slot"
    head = parts[0].lower()
    names = {"scheduledsession": "ScheduledSession", "session": "ScheduledSession"}
    names |= {name.lower(): name for name in PARENT_TYPES}
    return names.get(head)


def read_child(item_type: str, data: dict[str, Any]) -> Child:
    """Extract a child's facts; shape faults become its `problem`, never an exception."""
    start, start_problem = parse_datetime(data.get("startDate"), "startDate")
    end, _ = parse_datetime(data.get("endDate"), "endDate")
    reference = data.get(PARENT_FIELDS[item_type])
    embedded = reference if is_embedded(reference) else None
    own_id, identifier = id_of(data), identifier_of(data.get("identifier"))
    parent_type = embedded_type(item_type, embedded)
    return Child(  # by position: keywords cost a NamedTuple a third more
        item_type,
        own_id,
        identifier,
        start,
        end,
        reference_of(reference),
        start_problem or child_problem(data),
        parent_type,
        read_offer(embedded) if embedded is not None else None,
        seller_of(parent_type, embedded) if embedded is not None else None,
    )


def embedded_type(item_type: str, embedded: dict[str, Any] | None) -> str | None:
    """The embedded parent's type: declared, else what the child's kind implies."""
    if embedded is None:
        return None
    return _declared_type(embedded) or DEFAULT_PARENTS[item_type]


def read_parent(item_type: str, data: dict[str, Any]) -> Parent:
    """Extract a parent's facts: the ids children may name, and its publicAdult offer."""
    own = id_of(data)
    refs = [own] if own else []
    for individual in _as_list(data.get("individualFacilityUse")):
        ref = reference_of(individual)
        if ref and ref not in refs:
            refs.append(ref)
    return Parent(item_type, own, tuple(refs), read_offer(data), seller_of(item_type, data))


def seller_of(parent_type: str | None, parent: dict[str, Any]) -> str | None:
    """Rule 7's seller of a parent: a FacilityUse's (or IndividualFacilityUse's) `provider`;
    a SessionSeries' `superEvent.organizer`, else its own `organizer` (each an @id, or a
    URL string)."""
    if parent_type in FACILITY_TYPES:
        return reference_of(parent.get("provider"))
    event = parent.get("superEvent")
    for holder in (event, parent):
        if isinstance(holder, dict) and (seller := reference_of(holder.get("organizer"))):
            return seller
    return None


def child_problem(data: dict[str, Any]) -> str | None:
    """Rules 1 and 6 on the child itself."""
    if not is_flag_true(data):
        return "not potentially bookable"
    if is_stopped(data.get("eventStatus")):
        return "cancelled or postponed"
    return None


def read_offer(parent: dict[str, Any]) -> Offer:
    """Rule 3 and the window fields of rules 4-5, from `imin:aggregateOffer.publicAdult`."""
    aggregate = parent.get("imin:aggregateOffer")
    public_adult = aggregate.get("publicAdult") if isinstance(aggregate, dict) else None
    if not isinstance(public_adult, dict):
        return Offer("parent has no publicAdult offer")
    valid_from, from_problem = parse_span(public_adult.get("validFromBeforeStartDate"))
    through, through_problem = parse_span(public_adult.get("validThroughBeforeStartDate"))
    if from_problem or through_problem:
        field = "validFromBeforeStartDate" if from_problem else "validThroughBeforeStartDate"
        fault = "is not an ISO 8601 duration"
        if (from_problem or through_problem) == SPAN_TOO_LONG:
            fault = f"is {SPAN_TOO_LONG}"
        return Offer(f"parent {field} {fault}")
    if not is_flag_true(public_adult):
        return Offer("parent publicAdult not potentially bookable", valid_from, through)
    return Offer(None, valid_from, through)


def is_flag_true(holder: dict[str, Any]) -> bool:
    """The potentially-bookable flag, under either key spelling, is true."""
    for key in BOOKABLE_FLAGS:
        value = holder.get(key)
        if value is True or (isinstance(value, str) and value.strip().lower() == "true"):
            return True
    return False


def is_stopped(status: Any) -> bool:
    """eventStatus is EventCancelled or EventPostponed, however the URL is written."""
    if not isinstance(status, str):
        return False
    status = status.rstrip("/")
    if not status.endswith(_STOPPED_ENDINGS):  # most sessions: one C call says no
        return False
    return status.rsplit("/", 1)[-1].removeprefix("schema:") in STOPPED_STATUSES


def id_of(node: Any) -> str | None:
    """A JSON-LD node's @id, written `@id` or `id`."""
    if not isinstance(node, dict):
        return None
    value = node.get("@id", node.get("id"))
    return value if isinstance(value, str) and value else None


def reference_of(value: Any) -> str | None:
    """A reference to another node: a URL string, or an object carrying `@id`/`id`."""
    if isinstance(value, str):
        return value or None
    return id_of(value)


def is_embedded(value: Any) -> bool:
    """The reference is an object with data of its own, not just an id."""
    return isinstance(value, dict) and any(
        key not in ("@id", "id", "@type", "type", "@context") for key in value
    )


def identifier_of(value: Any) -> str | None:
    """`identifier` as text: strings as given, integers as their digits."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):  # a schema:PropertyValue
        return identifier_of(value.get("value"))
    return None


def checkout_path(item_type: str, identifier: str | None) -> str | None:
    """The path under the checkout base: v1/scheduled-sessions/{enc} or v1/slots/{enc}."""
    if identifier is None or item_type not in CHECKOUT_PATHS:
        return None
    return CHECKOUT_PATHS[item_type] + encode_component(identifier)


def encode_component(text: str) -> str:
    """Percent-encode like JavaScript's encodeURIComponent (UTF-8)."""
    if not text.isascii():
        return quote(text, safe=URI_COMPONENT_SAFE)
    # Identifiers are often URLs of the publisher's own API, all under a few paths: each
    # path is encoded once, and only the part after its last slash every time.
    head, slash, tail = text.rpartition("/")
    return _encode_ascii_head(head + slash) + _encode_ascii(tail)


@functools.lru_cache(maxsize=4096)
def _encode_ascii_head(text: str) -> str:
    return _encode_ascii(text)


def _encode_ascii(text: str) -> str:
    # One C call either way: urllib's quote loops over the bytes in Python.
    if _ALL_UNRESERVED.fullmatch(text):
        return text
    return text.translate(_ASCII_ENCODED)


def checkout_prefix(base: str | None) -> str | None:
    """`https://{host}/` from a bare host, or the given base URL with one trailing slash."""
    if base is None:
        return None
    base = base.strip()
    if "://" not in base:
        base = "https://" + base
    return base.rstrip("/") + "/"


def parse_datetime(value: Any, name: str) -> tuple[datetime | None, str | None]:
    """An ISO 8601 date-time that carries a timezone, or the reason it is unusable."""
    if value is None:
        return None, f"no {name}"
    if not isinstance(value, str):
        return None, f"{name} is not a string"
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None, f"{name} is not an ISO 8601 date-time"
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None, f"{name} has no timezone"
    return parsed, None


def parse_span(value: Any) -> tuple[Span | None, str | None]:
    """An ISO 8601 duration (P1W, PT36H, P1DT12H, P1M...) as months + microseconds."""
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, "not a string"
    try:
        parsed = isodate.parse_duration(value.strip())
    except (isodate.ISO8601Error, ValueError) as exc:
        return None, str(exc)
    if isinstance(parsed, isodate.Duration):
        months = int(parsed.years) * 12 + int(parsed.months)
        if months != parsed.years * 12 + parsed.months:
            return None, "fractional years or months"
        delta = parsed.tdelta
    else:
        months, delta = 0, parsed
    span = Span(months, delta // timedelta(microseconds=1))
    if span.months > MAX_SPAN_MONTHS or span.micros > MAX_SPAN_MONTHS * 31 * 86_400_000_000:
        return None, SPAN_TOO_LONG
    return span, None


def subtract_span(moment: datetime, span: Span) -> datetime:
    """`moment - span`, months on the moment's own clock (ISO 8601, isodate; day clamped)."""
    return _minus(moment, span.months, span.micros)


def _minus(moment: datetime, months: int, micros: int) -> datetime:
    return _add_months(moment, -months) - timedelta(microseconds=micros)


def utc_offset_seconds(moment: datetime | None) -> int | None:
    """The UTC offset the date-time was written with, in seconds (SQL's months follow it)."""
    if moment is None:
        return None
    zone = moment.tzinfo
    seconds = _OFFSET_SECONDS.get(zone)  # type: ignore[arg-type]
    if seconds is None:
        offset = moment.utcoffset()
        if offset is None:
            return None
        seconds = int(offset.total_seconds())
        if isinstance(zone, timezone) and len(_OFFSET_SECONDS) < 1000:
            _OFFSET_SECONDS[zone] = seconds  # a fixed offset: the same for every moment
    return seconds


def booking_window(start: datetime, offer: Offer) -> tuple[datetime | None, datetime] | None:
    """Rules 4-5: [start - validFrom, min(start, start - validThrough)); None when empty."""
    if offer.problem is not None:
        return None
    valid_from, through = offer.valid_from, offer.valid_through
    return window_bounds(
        start,
        valid_from.months if valid_from else None, valid_from.micros if valid_from else 0,
        through.months if through else None, through.micros if through else 0,
    )  # fmt: skip


def window_bounds(
    start: datetime, from_months: int | None, from_micros: int,
    through_months: int | None, through_micros: int,
) -> tuple[datetime | None, datetime] | None:  # fmt: skip
    """`booking_window` on flat spans (months None: no such field), as rows carry them."""
    try:
        lower = None if from_months is None else _minus(start, from_months, from_micros)
    except OverflowError:  # before year 1: no instant a datetime can name is earlier
        lower = None
    try:
        upper = start if through_months is None else _minus(start, through_months, through_micros)
    except OverflowError:  # closed before year 1: never bookable
        return None
    upper = min(start, upper)
    if lower is not None and lower >= upper:
        return None
    return lower, upper


def is_bookable_at(child: Child, offer: Offer | None, at: datetime) -> bool:
    """The contract's rules for one child and its parent's offer at instant `at`."""
    if child.problem is not None or child.start_date is None or offer is None:
        return False
    window = booking_window(child.start_date, offer)
    if window is None:
        return False
    lower, upper = window
    return (lower is None or at >= lower) and at < upper


def _add_months(moment: datetime, months: int) -> datetime:
    if months == 0:
        return moment
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    if not 1 <= year <= 9999:
        raise OverflowError("date value out of range")
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def _declared_type(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    declared = data.get("@type", data.get("type"))
    if isinstance(declared, list):
        declared = next((entry for entry in declared if isinstance(entry, str)), None)
    return declared.removeprefix("schema:") if isinstance(declared, str) else None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
