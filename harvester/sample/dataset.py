"""Deterministic, lazily generated imin-Firehose-shaped sample data (no I/O).

Item ``i`` of every feed is a pure function of ``(i, now, seed)``: nothing is
materialised, so a feed of a million items costs nothing until a page is asked for,
and the base ordering (``modified`` then ``id``, or change number) grows with ``i``
so a position is found by bisection over the index.

Variations are assigned by "percentile buckets" that visit every value once per
block of 100 consecutive indexes, so even a small dataset holds every shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from harvester.sample import shapes
from harvester.sample.shapes import Json

FEED_NAMES = ("session-series", "scheduled-sessions", "facility-uses", "slots")
MODIFIED_ID = "modified-id"  # RPDE "Modified Timestamp and ID" ordering
CHANGE_NUMBER = "change-number"  # RPDE "Incrementing Unique Change Number" ordering

LICENSE = "https://creativecommons.org/licenses/by/4.0/"


DOTNET_EPOCH = datetime(1, 1, 1, tzinfo=UTC)
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TICKS_PER_SECOND = 10_000_000  # .NET ticks are 100 ns
SLOT_ID_BASE = 10_000_000
CHANGE_NUMBER_BASE = 1_000


@dataclass(frozen=True)
class Sizes:
    """How a total item count (in MIXES: its percentages) splits over the four feeds."""

    series: int
    sessions: int
    facility_uses: int
    slots: int


# Each mix's shares in percent; the largest feed takes what rounding leaves.
MIXES: dict[str, Sizes] = {
    "balanced": Sizes(series=3, sessions=45, facility_uses=2, slots=50),
    # imin's Firehose: scheduled-sessions holds most of the items, so one feed's
    # sequential pace bounds a whole harvest.
    "firehose": Sizes(series=4, sessions=80, facility_uses=1, slots=15),
}
DEFAULT_MIX = "balanced"


def split_sizes(total: int, mix: str = DEFAULT_MIX) -> Sizes:
    """Split ``total`` over series, sessions, facility uses and slots by ``mix``'s shares.

    ``balanced`` is ~3 : 45 : 2 : 50, ``firehose`` ~4 : 80 : 1 : 15; every feed holds at
    least one item from 4 items on.
    """
    if total < 0:
        raise ValueError("items must be >= 0")
    shares = shares_of(mix)
    if total < 4:
        return Sizes(series=0, sessions=total, facility_uses=0, slots=0)
    names = ("series", "sessions", "facility_uses", "slots")
    largest = max(names, key=lambda name: getattr(shares, name))
    counts = {name: max(1, total * getattr(shares, name) // 100) for name in names}
    counts[largest] = total - sum(count for name, count in counts.items() if name != largest)
    return Sizes(**counts)


def shares_of(mix: str) -> Sizes:
    """The percentage shares of ``mix``, or ValueError naming the known mixes."""
    try:
        return MIXES[mix]
    except KeyError:
        raise ValueError(f"unknown mix {mix!r}; expected one of {tuple(MIXES)}") from None


def floor_quarter_hour(now: datetime) -> datetime:
    """``now`` in UTC, rounded down to a quarter hour (start times look like real ones)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    now = now.astimezone(UTC)
    return now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)


def to_ticks(moment: datetime) -> int:
    """.NET ticks (100 ns since 0001-01-01): realistic ``modified`` values above 2^53."""
    return (moment - DOTNET_EPOCH) // timedelta(microseconds=1) * 10


