"""The pure RPDE rules: pages, `next`, items, `modified`, and what is set aside."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harvester.errors import ForeignNextUrl, InvalidPage
from harvester.rpde import Item, Page, Rejected, check_origin, parse_page, split_modified

URL = "https://publisher.example/feed?afterTimestamp=10&afterId=a"
OTHER = "https://publisher.example/feed?afterTimestamp=20&afterId=b"


def body(items: list[Any], next_url: Any = OTHER, **extra: Any) -> bytes:
    """An RPDE page body."""
    document: dict[str, Any] = {"items": items, **extra}
    if next_url is not None:
        document["next"] = next_url
    return json.dumps(document).encode()


def updated(rpde_id: Any, modified: Any = 1, kind: str = "ScheduledSession", **data: Any) -> dict:
    """An `updated` item with a minimal data object."""
    return {
        "state": "updated", "kind": kind, "id": rpde_id, "modified": modified,
        "data": {"@type": "ScheduledSession", "@id": f"https://x.example/{rpde_id}", **data},
    }  # fmt: skip


def deleted(rpde_id: Any, modified: Any = 2, kind: str = "ScheduledSession") -> dict:
    """A tombstone."""
    return {"state": "deleted", "kind": kind, "id": rpde_id, "modified": modified}


def only_item(page: Page) -> Item:
    """The page's single well-formed item."""
    assert len(page.items) == 1, page
    return page.items[0]


# --- the last page -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "next_url", "is_last", "repeats"),
    [
        # RPDE last page: no items and `next` equals the URL just fetched.
        ([], URL, True, False),
        # An empty page that points elsewhere is not the end (a publisher may page over gaps).
        ([], OTHER, False, False),
        # Items and another next: an ordinary page.
        ([updated("a")], OTHER, False, False),
        # Items whose next is itself: a publisher bug, not a last page, but caught up.
        ([updated("a")], URL, False, True),
        # Only broken items with next itself: not last either (something was sent).
        ([{"state": "updated"}], URL, False, True),
    ],
)
def test_last_page_rules(items: list[Any], next_url: str, is_last: bool, repeats: bool) -> None:
    page = parse_page(URL, body(items, next_url))
    assert page.is_last is is_last
    assert page.repeats_itself is repeats


# --- `next` ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("next_url", "expected"),
    [
        # Absolute: kept byte for byte, percent-encoded braces untouched.
        (
            "https://publisher.example/feed?afterTimestamp=1453931925&afterId=%7Bd97f73fb%7D",
            "https://publisher.example/feed?afterTimestamp=1453931925&afterId=%7Bd97f73fb%7D",
        ),
        # Absolute with a raw `&`, `#` and odd spacing in the query: not re-encoded.
        (
            "https://publisher.example/feed?after=a&b=%2F+c#frag?x",
            "https://publisher.example/feed?after=a&b=%2F+c#frag?x",
        ),
        # Change-number ordering: nothing special, only `next` is followed.
        (
            "https://publisher.example/feed?afterChangeNumber=44254329",
            "https://publisher.example/feed?afterChangeNumber=44254329",
        ),
        # A big timestamp in the URL is not touched (a float would turn ...610 into ...600).
        (
            "https://publisher.example/feed?afterTimestamp=638760839316164610&afterId=7",
            "https://publisher.example/feed?afterTimestamp=638760839316164610&afterId=7",
        ),
        # Relative path: resolved against the fetched URL.
        ("/feed?afterId=%7Bb%7D", "https://publisher.example/feed?afterId=%7Bb%7D"),
        # Query-only relative reference.
        ("?afterChangeNumber=5", "https://publisher.example/feed?afterChangeNumber=5"),
    ],
)
def test_next_url(next_url: str, expected: str) -> None:
    assert parse_page(URL, body([], next_url)).next_url == expected


