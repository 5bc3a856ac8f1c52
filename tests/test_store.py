"""write_page against a real PostgreSQL: atomic pages, the `modified` rule, tombstones, sources."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DataError, OperationalError

from harvester import fastpath, feedstate, pagewrite, records, rpde
from harvester.config import Source
from harvester.errors import LeaseLost
from harvester.feedstate import FeedRow
from harvester.pagewrite import PageWrite

FEED_URL = "https://publisher.example/feed"
KIND = "ScheduledSession"

Held = dict[tuple[str, str], dict[str, Any]]


def add_feed(engine: Engine, source: str = "src", url: str = FEED_URL) -> FeedRow:
    """Register a source with one feed; its stored row."""
    with engine.begin() as conn:
        feedstate.sync_source(conn, Source(name=source, feeds=(url,)), "https://checkout.example/")
        (feed,) = feedstate.load_feeds(conn, [(source, url)])
    return feed


def item(rpde_id: Any, modified: Any, state: str = "updated", **data: Any) -> dict[str, Any]:
    """An RPDE item of kind ScheduledSession."""
    raw: dict[str, Any] = {"state": state, "kind": KIND, "id": rpde_id, "modified": modified}
    if state == "updated":
        raw["data"] = {"@type": KIND, "@id": f"https://publisher.example/s/{rpde_id}", **data}
    return raw


def parse(feed: FeedRow, items: list[Any], next_url: str | None = None) -> rpde.Page:
    """The page at the feed's position, with `items`, pointing to `next_url`."""
    body = json.dumps({"items": items, "next": next_url or f"{feed.next_url}?p={len(items)}"})
    return rpde.parse_page(feed.next_url, body.encode())


def write(
    engine: Engine, feed: FeedRow, items: list[Any], next_url: str | None = None,
    owner: str | None = None,
) -> FeedRow:  # fmt: skip
    """Commit one page; the feed moved to the page's `next`."""
    page = parse(feed, items, next_url)
    page_write = PageWrite(
        records.to_rows(page.items)[0], page.rejected, page.url, page.next_url, page.is_last
    )
    with engine.begin() as conn:
        pagewrite.write_page(conn, feed, page_write, owner=owner)
    return replace(feed, next_url=page.next_url)


def held(engine: Engine, source: str = "src") -> Held:
    """(kind, rpde_id) → modified, modified_text and data of the source's held items."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT kind, rpde_id, modified, modified_text, data FROM harvester.items"
                " WHERE source = :source"
            ),
            {"source": source},
        ).all()
    return {
        (row.kind, row.rpde_id): {
            "modified": row.modified, "modified_text": row.modified_text, "data": row.data,
        }
        for row in rows
    }  # fmt: skip


def stored_feed(engine: Engine, feed_id: int) -> Any:
    """The feed's row as stored."""
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT next_url, pages, items_written FROM harvester.feeds WHERE id = :id"),
            {"id": feed_id},
        ).one()


def rejected_rows(engine: Engine) -> list[Any]:
    """All rejected items."""
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT item_key, kind, rpde_id, reason, page_url FROM harvester.rejected_items"
                 " ORDER BY item_key")
        ).all()  # fmt: skip


# --- one transaction per page ------------------------------------------------------------


def test_page_and_position_commit_together(engine: Engine) -> None:
    feed = add_feed(engine)
    feed = write(engine, feed, [item("a", 1, name="a1"), item("b", 1)])
    before_items, before_feed = held(engine), stored_feed(engine, feed.id)
    # Another worker moved the feed on: this worker's view of the position is stale.
    stale = replace(feed, next_url=FEED_URL)
    with pytest.raises(LeaseLost):
        write(engine, stale, [
            item("a", 2, name="a2"), item("b", 2, state="deleted"), item("c", 2),
            {"state": "updated", "id": "x", "kind": KIND},  # rejected: no data
        ])  # fmt: skip
    # The COPY, upserts, deletes and rejected rows all ran, then were rolled back.
    assert held(engine) == before_items
    assert held(engine)[(KIND, "a")]["data"]["name"] == "a1"
    assert stored_feed(engine, feed.id) == before_feed
    assert rejected_rows(engine) == []


def test_position_moves_with_the_page(engine: Engine) -> None:
    feed = add_feed(engine)
    write(engine, feed, [item("a", 1), item("b", 1)], f"{FEED_URL}?afterId=%7Bb%7D")
    row = stored_feed(engine, feed.id)
    assert row.next_url == f"{FEED_URL}?afterId=%7Bb%7D"  # byte for byte
    assert (row.pages, row.items_written) == (1, 2)


def test_lease_of_another_worker_refuses_the_page(engine: Engine) -> None:
    feed = add_feed(engine)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE harvester.feeds SET lease_owner = 'other',"
                 " lease_until = now() + interval '1 minute' WHERE id = :id"),
            {"id": feed.id},
        )  # fmt: skip
    with pytest.raises(LeaseLost):
        write(engine, feed, [item("a", 1)], owner="me")
    assert held(engine) == {}
    assert stored_feed(engine, feed.id).next_url == FEED_URL


