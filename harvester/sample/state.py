"""One feed's current list: the generated initial list plus an overlay of changes.

A change gets a ``modified`` above every other, so the overlay always sorts after the
base, and an item that changed is skipped where it used to be: it "moves to the end of
the list", as RPDE requires. Positions are found by bisection, never by a scan.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter

import orjson

from harvester.sample import dataset
from harvester.sample.shapes import Json

Position = tuple[int, str]  # a sort key: (modified, id text), or (change number, "")


@dataclass(frozen=True)
class Entry:
    """A change published after the initial state: an update or a tombstone."""

    item_id: str | int
    kind: str
    modified: int
    encoded: bytes | None  # the data as JSON, so nobody can mutate it in place; None = deleted

    def to_item(self) -> Json:
        """The RPDE item for this change."""
        item: Json = {
            "state": "deleted" if self.encoded is None else "updated",
            "kind": self.kind,
            "id": self.item_id,
            "modified": self.modified,
        }
        if self.encoded is not None:
            item["data"] = orjson.loads(self.encoded)
        return item


class FeedState:
    """One feed's current list: the generated base plus an overlay of later changes."""

    def __init__(self, feed: dataset.Feed) -> None:
        self.feed = feed
        self.overlay: dict[str, Entry] = {}  # by id text: the latest change of each item
        # Every change in publication order (ascending keys); superseded rows are skipped.
        self.log: list[tuple[Position, str]] = []
        self.high = feed.last_modified()
        self.forgotten: set[str] = set()  # ids dropped from the list with no tombstone

    def publish(self, item_id: str | int, kind: str, data: Json | None) -> Entry:
        """Record a change with a ``modified`` above every other; it sorts last."""
        self.high += self.feed.mutation_step
        encoded = None if data is None else orjson.dumps(data)
        entry = Entry(item_id, kind, self.high, encoded)
        text = str(item_id)
        self.forgotten.discard(text)
        self.overlay[text] = entry
        self.log.append((self.feed.key_for(entry.modified, text), text))
        return entry

    def forget(self, item_id: str | int) -> None:
        """Drop the item from the list without a tombstone, as if it never was."""
        self.forgotten.add(str(item_id))

    def current(self, item_id: str | int) -> tuple[str, Json | None] | None:
        """(kind, data or None if deleted) as now published; None if never published."""
        text = str(item_id)
        if text in self.forgotten:
            return None
        entry = self.overlay.get(text)
        if entry is not None:
            return entry.kind, entry.to_item().get("data")
        index = self.feed.index_of(text)
        if index is None:
            return None
        return self.feed.kind_of(index), self.feed.data_of(index)

    def snapshot(self) -> FeedState:
        """A copy whose overlay later changes do not touch (for lazy iteration)."""
        copy = FeedState.__new__(FeedState)
        copy.feed, copy.high = self.feed, self.high
        copy.overlay, copy.log = dict(self.overlay), list(self.log)
        copy.forgotten = set(self.forgotten)
        return copy

    def iter_after(self, position: Position | None) -> Iterator[Json]:
        """The current items whose sort key is above ``position``, in RPDE order."""
        yield from self.iter_base_after(position)
        yield from self.iter_overlay_after(position)

    def iter_base_after(self, position: Position | None) -> Iterator[Json]:
        """Initial items after ``position``, minus those that changed since."""
        feed = self.feed
        start = 0
        if position is not None:  # bisection: the base is sorted by index
            start = bisect.bisect_right(range(feed.count), position, key=feed.sort_key)
        for index in range(start, feed.count):
            text = str(feed.id_of(index))
            if text not in self.overlay and text not in self.forgotten:
                yield feed.item_of(index)

    def iter_overlay_after(self, position: Position | None) -> Iterator[Json]:
        """Latest changes after ``position``, in publication order."""
        start = 0
        if position is not None:
            start = bisect.bisect_right(self.log, position, key=itemgetter(0))
        for row in range(start, len(self.log)):
            key, text = self.log[row]
            entry = self.overlay[text]
            if text not in self.forgotten and self.feed.key_for(entry.modified, text) == key:
                yield entry.to_item()