# --- not a page --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fault"),
    [
        (b"<html>Service down</html>", "not JSON"),  # an HTML error page with status 200
        (b"", "not JSON"),  # an empty body
        (b'{"items": [], "next": ', "not JSON"),  # a truncated body
        (b"[]", "not a JSON object"),  # JSON, but a list
        (b'"page"', "not a JSON object"),  # JSON, but a string
        (b'{"next": "https://publisher.example/feed"}', "no `items`"),  # no items
        (b'{"items": {}, "next": "https://publisher.example/feed"}', "no `items`"),  # not a list
        (b'{"items": []}', "no `next`"),  # no next
        (b'{"items": [], "next": 5}', "no `next`"),  # next not a string
        (b'{"items": [], "next": "  "}', "no `next`"),  # next blank
    ],
)
def test_not_a_page_names_the_url(raw: bytes, fault: str) -> None:
    with pytest.raises(InvalidPage) as caught:
        parse_page(URL, raw)
    assert URL in str(caught.value)
    assert fault in str(caught.value)
    assert caught.value.url == URL


# --- ordering, ids and `modified` --------------------------------------------------------


def test_ties_in_modified_keep_every_id() -> None:
    page = parse_page(URL, body([updated("a", 100), updated("b", 100), updated("c", 100)]))
    assert [(item.id, item.modified_number) for item in page.items] == [
        ("a", 100), ("b", 100), ("c", 100),
    ]  # fmt: skip


def test_change_number_feed() -> None:
    # afterChangeNumber feeds: modified is the change number; items order by it alone.
    items = [updated("slot/1", 44254328), deleted("slot/2", 44254329)]
    page = parse_page(URL, body(items, "https://publisher.example/feed?afterChangeNumber=44254329"))
    assert [(i.id, i.state, i.modified_number) for i in page.items] == [
        ("slot/1", "updated", 44254328), ("slot/2", "deleted", 44254329),
    ]  # fmt: skip
    assert page.next_url.endswith("afterChangeNumber=44254329")


@pytest.mark.parametrize(
    ("raw_modified", "number", "text"),
    [
        (1521565719, 1521565719, None),  # epoch seconds
        (1598951839000, 1598951839000, None),  # epoch milliseconds
        (2**53 + 1, 2**53 + 1, None),  # beyond a float's exact range
        (638760839316164610, 638760839316164610, None),  # .NET ticks
        (2**64 + 7, 2**64 + 7, None),  # beyond 64 bits: orjson refuses, json keeps it
        (10**30 + 3, 10**30 + 3, None),  # far beyond
        ("638760839316164610", 638760839316164610, None),  # digit string → integer
        (str(2**64 + 7), 2**64 + 7, None),  # long digit string → exact integer
        ("-5", -5, None),  # negative digit string
        ("2018-01-27T16:38:45Z", None, "2018-01-27T16:38:45Z"),  # ISO string stays text
        ("2020-07-15T10:00:00.123+01:00", None, "2020-07-15T10:00:00.123+01:00"),
        ("12a", None, "12a"),  # not all digits: text
        ("١٢٣", None, "١٢٣"),  # non-ASCII digits are not integers
        (None, None, None),  # absent
    ],
)
def test_modified_is_exact(raw_modified: Any, number: int | None, text: str | None) -> None:
    item = only_item(parse_page(URL, body([updated("a", raw_modified)])))
    assert item.modified_number == number
    assert item.modified_text == text
    assert not isinstance(item.modified_number, float)


def test_modified_float_never_becomes_a_number() -> None:
    # A float `modified` is not an RPDE value; it is held as text, never compared as a float.
    assert split_modified(1.5) == (None, "1.5", None)
    assert split_modified(True) == (None, None, None)


