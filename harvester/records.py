"""RPDE items turned into the flat rows the store copies in: pure, one pass per page."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from harvester import bookability, facts, rpde
from harvester.rpde import Item, Rejected


class Row(NamedTuple):
    """One item as the store stages it: its own facts (`to_row`), then what joining a child
    to its parent decided (`join`), fixed until the child or its parent changes.

    The one declaration of the row: the staging table, its COPY and the upsert's column
    lists are derived from these fields (sql.py), their types from `schema.items`.
    """

    kind: str
    rpde_id: str
    modified: int | None  # RPDE `modified` when an integer; else `modified_text`
    modified_text: str | None
    data: str | None  # the item's JSON; None for a tombstone, and only for one
    type: str | None
    role: str | None  # child, parent or other
    item_id: str | None
    identifier: str | None
    start_date: datetime | None
    end_date: datetime | None
    parent_ref: str | None
    problem: str | None
    checkout_path: str | None
    embedded_type: str | None
    offer_problem: str | None
    from_months: int | None
    from_micros: int | None
    through_months: int | None
    through_micros: int | None
    refs: list[str] | None
    start_offset: int | None
    seller_ref: str | None  # a parent's seller, or a child's embedded parent's (rule 7)
    # What an app filters on (facts.COLUMNS): a child's own, else its embedded parent's;
    # a parent's own, else its superEvent's. `inherits`: which a child took from above.
    name: str | None
    activity: list[str] | None
    latitude: float | None
    longitude: float | None
    price: Decimal | None
    currency: str | None
    age_min: int | None
    age_max: int | None
    organizer_name: str | None
    data_source: str | None
    inherits: int | None
    parent_kind: str | None = None
    parent_rpde_id: str | None = None
    bookable_from: datetime | None = None
    bookable_until: datetime | None = None
    reason: str | None = None
    seller: str | None = None  # the seller of the parent that applies (rule 7)


# What `join` decides: the parent, the booking window, and why the child is never bookable.
JOINED_COLUMNS = (
    "parent_kind", "parent_rpde_id", "bookable_from", "bookable_until", "reason", "seller",
)  # fmt: skip
FACTS = len(Row._fields) - len(JOINED_COLUMNS)  # the fields `to_row` fills
OFFER = slice(Row._fields.index("offer_problem"), Row._fields.index("through_micros") + 1)
Values = tuple[Any, ...]  # a slice of a row, or a row read back from the database
_make_row = Row._make  # rows are built from tuple displays: a million children, a million rows
_EMPTY_CHILD = (None,) * 8
_NO_DATA = (None,) * (len(Row._fields) - 4)  # a tombstone's row: its key and `modified`
_EMPTY_OFFER = (None,) * 5
_UNJOINED = (None,) * len(JOINED_COLUMNS)
_NO_FACTS = (None,) * (len(facts.COLUMNS) + 1)  # and no `inherits`
_NO_PARENT = (None, None)
# The reasons a join gives (the contract's rules 2-5); the child's own come from bookability.
PARENT_NOT_HELD = "parent not held"
NO_PARENT_REFERENCE = "no parent reference"
EMPTY_WINDOW = "booking window is empty"
# Refs are indexed: a parent named by a longer one cannot be joined to (rpde.MAX_ID_BYTES).
PARENT_REF_TOO_LONG = f"parent reference longer than {rpde.MAX_ID_BYTES} bytes"


def to_rows(items: list[Item], purpose: str = "opportunities") -> tuple[list[Row], list[Rejected]]:
    """One staging row per item, tombstones included; an item that cannot be stored is
    set aside with the reason instead of costing its page. A bookable sellers feed's
    items are sellers, whatever their type."""
    convert = seller_row if purpose == "sellers" else to_row
    try:
        return [convert(item) for item in items], []
    except (RecursionError, ValueError, TypeError, UnicodeError):
        return to_rows_one_by_one(items, convert)


def to_rows_one_by_one(
    items: list[Item], convert: Callable[[Item], Row] | None = None
) -> tuple[list[Row], list[Rejected]]:
    """`to_rows` when some item failed: each item on its own, the failures set aside."""
    convert = convert or to_row
    rows: list[Row] = []
    rejected: list[Rejected] = []
    for position, item in enumerate(items):
        try:
            rows.append(convert(item))
        except (RecursionError, ValueError, TypeError, UnicodeError) as exc:
            reason = f"cannot be stored: {type(exc).__name__}: {exc}"
            rejected.append(rpde.reject(position, item._asdict(), reason, item.id, item.kind))
    return rows, rejected


def to_row(item: Item) -> Row:
    """The staging row of one item: envelope, then what bookability reads from its data.

    A tombstone's row has no data (`is_tombstone`): nothing else marks it.
    """
    data = item.data
    if data is None:
        return _make_row((item.kind, item.id, item.modified_number, item.modified_text,
                          *_NO_DATA))  # fmt: skip
    item_type = bookability.type_of(item.kind, data)
    if item_type in bookability.CHILD_TYPES:
        return child_row(item, item_type, data)
    head = (item.kind, item.id, item.modified_number, item.modified_text,
            dump_json(data), item_type)  # fmt: skip
    if item_type in bookability.PARENT_TYPES:
        parent = bookability.read_parent(item_type, data)
        refs = [ref for ref in parent.refs if not rpde.too_long(ref, rpde.MAX_ID_BYTES)]
        return _make_row((*head, "parent", parent.id, *_EMPTY_CHILD[1:],
                          *offer_fields(parent.offer), refs, None, parent.seller,
                          *facts_of(item_type, data), *_UNJOINED))  # fmt: skip
    return _make_row((*head, "other", bookability.id_of(data), *_EMPTY_CHILD[1:],
                      *_EMPTY_OFFER, None, None, None, *_NO_FACTS, *_UNJOINED))  # fmt: skip


def seller_row(item: Item) -> Row:
    """The row of an item of a bookable sellers feed: a seller, by its data's @id (rule 7)."""
    row = to_row(item)
    if item.data is None:
        return row
    return row._replace(role="seller", item_id=bookability.id_of(item.data))