def to_millis(moment: datetime) -> int:
    """Unix epoch milliseconds."""
    return (moment - UNIX_EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class Clock:
    """The instants every feed derives its dates and ``modified`` values from."""

    anchor: datetime  # ``now`` rounded down to a quarter hour, UTC

    @property
    def first_start(self) -> datetime:
        """Earliest start date of a generated child (now - 2 days)."""
        return self.anchor - timedelta(days=2)

    @property
    def history(self) -> tuple[datetime, datetime]:
        """The span the initial ``modified`` values are spread over."""
        return self.anchor - timedelta(days=60), self.anchor - timedelta(hours=1)


class Feed:
    """One feed's initial list, generated item by item from the index."""

    name = ""
    ordering = MODIFIED_ID
    default_kind = ""
    mutation_step = 1  # how far ``modified`` advances per published change

    def __init__(self, dataset: Dataset, count: int) -> None:
        self.dataset = dataset
        self.dice = dataset.dice
        self.count = count

    def id_of(self, index: int) -> str | int:
        """The RPDE ``id`` of item ``index``."""
        raise NotImplementedError

    def index_of(self, id_text: str) -> int | None:
        """The index whose RPDE id is ``id_text``, or None."""
        raise NotImplementedError

    def modified_of(self, index: int) -> int:
        """The RPDE ``modified`` of item ``index`` (non-decreasing in index)."""
        raise NotImplementedError

    def data_of(self, index: int) -> Json | None:
        """The ``data`` of item ``index``; None when it starts as a tombstone."""
        raise NotImplementedError

    def kind_of(self, index: int) -> str:
        """The RPDE ``kind`` of item ``index``."""
        return self.default_kind

    def key_for(self, modified: int, id_text: str) -> tuple[int, str]:
        """The sort key of an item in this feed's ordering."""
        return (modified, id_text) if self.ordering == MODIFIED_ID else (modified, "")

    def sort_key(self, index: int) -> tuple[int, str]:
        """The sort key of item ``index``."""
        return self.key_for(self.modified_of(index), str(self.id_of(index)))

    def last_modified(self) -> int:
        """The largest initial ``modified`` (0 when empty)."""
        return self.modified_of(self.count - 1) if self.count else 0

    def item_of(self, index: int) -> Json:
        """The RPDE item for ``index`` as first published."""
        data = self.data_of(index)
        item: Json = {
            "state": "updated" if data is not None else "deleted",
            "kind": self.kind_of(index),
            "id": self.id_of(index),
            "modified": self.modified_of(index),
        }
        if data is not None:
            item["data"] = data
        return item


class TimestampFeed(Feed):
    """A feed ordered by (modified, id) with string ids ``{prefix}{index:09d}``."""

    prefix = ""
    group = 1  # items sharing one ``modified``, so the afterId tie-break matters

    def __init__(self, dataset: Dataset, count: int) -> None:
        super().__init__(dataset, count)
        first, last = (self.to_modified(moment) for moment in dataset.clock.history)
        groups = max(1, -(-count // self.group))
        self.first_modified = first
        self.step = max(1, (last - first) // groups)

    def to_modified(self, moment: datetime) -> int:
        """This feed's ``modified`` unit for an instant."""
        return to_ticks(moment)

    def id_of(self, index: int) -> str | int:
        """A zero-padded id, so string order follows the index."""
        return f"{self.prefix}{index:09d}"

    def index_of(self, id_text: str) -> int | None:
        """Parse the digits back out, checking the id really is ours."""
        digits = id_text[len(self.prefix) : len(self.prefix) + 9]
        if not id_text.startswith(self.prefix) or not digits.isdigit():
            return None
        index = int(digits)
        return index if index < self.count and self.id_of(index) == id_text else None

    def modified_of(self, index: int) -> int:
        """Evenly spread over the history span, ``group`` items per value."""
        return self.first_modified + (index // self.group) * self.step


class SessionSeriesFeed(TimestampFeed):
    """SessionSeries: the parents of scheduled sessions."""

    name = "session-series"
    default_kind = "SessionSeries"
    prefix = "ss-"
    mutation_step = TICKS_PER_SECOND

    def variant_of(self, index: int) -> str:
        """Which offer variant series ``index`` has (see shapes.SERIES_VARIANTS)."""
        seed = self.dice.seed
        return shapes.SERIES_VARIANTS[(index * 7 + seed) % len(shapes.SERIES_VARIANTS)]

    def window_of(self, index: int) -> Json:
        """The booking window of series ``index``."""
        valid_from = shapes.WINDOWS[(index * 3 + self.dice.seed) % len(shapes.WINDOWS)]
        return shapes.build_window(valid_from, (index * 5 + self.dice.seed) % 4 == 0)

    def data_of(self, index: int) -> Json | None:
        """A SessionSeries, or None for the tombstone variant."""
        variant = self.variant_of(index)
        if variant == shapes.TOMBSTONE:
            return None
        return shapes.build_series(index, variant, self.window_of(index), self.dice)


class ScheduledSessionFeed(TimestampFeed):
    """ScheduledSessions: most of the items; ties in ``modified`` in threes."""

    name = "scheduled-sessions"
    default_kind = "ScheduledSession"
    prefix = "sched-"
    group = 3
    mutation_step = TICKS_PER_SECOND

    def id_of(self, index: int) -> str | int:
        """Zero-padded; one in a hundred carries characters that need encoding."""
        text = f"{self.prefix}{index:09d}"
        return text + shapes.SPECIAL_ID_SUFFIX if self.dice.percentile(1, index) == 0 else text

    def data_of(self, index: int) -> Json | None:
        """A ScheduledSession, or None for the 2% that start as tombstones."""
        if self.dice.percentile(2, index) < 2:
            return None
        start = self.dataset.start_of(index, salt=21, minutes=15)
        duration, minutes = shapes.DURATIONS[self.dice.roll(22, index, len(shapes.DURATIONS))]
        with_offset = self.dice.percentile(3, index) < 30
        data: Json = {
            "@context": shapes.CONTEXT,
            "@type": "ScheduledSession",
            "@id": f"{shapes.HOST}/scheduled-sessions/{index}",
            "identifier": self.identifier_of(index),
            "superEvent": self.super_event_of(index),
            "startDate": shapes.format_instant(start, with_offset),
            "endDate": shapes.format_instant(start + timedelta(minutes=minutes), with_offset),
            "duration": duration,
        }
        data.update(self.status_of(index))
        data.update(self.capacity_of(index))
        return data

    def identifier_of(self, index: int) -> str | int:
        """The upstream publisher's id: usually a URL, sometimes awkward, a few integers."""
        bucket = self.dice.percentile(4, index)
        if bucket < 3:
            return 310_000_000 + index
        base = f"{shapes.UPSTREAM}/scheduled-sessions/{index}"
        awkward = {3: "?x=1&y=a b", 4: "#/subEvent/1%2", 5: "/séance-é", 6: "?a=/b&c=d#e"}
        return base + awkward.get(bucket, "")

    def super_event_of(self, index: int) -> str | Json:
        """A series @id; 1% orphans, 1% object references, 1% whole embedded parents."""
        series = self.dataset.sizes.series
        bucket = self.dice.percentile(5, index)
        if bucket == 0 or series == 0:
            return shapes.series_url(series + self.dice.roll(23, index, 1000))
        if bucket == 2:
            return self.embedded_parent_of(index)
        parent = shapes.series_url(self.dice.roll(24, index, series))
        return {"@type": "SessionSeries", "@id": parent} if bucket == 1 else parent

    def embedded_parent_of(self, index: int) -> Json:
        """A bookable SessionSeries embedded whole, with an @id no feed publishes."""
        number = self.dataset.sizes.series + 1000 + index
        data = shapes.build_series(
            number, shapes.BOOKABLE, shapes.build_window("P1M", False), self.dice
        )
        del data["@context"]
        return data

    def status_of(self, index: int) -> Json:
        """``eventStatus``: mostly scheduled; a few cancelled/postponed/absent."""
        statuses = {
            0: shapes.CANCELLED,
            1: shapes.CANCELLED,
            2: shapes.POSTPONED,
            3: "http://schema.org/EventCancelled",
            4: "EventPostponed",
            5: None,
        }
        status = statuses.get(self.dice.percentile(6, index), shapes.SCHEDULED)
        return {} if status is None else {"eventStatus": status}

    def capacity_of(self, index: int) -> Json:
        """Capacity plus the child's bookable flag (6% false, 2% underscore spelling)."""
        maximum = 8 + self.dice.roll(25, index, 25)
        bucket = self.dice.percentile(7, index)
        remaining = 0 if bucket < 6 else 1 + self.dice.roll(26, index, maximum)
        key = shapes.FLAG_UNDERSCORE if bucket in (6, 7) else shapes.FLAG
        return {
            "maximumAttendeeCapacity": maximum,
            "remainingAttendeeCapacity": remaining,
            key: remaining > 0,
        }


class FacilityUseFeed(TimestampFeed):
    """FacilityUses, half with individual courts; epoch-millisecond ``modified``."""

    name = "facility-uses"
    default_kind = "FacilityUse"
    prefix = "fu-"
    group = 2
    mutation_step = 1_000

    def to_modified(self, moment: datetime) -> int:
        """Milliseconds: a feed whose ``modified`` fits in a double."""
        return to_millis(moment)

    def courts_of(self, index: int) -> int:
        """How many IndividualFacilityUses FacilityUse ``index`` lists (0 for odd ones)."""
        return 0 if index % 2 else 1 + self.dice.roll(31, index, 4)

    def is_plain(self, index: int) -> bool:
        """Half use imin's internal ``type``/``id`` keys instead of ``@type``/``@id``."""
        return (index // 2) % 2 == 1

    def variant_of(self, index: int) -> str:
        """Which offer variant FacilityUse ``index`` has (see shapes.FACILITY_VARIANTS)."""
        return shapes.FACILITY_VARIANTS[
            (index * 3 + self.dice.seed) % len(shapes.FACILITY_VARIANTS)
        ]

    def data_of(self, index: int) -> Json | None:
        """A FacilityUse, or None for the tombstone variant."""
        variant = self.variant_of(index)
        if variant == shapes.TOMBSTONE:
            return None
        plain = self.is_plain(index)
        type_key, id_key = shapes.keys_for(plain)
        slug, label, name = shapes.FACILITIES[self.dice.roll(32, index, len(shapes.FACILITIES))]
        valid_from = shapes.WINDOWS[(index * 5 + self.dice.seed) % len(shapes.WINDOWS)]
        window = shapes.build_window(valid_from, index % 3 == 1)
        data: Json = {
            "@context": shapes.CONTEXT,
            type_key: "FacilityUse",
            id_key: shapes.facility_use_url(index),
            "name": f"{name} {index}",
            "url": f"https://upstream.example/facilities/{index}",
            "provider": shapes.build_organization(
                self.dice.roll(33, index, len(shapes.ORGANIZERS)), plain
            ),
            "location": shapes.build_place(
                self.dice.roll(34, index, len(shapes.VENUES)), plain, 1_000_000 + index
            ),
            "facilityType": [shapes.build_concept("facility-types", slug, label, plain)],
            "imin:aggregateOffer": shapes.build_aggregate_offer(variant, 8.0 + index % 5, window),
        }
        courts = self.courts_of(index)
        if courts:
            data["individualFacilityUse"] = [
                {
                    type_key: "IndividualFacilityUse",
                    id_key: shapes.court_url(index, court),
                    "name": f"Court {court}",
                }
                for court in range(1, courts + 1)
            ]
        return data


class SlotFeed(Feed):
    """Slots: integer ids, ordered by an incrementing change number."""

    name = "slots"
    ordering = CHANGE_NUMBER
    default_kind = "FacilityUse/Slot"

    def id_of(self, index: int) -> str | int:
        """An integer id."""
        return SLOT_ID_BASE + index

    def index_of(self, id_text: str) -> int | None:
        """The index of an integer id, or None."""
        if not id_text.isdigit():
            return None
        index = int(id_text) - SLOT_ID_BASE
        return index if 0 <= index < self.count else None

    def modified_of(self, index: int) -> int:
        """The change number; gaps of two, as updates leave behind."""
        return CHANGE_NUMBER_BASE + 2 * index

    def parent_of(self, index: int) -> tuple[str, str]:
        """(kind, facilityUse @id): 1% orphans; 60% of slots of courted uses are per court."""
        facilities = self.dataset.facility_uses
        if facilities.count == 0 or self.dice.percentile(8, index) == 0:
            return "FacilityUse/Slot", shapes.facility_use_url(facilities.count + index % 1000)
        facility = self.dice.roll(41, index, facilities.count)
        courts = facilities.courts_of(facility)
        if courts and self.dice.percentile(9, index) < 60:
            court = 1 + self.dice.roll(42, index, courts)
            return "IndividualFacilityUse/Slot", shapes.court_url(facility, court)
        return "FacilityUse/Slot", shapes.facility_use_url(facility)

    def kind_of(self, index: int) -> str:
        """``FacilityUse/Slot`` or ``IndividualFacilityUse/Slot``."""
        return self.parent_of(index)[0]

    def data_of(self, index: int) -> Json | None:
        """A Slot, or None for the 2% that start as tombstones."""
        if self.dice.percentile(10, index) < 2:
            return None
        kind, parent = self.parent_of(index)
        plain = self.dice.percentile(11, index) < 10
        type_key, id_key = shapes.keys_for(plain)
        slot_id = f"{shapes.HOST}/slots/{self.id_of(index)}"
        start = self.dataset.start_of(index, salt=43, minutes=30)
        duration, minutes = (("PT1H", 60), ("PT30M", 30))[self.dice.roll(44, index, 2)]
        data: Json = {
            "@context": shapes.CONTEXT,
            type_key: "Slot",
            id_key: slot_id,
            "identifier": self.identifier_of(index),
            "facilityUse": parent,
            "startDate": shapes.format_instant(start, False),
            "endDate": shapes.format_instant(start + timedelta(minutes=minutes), False),
            "duration": duration,
        }
        data.update(self.uses_of(index, kind == "IndividualFacilityUse/Slot"))
        data["offers"] = shapes.build_offer(slot_id, 5.0 + self.dice.roll(45, index, 20), plain)
        if self.dice.percentile(0, index) == 0:
            data["eventStatus"] = shapes.CANCELLED
        return data

    def identifier_of(self, index: int) -> str | int:
        """The upstream slot id: a URL, sometimes awkward, a few integers."""
        bucket = self.dice.percentile(4, index)
        if bucket < 3:
            return 8_900_000 + index
        base = f"{shapes.UPSTREAM}/slots/{index}"
        return base + {3: "?court=1&at=10:00 am", 4: "#late%20slot"}.get(bucket, "")

    def uses_of(self, index: int, individual: bool) -> Json:
        """remainingUses/maximumUses and the flag (false when full, 4% false anyway)."""
        if individual:  # an individual court is hired whole: 0 or 1 use left
            maximum, remaining = 1, int(self.dice.roll(47, index, 4) > 0)
        else:
            maximum = 4 + self.dice.roll(46, index, 9)
            remaining = self.dice.roll(47, index, maximum + 1)
        bucket = self.dice.percentile(7, index)
        key = shapes.FLAG_UNDERSCORE if bucket in (4, 5) else shapes.FLAG
        return {
            "remainingUses": remaining,
            "maximumUses": maximum,
            key: remaining > 0 and bucket >= 4,
        }


class Dataset:
    """The four feeds of one sample publisher, as first published."""

    def __init__(self, *, size: int, now: datetime, seed: int = 1, mix: str = DEFAULT_MIX) -> None:
        self.mix = mix
        self.sizes = split_sizes(size, mix)
        self.clock = Clock(anchor=floor_quarter_hour(now))
        self.dice = shapes.Dice(seed)
        self.session_series = SessionSeriesFeed(self, self.sizes.series)
        self.scheduled_sessions = ScheduledSessionFeed(self, self.sizes.sessions)
        self.facility_uses = FacilityUseFeed(self, self.sizes.facility_uses)
        self.slots = SlotFeed(self, self.sizes.slots)
        self.feeds: dict[str, Feed] = {
            feed.name: feed
            for feed in (
                self.session_series,
                self.scheduled_sessions,
                self.facility_uses,
                self.slots,
            )
        }

    def start_of(self, index: int, *, salt: int, minutes: int) -> datetime:
        """A start date from now - 2 days to now + 30 days, on a ``minutes`` grid."""
        steps = 32 * 24 * 60 // minutes
        offset = minutes * self.dice.roll(salt, index, steps)
        return self.clock.first_start + timedelta(minutes=offset)
