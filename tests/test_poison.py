"""One bad item never costs its page: poison items among good ones, read and written.

Each poison item is put on a page between two good items. The pure checks say what the
item becomes (repaired and held, or set aside with its reason); the database checks write
the page with `pagewrite.write_page` on a real PostgreSQL and find every good item held, the
poison where it should be, and the feed moved on.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, text

from harvester import feedstate, pagewrite, rpde
from harvester.config import Source
from harvester.errors import InvalidPage
from harvester.feedstate import FeedRow
from harvester.pagewrite import PageWrite
from harvester.pipeline import Parsed

FEED_URL = "http://publisher.example/feed"
NEXT_URL = f"{FEED_URL}?afterChangeNumber=3"
KIND = "ScheduledSession"


def good(number: int) -> str:
    """A well-formed ScheduledSession item."""
    return json.dumps({
        "state": "updated", "kind": KIND, "id": f"good{number}", "modified": number,
        "data": {"@type": KIND, "@id": f"https://publisher.example/s/{number}",
                 "startDate": "2030-01-01T10:00:00Z"},
    })  # fmt: skip


def updated(rpde_id: str = '"p1"', kind: str = f'"{KIND}"', modified: str = "2",
            data: str = f'{{"@type": "{KIND}"}}') -> str:  # fmt: skip
    """A poison item's JSON text, each part given as raw JSON text."""
    return f'{{"state": "updated", "kind": {kind}, "id": {rpde_id}, "modified": {modified},' \
           f' "data": {data}}}'  # fmt: skip


def page_body(*poison: str) -> bytes:
    """A page: a good item, the poison, another good item."""
    items = ", ".join([good(1), *poison, good(3)])
    return f'{{"next": "{NEXT_URL}", "items": [{items}]}}'.encode()


def nested(depth: int) -> str:
    """JSON text of an object nested `depth` levels deep."""
    return '{"a": ' * depth + '"x"' + "}" * depth


