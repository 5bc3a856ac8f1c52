"""Which feed goes first: items left from the pages read so far, and the turns' order."""

from __future__ import annotations

import math
import threading
import time

from harvester.backlog import Backlog, Placement, items_left, rank_feeds
from harvester.gate import PriorityGate

NOW = 1_800_000_000.0  # Unix seconds


def read(items: int, oldest: float, newest: float, last: bool = False) -> Backlog:
    """A backlog after one page whose `modified` runs from oldest to newest (Unix seconds)."""
    backlog = Backlog()
    backlog.note_page((int(oldest), int(newest)), items, last)
    return backlog


def test_a_feed_not_read_yet_has_the_most_left() -> None:
    assert items_left(None, NOW) == math.inf
    assert items_left(Backlog(), NOW) == math.inf


def test_items_left_follow_the_pace_of_modified_up_to_now() -> None:
    # 500 items over 1,000 s of `modified`, whose newest is 10,000 s behind now.
    assert items_left(read(500, NOW - 11_000, NOW - 10_000), NOW) == 5_000


def test_modified_in_milliseconds_and_ticks_read_as_times() -> None:
    millis = Backlog()
    millis.note_page((int((NOW - 11_000) * 1000), int((NOW - 10_000) * 1000)), 500, False)
    assert items_left(millis, NOW) == 5_000
    ticks = Backlog()
    epoch_ticks = 621_355_968_000_000_000
    span = (epoch_ticks + int(NOW - 2_000) * 10**7, epoch_ticks + int(NOW - 1_000) * 10**7)
    ticks.note_page(span, 100, False)
    assert items_left(ticks, NOW) == 100


def test_change_numbers_presume_as_many_again() -> None:
    backlog = Backlog()
    backlog.note_page((17, 940), 300, False)
    backlog.note_page((941, 1_200), 200, False)
    assert items_left(backlog, NOW) == 500


def test_pages_add_up_and_a_caught_up_feed_has_nothing_left() -> None:
    backlog = read(500, NOW - 11_000, NOW - 10_000)
    backlog.note_page((int(NOW - 10_000), int(NOW - 9_000)), 500, False)
    assert items_left(backlog, NOW) == 1_000 / 2_000 * 9_000
    backlog.note_page(None, 0, True)
    assert items_left(backlog, NOW) == 0.0


def test_a_publisher_clock_ahead_of_ours_leaves_nothing() -> None:
    assert items_left(read(500, NOW, NOW + 60), NOW) == 0.0


def test_the_feed_with_most_left_ranks_first_and_unread_ones_above_all() -> None:
    placements = {1: Placement("a", "s1", False), 2: Placement("b", "s2", False),
                  3: Placement("c", "s3", False)}  # fmt: skip
    backlogs = {1: read(500, NOW - 2_000, NOW - 1_000), 2: read(500, NOW - 11_000, NOW - 10_000)}
    ranks = rank_feeds(placements, backlogs, NOW, per_host_limit=4)
    assert sorted(ranks, key=ranks.__getitem__, reverse=True) == [3, 2, 1]
    assert ranks[2] == 5_000


def test_a_busy_hosts_feeds_share_its_load_per_connection() -> None:
    # Host "a" has eight feeds of 1,000 left each: per connection (limit 2), 4,000.
    placements = {n: Placement("a", f"s{n}", False) for n in range(8)}
    placements[8] = Placement("b", "s8", False)
    backlogs = {n: read(100, NOW - 110, NOW - 100) for n in range(8)}
    backlogs[8] = read(300, NOW - 110, NOW - 100)  # 3,000 left, alone on its host
    ranks = rank_feeds(placements, backlogs, NOW, per_host_limit=2)
    assert ranks[0] == 4_000
    assert ranks[8] == 3_000


def test_a_hosts_unread_feeds_do_not_lift_its_others() -> None:
    placements = {1: Placement("a", "s1", False), 2: Placement("a", "s2", False)}
    ranks = rank_feeds(placements, {1: read(100, NOW - 110, NOW - 100)}, NOW, per_host_limit=4)
    assert ranks == {1: 1_000, 2: math.inf}


def test_a_parent_feed_takes_the_top_urgency_of_its_source() -> None:
    placements = {1: Placement("a", "s", True), 2: Placement("b", "s", False),
                  3: Placement("c", "t", True)}  # fmt: skip
    backlogs = {1: read(10, NOW - 200, NOW - 100), 2: read(500, NOW - 110, NOW - 100),
                3: read(10, NOW - 110, NOW - 100)}  # fmt: skip
    ranks = rank_feeds(placements, backlogs, NOW, per_host_limit=4)
    assert ranks[1] == ranks[2] == 5_000
    assert ranks[3] == 100


def test_a_freed_turn_goes_to_the_most_urgent_waiter() -> None:
    gate = PriorityGate(1)
    order: list[float] = []
    gate.acquire(0.0)
    threads = [threading.Thread(target=take_turn, args=(gate, urgency, order))
               for urgency in (1.0, 5.0, 3.0, 5.0)]  # fmt: skip
    for thread in threads:
        thread.start()
        wait_for_waiters(gate, len(order) + threads.index(thread) + 1)
    gate.release()
    for thread in threads:
        thread.join(5)
    assert order == [5.0, 5.0, 3.0, 1.0]
    assert gate.free == 1 and not gate.waiting


def test_a_free_turn_is_taken_at_once_up_to_the_slots() -> None:
    gate = PriorityGate(2)
    gate.acquire(0.0)
    gate.acquire(0.0)
    assert gate.free == 0
    gate.release()
    gate.release()
    assert gate.free == 2


def take_turn(gate: PriorityGate, urgency: float, order: list[float]) -> None:
    """Wait for a turn, note it, give it back."""
    with gate.turn(urgency):
        order.append(urgency)


def wait_for_waiters(gate: PriorityGate, count: int) -> None:
    """Until `count` threads wait at the gate."""
    deadline = time.monotonic() + 5
    while len(gate.waiting) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(gate.waiting) == count