def child_row(item: Item, item_type: str, data: dict[str, Any]) -> Row:
    """The row of a ScheduledSession or Slot (the offer is its embedded parent's, if any).

    Built from one tuple display: a million children make a million of these.
    """
    child = bookability.read_child(item_type, data)
    if child.parent_ref is not None and rpde.too_long(child.parent_ref, rpde.MAX_ID_BYTES):
        child = child._replace(parent_ref=None, problem=child.problem or PARENT_REF_TOO_LONG)
    offer = offer_fields(child.embedded_offer) if child.embedded_offer else _EMPTY_OFFER
    return _make_row((
        item.kind, item.id, item.modified_number, item.modified_text,
        dump_json(data), item_type, "child", child.id, child.identifier, child.start_date,
        child.end_date, child.parent_ref, child.problem,
        bookability.checkout_path(item_type, child.identifier), child.embedded_type, *offer,
        None, bookability.utc_offset_seconds(child.start_date), child.embedded_seller,
        *facts_of(item_type, data), *_UNJOINED,
    ))  # fmt: skip


def facts_of(item_type: str, data: dict[str, Any]) -> Values:
    """A child's or parent's filter facts and `inherits` (harvester.facts): a child's own,
    else its embedded parent's; a parent's own, else its superEvent's."""
    if item_type in bookability.CHILD_TYPES:
        own, inherits = facts.inherited_facts(data, data.get(bookability.PARENT_FIELDS[item_type]))
        return (*own, inherits)
    return (*facts.parent_facts(data), facts.NONE_INHERITED)


def is_tombstone(row: Row) -> bool:
    """The row deletes its item (RPDE §Deleted items): it alone carries no data."""
    return row.data is None


def join_child(row: Row, parent: Values | None) -> Row:
    """The row of a child joined to its published parent, if one is held (`join`)."""
    joined = join(row.start_date, row.problem, row.parent_ref, row.embedded_type,
                  (*row[OFFER], row.seller_ref), parent)  # fmt: skip
    return _make_row((*row[:FACTS], *joined))


def join(
    start: datetime | None, problem: str | None, parent_ref: str | None,
    embedded_type: str | None, embedded: Values, parent: Values | None,
) -> Values:  # fmt: skip
    """Rules 2-5 for one child, the one home of them: the JOINED_COLUMNS of the child,
    with the seller rule 7 is checked against (as it is read: sellers change apart).

    `parent` is the published parent its reference resolves to, as (kind, rpde_id,
    offer_problem, from_months, from_micros, through_months, through_micros, seller), or
    None; `embedded` is the embedded parent's offer and seller in the same order. A
    published parent beats an embedded one, which stands in when none is held (rule 2).
    Every write of a child and every re-join after a parent changes comes through here.
    """
    if parent is not None:
        key, offer = parent[:2], parent[2:]
    elif embedded_type is not None:
        key, offer = _NO_PARENT, embedded
    else:
        reason = problem or (PARENT_NOT_HELD if parent_ref else NO_PARENT_REFERENCE)
        return (*_NO_PARENT, None, None, reason, None)
    reason, seller = problem or offer[0], offer[5]
    if reason is not None or start is None:
        return (*key, None, None, reason, seller)
    window = bookability.window_bounds(start, offer[1], offer[2] or 0, offer[3], offer[4] or 0)
    if window is None:
        return (*key, None, None, EMPTY_WINDOW, seller)
    return (*key, *window, None, seller)


def on_own_clock(moment: datetime | None, utc_offset: int | None) -> datetime | None:
    """A start date read back from the database (UTC) on the clock it was written with,
    where calendar months of a booking window count (bookability.window_bounds)."""
    if moment is None or utc_offset is None:
        return moment
    return moment.astimezone(_zone(utc_offset))


@functools.cache
def _zone(utc_offset: int) -> timezone:
    return timezone(timedelta(seconds=utc_offset))


def offer_fields(offer: bookability.Offer) -> Values:
    """offer_problem, from_months, from_micros, through_months, through_micros."""
    valid_from, through = offer.valid_from, offer.valid_through
    return (
        offer.problem,
        valid_from.months if valid_from else None,
        valid_from.micros if valid_from else None,
        through.months if through else None,
        through.micros if through else None,
    )


def load_json(text: str) -> Any:
    """JSON text as stored (dump_json's), back to Python."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # what orjson cannot read: see dump_json


def dump_json(data: dict[str, Any]) -> str:
    """JSON text for jsonb (its strings were made storable by rpde.repair_item)."""
    try:
        return orjson.dumps(data).decode()
    except TypeError:
        return json.dumps(data)  # integers beyond 64 bits; nesting beyond orjson's 255 levels