def random_text(characters: int) -> str:
    """Text that does not compress (an index row holds it as it is)."""
    return secrets.token_hex(characters // 2)


@dataclass(frozen=True)
class Case:
    """A poison item and what must become of it."""

    items: tuple[str, ...]
    held: tuple[str, ...] = ()  # rpde ids held besides good1 and good3
    reason: str | None = None  # the reason it is set aside with, if it is


LONG = random_text(10_000)
CASES = {
    "surrogate in data": Case((updated(data=f'{{"@type": "{KIND}", "name": "a\\ud800b"}}'),),
                              held=("p1",)),
    "surrogate in id": Case((updated(rpde_id='"p\\ud800"'),), held=("p\ufffd",)),
    "surrogate in kind": Case((updated(kind='"Sched\\udc00"'),), held=("p1",)),
    "surrogate pair is kept": Case((updated(rpde_id='"p\\ud83d\\ude00"'),), held=("p\U0001f600",)),
    "modified --5": Case((updated(modified='"--5"'),), held=("p1",)),
    "modified of 5,000 digit text": Case((updated(modified='"' + "9" * 5000 + '"'),),
                                         reason="more than 100 digits"),
    "modified of 5,000 digits": Case((updated(modified="9" * 5000),),
                                     reason="integer of more than 4,300 digits"),
    "modified of 150 digits": Case((updated(modified="9" * 150),), reason="more than 100 digits"),
    "integer of 4,400 digits in data": Case(
        (updated(data=f'{{"@type": "{KIND}", "n": {"7" * 4400}}}'),),
        reason="integer of more than 4,300 digits"),
    "ids differing by a NUL": Case((updated(rpde_id='"a\\u0000b"'), updated(rpde_id='"ab"')),
                                   held=("a\ufffdb", "ab")),
    "tombstone with NUL": Case(('{"state": "deleted", "kind": "S\\u0000", "id": "a\\u0000",'
                                ' "modified": 2}',)),
    "set aside with NUL": Case(('{"state": "gone", "kind": "S\\u0000", "id": "a\\u0000b",'
                                ' "modified": 2}',), reason="unknown `state`"),
    "id of 10,000 characters": Case((updated(rpde_id=f'"{LONG}"'),),
                                    reason="`id` is longer than 1000 bytes"),
    "kind of 10,000 characters": Case((updated(kind=f'"{LONG}"'),),
                                      reason="`kind` is longer than 200 bytes"),
    "set aside with an id of 10,000": Case(
        (f'{{"state": "gone", "kind": "{KIND}", "id": "{LONG}", "modified": 2}}',),
        reason="unknown `state`"),
    "superEvent of 10,000 characters": Case(
        (updated(data=f'{{"@type": "{KIND}", "superEvent": "https://p.example/{LONG}"}}'),),
        held=("p1",)),
    "parent @id of 10,000 characters": Case(
        (updated(kind='"SessionSeries"',
                 data=f'{{"@type": "SessionSeries", "@id": "https://p.example/{LONG}"}}'),),
        held=("p1",)),
    "nested 300 levels": Case((updated(data=f'{{"@type": "{KIND}", "x": {nested(300)}}}'),),
                              held=("p1",)),
    "nested 1,000 levels": Case((updated(data=f'{{"@type": "{KIND}", "x": {nested(1000)}}}'),),
                                reason="cannot be stored"),
    "bad UTF-8 in data": Case((updated(data='{"@type": "ScheduledSession", "n": "\xff"}'),),
                              held=("p1",)),
}  # fmt: skip


def parse(body: bytes) -> Parsed:
    """The page as the pipeline turns it into rows."""
    return Parsed.of(rpde.parse_page(FEED_URL, body), None, len(body))


def body_of(case: Case) -> bytes:
    """The case's page; the bad UTF-8 case is given as latin-1 bytes on purpose."""
    text_body = page_body(*case.items).decode()
    return text_body.encode("utf-8", "surrogatepass").replace(b"\xc3\xbf", b"\xff")


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_poison_item_is_repaired_or_set_aside_alone(case: Case) -> None:
    parsed = parse(body_of(case))
    ids = [row.rpde_id for row in parsed.rows]
    assert ids[0] == "good1" and ids[-1] == "good3"
    assert set(ids) - {"good1", "good3"} >= set(case.held)
    for row in parsed.rows:  # nothing PostgreSQL text would refuse
        for value in row:
            if isinstance(value, str):
                assert not rpde.UNSTORABLE_CHARACTERS.search(value)
    if case.reason is None:
        assert parsed.rejected == []
    else:
        (rejected,) = parsed.rejected
        assert case.reason in rejected.reason
        assert not rpde.UNSTORABLE_CHARACTERS.search(rejected.raw)


def add_feed(engine: Engine) -> FeedRow:
    """A source with the one feed."""
    with engine.begin() as conn:
        feedstate.sync_source(conn, Source(name="src", feeds=(FEED_URL,)), None)
        (feed,) = feedstate.load_feeds(conn)
    return feed


def write(engine: Engine, feed: FeedRow, parsed: Parsed, *, one_by_one: bool = False) -> list[Any]:
    """Commit the page; the rows the database refused."""
    page = PageWrite(parsed.rows, parsed.rejected, parsed.url, parsed.next_url, False)
    with engine.begin() as conn:
        return pagewrite.write_page(conn, feed, page, one_by_one=one_by_one).refused


def stored(engine: Engine) -> tuple[set[str], list[str], str]:
    """Held rpde ids, rejected reasons, and the feed's position."""
    with engine.connect() as conn:
        ids = set(conn.execute(text("SELECT rpde_id FROM harvester.items")).scalars())
        reasons = list(conn.execute(text("SELECT reason FROM harvester.rejected_items")).scalars())
        position = conn.execute(text("SELECT next_url FROM harvester.feeds")).scalar_one()
    return ids, reasons, position


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_poison_page_is_written_whole(case: Case, engine: Engine) -> None:
    feed = add_feed(engine)
    write(engine, feed, parse(body_of(case)))
    ids, reasons, position = stored(engine)
    assert {"good1", "good3", *case.held} <= ids
    assert position == NEXT_URL
    if case.reason is not None:
        assert len(reasons) == 1 and case.reason in reasons[0]


def test_a_row_the_database_refuses_is_set_aside_alone(engine: Engine) -> None:
    """What no rule foresaw (here a CHECK constraint) costs its item, not its page."""
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE harvester.items ADD CONSTRAINT no_poison"
                          " CHECK (data->>'name' IS DISTINCT FROM 'poison')"))  # fmt: skip
    feed = add_feed(engine)
    parsed = parse(page_body(updated(data=f'{{"@type": "{KIND}", "name": "poison"}}')))
    with pytest.raises(Exception, match="no_poison"):
        write(engine, feed, parsed)
    (refused,) = write(engine, feed, parsed, one_by_one=True)
    assert refused.id == "p1" and "refused by the database" in refused.reason
    assert "no_poison" in refused.reason
    ids, reasons, position = stored(engine)
    assert ids == {"good1", "good3"} and position == NEXT_URL
    assert len(reasons) == 1 and "no_poison" in reasons[0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>Service Unavailable</html>", "the body is not JSON"),
        (b'{"next": "x", "items": [' + b"[" * 5000 + b"]" * 5000 + b"]}", "nested too deeply"),
        (b'{"next": "x", "items": [' + b"[" * 100_000 + b"]", "nested too deeply"),
        (b"", "the body is not JSON"),
        (b'"just a string"', "not a JSON object"),
    ],
    ids=["html", "nested-5000", "nested-100000", "empty", "string"],
)
def test_a_page_that_cannot_be_read_is_a_page_failure_naming_it(body: bytes, message: str) -> None:
    with pytest.raises(InvalidPage) as raised:
        rpde.parse_page(FEED_URL, body)
    assert message in str(raised.value) and FEED_URL in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_bom_and_bad_utf8_are_read_tolerantly() -> None:
    body = b"\xef\xbb\xbf" + page_body(updated(data='{"@type": "ScheduledSession", "n": "ok"}'))
    assert [item.id for item in rpde.parse_page(FEED_URL, body).items] == ["good1", "p1", "good3"]


