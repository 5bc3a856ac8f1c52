"""Reading a feed ahead and committing the pages already read together.

The stream keeps RPDE's order, hands an error over only after the pages before it, and
reads no further ahead than its byte bound. Pages written together end exactly as they
would one by one: a later page's version of an item wins, tombstones included.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, text

from harvester import feedstate, pagewrite, pipeline, rpde
from harvester.config import Source
from harvester.feedstate import FeedRow
from harvester.pagewrite import PageWrite
from harvester.pipeline import BATCH_ITEMS, Parsed, extend_batch
from harvester.readahead import PROCESS_BUDGET, PageStream


@dataclass(frozen=True)
class FakePage:
    """A page as the stream sees it."""

    number: int
    next_url: str
    ends_feed: bool
    size: int


class Publisher:
    """Pages 0..n-1 of a feed; an error instead of page `fail_at`; records each fetch."""

    def __init__(self, pages: int, size: int = 10, fail_at: int | None = None) -> None:
        self.pages, self.size, self.fail_at = pages, size, fail_at
        self.fetched: list[int] = []
        self.lock = threading.Lock()

    def fetch(self, url: str) -> FakePage:
        """The page whose number ends the URL."""
        number = int(url.rsplit("/", 1)[1])
        with self.lock:
            self.fetched.append(number)
        if number == self.fail_at:
            raise RuntimeError(f"page {number} failed")
        last = number == self.pages - 1
        return FakePage(number, f"feed/{number if last else number + 1}", last, self.size)


def stream_of(publisher: Publisher, ahead_bytes: int = 1_000) -> PageStream[FakePage]:
    """A stream over the publisher's feed from page 0."""
    return PageStream(publisher.fetch, "feed/0", lambda: False, ahead_bytes)


def test_pages_come_in_order_and_the_stream_ends_with_the_feed() -> None:
    publisher = Publisher(pages=6)
    stream = stream_of(publisher)
    taken = [stream.take() for _ in range(6)]
    assert [page.number for page in taken if page] == list(range(6))
    time.sleep(0.1)
    assert publisher.fetched == list(range(6))  # nothing after the last page
    assert stream.take_ready() is None


