"""Every error the harvester raises, under one root.

HarvesterError
├── ConfigError              bad configuration: fatal, exit code 2
├── DatabaseError            the database cannot be reached or set up
├── InternalError            a bug of ours (say, SQL the server refuses): fail loudly
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

from typing import Literal

# What a database error means for the harvester, by SQLSTATE class (PostgreSQL manual,
# appendix A), decided here and nowhere else.
DatabaseFault = Literal["passing", "data", "bug"]
# The data was refused: a cardinality violation (21), a data exception (22), an integrity
# violation (23), a program limit such as an index row too big (54). The feed's problem.
DATA_CLASSES = frozenset({"21", "22", "23", "54"})
# The server or the connection is away or busy: connection (08), a transaction rolled back
# (40: serialization, deadlock), resources (53), operator intervention (57: shutdown,
# statement timeout), system (58), internal (XX), authorization (28), database (3D).
PASSING_CLASSES = frozenset({"08", "40", "53", "57", "58", "XX", "28", "3D"})
# Passing states of otherwise non-passing classes: lock_timeout, an object in use, the
# session ended by idle_in_transaction_session_timeout.
PASSING_STATES = frozenset({"55P03", "55006", "25P03"})


class HarvesterError(Exception):
    """Unexpected harvester error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(HarvesterError):
    """The configuration is not valid."""


class DatabaseError(HarvesterError):
    """The database cannot be reached or prepared."""


class SchemaNotReady(DatabaseError):
    """The database answers, but its harvester schema is missing or behind this code."""


class InternalError(HarvesterError):
    """The harvester itself is wrong (a statement the server refuses as invalid, say)."""


class CheckoutError(HarvesterError):
    """A checkout session could not be created; `reason` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotBookable(CheckoutError):
    """The opportunity is not bookable now, or the publisher refused it: nothing to buy."""


class NoSuchOpportunity(NotBookable):
    """Nothing held answers to that @id or identifier."""


class CheckoutFailed(CheckoutError):
    """The checkout server failed (5xx, 429, timeouts past the retries, or a bad answer)."""


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


def database_fault(error: BaseException) -> DatabaseFault:
    """Classify a database error (SQLAlchemy's or psycopg's) by its SQLSTATE.

    Without a SQLSTATE the driver decided: the connection failed (passing), or a value
    could not be sent (data). Anything not known to be passing or the data's fault is
    taken for a bug of ours.
    """
    if getattr(error, "connection_invalidated", False):
        return "passing"
    original = getattr(error, "orig", None) or error
    sqlstate = getattr(original, "sqlstate", None)
    if not sqlstate:
        return _client_side_fault({cls.__name__ for cls in type(original).__mro__})
    if sqlstate in PASSING_STATES or sqlstate[:2] in PASSING_CLASSES:
        return "passing"
    return "data" if sqlstate[:2] in DATA_CLASSES else "bug"


def _client_side_fault(class_names: set[str]) -> DatabaseFault:
    # By the DB-API's class names, which psycopg and SQLAlchemy share.
    if class_names & {"OperationalError", "InterfaceError", "TimeoutError", "DisconnectionError"}:
        return "passing"
    return "data" if "DataError" in class_names else "bug"
