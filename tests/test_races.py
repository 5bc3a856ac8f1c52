"""No stale writer and no backfill can lose rows: the two races, driven step by step.

A page commits only if the feed is as its worker read it (position, generation, backfill
generation, and the lease when the worker has an owner). A worker that loses the race
drops its page and reads the feed again.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine, text

from harvester import feedstate, pagewrite, records, rpde
from harvester.config import Source
from harvester.errors import LeaseLost
from harvester.feedstate import FeedRow
from harvester.pagewrite import PageWrite

URL = "https://publisher.example/feed"
LAST = f"{URL}?after=9"
KIND = "ScheduledSession"


def item(rpde_id: str, modified: int) -> dict[str, Any]:
    """A ScheduledSession item."""
    return {"state": "updated", "kind": KIND, "id": rpde_id, "modified": modified,
            "data": {"@type": KIND, "@id": f"https://publisher.example/s/{rpde_id}"}}  # fmt: skip


def add_feed(engine: Engine) -> FeedRow:
    """A source with one feed at its first page."""
    with engine.begin() as conn:
        feedstate.sync_source(conn, Source(name="src", feeds=(URL,)), None)
        (feed,) = feedstate.load_feeds(conn)
    return feed


def read(engine: Engine, feed_id: int) -> FeedRow:
    """The feed as a worker reads it before fetching."""
    with engine.begin() as conn:
        return feedstate.load_feed(conn, feed_id)


def claim(engine: Engine, feed: FeedRow, owner: str) -> None:
    """Take the feed's lease."""
    with engine.begin() as conn:
        assert feedstate.claim_feed(conn, feed.id, owner, 15.0)


def commit(
    engine: Engine, feed: FeedRow, items: list[Any], next_url: str, owner: str | None
) -> FeedRow:
    """Write one page read at the feed's position; the feed as the worker then sees it."""
    body = json.dumps({"items": items, "next": next_url}).encode()
    page = rpde.parse_page(feed.next_url, body)
    last = page.is_last
    write = PageWrite(records.to_rows(page.items)[0], page.rejected, page.url, page.next_url, last)
    with engine.begin() as conn:
        return pagewrite.write_page(conn, feed, write, owner=owner).feed


def harvest(engine: Engine, feed: FeedRow, items: list[Any], owner: str | None) -> FeedRow:
    """A whole pass: one page of items, then the last page."""
    feed = commit(engine, feed, items, LAST, owner)
    return commit(engine, feed, [], LAST, owner)


def held(engine: Engine) -> dict[str, int]:
    """rpde_id -> seen_generation of every held item."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT rpde_id, seen_generation FROM harvester.items")).all()
    return dict(rows)  # type: ignore[arg-type]


def stored(engine: Engine, feed_id: int) -> Any:
    """The feed's row."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM harvester.feeds WHERE id = :id"),
                            {"id": feed_id}).one()  # fmt: skip


@pytest.mark.parametrize("owner", ["worker-a", None], ids=["with-lease", "single-worker"])
def test_a_worker_paused_past_a_finished_backfill_drops_its_page(
    engine: Engine, owner: str | None
) -> None:
    """Sequence (a): a stale page must not put the generation back."""
    feed = add_feed(engine)
    if owner:
        claim(engine, feed, owner)
    harvest(engine, feed, [item("keep", 1), item("vanishes", 1)], owner)
    stale = read(engine, feed.id)  # worker A, on its last page, fetches... and pauses
    assert stale.next_url == LAST

    with engine.begin() as conn:  # meanwhile `harvester backfill`, by worker B
        backfill = feedstate.start_backfill(conn, feed.id)
    claim(engine, backfill, "worker-b")
    after = harvest(engine, backfill, [item("keep", 2)], "worker-b")  # "vanishes" is gone
    with engine.begin() as conn:
        feedstate.release_feed(conn, feed.id, "worker-b")
    assert set(held(engine)) == {"keep"} and after.generation == 1

    with pytest.raises(LeaseLost):  # A wakes and commits the page it read before
        commit(engine, stale, [item("vanishes", 1)], LAST, owner)
    row = stored(engine, feed.id)
    assert (row.generation, row.backfill_generation, row.next_url) == (1, None, LAST)
    assert set(held(engine)) == {"keep"}

    # The next backfill still sweeps what its pass does not see again.
    with engine.begin() as conn:
        again = feedstate.start_backfill(conn, feed.id)
    if owner:
        claim(engine, again, owner)  # a new backfill cleared the lease: taken afresh
    harvest(engine, again, [], owner)
    assert held(engine) == {}


def test_a_backfill_started_between_read_and_commit_loses_nothing(engine: Engine) -> None:
    """Sequence (b): the worker's first page of the old pass must not end the new one."""
    feed = add_feed(engine)
    items = [item(f"i{n}", 1) for n in range(5)]
    claim(engine, feed, "worker")
    first = read(engine, feed.id)  # the worker reads the first page's position...

    with engine.begin() as conn:  # ...`harvester backfill` starts before it commits
        backfill = feedstate.start_backfill(conn, feed.id)
    assert backfill.next_url == first.next_url  # the same URL: the position alone can't tell

    with pytest.raises(LeaseLost):
        commit(engine, first, items, LAST, "worker")
    assert held(engine) == {}

    claim(engine, backfill, "backfiller")
    harvest(engine, backfill, items, "backfiller")  # the backfill's pass, swept at its end
    assert held(engine) == {f"i{n}": 1 for n in range(5)}
    row = stored(engine, feed.id)
    assert (row.generation, row.backfill_generation, row.state) == (1, None, "caught_up")


def test_a_worker_that_lost_its_lease_drops_its_page(engine: Engine) -> None:
    feed = add_feed(engine)
    claim(engine, feed, "slow")
    position = read(engine, feed.id)
    with engine.begin() as conn:  # the lease ran out; another worker took the feed
        conn.execute(text("UPDATE harvester.feeds SET lease_until = now() - interval '1 s'"))
    claim(engine, feed, "fast")
    with pytest.raises(LeaseLost):
        commit(engine, position, [item("a", 1)], LAST, "slow")
    harvest(engine, position, [item("a", 1)], "fast")
    assert held(engine) == {"a": 0}


def test_claiming_a_feed_another_worker_has_locked_does_not_wait(engine: Engine) -> None:
    """The scheduling loop must never block behind another process's row lock."""
    feed = add_feed(engine)
    with engine.connect() as other:
        other.execute(text("SELECT 1 FROM harvester.feeds WHERE id = :id FOR UPDATE"),
                      {"id": feed.id})  # fmt: skip
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '2s'"))  # a wait would fail the test
            assert not feedstate.claim_feed(conn, feed.id, "me", 15.0)
            feedstate.renew_leases(conn, [feed.id], "me", 15.0)  # nor does renewing
        other.rollback()
    with engine.begin() as conn:
        assert feedstate.claim_feed(conn, feed.id, "me", 15.0)
