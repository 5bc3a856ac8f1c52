"""Parents first: while a parent feed pages through, its source's child feeds wait.

A child written before its parent is written twice (once as an orphan, once re-joined
when the parent arrives); written after, once. The gate is in-process and bounded.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, text

from harvester import cli
from harvester.config import Config, Settings, Source
from harvester.feedstate import FeedRow
from harvester.pipeline import ParentsFirst
from harvester.sample import Fault, SamplePublisher

PAGE_SIZE = 50


def feed_row(feed_id: int, source: str = "src") -> FeedRow:
    """A feed row as the pipeline holds it."""
    url = f"https://pub.example/{feed_id}"
    return FeedRow(feed_id, source, url, url, "new", 0, None)


def wait_in_thread(gate: ParentsFirst, source: str, patience: float) -> threading.Event:
    """Start a child page's wait in a thread; the event is set when it goes on."""
    done = threading.Event()

    def wait() -> None:
        gate.wait(source, time.monotonic() + patience, lambda: False)
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    return done


def test_a_child_page_waits_until_the_parent_feed_is_done() -> None:
    gate = ParentsFirst()
    parents = feed_row(1)
    gate.mark(parents, busy=True)
    done = wait_in_thread(gate, "src", patience=30)
    assert not done.wait(0.5)
    gate.mark(parents, busy=False)
    assert done.wait(2)


def test_the_wait_is_bounded_and_other_sources_do_not_wait() -> None:
    gate = ParentsFirst()
    gate.mark(feed_row(1), busy=True)
    started = time.monotonic()
    assert wait_in_thread(gate, "src", patience=0.3).wait(3)
    assert 0.25 <= time.monotonic() - started < 2.5
    assert wait_in_thread(gate, "another source", patience=30).wait(1)


def test_shutdown_ends_the_wait() -> None:
    gate = ParentsFirst()
    gate.mark(feed_row(1), busy=True)
    stopping = threading.Event()
    done = threading.Event()
    threading.Thread(
        target=lambda: (gate.wait("src", time.monotonic() + 30, stopping.is_set), done.set()),
        daemon=True,
    ).start()
    stopping.set()
    assert done.wait(2)


def test_a_feed_is_presumed_to_hold_parents_until_its_first_page_says() -> None:
    gate = ParentsFirst()
    unknown = feed_row(1)
    gate.start(unknown)
    done = wait_in_thread(gate, "src", patience=30)
    assert not done.wait(0.3)
    gate.holds_parents[unknown.id] = False  # as a page of children shows
    gate.start(unknown)
    assert done.wait(2)


def test_a_first_harvest_writes_children_after_their_parents(engine: Engine) -> None:
    """Even when the parent feed is slow from its first page on, children come after it."""
    with SamplePublisher(items=3_000, page_size=PAGE_SIZE) as publisher:
        publisher.inject("session-series", Fault(delay=0.4, times=3))
        urls = (publisher.feed_url("session-series"), publisher.feed_url("scheduled-sessions"))
        config = Config(sources=(Source(name="src", feeds=urls),), settings=Settings(workers=2))
        report = cli.harvest(engine, config, once=True)
    assert not report.failures
    with engine.connect() as conn:
        early, joined = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE c.updated_at < p.updated_at), count(*)"
                " FROM harvester.items AS c JOIN harvester.items AS p"
                "   ON p.source = c.source AND p.kind = c.parent_kind"
                "  AND p.rpde_id = c.parent_rpde_id"
                " WHERE c.role = 'child'"
            )
        ).one()
    assert joined > 1_000  # the sessions found their series
    assert early == 0
