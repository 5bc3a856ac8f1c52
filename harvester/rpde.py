"""The RPDE rules, as pure functions: a response body in, a checked page out.

Section names refer to Realtime Paged Data Exchange 1.0 (W3C community group final).
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit

import orjson

from harvester.errors import ForeignNextUrl, HarvesterError, InvalidPage

STATES = ("updated", "deleted")
RAW_EXCERPT_CHARS = 2_000  # how much of a broken item is kept to show the operator
# An item's key is indexed (with the source's name: PostgreSQL's btree entries stop at
# 2,704 bytes), so longer ids and kinds are set aside rather than fail the page.
MAX_ID_BYTES = 1_000
MAX_KIND_BYTES = 200
MAX_MODIFIED_DIGITS = 100  # change numbers and .NET ticks have 20; more is not a `modified`
MAX_INT_DIGITS = 4_300  # Python's own limit on int <-> text conversions
NUL_ESCAPE = b"\\u0000"
UNSTORABLE_CHARACTERS = re.compile("[\x00\ud800-\udfff]")
# A \uD800-\uDFFF escape (after an even run of backslashes, so it is an escape): a high
# one with its low one, which is kept, or one alone, which becomes \ufffd.
LONE_SURROGATE_ESCAPE = re.compile(
    r"(?<!\\)((?:\\\\)*)\\u([dD][89abAB][0-9a-fA-F]{2})(\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
    r"|(?<!\\)((?:\\\\)*)\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
EXACT_DECODE_RECURSION = 2_500  # about 1 MB of C stack at its deepest: threads have 8
_DEEPER_RECURSION = threading.Lock()
MODIFIED_BOUND = 10**MAX_MODIFIED_DIGITS
INTEGER_TEXT = re.compile("-?[0-9]+")  # ASCII digits: int() would also read other scripts'


class Item(NamedTuple):
    """One well-formed RPDE item; `modified` is split so it is never compared via a float.

    A NamedTuple, not a frozen dataclass: a million of these are made per million items,
    and a frozen dataclass costs three times as much to build.
    """

    state: str
    kind: str
    id: str
    modified_number: int | None
    modified_text: str | None
    data: dict[str, Any] | None

    @property
    def deleted(self) -> bool:
        """A tombstone: the item is to be removed (RPDE §Item grammar)."""
        return self.state == "deleted"


@dataclass(frozen=True, slots=True)
class Rejected:
    """An item set aside, with the reason and an excerpt of what was sent."""

    position: int
    kind: str | None
    id: str | None
    reason: str
    raw: str


@dataclass(frozen=True)
class Page:
    """A parsed RPDE page: its well-formed items, the rejected ones, and where to go next."""

    url: str
    next_url: str
    items: list[Item]
    rejected: list[Rejected] = field(default_factory=list)
    license: str | None = None  # the page's RPDE `license` URL, when it gives one

    @property
    def is_last(self) -> bool:
        """RPDE §Last page definition: no items AND `next` equals the URL just fetched."""
        return not self.items and not self.rejected and self.next_url == self.url

    @property
    def repeats_itself(self) -> bool:
        """A page with items whose `next` is itself: a publisher bug; treat as caught up."""
        return self.next_url == self.url and not self.is_last


def parse_page(url: str, body: bytes | bytearray) -> Page:
    """Check an RPDE response body fetched from `url`; raise InvalidPage naming the URL."""
    document, needs_repair = decode_json(url, body)
    if not isinstance(document, dict):
        raise InvalidPage(f"{url}: not an RPDE page: the body is not a JSON object", url=url)
    items = document.get("items")
    if not isinstance(items, list):
        raise InvalidPage(f"{url}: not an RPDE page: no `items` list", url=url)
    next_url = resolve_next_url(url, document.get("next"))
    if needs_repair:
        items = [repair_item(raw) for raw in items]
    parsed, rejected = parse_items(items)
    license = document.get("license")
    license = clean_text(license) if isinstance(license, str) and license.strip() else None
    return Page(url=url, next_url=next_url, items=latest_per_key(parsed), rejected=rejected,
                license=license)  # fmt: skip


def decode_json(url: str, body: bytes | bytearray) -> tuple[Any, bool]:
    """Decode JSON exactly; True when its strings or numbers need `repair_item`."""
    try:
        document = orjson.loads(body)
        # PostgreSQL text holds no NUL: the one thing orjson reads that must be repaired.
        needs_repair = NUL_ESCAPE in body
    except orjson.JSONDecodeError:  # bad UTF-8, a BOM, a lone surrogate... or worse
        text = readable_text(body)
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:  # a number out of range, NaN... or not JSON
            return decode_exactly(url, text), True
        needs_repair = True
    if _lost_precision(document):
        return decode_exactly(url, readable_text(body)), True
    return document, needs_repair


def readable_text(body: bytes | bytearray) -> str:
    """The body as text a JSON parser takes: bad UTF-8 and lone surrogates as U+FFFD."""
    text = bytes(body).decode("utf-8", errors="replace").removeprefix("\ufeff")
    return LONE_SURROGATE_ESCAPE.sub(_replace_lone_surrogate, text)


def decode_exactly(url: str, text: str) -> Any:
    """The stdlib parser: integers of any size, numbers it cannot hold marked, not refused."""
    try:
        with _DEEPER_RECURSION:
            # Its C scanner counts against Python's recursion limit (1,000): as deep as
            # orjson reads (1,024), so one deep item among numbers out of range costs
            # only its item. Process-wide, hence under a lock and restored at once.
            limit = sys.getrecursionlimit()
            sys.setrecursionlimit(max(limit, EXACT_DECODE_RECURSION))
            try:
                return json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                                  parse_constant=lambda _name: None)  # fmt: skip
            finally:
                sys.setrecursionlimit(limit)
    except RecursionError as exc:
        raise InvalidPage(f"{url}: not an RPDE page: JSON nested too deeply", url=url) from exc
    except ValueError as exc:
        message = f"{url}: not an RPDE page: the body is not JSON ({exc})"
        raise InvalidPage(message, url=url) from exc


def _replace_lone_surrogate(match: re.Match[str]) -> str:
    backslashes, high, low, lone_backslashes = match.group(1, 2, 3, 4)
    if high is None:
        return f"{lone_backslashes}\\ufffd"  # a low surrogate with no high one before it
    return f"{backslashes}\\u{high}{low}" if low else f"{backslashes}\\ufffd"


class _OutOfRange:
    """Marks a number the database cannot hold: its item is set aside, not the page."""

    def __repr__(self) -> str:
        return "<number out of range>"


OUT_OF_RANGE = _OutOfRange()


def _parse_int(digits: str) -> int | _OutOfRange:
    # Python refuses to convert more than 4,300 digits (a denial-of-service guard).
    return int(digits) if len(digits) <= MAX_INT_DIGITS else OUT_OF_RANGE


def _parse_float(text: str) -> float | None:
    number = float(text)
    return number if math.isfinite(number) else None  # jsonb has no Infinity: as orjson does


def _lost_precision(document: Any) -> bool:
    """orjson reads integers beyond 64 bits as floats: look where RPDE needs them exact."""
    items = document.get("items") if isinstance(document, dict) else None
    if not isinstance(items, list):
        return False
    return any(
        isinstance(item, dict)
        and (isinstance(item.get("modified"), float) or isinstance(item.get("id"), float))
        for item in items
    )


def repair_item(raw: Any) -> Any:
    """The item with text PostgreSQL can hold (NUL, lone surrogates → U+FFFD), or Unusable."""
    try:
        return _repair(raw)
    except RecursionError:
        return Unusable(raw, "nested too deeply to be stored")
    except _CannotRepair as exc:
        return Unusable(raw, str(exc))


class _CannotRepair(HarvesterError):
    """Raised inside `_repair` for a value no repair can make storable."""


@dataclass(frozen=True, slots=True)
class Unusable:
    """A raw item `repair_item` could not make storable, and why."""

    raw: Any
    reason: str


def _repair(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(key): _repair(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_repair(item) for item in value]
    if value is OUT_OF_RANGE:
        raise _CannotRepair(f"holds an integer of more than {MAX_INT_DIGITS:,} digits")
    return value


def clean_text(text: str) -> str:
    """Text PostgreSQL accepts: NUL and lone surrogates become U+FFFD."""
    return UNSTORABLE_CHARACTERS.sub("\ufffd", text)


def resolve_next_url(url: str, next_url: Any) -> str:
    """`next` is used byte for byte; only a relative one is made absolute (RPDE §Response)."""
    if not isinstance(next_url, str) or not next_url.strip():
        raise InvalidPage(f"{url}: not an RPDE page: no `next` URL", url=url)
    if urlsplit(next_url).scheme:
        return next_url
    # RPDE requires absolute URLs; some publishers send a path. imin's own scripts join it.
    return urljoin(url, next_url)


def check_origin(feed_url: str, next_url: str) -> None:
    """Refuse a `next` that leaves the configured feed's scheme, host and port."""
    if origin_of(feed_url) != origin_of(next_url):
        raise ForeignNextUrl(
            f"{feed_url}: `next` points to another origin, refused: {next_url}", url=next_url
        )


