"""What an app filters on (name, activity, place, price, age, organiser), read from an
opportunity's data: pure, written with its row, the one home of these fields' rules.

Each field is inherited the way OpenActive inheritance works: the child's own, else its
parent's, else the parent's `superEvent`'s. What a child carries itself (its own data, then
its embedded parent's) is read as it is written; a published parent's facts are read as
the parent is written; the views take the child's own first, then the published parent's,
then the embedded parent's (a published parent beats an embedded one, as in rule 2).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

# The columns, in the order `read_facts` gives them; `data_source` (imin:dataSource's
# identifier, which attribution is found by) is kept but not shown.
COLUMNS = (
    "name", "activity", "latitude", "longitude", "price", "currency", "age_min", "age_max",
    "organizer_name", "data_source",
)  # fmt: skip
Facts = tuple[Any, ...]  # one value per COLUMNS entry
# The keys the facts are read from.
FIELDS = frozenset({
    "name", "activity", "location", "imin:aggregateOffer", "offers", "ageRange", "organizer",
    "provider", "imin:dataSource",
})  # fmt: skip
NO_FACTS: Facts = (None,) * len(COLUMNS)
NONE_INHERITED = 0
_MAX_AGE = 2_147_483_647  # the column is an integer
_MAX_PRICE = 1e15  # numeric(…) is exact; a price beyond this is a publisher's slip


def inherited_facts(own: dict[str, Any], parent: Any) -> tuple[Facts, int]:
    """Each field from `own`, else `parent` (an embedded one), else the parent's superEvent;
    and the mask of the fields that did not come from `own` (bit i: COLUMNS[i])."""
    facts = read_facts(own)
    if None not in facts or not isinstance(parent, dict):
        return facts, NONE_INHERITED
    above = merge(read_facts(parent), read_facts(parent.get("superEvent")))
    mask = 0
    merged = list(facts)
    for position, value in enumerate(facts):
        if value is None and above[position] is not None:
            merged[position] = above[position]
            mask |= 1 << position
    return tuple(merged), mask


def parent_facts(parent: dict[str, Any]) -> Facts:
    """A parent's facts: its own, else its superEvent's."""
    return merge(read_facts(parent), read_facts(parent.get("superEvent")))


def merge(first: Facts, second: Facts) -> Facts:
    """`first`'s value of each field, else `second`'s."""
    if None not in first:
        return first
    return tuple(b if a is None else a for a, b in zip(first, second, strict=True))


def read_facts(node: Any) -> Facts:
    """The fields of one JSON-LD node itself (None where absent or unusable)."""
    # Most children carry none of these (imin's sessions name only their superEvent): one
    # set test, not ten lookups, for each of a million of them.
    if not isinstance(node, dict) or FIELDS.isdisjoint(node):
        return NO_FACTS
    latitude, longitude = read_geo(node.get("location"))
    price, currency = read_price(node)
    age = node.get("ageRange")
    age_min, age_max = (as_age(age.get("minValue")), as_age(age.get("maxValue"))) if isinstance(
        age, dict) else (None, None)  # fmt: skip
    return (
        as_text(node.get("name")), read_labels(node.get("activity")), latitude, longitude,
        price, currency, age_min, age_max, read_organizer_name(node), read_data_source(node),
    )  # fmt: skip


def read_labels(activity: Any) -> list[str] | None:
    """The prefLabels of `activity` (one concept or a list), None when there are none."""
    if activity is None:
        return None
    concepts = activity if isinstance(activity, list) else [activity]
    labels = [as_text(c.get("prefLabel")) for c in concepts if isinstance(c, dict)]
    return [label for label in labels if label] or None


def read_geo(location: Any) -> tuple[float | None, float | None]:
    """location.geo's latitude and longitude, both or neither (each within range)."""
    geo = location.get("geo") if isinstance(location, dict) else None
    if not isinstance(geo, dict):
        return None, None
    latitude, longitude = as_number(geo.get("latitude")), as_number(geo.get("longitude"))
    if latitude is None or longitude is None or abs(latitude) > 90 or abs(longitude) > 180:
        return None, None
    return float(latitude), float(longitude)


def read_price(node: dict[str, Any]) -> tuple[Decimal | None, str | None]:
    """The price and currency of the publicAdult offer, else the first of `offers`."""
    aggregate = node.get("imin:aggregateOffer")
    offer = aggregate.get("publicAdult") if isinstance(aggregate, dict) else None
    if not isinstance(offer, dict):
        offers = node.get("offers")
        offer = offers[0] if isinstance(offers, list) and offers else offers
    if not isinstance(offer, dict):
        return None, None
    price = as_number(offer.get("price"))
    exact = Decimal(repr(price)) if price is not None and abs(price) < _MAX_PRICE else None
    return exact, as_text(offer.get("priceCurrency"))


def read_organizer_name(node: dict[str, Any]) -> str | None:
    """organizer.name, else provider.name."""
    for key in ("organizer", "provider"):
        holder = node.get(key)
        if isinstance(holder, dict) and (name := as_text(holder.get("name"))):
            return name
    return None


def read_data_source(node: dict[str, Any]) -> str | None:
    """imin:dataSource.identifier: the Dataset attribution is read from."""
    source = node.get("imin:dataSource")
    return as_text(source.get("identifier")) if isinstance(source, dict) else None


def as_text(value: Any) -> str | None:
    """A non-empty string as given; anything else is unusable."""
    return value if isinstance(value, str) and value else None


def as_number(value: Any) -> float | None:
    """A JSON number, or a string of one (publishers write both); not booleans, not NaN."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str) and 0 < len(value) <= 40:
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def as_age(value: Any) -> int | None:
    """An age in years: a whole number within the integer column's range."""
    number = as_number(value)
    if number is None or abs(number) > _MAX_AGE:
        return None
    return round(number)
