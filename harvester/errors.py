"""Every error the harvester raises, under one root.

    HarvesterError
    ├── ConfigError              bad configuration: fatal, exit code 2
    ├── DatabaseError            the database cannot be reached or set up
    ├── LeaseLost                another worker moved the feed on: drop the page
    └── FeedError                one feed's trouble (never stops the other feeds)
        ├── RetriableFeedError   transport errors, 5xx, 429: try again later
        │   └── FeedOverloaded   503 without Retry-After: RPDE says wait 60-120 min
        └── FatalFeedError       do not retry until an operator acts
            ├── FeedGone         404/410: RPDE says consider the endpoint gone
            ├── InvalidPage      the body is not an RPDE page
            └── ForeignNextUrl   `next` leaves the feed's own origin
"""

from __future__ import annotations


class HarvesterError(Exception):
    """Unexpected harvester error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(HarvesterError):
    """The configuration is not valid."""


class DatabaseError(HarvesterError):
    """The database cannot be reached or prepared."""


class LeaseLost(HarvesterError):
    """Another worker moved this feed on; the page is rolled back and the feed left to it."""


class FeedError(HarvesterError):
    """A feed could not be harvested."""

    def __init__(self, message: str, *, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class RetriableFeedError(FeedError):
    """A passing failure: the same request may succeed later."""

    def __init__(self, message: str, *, url: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, url=url)
        self.retry_after = retry_after


class FeedOverloaded(RetriableFeedError):
    """The publisher answered 503: back off for a long while."""


class FatalFeedError(FeedError):
    """A failure that retrying will not mend."""


class FeedGone(FatalFeedError):
    """The feed answered 404 or 410."""


class InvalidPage(FatalFeedError):
    """The response is not an RPDE page."""


class ForeignNextUrl(FatalFeedError):
    """The page's `next` points outside the feed's own origin."""