# `modified` ranges that read as times from 2001 to 2286, and how to make seconds of them.
MODIFIED_CLOCKS: tuple[tuple[int, int, Callable[[int], float]], ...] = (
    (10**9, 10**10, float),  # Unix seconds
    (10**12, 10**13, lambda value: value / 1000),  # Unix milliseconds
    (631_139_040_000_000_000, 721_000_000_000_000_000,  # .NET ticks (100 ns from year 1)
     lambda value: (value - 621_355_968_000_000_000) / 10**7),
)  # fmt: skip


def modified_seconds(modified: int) -> float | None:
    """An integer `modified` as Unix seconds, when it reads as a time (RPDE 1.0 lets it be a
    timestamp or a change number: a change number gives None)."""
    for low, high, to_seconds in MODIFIED_CLOCKS:
        if low <= modified < high:
            return to_seconds(modified)
    return None


def host_key(url: str) -> str:
    """The host a per-host limit counts requests against: scheme, host and port."""
    return "{}://{}:{}".format(*origin_of(url))


def origin_of(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and effective port of a URL."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port or default
    except ValueError:
        port = -1
    return (parts.scheme, (parts.hostname or "").lower(), port)


def parse_items(raw_items: list[Any]) -> tuple[list[Item], list[Rejected]]:
    """Split a page's items into well-formed ones and rejected ones with reasons."""
    items: list[Item] = []
    rejected: list[Rejected] = []
    for position, raw in enumerate(raw_items):
        result = parse_item(position, raw)
        (items if isinstance(result, Item) else rejected).append(result)  # type: ignore[arg-type]
    return items, rejected


def parse_item(position: int, raw: Any) -> Item | Rejected:
    """Check one item's envelope (RPDE §Item grammar); a broken one becomes a Rejected."""
    if isinstance(raw, Unusable):
        return reject(position, raw.raw, raw.reason, *_key_of(raw.raw))
    if not isinstance(raw, dict):
        return reject(position, raw, "the item is not a JSON object")
    rpde_id = normalise_id(raw.get("id"))
    data = raw.get("data")
    kind = _kind_of(raw.get("kind"), data)
    state = raw.get("state")
    problem = envelope_problem(rpde_id, kind, state, data)
    if problem is None:
        number, text, problem = split_modified(raw.get("modified"))
        if problem is None:
            return Item(state, kind, rpde_id, number, text, data if state == "updated" else None)
    return reject(position, raw, problem, rpde_id, kind)


def envelope_problem(rpde_id: str | None, kind: str | None, state: Any, data: Any) -> str | None:
    """Why an item's id, kind, state or data cannot be held; None when they can."""
    if rpde_id is None:
        return "no usable `id` (a string or an integer is required)"
    if state not in STATES:
        return f"unknown `state` {str(state)[:40]!r}"
    if kind is None:
        return "no `kind`"
    if too_long(rpde_id, MAX_ID_BYTES):
        return f"`id` is longer than {MAX_ID_BYTES} bytes"
    if too_long(kind, MAX_KIND_BYTES):
        return f"`kind` is longer than {MAX_KIND_BYTES} bytes"
    if state == "updated" and not isinstance(data, dict):
        return "`data` is not a JSON object"
    return None


def too_long(text: str, limit: int) -> bool:
    # UTF-8 takes at most 4 bytes a character: most texts are cleared without encoding.
    return len(text) * 4 > limit and len(text.encode()) > limit


def normalise_id(value: Any) -> str | None:
    """RPDE ids are strings or integers; both are held as text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value != "":
        return value
    return None


def split_modified(value: Any) -> tuple[int | None, str | None, str | None]:
    """JSON integers and digit strings compare as integers, anything else as text.

    The third value is why `modified` cannot be held (a number too long to be one).
    """
    if isinstance(value, bool) or value is None:
        return None, None, None
    too_long = f"`modified` has more than {MAX_MODIFIED_DIGITS} digits"
    if isinstance(value, int):
        if -MODIFIED_BOUND < value < MODIFIED_BOUND:
            return value, None, None
        return None, None, too_long
    if isinstance(value, str):
        stripped = value.strip()
        if not INTEGER_TEXT.fullmatch(stripped):
            return None, value, None  # "--5", an ISO date...: compared as text
        if len(stripped.lstrip("-")) > MAX_MODIFIED_DIGITS:
            return None, None, too_long
        return int(stripped), None, None
    return None, repr(value)[:RAW_EXCERPT_CHARS], None


def latest_per_key(items: list[Item]) -> list[Item]:
    """Keep one item per (kind, id): the later one in the page, which RPDE orders as newer."""
    if len({(item.kind, item.id) for item in items}) == len(items):
        return items
    latest: dict[tuple[str, str], Item] = {}
    for item in items:
        latest.pop((item.kind, item.id), None)
        latest[(item.kind, item.id)] = item
    return list(latest.values())


def _kind_of(kind: Any, data: Any) -> str | None:
    if isinstance(kind, str) and kind.strip():
        return kind
    # RPDE requires `kind`; tolerate its absence when the data names its type.
    if isinstance(data, dict):
        declared = data.get("@type", data.get("type"))
        if isinstance(declared, str) and declared:
            return declared
    return None


def reject(
    position: int, raw: Any, reason: str, rpde_id: str | None = None, kind: str | None = None
) -> Rejected:
    """A Rejected for the item at `position`, with an excerpt of what was sent."""
    # The rejected item's key is indexed too: one too long is shown only in the excerpt.
    if rpde_id is not None and too_long(rpde_id, MAX_ID_BYTES):
        rpde_id = None
    if kind is not None and too_long(kind, MAX_KIND_BYTES):
        kind = None
    return Rejected(position, kind, rpde_id, reason, excerpt_of(raw))


def excerpt_of(raw: Any) -> str:
    """The start of an item as JSON (else its repr), in text PostgreSQL can hold."""
    renderers = (lambda: orjson.dumps(raw, default=repr).decode(), lambda: repr(raw))
    for render in renderers:
        try:  # orjson stops at 255 levels and at lone surrogates; repr at the stack's depth
            return clean_text(render()[:RAW_EXCERPT_CHARS])
        except (TypeError, RecursionError):
            continue
    return "<nested too deeply to show>"


def _key_of(raw: Any) -> tuple[str | None, str | None]:
    """(id, kind) of a raw item, as far as they can be read and held."""
    if not isinstance(raw, dict):
        return None, None
    kind = raw.get("kind")
    rpde_id = normalise_id(raw.get("id"))
    return (clean_text(rpde_id) if rpde_id else None,
            clean_text(kind) if isinstance(kind, str) and kind else None)  # fmt: skip
