"""The RPDE rules, as pure functions: a response body in, a checked page out.

Section names refer to Realtime Paged Data Exchange 1.0 (W3C community group final).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit

import orjson

from harvester.errors import ForeignNextUrl, InvalidPage

STATES = ("updated", "deleted")
RAW_EXCERPT_CHARS = 2_000  # how much of a broken item is kept to show the operator


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

    @property
    def is_last(self) -> bool:
        """RPDE §Last page definition: no items AND `next` equals the URL just fetched."""
        return not self.items and not self.rejected and self.next_url == self.url

    @property
    def repeats_itself(self) -> bool:
        """A page with items whose `next` is itself: a publisher bug; treat as caught up."""
        return self.next_url == self.url and not self.is_last


def parse_page(url: str, body: bytes) -> Page:
    """Check an RPDE response body fetched from `url`; raise InvalidPage naming the URL."""
    document = decode_json(url, body)
    if not isinstance(document, dict):
        raise InvalidPage(f"{url}: not an RPDE page: the body is not a JSON object", url=url)
    items = document.get("items")
    if not isinstance(items, list):
        raise InvalidPage(f"{url}: not an RPDE page: no `items` list", url=url)
    next_url = resolve_next_url(url, document.get("next"))
    parsed, rejected = parse_items(items)
    return Page(url=url, next_url=next_url, items=latest_per_key(parsed), rejected=rejected)


def decode_json(url: str, body: bytes) -> Any:
    """Decode JSON exactly: integers beyond 64 bits fall back to the stdlib parser."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        if not _lost_precision(document):
            return document
    try:
        # orjson refuses (old) or rounds to a float (3.x) integers past 64 bits; json is exact.
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        message = f"{url}: not an RPDE page: the body is not JSON ({exc})"
        raise InvalidPage(message, url=url) from exc


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
    if not isinstance(raw, dict):
        return _reject(position, raw, "the item is not a JSON object")
    rpde_id = normalise_id(raw.get("id"))
    data = raw.get("data")
    kind = _kind_of(raw.get("kind"), data)
    state = raw.get("state")
    if rpde_id is None:
        return _reject(position, raw, "no usable `id` (a string or an integer is required)")
    if state not in STATES:
        return _reject(position, raw, f"unknown `state` {state!r}", rpde_id, kind)
    if kind is None:
        return _reject(position, raw, "no `kind`", rpde_id)
    if state == "updated" and not isinstance(data, dict):
        return _reject(position, raw, "`data` is not a JSON object", rpde_id, kind)
    number, text = split_modified(raw.get("modified"))
    return Item(state, kind, rpde_id, number, text, data if state == "updated" else None)


def normalise_id(value: Any) -> str | None:
    """RPDE ids are strings or integers; both are held as text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value != "":
        return value
    return None


def split_modified(value: Any) -> tuple[int | None, str | None]:
    """JSON integers and digit strings compare as integers, anything else as text."""
    if isinstance(value, bool) or value is None:
        return None, None
    if isinstance(value, int):
        return value, None
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.lstrip("-").isdigit() and stripped.isascii():
            return int(stripped), None
        return None, value
    return None, repr(value)


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


def _reject(
    position: int, raw: Any, reason: str, rpde_id: str | None = None, kind: str | None = None
) -> Rejected:
    try:
        excerpt = orjson.dumps(raw).decode()[:RAW_EXCERPT_CHARS]
    except TypeError:
        excerpt = repr(raw)[:RAW_EXCERPT_CHARS]
    return Rejected(position, kind, rpde_id, reason, excerpt)