def test_big_modified_survives_the_whole_page() -> None:
    # orjson rounds integers past 64 bits to floats; the page must then be decoded exactly.
    items = [updated("a", 638760839316164610), updated("b", 2**64 + 1), updated(2**65, 3)]
    page = parse_page(URL, body(items))
    assert [(i.id, i.modified_number) for i in page.items] == [
        ("a", 638760839316164610), ("b", 2**64 + 1), (str(2**65), 3),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("raw_id", "held_as"),
    [
        (111, "111"),  # integer RPDE id
        ("00000000000170005743", "00000000000170005743"),  # zero-padded string kept as is
        ("{c15814e5-8931-470c-8a16-ef45afedaece}", "{c15814e5-8931-470c-8a16-ef45afedaece}"),
        ("https://x.example/slots/1:2", "https://x.example/slots/1:2"),  # `/` and `:`
        (2**64 + 1, str(2**64 + 1)),  # huge integer id, exact
    ],
)
def test_ids_integer_or_string(raw_id: Any, held_as: str) -> None:
    assert only_item(parse_page(URL, body([updated(raw_id)]))).id == held_as


# --- tombstones --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tombstone",
    [
        # The usual tombstone: no data.
        {"state": "deleted", "kind": "session", "id": "s1", "modified": 9},
        # Data sent with a tombstone is ignored (nothing of a deleted item is kept).
        {
            "state": "deleted",
            "kind": "session",
            "id": "s1",
            "modified": 9,
            "data": {"name": "secret"},
        },
        # Data that is not even an object: still a valid tombstone.
        {"state": "deleted", "kind": "session", "id": "s1", "modified": 9, "data": "x"},
    ],
)
def test_tombstones(tombstone: dict[str, Any]) -> None:
    item = only_item(parse_page(URL, body([tombstone])))
    assert item.deleted and item.state == "deleted"
    assert item.data is None
    assert (item.kind, item.id, item.modified_number) == ("session", "s1", 9)


# --- broken items ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ({"state": "updated", "kind": "session", "modified": 1, "data": {}}, "no usable `id`"),
        ({"state": "updated", "kind": "session", "id": "", "data": {}}, "no usable `id`"),
        ({"state": "updated", "kind": "session", "id": True, "data": {}}, "no usable `id`"),
        ({"state": "updated", "kind": "session", "id": 1.5, "data": {}}, "no usable `id`"),
        ({"state": "updated", "kind": "session", "id": ["a"], "data": {}}, "no usable `id`"),
        ({"state": "changed", "kind": "session", "id": "x", "data": {}}, "unknown `state`"),
        ({"kind": "session", "id": "x", "data": {}}, "unknown `state`"),  # no state
        # The test suite's captures: data replaced by a hash string.
        (
            {"state": "updated", "kind": "session", "id": "x", "data": "9f86d081884c7d659a2f"},
            "`data` is not a JSON object",
        ),
        ({"state": "updated", "kind": "session", "id": "x"}, "`data` is not a JSON object"),
        ({"state": "updated", "kind": "session", "id": "x", "data": [1]}, "`data` is not a JSON"),
        # No kind and no data type to read one from.
        ({"state": "updated", "id": "x", "data": {"name": "n"}}, "no `kind`"),
        ({"state": "deleted", "id": "x"}, "no `kind`"),
        ("an item", "not a JSON object"),  # the item itself is not an object
        (None, "not a JSON object"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_broken_items_are_rejected_and_the_page_kept(broken: Any, reason: str) -> None:
    page = parse_page(URL, body([updated("good-1"), broken, updated("good-2")]))
    assert [item.id for item in page.items] == ["good-1", "good-2"]
    assert len(page.rejected) == 1
    rejected = page.rejected[0]
    assert isinstance(rejected, Rejected)
    assert reason in rejected.reason
    assert rejected.position == 1
    assert rejected.raw  # an excerpt of what was sent, for the operator


def test_rejected_keeps_id_and_kind_when_known() -> None:
    page = parse_page(URL, body([{"state": "updated", "kind": "session", "id": 7, "data": "h"}]))
    assert not page.items
    assert (page.rejected[0].kind, page.rejected[0].id) == ("session", "7")


def test_rejected_raw_is_capped() -> None:
    huge = {"state": "updated", "kind": "session", "id": "x", "data": "h" * 100_000}
    rejected = parse_page(URL, body([huge])).rejected[0]
    assert 0 < len(rejected.raw) <= 2_000


def test_rejected_raw_of_a_huge_integer_item() -> None:
    # orjson cannot dump integers beyond 64 bits; the excerpt must still be made.
    broken = {"state": "bogus", "kind": "session", "id": "x", "modified": 2**70}
    rejected = parse_page(URL, body([broken])).rejected[0]
    assert str(2**70) in rejected.raw


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ({"@type": "Slot", "@id": "s"}, "Slot"),  # missing kind, read from @type
        ({"type": "FacilityUse", "id": "f"}, "FacilityUse"),  # older `type` spelling
    ],
)
def test_missing_kind_is_read_from_the_data_type(data: dict[str, Any], kind: str) -> None:
    item = only_item(parse_page(URL, body([{"state": "updated", "id": "x", "data": data}])))
    assert item.kind == kind
    assert item.data == data