# --- a real harvester against a publisher serving poison ---------------------------------

POISON_PAGE_ITEMS = [
    updated(rpde_id='"s1"', data=f'{{"@type": "{KIND}", "name": "a\\ud800b"}}'),
    updated(rpde_id='"s2\\ud800"'),
    updated(rpde_id='"m1"', modified='"--5"'),
    updated(rpde_id='"m2"', modified='"' + "9" * 5000 + '"'),  # set aside
    updated(rpde_id='"m3"', modified="9" * 5000),  # set aside
    updated(rpde_id='"n1"', data=f'{{"@type": "{KIND}", "n": {"7" * 4400}}}'),  # set aside
    updated(rpde_id='"a\\u0000b"'),
    updated(rpde_id='"ab"'),
    '{"state": "deleted", "kind": "S\\u0000", "id": "t\\u0000", "modified": 2}',
    '{"state": "gone", "kind": "S\\u0000", "id": "g\\u0000b", "modified": 2}',  # set aside
    updated(rpde_id=f'"{LONG}"'),  # set aside
    updated(rpde_id='"k1"', kind=f'"{LONG}"'),  # set aside
    updated(rpde_id='"d1"', data=f'{{"@type": "{KIND}", "x": {nested(300)}}}'),
    updated(rpde_id='"d2"', data=f'{{"@type": "{KIND}", "x": {nested(1000)}}}'),  # set aside
]
POISON_HELD = {"good1", "good3", "s1", "s2\ufffd", "m1", "a\ufffdb", "ab", "d1"}
POISON_SET_ASIDE = 7


class PoisonPublisher:
    """Serves a feed of two pages on 127.0.0.1: the poison page, then the last page."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        pages: dict[str, bytes] = {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path, b"")
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.feed_url, last = f"{base}/feed", f"{base}/feed?after=3"
        items = ", ".join([good(1), *POISON_PAGE_ITEMS, good(3)])
        pages["/feed"] = f'{{"next": "{last}", "items": [{items}]}}'.encode()
        pages["/feed?after=3"] = f'{{"next": "{last}", "items": []}}'.encode()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def test_a_harvester_takes_a_poison_page_and_moves_on(
    engine: Engine, db_url: str, tmp_path: Any
) -> None:
    from helpers import FAST_SETTINGS, parse_status, run_harvester, write_config

    publisher = PoisonPublisher()
    try:
        config = write_config(
            tmp_path / "h.toml",
            f'[[sources]]\nname = "poison"\nfeeds = ["{publisher.feed_url}"]\n',
            FAST_SETTINGS,
        )
        result = run_harvester(db_url, "run", "--once", "--config", str(config))
    finally:
        publisher.close()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    ids, reasons, position = stored(engine)
    assert ids == POISON_HELD
    assert len(reasons) == POISON_SET_ASIDE, reasons
    assert position.endswith("/feed?after=3")
    line = parse_status(run_harvester(db_url, "status").stdout).lines[publisher.feed_url]
    assert line[3] == "caught_up" and line[6] == str(POISON_SET_ASIDE)
