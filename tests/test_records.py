"""Items to staging rows: NUL characters never reach PostgreSQL text (it refuses them).

NUL is replaced by U+FFFD as the page is read, before its items are de-duplicated, so
two ids that differ only by a NUL stay two items.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

from harvester import feedstate, pagewrite, records, rpde
from harvester.config import Source

PAGE = (
    b'{"next": "http://pub.example/feed?after=1", "items": ['
    b'{"state": "updated", "kind": "ScheduledSession", "id": "a\\u0000b", "modified": 1,'
    b' "data": {"@type": "ScheduledSession", "@id": "https://x.example/s/1\\u0000",'
    b' "identifier": "id\\u00001", "superEvent": "https://x.example/p\\u0000",'
    b' "startDate": "2030-01-01T10:00:00Z", "name": "Yoga\\u0000"}},'
    b'{"state": "updated", "kind": "ScheduledSession", "id": "plain", "modified": 2,'
    b' "data": {"@type": "ScheduledSession", "@id": "https://x.example/s/2",'
    b' "identifier": "id2", "startDate": "2030-01-01T10:00:00Z"}}]}'
)


def test_rows_hold_no_nul_and_clean_rows_are_untouched() -> None:
    """NUL becomes U+FFFD in every string field; a row without NUL is built as ever."""
    page = rpde.parse_page("http://pub.example/feed", PAGE)
    (dirty, clean), unstorable = records.to_rows(page.items)
    assert unstorable == []
    assert not any(isinstance(value, str) and "\x00" in value for value in dirty)
    assert dirty.rpde_id == "a\ufffdb" and dirty.identifier == "id\ufffd1"
    assert dirty.parent_ref == "https://x.example/p\ufffd"
    assert "\\u0000" not in dirty.data and "Yoga\ufffd" in dirty.data
    assert clean == records.to_row(page.items[1])


def test_a_page_with_nul_is_stored(engine: Engine) -> None:
    """The page commits: nothing of it is lost to PostgreSQL refusing a NUL."""
    page = rpde.parse_page("http://pub.example/feed", PAGE)
    source = Source(name="s", feeds=("http://pub.example/feed",))
    with engine.begin() as conn:
        feedstate.sync_source(conn, source, None)
        feed = feedstate.load_feeds(conn)[0]
        rows = records.to_rows(page.items)[0]
        write = pagewrite.PageWrite(rows, [], feed.url, page.next_url, False)
        pagewrite.write_page(conn, feed, write)
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT rpde_id FROM harvester.items ORDER BY 1")).scalars()
        assert list(ids) == ["a\ufffdb", "plain"]
