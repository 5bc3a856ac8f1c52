"""A feed's next pages, fetched and parsed in order in the background, a bounded way ahead.

RPDE is sequential within a feed: page n+1's URL is page n's `next`. So one thread walks
the feed while the writer commits what is ready; when the publisher answers faster than
pages are written (a feed far behind), several pages are ready at once and the writer
commits them together. How far ahead it reads is bounded by bytes, so a feed of large
pages holds no more than one page beyond the one being written.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar


class Page(Protocol):
    """What the stream needs of a parsed page."""

    @property
    def next_url(self) -> str:
        """Where the feed goes on."""

    @property
    def ends_feed(self) -> bool:
        """No page follows this one (RPDE's last page, or one naming itself)."""

    @property
    def size(self) -> int:
        """Its body's size in bytes, for the read-ahead bound."""


P = TypeVar("P", bound=Page)


class Budget:
    """Bytes of pages read ahead by every stream of the process, against one bound: with
    hundreds of feeds in flight, what waits to be written stays bounded in all. A stream
    may always hold one page ready (so each feed moves on); beyond it, only within this."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.lock = threading.Lock()

    def fits(self, size: int) -> bool:
        """A page of `size` bytes more stays within the bound."""
        with self.lock:
            return self.held + size <= self.limit

    def add(self, size: int) -> None:
        """Count bytes taken (positive) or given back (negative)."""
        with self.lock:
            self.held += size


PROCESS_BUDGET = Budget(48 * 1024 * 1024)


class PageStream(Generic[P]):
    """The pages of one feed from `first_url` on, read ahead by a daemon thread."""

    def __init__(
        self, fetch: Callable[[str], P], first_url: str, stopping: Callable[[], bool],
        ahead_bytes: int,
    ) -> None:  # fmt: skip
        self.fetch = fetch
        self.stopping = stopping
        self.ahead_bytes = ahead_bytes
        self.ready: deque[P | BaseException] = deque()
        self.held = 0  # bytes of the pages in `ready`
        self.budget = PROCESS_BUDGET
        self.changed = threading.Condition()
        self.closed = False
        self.finishing = False  # read no further; what is read is still taken
        self.pauses = 0  # while above 0, read nothing more (`paused`)
        self.read_all = False  # the reader has stopped: once `ready` is empty, the end
        threading.Thread(
            target=self.read, args=(first_url,), name="harvester-fetch", daemon=True
        ).start()

    def read(self, url: str) -> None:
        """The thread: fetch page after page until the feed's end, an error, or close."""
        expected = 0  # the last page's size: the next one is likely alike
        try:
            while self.room_for(expected):
                try:
                    page = self.fetch(url)
                except BaseException as exc:  # handed to the writer, which raises it
                    self.put(exc, 0)
                    return
                if page.ends_feed:
                    self.put(page, page.size)
                    return
                url, expected = page.next_url, page.size
                # Handed over, and no longer referenced here: the writer alone keeps it
                # alive, so a written page is freed while the next one is fetched and parsed.
                self.put(page, expected)
                del page
        finally:
            with self.changed:
                self.read_all = True
                self.changed.notify_all()

    def room_for(self, size: int) -> bool:
        """Wait until a page of about `size` bytes fits ahead; False once closed."""
        with self.changed:
            # Re-checked every 0.2 s: the process budget frees as other streams write.
            while self.pauses or (self.ready and (self.held + size > self.ahead_bytes
                                                  or not self.budget.fits(size))):  # fmt: skip
                if self.closed or self.finishing or self.stopping():
                    return False
                self.changed.wait(0.2)
            return not (self.closed or self.finishing or self.stopping())

    def put(self, page: P | BaseException, size: int) -> None:
        """Hand a page (or the error that ended the feed) to the writer."""
        with self.changed:
            if self.closed:
                return  # the writer is gone: nothing will take it
            self.ready.append(page)
            self.held += size
            self.budget.add(size)
            self.changed.notify_all()

    def take(self) -> P | None:
        """The next page, waiting for it; None on shutdown. Raises what ended the feed."""
        with self.changed:
            while not self.ready:
                if self.stopping() or (self.finishing and self.read_all):
                    return None
                self.changed.wait(0.2)
            return self.pop()

    def take_ready(self) -> P | None:
        """The next page if it is already read, else None (an error waits for `take`)."""
        with self.changed:
            if not self.ready or isinstance(self.ready[0], BaseException):
                return None
            return self.pop()

    def pop(self) -> P:
        """The first ready entry, under the lock; raised if it is an error."""
        entry = self.ready.popleft()
        if isinstance(entry, BaseException):
            raise entry
        self.held -= entry.size
        self.budget.add(-entry.size)
        self.changed.notify_all()
        return entry

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Read nothing more during the block (the request in flight still ends).

        For a writer queued behind more urgent feeds (pipeline.WRITES): pages read while
        it waits would only wait too, each several times its size in memory, and by the
        time its turn comes the next page is one latency away at most.
        """
        with self.changed:
            self.pauses += 1
        try:
            yield
        finally:
            with self.changed:
                self.pauses -= 1
                self.changed.notify_all()

    def finish(self) -> None:
        """Read no further: the page being fetched and those ready are still taken, then
        `take` answers None (a harvest handing its turn over loses nothing it fetched)."""
        with self.changed:
            self.finishing = True
            self.changed.notify_all()

    def close(self) -> None:
        """Stop reading ahead (the thread ends after the request in flight)."""
        with self.changed:
            self.closed = True
            self.budget.add(-self.held)  # what was read ahead and will not be written
            self.held = 0
            self.ready.clear()
            self.changed.notify_all()
