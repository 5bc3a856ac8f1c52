"""JSON-LD building blocks of the generated items, and the dice that pick their shapes.

Everything here is a pure function of its arguments; ``dataset`` decides which item
gets which shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

Json = dict[str, Any]

HOST = "https://sample-firehose.example"
UPSTREAM = "https://upstream.example/OpenActive/api"
CONTEXT = ["https://openactive.io/", "https://imin.co/"]

FLAG = "imin:isPotentiallyBookable"
FLAG_UNDERSCORE = "_imin:isPotentiallyBookable"
SCHEDULED = "https://schema.org/EventScheduled"
CANCELLED = "https://schema.org/EventCancelled"
POSTPONED = "https://schema.org/EventPostponed"

# Booking windows cycled over parents; None = no lower bound on bookability.
WINDOWS = ("P1W", "PT36H", "P1DT12H", "P1M", "P7D", None, "P1W")
VALID_THROUGH = "PT2H"

# Parent offer variants; parents take them in a cycle (see the feeds' variant_of).
BOOKABLE = "bookable"
ADULT_NOT_BOOKABLE = "adult-not-bookable"
CHILDREN_ONLY = "children-only"
UNDERSCORE_TRUE = "underscore-true"
UNDERSCORE_FALSE = "underscore-false"
TOMBSTONE = "tombstone"
SERIES_VARIANTS = (BOOKABLE,) * 12 + (
    ADULT_NOT_BOOKABLE, ADULT_NOT_BOOKABLE, CHILDREN_ONLY, CHILDREN_ONLY,
    UNDERSCORE_TRUE, UNDERSCORE_TRUE, TOMBSTONE, UNDERSCORE_FALSE,
)  # fmt: skip
FACILITY_VARIANTS = (BOOKABLE,) * 6 + (
    ADULT_NOT_BOOKABLE, CHILDREN_ONLY, UNDERSCORE_TRUE, TOMBSTONE,
)  # fmt: skip

# Characters a harvester must percent-encode when it builds a URL from an id.
SPECIAL_ID_SUFFIX = "/occurrence?at=10:00&tz=Europe/London #%é"

BST = timezone(timedelta(hours=1))


_MASK64 = (1 << 64) - 1
# Strides coprime with 100, so index * stride visits every percentile once per block.
_STRIDES = (37, 53, 71, 91, 29, 43, 61, 83, 17, 97, 11, 33)

ACTIVITIES = (
    ("yoga", "Yoga"), ("badminton", "Badminton"), ("swimming", "Swimming"),
    ("pilates", "Pilates"), ("spin", "Indoor Cycling"), ("boxing", "Boxercise"),
    ("zumba", "Zumba"), ("netball", "Walking Netball"), ("aqua", "Aqua Aerobics"),
)  # fmt: skip
LEVELS = ("for Beginners", "Improvers", "All Levels", "Advanced", "Family Session")
FACILITIES = (
    ("badminton-court", "Badminton Court", "Badminton Courts"),
    ("squash-court", "Squash Court", "Squash Courts"),
    ("tennis-court", "Tennis Court", "Outdoor Tennis"),
    ("five-a-side", "Football Pitch", "5-a-side Pitches"),
    ("sports-hall", "Sports Hall", "Main Hall Hire"),
)
VENUES = (
    ("Riverside Leisure Centre", "1 Mill Lane", "Bristol", "BS1 4QA", 51.4510, -2.5930),
    ("Northgate Sports Hub", "22 Station Road", "Leeds", "LS1 5DL", 53.7960, -1.5480),
    ("St Anne's Pool", "7 Church Street", "Manchester", "M2 6LS", 53.4810, -2.2450),
    ("Parkside Fitness", "140 Park Avenue", "London", "N4 1EE", 51.5720, -0.1020),
    ("Harbour View Gym", "3 Quay Side", "Plymouth", "PL1 2JZ", 50.3650, -4.1420),
    ("Castle Green Centre", "55 Castle Street", "Cardiff", "CF10 1BS", 51.4810, -3.1800),
    ("Meadow Lane Arena", "9 Meadow Lane", "Nottingham", "NG2 3HJ", 52.9420, -1.1370),
)
ORGANIZERS = ("Active Borough Trust", "Move More Sport CIC", "Fusion Leisure", "Lakeside Clubs")
DURATIONS = (("PT1H", 60), ("PT45M", 45), ("PT30M", 30), ("PT1H30M", 90))


def mix64(value: int) -> int:
    """Scramble an integer into 64 well-mixed bits (the splitmix64 finaliser)."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


