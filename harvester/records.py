"""RPDE items turned into the flat rows the store copies in: pure, one pass per page."""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from harvester import bookability, rpde
from harvester.rpde import Item, Rejected

# The columns of a row as `to_row` returns them: the item's own facts.
ROW_COLUMNS = (
    "kind", "rpde_id", "modified", "modified_text", "data", "type", "role",
    "item_id", "identifier", "start_date", "end_date", "parent_ref", "problem",
    "checkout_path", "embedded_type", "offer_problem", "from_months", "from_micros",
    "through_months", "through_micros", "refs", "start_offset",
)  # fmt: skip
# What joining a child to its parent decides (`join`): the parent, the booking window, and
# the reason, fixed until the child or its parent changes, why it is never bookable.
JOINED_COLUMNS = ("parent_kind", "parent_rpde_id", "bookable_from", "bookable_until", "reason")
# A staged row: the facts, then what the join decided.
STAGING_COLUMNS = (*ROW_COLUMNS, *JOINED_COLUMNS)
Row = tuple[Any, ...]
KIND, RPDE_ID, MODIFIED, MODIFIED_TEXT = range(4)
DATA = ROW_COLUMNS.index("data")
ROLE = ROW_COLUMNS.index("role")
ITEM_ID = ROW_COLUMNS.index("item_id")
START_DATE = ROW_COLUMNS.index("start_date")
PARENT_REF = ROW_COLUMNS.index("parent_ref")
PROBLEM = ROW_COLUMNS.index("problem")
EMBEDDED_TYPE = ROW_COLUMNS.index("embedded_type")
OFFER = slice(ROW_COLUMNS.index("offer_problem"), ROW_COLUMNS.index("through_micros") + 1)
REFS = ROW_COLUMNS.index("refs")
_EMPTY_CHILD = (None,) * 8
_NO_DATA = (None,) * (len(ROW_COLUMNS) - 4)  # a tombstone's row: its key and `modified`
_EMPTY_OFFER = (None,) * 5
_UNJOINED = (None,) * len(JOINED_COLUMNS)
_NO_PARENT = (None, None)
# The reasons a join gives (the contract's rules 2-5); the child's own come from bookability.
PARENT_NOT_HELD = "parent not held"
NO_PARENT_REFERENCE = "no parent reference"
EMPTY_WINDOW = "booking window is empty"
# Refs are indexed: a parent named by a longer one cannot be joined to (rpde.MAX_ID_BYTES).
PARENT_REF_TOO_LONG = f"parent reference longer than {rpde.MAX_ID_BYTES} bytes"


def to_rows(items: list[Item]) -> tuple[list[Row], list[Rejected]]:
    """One staging row per item, tombstones included; an item that cannot be stored is
    set aside with the reason instead of costing its page."""
    try:
        return [to_row(item) for item in items], []
    except (RecursionError, ValueError, TypeError, UnicodeError):
        return to_rows_one_by_one(items)


def to_rows_one_by_one(items: list[Item]) -> tuple[list[Row], list[Rejected]]:
    """`to_rows` when some item failed: each item on its own, the failures set aside."""
    rows: list[Row] = []
    rejected: list[Rejected] = []
    for position, item in enumerate(items):
        try:
            rows.append(to_row(item))
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
        return (item.kind, item.id, item.modified_number, item.modified_text, *_NO_DATA)
    item_type = bookability.type_of(item.kind, data)
    if item_type in bookability.CHILD_TYPES:
        return child_row(item, item_type, data)
    head = (item.kind, item.id, item.modified_number, item.modified_text,
            dump_json(data), item_type)  # fmt: skip
    if item_type in bookability.PARENT_TYPES:
        parent = bookability.read_parent(item_type, data)
        refs = [ref for ref in parent.refs if not rpde.too_long(ref, rpde.MAX_ID_BYTES)]
        return (*head, "parent", parent.id, *_EMPTY_CHILD[1:], *offer_fields(parent.offer),
                refs, None)  # fmt: skip
    return (*head, "other", bookability.id_of(data), *_EMPTY_CHILD[1:], *_EMPTY_OFFER, None,
            None)  # fmt: skip


