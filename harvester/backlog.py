"""How much each feed has left to read, from what its pages so far say, and so the order
in which feeds take their turns.

A catch-up from zero ends when its longest chain of pages ends: RPDE pages come one
after another (each page's `next` names the one after it), so a feed far behind is a
queue that only its own requests can shorten. Feeds are therefore served most-left
first, and a feed not read yet first of all (one page shows its pace).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from harvester import rpde

UNKNOWN = math.inf  # a feed with no page read yet: its first page comes before the rest


@dataclass
class Backlog:
    """What one feed's pages read so far tell of its size."""

    items: int = 0
    oldest_seconds: float = math.inf  # the oldest `modified` read, as Unix seconds
    newest_seconds: float = -math.inf
    read: bool = False
    caught_up: bool = False

    def note_page(self, span: tuple[int, int] | None, items: int, last: bool) -> None:
        """Take in one written page: its items' lowest and highest `modified` (None when it
        has none) and whether it ends the feed."""
        low, high = (None, None) if span is None else map(rpde.modified_seconds, span)
        if low is not None and high is not None:
            self.oldest_seconds = min(self.oldest_seconds, low)
            self.newest_seconds = max(self.newest_seconds, high)
        self.items += items
        self.read = True
        self.caught_up = last


def items_left(backlog: Backlog | None, now: float) -> float:
    """The items a feed still has to bring, estimated at Unix time `now`.

    When `modified` reads as a time (RPDE 1.0 orders by it), the items read per second
    of `modified` times how far the newest is behind now; for change numbers, as many
    again as read so far. Unknown (infinite) before the first page; none once caught up.
    """
    if backlog is None or not backlog.read:
        return UNKNOWN
    if backlog.caught_up:
        return 0.0
    oldest, newest = backlog.oldest_seconds, backlog.newest_seconds
    if math.isfinite(oldest) and newest > oldest:
        return backlog.items / (newest - oldest) * max(0.0, now - newest)
    return float(backlog.items)


@dataclass(frozen=True)
class Placement:
    """Where a feed sits: its host (the politeness limit) and source (parents first)."""

    host: str
    source: str
    holds_parents: bool  # known, from a page, to bring SessionSeries or FacilityUse


def rank_feeds(
    placements: Mapping[int, Placement], backlogs: Mapping[int, Backlog], now: float,
    per_host_limit: int,
) -> dict[int, float]:  # fmt: skip
    """Each feed's urgency: the larger of its own items left and its host's known items
    left per connection (a host's feeds share `per_host_limit` connections, so a busy
    host is a bottleneck for all of them). A parent feed takes the top urgency of its source: the
    source's children wait for it (pipeline.ParentsFirst)."""
    own = {feed_id: items_left(backlogs.get(feed_id), now) for feed_id in placements}
    per_host: dict[str, float] = defaultdict(float)
    for feed_id, placement in placements.items():
        if own[feed_id] != UNKNOWN:  # a host's unread feeds already go first on their own
            per_host[placement.host] += own[feed_id]
    urgency = {feed_id: max(own[feed_id], per_host[placement.host] / per_host_limit)
               for feed_id, placement in placements.items()}  # fmt: skip
    top_of_source: dict[str, float] = defaultdict(float)
    for feed_id, placement in placements.items():
        top_of_source[placement.source] = max(top_of_source[placement.source], urgency[feed_id])
    for feed_id, placement in placements.items():
        if placement.holds_parents:
            urgency[feed_id] = top_of_source[placement.source]
    return urgency
