"""SIGKILL a real `harvester run` at several moments: nothing is lost, nothing duplicated.

A page's items and the feed's new position commit in one transaction (contract), so a
harvester killed at any instant and restarted ends with exactly what the publisher
holds, including the updates and deletions published while it was down.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import (
    Changes,
    assert_holds_exactly,
    committed_pages,
    delete_item,
    feed_rows,
    held_items,
    key_of,
    last_page_url,
    run_harvester,
    start_harvester,
    total_items,
    update_item,
    wait_for,
    write_config,
)
from sqlalchemy import Engine

from harvester.sample import FEED_NAMES, SamplePublisher

ITEMS = 30_000
PAGE_SIZE = 500
# A dead worker's leases expire after 2 s (15 s by default), so restarts take over fast.
SETTINGS = {"lease_seconds": 2, "min_poll_seconds": 1}


@dataclass(frozen=True)
class Kill:
    """When to SIGKILL one `harvester run`: after `pages` committed pages, or after `delay`."""

    pages: int | None = None  # committed pages over all feeds, counted since the first run
    delay: float = 0.0  # seconds to wait after the start, or after `pages` were reached


KILLS = (
    Kill(delay=0.3),  # right after start: before or during migrate and the first fetches
    Kill(pages=5),  # a few pages in, just after a commit: every feed mid-way
    Kill(pages=20, delay=0.02),  # small parent feeds done; big ones mid-fetch or mid-write
    Kill(pages=40, delay=0.045),  # most of the way, again between commits
)


def kill_when(engine: Engine, kill: Kill, config: Path, db_url: str) -> int:
    """Start `harvester run`, SIGKILL it at the moment `kill` names; pages committed then."""
    with start_harvester(db_url, "run", "--config", str(config)) as proc:
        target = kill.pages
        if target is not None:
            reached = wait_for(lambda: committed_pages(engine) >= target, 60, 0.01)
            assert reached, proc.output()
        time.sleep(kill.delay)
        assert proc.poll() is None, proc.output()  # still running: a crash, not an exit
        pages = committed_pages(engine)
        code = proc.kill()
    assert code == -9
    return pages


def change_while_down(
    engine: Engine,
    publisher: SamplePublisher,
    changes: Changes,
    rng: random.Random,
    stash: dict[str, dict[str, Any]],
) -> None:
    """Update and delete items the harvester already holds; re-create one deleted item."""
    for feed in FEED_NAMES:
        harvested = sorted(
            key for key in held_items(engine, publisher.feed_url(feed))
            if publisher.get(feed, key[1]) is not None
        )  # fmt: skip
        picked = rng.sample(harvested, min(len(harvested), 5))
        for _, item_id in picked[:3]:
            update_item(publisher, feed, item_id, changes, description=f"v{rng.random()}")
        for _, item_id in picked[3:]:
            if feed == "scheduled-sessions":
                stash[item_id] = publisher.get(feed, item_id) or {}
            delete_item(publisher, feed, item_id, changes)
    if len(stash) > 2:  # a tombstone, then the same id published again
        item_id = sorted(stash)[0]
        publisher.upsert("scheduled-sessions", item_id, stash.pop(item_id))
        changes.note(
            "updated", "scheduled-sessions", key_of(publisher, "scheduled-sessions", item_id)
        )


def expected_pages(publisher: SamplePublisher) -> int:
    """Pages of a full harvest from the first page: full pages plus each feed's last page."""
    return sum(-(-len(list(publisher.items(feed))) // PAGE_SIZE) + 1 for feed in FEED_NAMES)


@pytest.mark.slow
def test_sigkill_at_any_moment_loses_and_duplicates_nothing(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    rng = random.Random(20_240_601)
    changes = Changes()
    stash: dict[str, dict[str, Any]] = {}  # data of deleted sessions, to re-create one
    with SamplePublisher(items=ITEMS, page_size=PAGE_SIZE, last_page_max_age=0) as publisher:
        config = write_config(tmp_path / "crash.toml", publisher.to_config_toml(), SETTINGS)
        full = expected_pages(publisher)
        at_kill = []
        for kill in KILLS:
            at_kill.append(kill_when(engine, kill, config, db_url))
            change_while_down(engine, publisher, changes, rng, stash)

        # The kills landed mid-harvest (else this test proves nothing), at distinct points.
        assert at_kill == sorted(at_kill) and len(set(at_kill[1:])) == len(KILLS) - 1
        assert at_kill[1] > 0 and at_kill[-1] < full, (at_kill, full)
        assert any(row.caught_up_at is None for row in feed_rows(engine).values())
        assert sum(len(keys) for keys in changes.deleted.values()) >= 6

        final = run_harvester(db_url, "run", "--once", "--config", str(config), timeout=120)
        assert final.returncode == 0, final.stderr

        # Exactly what the publisher holds: same keys and JSON, same count per feed.
        assert_holds_exactly(engine, publisher)
        assert total_items(engine) == sum(len(publisher.held(feed)) for feed in FEED_NAMES)
        for feed in FEED_NAMES:
            held = held_items(engine, publisher.feed_url(feed))
            for key in changes.deleted.get(feed, set()):
                assert key not in held, (feed, key)  # no deleted item remains
            for key in changes.updated.get(feed, set()):
                assert held[key] == publisher.get(feed, key[1]), (feed, key)

        # Every feed stands at its last page, which is really the end of the feed.
        rows = feed_rows(engine)
        for feed in FEED_NAMES:
            row = rows[publisher.feed_url(feed)]
            assert row.state == "caught_up" and row.last_error is None, (feed, row)
            assert row.next_url == last_page_url(publisher, feed), feed
            page = httpx.get(row.next_url).json()
            assert page["items"] == [] and page["next"] == row.next_url, feed