# --- the `modified` rule -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "replaced"),
    [
        (5, 4, False),  # older never replaces newer
        (5, 5, True),  # equal replaces (a re-publish with the same stamp)
        (5, 6, True),  # newer replaces
        # .NET ticks above 2^53: a float would call these equal.
        (638760839316164611, 638760839316164610, False),
        (638760839316164610, 638760839316164611, True),
        (2**64 + 1, 2**64, False),  # beyond 64 bits, exact
        (2**64, 2**64 + 1, True),
        ("638760839316164611", 638760839316164610, False),  # a digit string is an integer
        (9, "10", True),  # as integers 10 > 9 (as text "10" < "9")
        ("2018-01-27T16:38:46Z", "2018-01-27T16:38:45Z", False),  # ISO text, older
        ("2018-01-27T16:38:45Z", "2018-01-27T16:38:45Z", True),  # ISO text, equal
        ("2018-01-27T16:38:45Z", "2019-01-01T00:00:00Z", True),  # ISO text, newer
        (None, 1, True),  # nothing to compare: the later item wins
        (1, None, True),
    ],
)
def test_modified_rule(engine: Engine, first: Any, second: Any, replaced: bool) -> None:
    feed = add_feed(engine)
    feed = write(engine, feed, [item("a", first, name="first")])
    write(engine, feed, [item("a", second, name="second")])
    expected = "second" if replaced else "first"
    assert held(engine)[(KIND, "a")]["data"]["name"] == expected


@pytest.mark.parametrize(
    ("modified", "number", "text_value"),
    [
        (638760839316164610, Decimal(638760839316164610), None),  # above 2^53
        (2**64 + 7, Decimal(2**64 + 7), None),  # above 2^64
        ("00012", Decimal(12), None),  # digit string → integer
        ("2018-01-27T16:38:45Z", None, "2018-01-27T16:38:45Z"),  # text
    ],
)
def test_modified_is_stored_exactly(
    engine: Engine, modified: Any, number: Decimal | None, text_value: str | None
) -> None:
    write(engine, add_feed(engine), [item("a", modified)])
    stored = held(engine)[(KIND, "a")]
    assert stored["modified"] == number
    assert stored["modified_text"] == text_value


# --- tombstones --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held_modified", "tombstone_modified", "removed"),
    [
        (10, 9, False),  # an older tombstone does not delete a newer item
        (10, 10, True),  # equal: deleted
        (10, 11, True),  # newer: deleted
        (638760839316164611, 638760839316164610, False),  # exact above 2^53
        ("2020-01-02", "2020-01-01", False),  # text stamps
        ("2020-01-02", "2020-01-03", True),
    ],
)
def test_tombstone_rule(
    engine: Engine, held_modified: Any, tombstone_modified: Any, removed: bool
) -> None:
    feed = add_feed(engine)
    feed = write(engine, feed, [item("a", held_modified), item("keep", 1)])
    write(engine, feed, [item("a", tombstone_modified, state="deleted")])
    assert ((KIND, "a") not in held(engine)) is removed
    assert (KIND, "keep") in held(engine)


def test_tombstone_for_an_unknown_item_is_harmless(engine: Engine) -> None:
    feed = add_feed(engine)
    feed = write(engine, feed, [item("a", 1)])
    write(engine, feed, [item("never-seen", 5, state="deleted")])
    assert list(held(engine)) == [(KIND, "a")]


def test_delete_then_recreate(engine: Engine) -> None:
    feed = add_feed(engine)
    feed = write(engine, feed, [item("a", 1, name="v1")])
    feed = write(engine, feed, [item("a", 2, state="deleted")])
    assert held(engine) == {}
    write(engine, feed, [item("a", 3, name="v3")])
    assert held(engine)[(KIND, "a")]["data"]["name"] == "v3"


# --- sources -----------------------------------------------------------------------------


def test_two_sources_with_the_same_ids_do_not_collide(engine: Engine) -> None:
    one = add_feed(engine, "one", "https://one.example/feed")
    two = add_feed(engine, "two", "https://two.example/feed")
    one = write(engine, one, [item("1", 5, name="one-1"), item("2", 5, name="one-2")])
    write(engine, two, [item("1", 1, name="two-1"), item("2", 1, name="two-2")])
    # The older `modified` of source two did not lose to source one.
    assert {key: v["data"]["name"] for key, v in held(engine, "one").items()} == {
        (KIND, "1"): "one-1", (KIND, "2"): "one-2",
    }  # fmt: skip
    assert {key: v["data"]["name"] for key, v in held(engine, "two").items()} == {
        (KIND, "1"): "two-1", (KIND, "2"): "two-2",
    }  # fmt: skip
    # A tombstone in source one leaves source two's item alone.
    write(engine, one, [item("1", 6, state="deleted")])
    assert list(held(engine, "one")) == [(KIND, "2")]
    assert len(held(engine, "two")) == 2