@dataclass(frozen=True)
class Dice:
    """Pseudo-random choices that are pure functions of (seed, salt, index)."""

    seed: int

    def roll(self, salt: int, index: int, sides: int) -> int:
        """A number in [0, sides), fixed by seed, salt and index."""
        return mix64(mix64(self.seed) ^ (salt << 40) ^ index) % sides

    def percentile(self, salt: int, index: int) -> int:
        """A number in [0, 100) that takes every value once per block of 100 indexes."""
        stride = _STRIDES[salt % len(_STRIDES)]
        # The per-block offset differs per salt, so two attributes do not stay paired.
        offset = (index // 100) * (salt * 7 + 3) + self.seed * (salt + 1)
        return (index * stride + offset) % 100


def format_instant(moment: datetime, with_offset: bool) -> str:
    """ISO 8601 with ``Z``, or with a ``+01:00`` offset for the same instant."""
    if with_offset:
        return moment.astimezone(BST).isoformat()
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def series_url(index: int) -> str:
    """The JSON-LD ``@id`` of SessionSeries ``index``."""
    return f"{HOST}/session-series/{index}"


def facility_use_url(index: int) -> str:
    """The JSON-LD ``@id`` of FacilityUse ``index``."""
    return f"{HOST}/facility-uses/{index}"


def court_url(facility: int, court: int) -> str:
    """The JSON-LD ``@id`` of an IndividualFacilityUse of a FacilityUse."""
    return f"{facility_use_url(facility)}/individual-facility-uses/{court}"


def keys_for(plain: bool) -> tuple[str, str]:
    """(type key, id key): imin's internal style drops the JSON-LD ``@``."""
    return ("type", "id") if plain else ("@type", "@id")


def build_price(price: float, flag: bool, flag_key: str, window: Json) -> Json:
    """One price band (publicAdult / publicJunior) of an imin aggregate offer."""
    band: Json = {"type": "AggregateOffer", "price": price, "priceCurrency": "GBP"}
    band.update(window)
    band[flag_key] = flag
    return band


def build_aggregate_offer(variant: str, price: float, window: Json) -> Json:
    """``imin:aggregateOffer`` for a parent of the given variant."""
    flag_key = FLAG_UNDERSCORE if variant in (UNDERSCORE_TRUE, UNDERSCORE_FALSE) else FLAG
    offer: Json = {"type": "imin:AggregateOffer"}
    if variant != CHILDREN_ONLY:
        adult_flag = variant not in (ADULT_NOT_BOOKABLE, UNDERSCORE_FALSE)
        offer["publicAdult"] = build_price(price, adult_flag, flag_key, window)
    offer["publicJunior"] = build_price(round(price / 2, 2), True, flag_key, window)
    return offer


def build_window(valid_from: str | None, valid_through: bool) -> Json:
    """The booking-window fields of an offer band."""
    window: Json = {}
    if valid_from is not None:
        window["validFromBeforeStartDate"] = valid_from
    if valid_through:
        window["validThroughBeforeStartDate"] = VALID_THROUGH
    return window


def build_place(venue: int, plain: bool, spot: int = 0) -> Json:
    """A Place with address and geo: a venue's town, at a spot of its own within about
    40 km of the venue (by `spot`), so places spread the way real ones do."""
    name, street, locality, postcode, latitude, longitude = VENUES[venue % len(VENUES)]
    scatter = mix64(spot)
    latitude = round(latitude + ((scatter & 0xFFFF) / 0xFFFF - 0.5) * 0.7, 4)
    longitude = round(longitude + (((scatter >> 16) & 0xFFFF) / 0xFFFF - 0.5) * 1.1, 4)
    type_key, _ = keys_for(plain)
    return {
        type_key: "Place",
        "name": name,
        "address": {
            type_key: "PostalAddress",
            "streetAddress": street,
            "addressLocality": locality,
            "postalCode": postcode,
            "addressCountry": "GB",
        },
        "geo": {type_key: "GeoCoordinates", "latitude": latitude, "longitude": longitude},
    }


def build_organization(index: int, plain: bool) -> Json:
    """An organizer / provider."""
    type_key, id_key = keys_for(plain)
    number = index % len(ORGANIZERS)
    return {
        type_key: "Organization",
        id_key: f"{HOST}/organizations/{number}",
        "name": ORGANIZERS[number],
    }


def build_concept(scheme: str, slug: str, label: str, plain: bool) -> Json:
    """A controlled-vocabulary Concept (activity list, facility types)."""
    type_key, id_key = keys_for(plain)
    return {
        type_key: "Concept",
        id_key: f"https://openactive.io/{scheme}#{slug}",
        "prefLabel": label,
        "inScheme": f"https://openactive.io/{scheme}",
    }


def build_offer(owner_id: str, price: float, plain: bool) -> list[Json]:
    """A plain one-Offer ``offers`` list."""
    type_key, id_key = keys_for(plain)
    return [
        {type_key: "Offer", id_key: f"{owner_id}#/offers/0", "price": price, "priceCurrency": "GBP"}
    ]


def build_series(index: int, variant: str, window: Json, dice: Dice) -> Json:
    """The ``data`` of a SessionSeries (also embedded whole by a few sessions)."""
    slug, label = ACTIVITIES[dice.roll(11, index, len(ACTIVITIES))]
    price = 3.5 + dice.roll(12, index, 12) / 2
    series_id = series_url(index)
    return {
        "@context": CONTEXT,
        "@type": "SessionSeries",
        "@id": series_id,
        "identifier": f"{UPSTREAM}/session-series/{index}",
        "url": f"https://upstream.example/sessions/{index}",
        "name": f"{label} {LEVELS[dice.roll(13, index, len(LEVELS))]}",
        "activity": [build_concept("activity-list", slug, label, False)],
        "location": build_place(dice.roll(14, index, len(VENUES)), False, index),
        "organizer": build_organization(dice.roll(15, index, len(ORGANIZERS)), False),
        "offers": build_offer(series_id, price, False),
        "imin:aggregateOffer": build_aggregate_offer(variant, price, window),
    }
