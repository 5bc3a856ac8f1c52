"""Turns at a shared resource (parsing, writing), given to the most urgent waiter first.

With dozens of feeds in flight on a few cores, a first-come turn shares the CPU evenly,
so the feed with the most left (the catch-up's critical path) goes no faster than the
rest and finishes alone at the end. Giving each turn to the feed with the most left
keeps that feed moving at its publisher's pace while the others fill the gaps.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PriorityGate:
    """At most `slots` holders at once; a freed turn goes to the waiter of highest urgency
    (among equals, the one waiting longest). A turn is handed straight to its next holder,
    so only that waiter wakes."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self.lock = threading.Lock()
        self.waiting: list[tuple[float, int, threading.Event]] = []
        self.order = itertools.count()

    @contextmanager
    def turn(self, urgency: float = 0.0) -> Iterator[None]:
        """Hold a turn for the block, waiting behind more urgent waiters."""
        self.acquire(urgency)
        try:
            yield
        finally:
            self.release()

    def acquire(self, urgency: float) -> None:
        """Take a turn: at once if one is free and no one waits, else in urgency order."""
        with self.lock:
            if self.free and not self.waiting:
                self.free -= 1
                return
            handed = threading.Event()
            heapq.heappush(self.waiting, (-urgency, next(self.order), handed))
        handed.wait()

    def release(self) -> None:
        """Give the turn to the most urgent waiter, or back to the free ones."""
        with self.lock:
            if self.waiting:
                heapq.heappop(self.waiting)[2].set()
            else:
                self.free += 1