# --- rejected items ----------------------------------------------------------------------


BROKEN = [
    {"state": "updated", "kind": KIND, "id": "h1", "modified": 1, "data": "9f86d081884c7d65"},
    {"state": "updated", "kind": KIND, "modified": 1, "data": {}},  # no id
    {"state": "sideways", "kind": KIND, "id": "s1", "data": {}},  # unknown state
]


def test_rejected_items_are_recorded_with_reasons(engine: Engine) -> None:
    write(engine, add_feed(engine), [item("ok", 1), *BROKEN])
    rows = rejected_rows(engine)
    assert len(rows) == 3
    reasons = {row.rpde_id: row.reason for row in rows}
    assert "`data` is not a JSON object" in reasons["h1"]
    assert "unknown `state`" in reasons["s1"]
    assert "no usable `id`" in reasons[None]
    assert list(held(engine)) == [(KIND, "ok")]


def test_reharvest_does_not_duplicate_rejected_items(engine: Engine) -> None:
    feed = add_feed(engine)
    write(engine, feed, [item("ok", 1), *BROKEN], f"{FEED_URL}?p=2")
    # The feed is harvested again from its first page (a restart, or a backfill).
    with engine.begin() as conn:
        feed = feedstate.start_backfill(conn, feed.id)
    feed = write(engine, feed, [item("ok", 1), *BROKEN], f"{FEED_URL}?p=2")
    assert len(rejected_rows(engine)) == 3
    # The same broken item with an id, seen again on another page: still one row.
    write(engine, feed, [BROKEN[0]], f"{FEED_URL}?p=3")
    rows = rejected_rows(engine)
    assert len(rows) == 3
    assert [row.page_url for row in rows if row.rpde_id == "h1"] == [f"{FEED_URL}?p=2"]


# --- the page path's statements run on psycopg: their errors are SQLAlchemy's ------------


def test_page_statement_errors_are_sqlalchemy_errors(engine: Engine) -> None:
    """A value the database refuses comes out as sqlalchemy DataError (a feed problem)."""
    with engine.begin() as conn, pytest.raises(DataError) as caught:
        fastpath.run(conn, "SELECT CAST(:value AS integer)", {"value": "not a number"})
    assert isinstance(caught.value.orig, psycopg.errors.InvalidTextRepresentation)
    assert not caught.value.connection_invalidated
    assert "[parameters:" not in str(caught.value)  # a page's arrays are not logged whole


def test_a_lost_connection_is_invalidated_and_replaced(engine: Engine) -> None:
    """A killed backend mid-page: OperationalError, and the pool hands out a new connection."""
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as killer:
            killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(OperationalError) as caught:
            fastpath.run(conn, "SELECT 1")
        assert caught.value.connection_invalidated
        assert conn.invalidated
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid


def test_psycopg_sql_names_parameters_and_keeps_casts() -> None:
    """`:name` becomes `%(name)s`; `::type` casts and literal percent signs survive."""
    sql = "SELECT :a::jsonb, CAST(:b_2 AS text[]), 'x%' LIKE :c, now()::date"
    assert fastpath.psycopg_sql(sql) == (
        "SELECT %(a)s::jsonb, CAST(%(b_2)s AS text[]), 'x%%' LIKE %(c)s, now()::date"
    )


def test_the_staging_table_is_the_row_type_typed_as_items(engine: Engine) -> None:
    """records.Row is the one column list: the staging table has its fields, in order, and
    each field items keeps has items' own type there (data and the window ends excepted)."""
    types = """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid
        WHERE a.attnum > 0 AND NOT a.attisdropped
          AND (c.relname = 'harvester_staging' AND c.relpersistence = 't'
               OR c.relname = 'items' AND c.relnamespace = 'harvester'::regnamespace)
        ORDER BY c.relname, a.attnum
    """
    with engine.connect() as conn:
        found = conn.execute(text(types)).all()
    staging = [(name, kind) for table, name, kind in found if table == "harvester_staging"]
    items = {name: kind for table, name, kind in found if table == "items"}
    assert [name for name, _ in staging] == list(records.Row._fields)
    staged_only = {"data", "bookable_from", "bookable_until"}
    assert set(records.Row._fields) - set(items) == {"bookable_from", "bookable_until"}
    assert all(kind == items[name] for name, kind in staging if name not in staged_only)
    # What the upsert writes itself, and what a checkout's refusal sets (checkout.py).
    assert {name for name in items} - set(records.Row._fields) == {
        "source",
        "feed_id",
        "seen_generation",
        "updated_at",
        "bookable",
        "refused_at",
    }