def test_an_error_comes_after_the_pages_before_it() -> None:
    stream = stream_of(Publisher(pages=6, fail_at=3))
    assert [stream.take().number for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
    time.sleep(0.1)
    assert stream.take_ready() is None  # an error is never gathered into a batch
    with pytest.raises(RuntimeError, match="page 3 failed"):
        stream.take()


def test_reading_ahead_is_bounded_in_bytes() -> None:
    publisher = Publisher(pages=100, size=10)
    stream = stream_of(publisher, ahead_bytes=35)
    time.sleep(0.3)
    # Pages of 10 bytes: three fit in 35, and the one the reader judges by comes first.
    assert len(publisher.fetched) <= 4
    stream.take()
    time.sleep(0.2)
    assert len(publisher.fetched) <= 5
    stream.close()


def test_a_large_page_is_read_alone_ahead() -> None:
    publisher = Publisher(pages=100, size=5_000_000)
    stream = stream_of(publisher, ahead_bytes=2_000_000)
    time.sleep(0.3)
    assert len(publisher.fetched) == 1  # one page ahead, as before read-ahead
    stream.take()
    time.sleep(0.2)
    assert len(publisher.fetched) == 2
    stream.close()


def test_a_paused_stream_reads_nothing_more_until_the_pause_ends() -> None:
    publisher = Publisher(pages=10**9, size=1)  # read on and on while it may
    stream = stream_of(publisher, ahead_bytes=10**9)
    stream.take()  # what a writer holds while it waits for its write turn
    with stream.paused():
        time.sleep(0.2)
        fetched = len(publisher.fetched)
        time.sleep(0.3)
        assert len(publisher.fetched) == fetched  # at most the request in flight ended
    time.sleep(0.3)
    assert len(publisher.fetched) > fetched
    stream.close()


# --- batches -----------------------------------------------------------------------------

URL = "https://publisher.example/feed"
KIND = "ScheduledSession"


def item(rpde_id: str, modified: int, state: str = "updated", **data: Any) -> dict[str, Any]:
    """An RPDE item."""
    raw: dict[str, Any] = {"state": state, "kind": KIND, "id": rpde_id, "modified": modified}
    if state == "updated":
        raw["data"] = {"@type": KIND, "@id": f"https://publisher.example/s/{rpde_id}", **data}
    return raw


def parsed_page(number: int, items: list[Any], last: bool = False, size: int = 1_000) -> Parsed:
    """Page `number` of the feed, parsed as the pipeline does."""
    url = f"{URL}?page={number}"
    next_url = url if last else f"{URL}?page={number + 1}"
    body = json.dumps({"items": items, "next": next_url}).encode()
    return Parsed.of(rpde.parse_page(url, body), None, size)


class ReadyStream:
    """A stream whose pages are all read already."""

    def __init__(self, pages: list[Parsed]) -> None:
        self.pages = list(pages)

    def take(self) -> Parsed | None:
        """The next page."""
        return self.pages.pop(0) if self.pages else None

    def take_ready(self) -> Parsed | None:
        """The next page, read already."""
        return self.take()


def test_a_batch_gathers_ready_pages_up_to_its_item_count() -> None:
    per_page = 500
    pages = [parsed_page(n, [item(f"{n}-{i}", 1) for i in range(per_page)]) for n in range(9)]
    stream = ReadyStream(pages)
    sizes = []
    while batch := take_batch(stream):
        sizes.append(len(batch))
    assert sizes == [BATCH_ITEMS // per_page] * 2 + [1]


def test_a_batch_ends_at_the_feeds_end_and_at_a_large_page() -> None:
    large = pipeline.PARSES.large_bytes
    pages = [parsed_page(0, [item("a", 1)]), parsed_page(1, [item("b", 1)], size=large),
             parsed_page(2, [item("c", 1)]), parsed_page(3, [], last=True),
             parsed_page(4, [item("d", 1)])]  # fmt: skip
    stream = ReadyStream(pages)
    assert [len(take_batch(stream)) for _ in range(3)] == [2, 2, 1]


def take_batch(stream: ReadyStream) -> list[Parsed]:
    """What the writer does: the next page, then those ready after it (pipeline.extend_batch)."""
    first = stream.take()
    return [] if first is None else extend_batch(stream, first)  # type: ignore[arg-type]


def add_feed(engine: Engine, name: str) -> FeedRow:
    """A source `name` with the one feed."""
    with engine.begin() as conn:
        feedstate.sync_source(conn, Source(name=name, feeds=(URL,)), None)
        (feed,) = feedstate.load_feeds(conn, [(name, URL)])
    return feed


def held(engine: Engine, source: str) -> dict[str, Any]:
    """rpde_id -> data of the source's items."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT rpde_id, data FROM harvester.items WHERE source = :s"),
                            {"s": source}).all()  # fmt: skip
    return dict(rows)  # type: ignore[arg-type]


def as_write(parsed: Parsed) -> PageWrite:
    """What the pipeline writes for a page."""
    return PageWrite(parsed.rows, parsed.rejected, parsed.url, parsed.next_url, parsed.ends_feed)


def test_pages_written_together_end_as_written_one_by_one(engine: Engine) -> None:
    pages = [
        parsed_page(0, [item("a", 1, name="a1"), item("b", 1), item("c", 1), item("x", 1)]),
        parsed_page(1, [item("a", 2, name="a2"), item("b", 2, state="deleted"), item("d", 2)]),
        parsed_page(
            2,
            [
                item("c", 3, state="deleted"),
                item("b", 3, name="b back"),
                {"state": "updated", "kind": KIND, "id": "broken"},
            ],
        ),
        parsed_page(3, [item("c", 4, name="c back"), item("x", 4, state="deleted")], last=True),
    ]
    apart, together = add_feed(engine, "apart"), add_feed(engine, "together")
    for parsed in pages:
        with engine.begin() as conn:
            apart = pagewrite.write_page(conn, apart, as_write(parsed)).feed
    with engine.begin() as conn:
        together = pagewrite.write_pages(conn, together, [as_write(p) for p in pages]).feed
    assert held(engine, "together") == held(engine, "apart")
    assert set(held(engine, "apart")) == {"a", "b", "c", "d"}
    assert held(engine, "apart")["a"]["name"] == "a2"
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT source, next_url, pages, state FROM harvester.feeds"
                                 " ORDER BY source")).all()  # fmt: skip
        rejected = conn.execute(text("SELECT count(*) FROM harvester.rejected_items")).scalar()
    assert [tuple(row[1:]) for row in rows] == [(pages[-1].next_url, 4, "caught_up")] * 2
    assert rejected == 2  # the broken item, once per source


def test_a_finished_stream_gives_what_it_read_then_ends_and_frees_its_budget() -> None:
    publisher = Publisher(pages=100)
    before = PROCESS_BUDGET.held
    stream = stream_of(publisher, ahead_bytes=30)  # three pages of 10 bytes ahead
    first = stream.take()
    assert first is not None and first.number == 0
    time.sleep(0.3)  # it reads ahead to its bound
    stream.finish()
    rest = []
    while (page := stream.take()) is not None:
        rest.append(page.number)
    fetched = sorted(publisher.fetched)
    # Every page fetched was taken, in order, and nothing after them was read.
    assert rest == fetched[1:] and 2 <= len(rest) <= 5
    time.sleep(0.3)
    assert sorted(publisher.fetched) == fetched
    stream.close()
    assert stream.held == 0 and PROCESS_BUDGET.held <= before