def child_row(item: Item, item_type: str, data: dict[str, Any]) -> Row:
    """The row of a ScheduledSession or Slot (the offer is its embedded parent's, if any).

    Built in one tuple display: a million children make a million of these.
    """
    child = bookability.read_child(item_type, data)
    if child.parent_ref is not None and rpde.too_long(child.parent_ref, rpde.MAX_ID_BYTES):
        child = child._replace(parent_ref=None, problem=child.problem or PARENT_REF_TOO_LONG)
    offer = offer_fields(child.embedded_offer) if child.embedded_offer else _EMPTY_OFFER
    return (
        item.kind, item.id, item.modified_number, item.modified_text,
        dump_json(data), item_type, "child", child.id, child.identifier, child.start_date,
        child.end_date, child.parent_ref, child.problem,
        bookability.checkout_path(item_type, child.identifier), child.embedded_type, *offer,
        None, bookability.utc_offset_seconds(child.start_date),
    )  # fmt: skip


def is_tombstone(row: Row) -> bool:
    """The row deletes its item (RPDE §Deleted items): it alone carries no data."""
    return row[DATA] is None


def stage(row: Row) -> Row:
    """The staged row of a parent or other item: no parent, no booking window."""
    return row + _UNJOINED


def join_child(row: Row, parent: Row | None) -> Row:
    """The staged row of a child joined to its published parent, if one is held (`join`)."""
    return row + join(row[START_DATE], row[PROBLEM], row[PARENT_REF], row[EMBEDDED_TYPE],
                      row[OFFER], parent)  # fmt: skip


def join(
    start: datetime | None, problem: str | None, parent_ref: str | None,
    embedded_type: str | None, embedded_offer: Row, parent: Row | None,
) -> Row:  # fmt: skip
    """Rules 2-5 for one child, the one home of them: the JOINED_COLUMNS of the child.

    `parent` is the published parent its reference resolves to, as (kind, rpde_id,
    offer_problem, from_months, from_micros, through_months, through_micros), or None;
    a published parent beats an embedded one, which stands in when none is held (rule 2).
    Every write of a child and every re-join after a parent changes comes through here.
    """
    if parent is not None:
        key, offer = parent[:2], parent[2:]
    elif embedded_type is not None:
        key, offer = _NO_PARENT, embedded_offer
    else:
        return (*_NO_PARENT, None, None,
                problem or (PARENT_NOT_HELD if parent_ref else NO_PARENT_REFERENCE))  # fmt: skip
    reason = problem or offer[0]
    if reason is not None or start is None:
        return (*key, None, None, reason)
    window = bookability.window_bounds(start, offer[1], offer[2] or 0, offer[3], offer[4] or 0)
    if window is None:
        return (*key, None, None, EMPTY_WINDOW)
    return (*key, *window, None)


def on_own_clock(moment: datetime | None, utc_offset: int | None) -> datetime | None:
    """A start date read back from the database (UTC) on the clock it was written with,
    where calendar months of a booking window count (bookability.window_bounds)."""
    if moment is None or utc_offset is None:
        return moment
    return moment.astimezone(_zone(utc_offset))


@functools.cache
def _zone(utc_offset: int) -> timezone:
    return timezone(timedelta(seconds=utc_offset))


def offer_fields(offer: bookability.Offer) -> Row:
    """offer_problem, from_months, from_micros, through_months, through_micros."""
    valid_from, through = offer.valid_from, offer.valid_through
    return (
        offer.problem,
        valid_from.months if valid_from else None,
        valid_from.micros if valid_from else None,
        through.months if through else None,
        through.micros if through else None,
    )


def dump_json(data: dict[str, Any]) -> str:
    """JSON text for jsonb (its strings were made storable by rpde.repair_item)."""
    try:
        return orjson.dumps(data).decode()
    except TypeError:
        return json.dumps(data)  # integers beyond 64 bits; nesting beyond orjson's 255 levels