# --- duplicates within a page ------------------------------------------------------------


def test_duplicate_key_in_a_page_keeps_the_later() -> None:
    items = [updated("a", 1, name="old"), updated("b", 1), updated("a", 2, name="new")]
    page = parse_page(URL, body(items))
    assert [(i.id, i.modified_number) for i in page.items] == [("b", 1), ("a", 2)]
    assert page.items[1].data is not None and page.items[1].data["name"] == "new"


def test_duplicate_key_later_tombstone_wins() -> None:
    page = parse_page(URL, body([updated("a", 1), deleted("a", 2)]))
    assert [(i.id, i.state) for i in page.items] == [("a", "deleted")]


def test_same_id_in_two_kinds_is_two_items() -> None:
    # models-php mixes FacilityUse/Slot and IndividualFacilityUse/Slot in one page.
    items = [updated("1", kind="FacilityUse/Slot"), updated("1", kind="IndividualFacilityUse/Slot")]
    page = parse_page(URL, body(items))
    assert sorted(i.kind for i in page.items) == ["FacilityUse/Slot", "IndividualFacilityUse/Slot"]


def test_integer_and_string_id_are_one_key() -> None:
    # 5 and "5" are both held as "5": the later wins, as for any duplicate.
    page = parse_page(URL, body([updated(5, 1), updated("5", 2)]))
    assert [(i.id, i.modified_number) for i in page.items] == [("5", 2)]


# --- origin checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feed_url", "next_url"),
    [
        ("https://a.example/feed", "https://a.example/feed?afterId=2"),  # same origin
        ("https://a.example/feed", "https://a.example:443/feed?afterId=2"),  # default port
        ("http://a.example:80/feed", "http://a.example/other"),  # default port, http
        ("https://A.Example/feed", "https://a.example/feed"),  # host case does not matter
        ("http://127.0.0.1:8123/f", "http://127.0.0.1:8123/f?x=1"),  # explicit port
    ],
)
def test_check_origin_accepts_same_origin(feed_url: str, next_url: str) -> None:
    check_origin(feed_url, next_url)


@pytest.mark.parametrize(
    ("feed_url", "next_url"),
    [
        ("https://a.example/feed", "https://b.example/feed"),  # another host
        ("https://a.example/feed", "http://a.example/feed"),  # another scheme
        ("https://a.example/feed", "https://a.example:8443/feed"),  # another port
        ("https://a.example/feed", "https://a.example.evil.test/feed"),  # suffix trick
        ("https://a.example/feed", "https://a.example@evil.test/feed"),  # userinfo trick
        ("http://127.0.0.1:8123/f", "http://127.0.0.1:8124/f"),  # another port
    ],
)
def test_check_origin_refuses_other_origins(feed_url: str, next_url: str) -> None:
    with pytest.raises(ForeignNextUrl) as caught:
        check_origin(feed_url, next_url)
    assert next_url in str(caught.value)
