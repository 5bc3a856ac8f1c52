"""The benchmark of issue 5: the harvester beside a raw baseline, on one machine, in one run.

``python bench/run.py [--items 1000000] [--mix both] [--database-url URL] [--skip-baseline]``

For each mix of items over the four feeds (``firehose`` first: ~80 % of the items in
scheduled-sessions, as in imin's Firehose; then ``balanced``, ~3 : 45 : 2 : 50):

1. starts the sample publisher in its own process (``python -m harvester.sample --mix``);
2. runs the raw baseline (``bench/baseline.py``) against it into a fresh database;
3. runs ``harvester run --once`` (the real CLI) against it into another fresh database,
   measuring its wall time and its own peak RSS (``wait4`` on its pid), and reading each
   feed's pages, items and working seconds from its ``feed_harvested`` log records;

then, once, on the first mix's harvested database (after ANALYZE): median and p95 of the
read queries, of a parent change re-deriving 1,000 children (records.to_rows +
pagewrite.write_page), and the delay until a change published on a last page is visible in
``bookable_now`` while ``harvester run`` polls (a small in-process sample publisher,
source ``live``).

Databases ``bench_baseline_<pid>`` and ``bench_harvester_<pid>_<mix>[_<pair>]`` are
created on the server and dropped at the end. The server: ``--database-url``, else
TEST_DATABASE_URL or DATABASE_URL, else an embedded PostgreSQL (pgserver) in a temporary
directory.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.types.string import TextLoader
from sqlalchemy import Engine, make_url, text

from harvester import database, feedstate, pagewrite, records, rpde
from harvester.feedstate import FeedRow
from harvester.pagewrite import PageWrite
from harvester.sample import SamplePublisher
from harvester.sample.dataset import Sizes, split_sizes

BENCH_DIR = Path(__file__).resolve().parent
FEEDS = ("session-series", "scheduled-sessions", "facility-uses", "slots")
SOURCE = "bench"
LIVE_SOURCE = "live"
CHECKOUT = "checkout.bench.example"
FLAGS = ("imin:isPotentiallyBookable", "_imin:isPotentiallyBookable")
HOST = "https://sample-firehose.example"
# The Firehose-shaped mix first: it is the headline, one feed holding most of the items.
MIXES = ("firehose", "balanced")


# --- small helpers -------------------------------------------------------------------------


def log(message: str) -> None:
    """A progress line on stderr, stamped with the time since start."""
    print(f"[{time.perf_counter() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


STARTED = time.perf_counter()


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def libpq_url(url: str, database_name: str | None = None) -> str:
    """The libpq form of a URL (psycopg), optionally on another database."""
    parsed = make_url(database.normalise_url(url)).set(drivername="postgresql")
    if database_name is not None:
        parsed = parsed.set(database=database_name)
    return parsed.render_as_string(hide_password=False)


@dataclass
class Timing:
    """Repeated timings of one operation, in seconds."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median."""
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        """The 95th percentile (nearest rank)."""
        return percentile(self.samples, 0.95)


# --- the server, the machine, the databases ------------------------------------------------


@contextmanager
def server_url(given: str | None) -> Iterator[str]:
    """The server's URL in libpq form: given, from the environment, or an embedded one."""
    url = given or os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        yield libpq_url(url)
        return
    data_dir = Path(tempfile.mkdtemp(prefix="harvester-bench-pg-"))
    try:
        log(f"no database URL: embedded PostgreSQL in {data_dir}")
        with database.embedded_database(data_dir) as embedded:
            yield libpq_url(embedded)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def machine(server: str) -> dict[str, str]:
    """CPU count and model, memory, Python and PostgreSQL versions."""
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with open("/proc/meminfo", encoding="utf-8") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    with psycopg.connect(server, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        sync = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
        buffers = conn.execute("SHOW shared_buffers").fetchone()[0]  # type: ignore[index]
    return {
        "code": code_version(),
        "cpus": str(os.cpu_count()),
        "cpu model": model,
        "memory": memory,
        "python": platform.python_version(),
        "postgresql": f"{version} (synchronous_commit={sync}, shared_buffers={buffers})",
        "load avg": load_average(),
    }


def load_average() -> str:
    """The 1/5/15-minute load averages (other work on the machine skews the figures)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def code_version() -> str:
    """The commit measured, marked dirty when the work tree has changes."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=BENCH_DIR, capture_output=True,
            text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return described.stdout.strip()


@contextmanager
def scratch_database(server: str, name: str) -> Iterator[str]:
    """A fresh database on the server (libpq URL), dropped on exit."""
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield libpq_url(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settle(server: str, timeout: float = 180.0) -> None:
    """Let the server go quiet before a timed phase: no autovacuum at work, a checkpoint done.

    Otherwise the maintenance left behind by one phase (vacuuming and analysing a million
    fresh rows) runs during the next and is charged to it.
    """
    deadline = time.monotonic() + timeout
    with psycopg.connect(server, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            ).fetchone()
            if row is None or row[0] == 0:
                break
            time.sleep(0.5)
        conn.execute("CHECKPOINT")


# --- processes -----------------------------------------------------------------------------


@contextmanager
def publisher_process(items: int, page_size: int, mix: str) -> Iterator[tuple[str, int]]:
    """The sample publisher in its own process; yields its base URL and pid."""
    command = [sys.executable, "-m", "harvester.sample", "--items", str(items), "--port", "0",
               "--page-size", str(page_size), "--mix", mix]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"the sample publisher did not start: {line!r}")
        yield line.split(" ", 1)[1], process.pid
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM this process (by its pid), then SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class ProcessRun:
    """A finished child process: exit code, wall time, peak RSS, RSS samples, output."""

    returncode: int
    seconds: float
    cpu_seconds: float
    machine_cpu_seconds: float  # every process on the machine, PostgreSQL's included
    publisher_cpu_seconds: float
    peak_rss_mb: float
    spawner_rss_mb: float  # this process's RSS at the spawn: a floor under peak_rss_mb
    rss_samples: list[tuple[float, float]]  # (seconds since start, MB)
    stdout: str
    stderr: str


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """VmRSS (or VmHWM, its peak) of a live process, in MB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_measured(
    command: Sequence[str], workdir: Path, name: str, publisher_pid: int
) -> ProcessRun:
    """Run a command to its end: wall time, CPU (its own, the publisher's, the machine's)."""
    out_path, err_path = workdir / f"{name}.out", workdir / f"{name}.err"
    samples: list[tuple[float, float]] = []
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        busy, publisher = machine_busy_seconds(), process_cpu_seconds(publisher_pid)
        spawner = rss_mb(os.getpid()) or 0.0
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err)
        done = threading.Event()
        sampler = threading.Thread(
            target=sample_rss, args=(process.pid, started, samples, done), daemon=True
        )
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, no one else's
        seconds = time.perf_counter() - started
        busy = machine_busy_seconds() - busy
        publisher = process_cpu_seconds(publisher_pid) - publisher
        process.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    return ProcessRun(
        returncode=process.returncode, seconds=seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime, machine_cpu_seconds=busy,
        publisher_cpu_seconds=publisher, peak_rss_mb=usage.ru_maxrss / 1024,
        spawner_rss_mb=spawner, rss_samples=samples, stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )  # fmt: skip


def sample_rss(
    pid: int, started: float, samples: list[tuple[float, float]], done: threading.Event
) -> None:
    """Record the process's RSS every 0.25 s until it exits."""
    while not done.wait(0.25):
        value = rss_mb(pid)
        if value is not None:
            samples.append((time.perf_counter() - started, value))


def harvester_command() -> list[str]:
    """The installed console script next to this Python, else ``python -m harvester``."""
    script = Path(sys.executable).parent / "harvester"
    return [str(script)] if script.exists() else [sys.executable, "-m", "harvester"]


def write_config(path: Path, source: str, feed_urls: Sequence[str]) -> Path:
    """A harvester config (contract TOML) with one source."""
    feeds = "".join(f"  {orjson.dumps(url).decode()},\n" for url in feed_urls)
    path.write_text(
        f'[[sources]]\nname = "{source}"\ncheckout_base_url = "{CHECKOUT}"\nfeeds = [\n{feeds}]\n',
        encoding="utf-8",
    )
    return path


# --- phases 2 and 3: baseline and harvester -----------------------------------------------


def run_baseline(
    db: str, feed_urls: Sequence[str], workdir: Path, publisher_pid: int, name: str
) -> ProcessRun:
    """bench/baseline.py in its own process."""
    command = [sys.executable, str(BENCH_DIR / "baseline.py"), "--database-url", db, *feed_urls]
    result = run_measured(command, workdir, name, publisher_pid)
    if result.returncode != 0:
        raise RuntimeError(f"the baseline failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def run_harvester_once(
    db: str, config: Path, workdir: Path, publisher_pid: int, name: str
) -> ProcessRun:
    """``harvester run --once`` in its own process, logging JSON lines at INFO."""
    # INFO for the feed_harvested records (one per harvest, a few progress lines besides).
    command = [*harvester_command(), "run", "--once", "--config", str(config),
               "--database-url", db, "--log-level", "INFO", "--log-format", "json"]  # fmt: skip
    result = run_measured(command, workdir, name, publisher_pid)
    if result.returncode != 0:
        raise RuntimeError(
            f"harvester run --once failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result


def count_rows(db: str, sql: str) -> int:
    """The single integer a query returns."""
    with psycopg.connect(db) as conn:
        return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]


def rss_profile(samples: list[tuple[float, float]]) -> str:
    """RSS at a quarter, half, three quarters and the end of the run."""
    if not samples:
        return "n/a"
    end = samples[-1][0]
    points = []
    for fraction in (0.25, 0.5, 0.75, 1.0):
        at = [mb for seconds, mb in samples if seconds <= fraction * end]
        points.append(f"{at[-1]:.0f}" if at else "-")
    return " / ".join(points) + " MB"


# --- per-feed rates -------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedRate:
    """One feed's pages, items and the seconds they took (the harvester's less its waits)."""

    pages: int
    items: int
    seconds: float
    waited: float = 0.0

    @property
    def pages_per_second(self) -> float:
        """Pages per second."""
        return self.pages / max(self.seconds, 1e-6)

    @property
    def items_per_second(self) -> float:
        """Items per second."""
        return self.items / max(self.seconds, 1e-6)

    def plus(self, other: FeedRate) -> FeedRate:
        """Two harvests of one feed taken together."""
        return FeedRate(self.pages + other.pages, self.items + other.items,
                        self.seconds + other.seconds, self.waited + other.waited)  # fmt: skip


def feed_name(url: str) -> str:
    """The feed name at the end of a sample publisher URL (``.../feeds/slots`` → ``slots``)."""
    return url.split("?", 1)[0].rsplit("/", 1)[-1]


def baseline_rates(run: ProcessRun) -> dict[str, FeedRate]:
    """Each feed's figures from the baseline's JSON line, by feed name."""
    result = orjson.loads(run.stdout.strip().splitlines()[-1])
    return {
        feed_name(url): FeedRate(int(f["pages"]), int(f["items"]), float(f["seconds"]))
        for url, f in result.get("feeds", {}).items()
    }


def harvested_records(stderr: str) -> Iterator[dict[str, Any]]:
    """The harvester's ``feed_harvested`` records among its JSON log lines."""
    for line in stderr.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:  # a line cut short: not a record of ours
            continue
        if record.get("event") == "feed_harvested":
            yield record


def harvester_rates(run: ProcessRun) -> dict[str, FeedRate]:
    """Each feed's figures summed over its ``feed_harvested`` records (JSON lines on stderr)."""
    rates: dict[str, FeedRate] = {}
    for record in harvested_records(run.stderr):
        name = feed_name(str(record["feed"]))
        rate = FeedRate(int(record["pages"]), int(record["items"]), float(record["seconds"]),
                        float(record.get("waited", 0.0)))  # fmt: skip
        rates[name] = rates[name].plus(rate) if name in rates else rate
    return rates


def median_of(values: Sequence[float]) -> float | None:
    """The median, or None when there is nothing to take it of."""
    return statistics.median(values) if values else None


def rate_cell(value: float | None, digits: int = 0) -> str:
    """A rate for the per-feed table; ``-`` when unknown."""
    return "-" if value is None else f"{value:,.{digits}f}"


def feed_rate_rows(pairs: list[Pair]) -> list[tuple[str, ...]]:
    """Per feed: items, baseline pages/s, items/s, s; harvester pages/s, items/s, s; ratio."""
    rows = []
    for feed in FEEDS:
        base = [pair.baseline_rates[feed] for pair in pairs if feed in pair.baseline_rates]
        harv = [pair.harvester_rates[feed] for pair in pairs if feed in pair.harvester_rates]
        base_items = median_of([rate.items_per_second for rate in base])
        harv_items = median_of([rate.items_per_second for rate in harv])
        ratio = None if base_items is None or harv_items is None else harv_items / base_items
        waited = median_of([rate.waited for rate in harv])
        held = (base or harv)[0].items if base or harv else None
        rows.append((
            feed, rate_cell(held),
            rate_cell(median_of([rate.pages_per_second for rate in base]), 1),
            rate_cell(base_items), rate_cell(median_of([rate.seconds for rate in base]), 1),
            rate_cell(median_of([rate.pages_per_second for rate in harv]), 1),
            rate_cell(harv_items), rate_cell(median_of([rate.seconds for rate in harv]), 1),
            rate_cell(waited, 1), "-" if ratio is None else f"{ratio:.2f}x",
        ))  # fmt: skip
    return rows


FEED_RATE_HEADERS = (
    "feed", "items", "baseline pages/s", "items/s", "s", "harvester pages/s", "items/s",
    "s", "waited s", "ratio",
)  # fmt: skip


# --- phase 4: queries ------------------------------------------------------------------------


# A sample venue (Leeds): places spread within about 40 km of each of seven towns.
NEAR_POINT = "53.796, -1.548"
NEAR_LABEL = "bookable_near(a venue, 5 km)"
FILTER_LABEL = "filter: Yoga within 5 km, price <= 6, next 7 days"
FILTER_QUERY = (
    f"SELECT * FROM bookable_near({NEAR_POINT}, 5) WHERE 'Yoga' = ANY(activity)"
    " AND price <= 6 AND start_date < now() + interval '7 days'"
)
QUERIES = (
    ("SELECT count(*) FROM bookable_now", "SELECT count(*) FROM bookable_now"),
    ("bookable_now ORDER BY start_date LIMIT 50",
     "SELECT * FROM bookable_now ORDER BY start_date LIMIT 50"),
    ("SELECT * FROM bookable_at(now() + 3 days)",
     "SELECT * FROM bookable_at(now() + interval '3 days')"),
    (NEAR_LABEL, f"SELECT * FROM bookable_near({NEAR_POINT}, 5)"),
    (FILTER_LABEL, FILTER_QUERY),
)  # fmt: skip


def time_query(conn: psycopg.Connection, sql: str, runs: int, budget: float) -> tuple[Timing, int]:
    """Median/p95 of a query fetched whole; fewer runs if one takes long (``budget`` s)."""
    rows = 0
    for _ in range(2):  # warm-up
        started = time.perf_counter()
        rows = len(conn.execute(sql).fetchall())
        first = time.perf_counter() - started
    runs = min(runs, max(10, int(budget / max(first, 1e-6))))
    timing = Timing()
    for _ in range(runs):
        started = time.perf_counter()
        conn.execute(sql).fetchall()
        timing.samples.append(time.perf_counter() - started)
    return timing, rows


def measure_queries(db: str, runs: int) -> list[tuple[str, Timing, int, int]]:
    """(label, timing, rows returned, count) of each read query."""
    results = []
    with psycopg.connect(db, autocommit=True, options="-c timezone=UTC") as conn:
        # jsonb arrives as text: the figures are the database's, not Python's JSON decoding.
        conn.adapters.register_loader("jsonb", TextLoader)
        for label, sql in QUERIES:
            timing, rows = time_query(conn, sql, runs, budget=60.0)
            if sql.startswith("SELECT count"):
                rows = int(conn.execute(sql).fetchone()[0])  # type: ignore[index]
            results.append((label, timing, rows, len(timing.samples)))
            log(f"{label}: median {timing.median * 1000:.1f} ms over {len(timing.samples)} runs")
    return results


# --- phase 4: one parent change with 1,000 children ---------------------------------------


PICK_PARENT = """
SELECT p.kind, p.rpde_id, p.item_id, p.modified, p.data,
       (SELECT count(*) FROM harvester.items AS c
        WHERE c.source = p.source AND c.role = 'child' AND c.parent_ref = p.item_id) AS children
FROM (SELECT parent_ref, count(*) AS n FROM harvester.items
      WHERE source = :source AND role = 'child' AND parent_kind = 'SessionSeries'
      GROUP BY parent_ref) AS top
JOIN harvester.items AS p
  ON p.source = :source AND p.role = 'parent' AND p.item_id = top.parent_ref
WHERE p.type = 'SessionSeries' AND p.offer_problem IS NULL
ORDER BY top.n DESC, p.rpde_id LIMIT 1
"""

BOOKABLE_CHILDREN = """
SELECT count(*) FILTER (WHERE bookable IS NOT NULL), count(*) FROM harvester.items
WHERE source = :source AND role = 'child' AND parent_ref = :ref
"""


def feed_row(engine: Engine, suffix: str) -> FeedRow:
    """The harvested feed whose URL ends with ``suffix``."""
    with engine.begin() as conn:
        return next(f for f in feedstate.load_feeds(conn) if f.url.endswith(suffix))


def write_items(engine: Engine, feed: FeedRow, items: list[dict[str, Any]]) -> float:
    """The harvester's own path for one page: parse, to_rows, write_page; seconds taken.

    The page names the feed's stored position as both its URL and ``next``, so the
    feed's cursor stays where the harvest left it.
    """
    body = orjson.dumps({"next": feed.next_url, "items": items})
    started = time.perf_counter()
    page = rpde.parse_page(feed.next_url, body)
    rows, _ = records.to_rows(page.items)
    write = PageWrite(rows, page.rejected, page.url, page.next_url, caught_up=True)
    with engine.begin() as conn:
        pagewrite.write_page(conn, feed, write)
    return time.perf_counter() - started


def child_item(template: dict[str, Any], parent_id: str, number: int) -> dict[str, Any]:
    """An RPDE item: a bookable ScheduledSession of ``parent_id``, 1-2 days ahead."""
    data = copy.deepcopy(template)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1, minutes=number)
    for flag in FLAGS:
        data.pop(flag, None)
    data.update({
        "@id": f"{HOST}/scheduled-sessions/bench-{number}",
        "identifier": f"bench-{number}",
        "superEvent": parent_id,
        "startDate": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "endDate": (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventStatus": "https://schema.org/EventScheduled",
        FLAGS[0]: True,
    })  # fmt: skip
    return {"state": "updated", "kind": "ScheduledSession", "id": f"bench-child-{number}",
            "modified": 1, "data": data}  # fmt: skip


@dataclass
class ParentChange:
    """The parent changed, its children, and the timings of its changes."""

    parent_id: str
    children: int
    added: int
    timing: Timing
    bookable_when_on: int
    bookable_when_off: int


def measure_parent_change(db: str, flips: int) -> ParentChange:
    """Flip a SessionSeries' publicAdult flag back and forth; ≥1,000 children re-derived."""
    engine = database.make_engine(db, pool_size=2, max_overflow=0)
    try:
        with engine.begin() as conn:
            parent = conn.execute(text(PICK_PARENT), {"source": SOURCE}).one()
            template = conn.execute(
                text("SELECT data FROM harvester.items WHERE source = :s AND role = 'child'"
                     " AND parent_ref = :ref LIMIT 1"),
                {"s": SOURCE, "ref": parent.item_id},
            ).scalar_one()  # fmt: skip
        added = max(0, 1000 - parent.children)
        sessions = feed_row(engine, "/feeds/scheduled-sessions")
        new = [child_item(template, parent.item_id, n) for n in range(added)]
        for start in range(0, len(new), 500):
            write_items(engine, sessions, new[start : start + 500])
        series = feed_row(engine, "/feeds/session-series")
        data, modified = copy.deepcopy(parent.data), int(parent.modified)
        offer = data["imin:aggregateOffer"]["publicAdult"]
        flag = next(key for key in FLAGS if key in offer)
        timing, counts = Timing(), {True: 0, False: 0}
        for number in range(flips + 2):  # two warm-ups; an even total restores the parent
            offer[flag] = not offer[flag]
            modified += 1
            item = {"state": "updated", "kind": parent.kind, "id": parent.rpde_id,
                    "modified": modified, "data": data}  # fmt: skip
            seconds = write_items(engine, series, [item])
            if number >= 2:
                timing.samples.append(seconds)
            with engine.begin() as conn:
                bookable, total = conn.execute(
                    text(BOOKABLE_CHILDREN), {"source": SOURCE, "ref": parent.item_id}
                ).one()
            counts[bool(offer[flag])] = bookable
        return ParentChange(parent.item_id, total, added, timing, counts[True], counts[False])
    finally:
        engine.dispose()


# --- phase 4: visibility of a change on a last page ---------------------------------------


@dataclass
class Visibility:
    """Delays from publishing a change to seeing it in bookable_now."""

    delays: list[float]
    poll_query: Timing


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 0.2 s; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def live_caught_up(conn: psycopg.Connection) -> bool:
    """Every feed of the live source reached its last page."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE caught_up_at IS NOT NULL), count(*)"
        " FROM harvester.feeds WHERE source = %s",
        (LIVE_SOURCE,),
    ).fetchone()
    return row is not None and row[1] == len(FEEDS) and row[0] == row[1]


def measure_visibility(db: str, trials: int, workdir: Path) -> Visibility:
    """Publish a new bookable session on a caught-up feed; time until bookable_now has it."""
    publisher = SamplePublisher(items=2_000, page_size=500)
    with ExitStack() as stack:
        stack.enter_context(publisher)
        urls = list(publisher.feed_urls.values())
        config = write_config(workdir / "live.toml", LIVE_SOURCE, urls)
        err = stack.enter_context(open(workdir / "live.err", "wb"))
        command = [*harvester_command(), "run", "--config", str(config), "--database-url", db,
                   "--log-level", "WARNING"]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        stack.callback(stop_process, process)
        conn = stack.enter_context(psycopg.connect(db, autocommit=True))
        wait_until(lambda: live_caught_up(conn), 120, "the live source to catch up")
        template = conn.execute(
            "SELECT data FROM bookable_now WHERE source = %s AND kind = 'ScheduledSession'"
            " ORDER BY start_date DESC LIMIT 1", (LIVE_SOURCE,),
        ).fetchone()[0]  # type: ignore[index]  # fmt: skip
        visibility = Visibility([], Timing())
        for number in range(trials):
            time.sleep(random.uniform(0, 8))  # a random phase against the 8 s poll
            delay = publish_and_wait(publisher, conn, template, number, visibility)
            visibility.delays.append(delay)
            log(f"visibility trial {number + 1}/{trials}: {visibility.delays[-1]:.2f} s")
        if process.poll() is not None:
            raise RuntimeError("harvester run exited during the visibility test")
        return visibility


def publish_and_wait(
    publisher: SamplePublisher,
    conn: psycopg.Connection,
    template: dict[str, Any],
    number: int,
    visibility: Visibility,
) -> float:
    """Upsert one new session at the publisher; seconds until bookable_now shows it."""
    data = copy.deepcopy(template)
    data["@id"] = f"{HOST}/scheduled-sessions/live-{number}"
    data["identifier"] = f"live-{number}"
    published = time.perf_counter()
    publisher.upsert("scheduled-sessions", f"live-{number}", data, kind="ScheduledSession")
    sql = "SELECT 1 FROM bookable_now WHERE source = %s AND id = %s"
    while True:
        started = time.perf_counter()
        found = conn.execute(sql, (LIVE_SOURCE, data["@id"])).fetchone()
        visibility.poll_query.samples.append(time.perf_counter() - started)
        if found is not None:
            return time.perf_counter() - published
        if time.perf_counter() - published > 60:
            raise RuntimeError("a published change did not become visible within 60 s")
        time.sleep(0.05)


# --- the report ----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    """Seconds as milliseconds."""
    return f"{seconds * 1000:.1f} ms"


def verdict(ok: bool) -> str:
    """The status column."""
    return "met" if ok else "NOT MET"


def two_sided(timing: Timing, limit: float) -> str:
    """Met when the p95 is within the limit; says so when only the median is."""
    if timing.p95 <= limit:
        return "met (p95 too)"
    return "met by median, not p95" if timing.median <= limit else "NOT MET"


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    """The targets table."""
    print_grid(("measure", "result", "target", "status"), rows)


def print_grid(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()
) -> None:
    """A plain text table; the columns in ``right`` (numbers) are right-aligned."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def cells(row: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    print(cells(headers))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print(cells(row))


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description="Harvester benchmark beside a raw baseline.")
    parser.add_argument("--items", type=int, default=1_000_000, help="default 1,000,000")
    parser.add_argument("--mix", choices=(*MIXES, "both"), default="both",
                        help="how the items split over the feeds: firehose (~4:80:1:15 series, "
                        "sessions, facility uses, slots), balanced (~3:45:2:50), or both, "
                        "firehose first (default)")  # fmt: skip
    parser.add_argument("--database-url", help="a PostgreSQL server (default: TEST_DATABASE_URL"
                        ", DATABASE_URL, else an embedded pgserver)")  # fmt: skip
    parser.add_argument("--skip-baseline", action="store_true", help="harvester only")
    parser.add_argument("--pairs", type=int, default=2,
                        help="baseline + harvester runs per mix, one after the other (default "
                        "2); the ratio reported is their median")  # fmt: skip
    parser.add_argument("--page-size", type=int, default=500, help="default 500")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per query (default 50)")
    parser.add_argument("--flips", type=int, default=20, help="timed parent changes (default 20)")
    parser.add_argument("--visibility-trials", type=int, default=5, help="default 5")
    return parser.parse_args(argv)


def chosen_mixes(mix: str) -> tuple[str, ...]:
    """The mixes to measure, in order: both means firehose, then balanced."""
    return MIXES if mix == "both" else (mix,)


@dataclass(frozen=True)
class Measured:
    """The measurements taken once, on the first mix's harvested database."""

    mix: str
    queries: list[tuple[str, Timing, int, int]]
    change: ParentChange
    visible: Visibility
    plan: list[str]  # EXPLAIN ANALYZE of the filter query


@dataclass(frozen=True)
class MixResult:
    """One mix: how its items split, and its baseline and harvester pairs."""

    mix: str
    sizes: Sizes
    pairs: list[Pair]


def main(argv: Sequence[str] | None = None) -> int:
    """Run every phase and print the report."""
    args = parse_args(argv)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="harvester-bench-")))
        server = stack.enter_context(server_url(args.database_url))
        info = machine(server)
        results: list[MixResult] = []
        kept = ""
        for number, mix in enumerate(chosen_mixes(args.mix)):
            # Each mix's publisher goes when the mix is done, and so does its database but
            # the first mix's, kept for the measurements below.
            with ExitStack() as mix_stack:
                keep = stack if number == 0 else mix_stack
                result, db = run_mix(mix_stack, keep, args, server, workdir, mix)
                results.append(result)
                kept = kept or db
        # Only after every timed run: reading the query results grows this process, and on
        # Linux a child's ru_maxrss starts at its parent's RSS when it was forked.
        measured = measure_database(kept, args, workdir, results[0].mix)
        report(args, info, results, measured)
    log("done")
    return 0


def run_mix(
    stack: ExitStack,
    keep: ExitStack,
    args: argparse.Namespace,
    server: str,
    workdir: Path,
    mix: str,
) -> tuple[MixResult, str]:
    """Run ``mix``'s pairs: the result, and its last database (on ``keep``)."""
    base, publisher_pid = stack.enter_context(publisher_process(args.items, args.page_size, mix))
    feed_urls = [f"{base}/feeds/{feed}" for feed in FEEDS]
    sizes = split_sizes(args.items, mix)
    log(f"{mix} mix: sample publisher with {args.items:,} items ({describe_sizes(sizes)}) "
        f"at {base}")  # fmt: skip
    config = write_config(workdir / f"bench-{mix}.toml", SOURCE, feed_urls)
    on = Phases(server, os.getpid(), feed_urls, workdir, publisher_pid, config, mix)
    pairs, db = run_pairs(keep, args, on)
    return MixResult(mix, sizes, pairs), db


def measure_database(db: str, args: argparse.Namespace, workdir: Path, mix: str) -> Measured:
    """Queries, a parent change and visibility on one harvested database."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ANALYZE")
    log(f"queries on the {mix} mix's database: running")
    queries = measure_queries(db, args.runs)
    with psycopg.connect(db, autocommit=True) as conn:
        plan = [row[0] for row in conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {FILTER_QUERY}")]
    log("parent change: running")
    change = measure_parent_change(db, args.flips)
    log("visibility: running")
    visible = measure_visibility(db, args.visibility_trials, workdir)
    return Measured(mix, queries, change, visible, plan)


def describe_sizes(sizes: Sizes) -> str:
    """A mix's item counts per feed, in words."""
    return (f"{sizes.series:,} series, {sizes.sessions:,} sessions, "
            f"{sizes.facility_uses:,} facility uses, {sizes.slots:,} slots")  # fmt: skip


@dataclass(frozen=True)
class Phases:
    """What every timed phase runs against: the server, the publisher, the config."""

    server: str
    pid: int
    feed_urls: Sequence[str]
    workdir: Path
    publisher_pid: int
    config: Path
    mix: str


def run_pairs(stack: ExitStack, args: argparse.Namespace, on: Phases) -> tuple[list[Pair], str]:
    """Baseline then harvester, `--pairs` times; the last harvested database is kept."""
    pairs: list[Pair] = []
    count = max(1, args.pairs)
    for number in range(1, count + 1):
        baseline, held_baseline = None, None
        if not args.skip_baseline:
            baseline, held_baseline = baseline_phase(on, number)
        name = f"bench_harvester_{on.pid}_{on.mix}" + ("" if number == count else f"_{number}")
        with ExitStack() as scratch:
            db = (stack if number == count else scratch).enter_context(
                scratch_database(on.server, name)
            )
            harvested, held = harvester_phase(on, db, number)
        pairs.append(Pair(baseline, held_baseline, harvested, held))
    return pairs, db


def harvester_phase(on: Phases, db: str, number: int) -> tuple[ProcessRun, int]:
    """`harvester run --once` into a fresh database; the run and the rows it holds."""
    settle(on.server)
    log(f"{on.mix}: harvester run --once ({number}): running")
    harvested = run_harvester_once(
        db, on.config, on.workdir, on.publisher_pid, f"{on.mix}-harvester-{number}"
    )
    log(f"{on.mix}: harvester run --once ({number}): {harvested.seconds:.1f} s")
    held = count_rows(db, f"SELECT count(*) FROM harvester.items WHERE source = '{SOURCE}'")
    return harvested, held


@dataclass(frozen=True)
class Pair:
    """One baseline run and the harvester run after it, each with the rows it held."""

    baseline: ProcessRun | None
    held_baseline: int | None
    harvested: ProcessRun
    held: int

    @property
    def ratio(self) -> float | None:
        """Harvester items/s over baseline items/s (the items are the same)."""
        return None if self.baseline is None else self.baseline.seconds / self.harvested.seconds

    @property
    def baseline_rates(self) -> dict[str, FeedRate]:
        """The baseline's figures per feed (none without a baseline)."""
        return {} if self.baseline is None else baseline_rates(self.baseline)

    @property
    def harvester_rates(self) -> dict[str, FeedRate]:
        """The harvester's figures per feed, from its feed_harvested records."""
        return harvester_rates(self.harvested)


def baseline_phase(on: Phases, number: int) -> tuple[ProcessRun, int]:
    """The raw baseline into a fresh database, dropped as soon as its rows are counted."""
    with scratch_database(on.server, f"bench_baseline_{on.pid}") as db:
        settle(on.server)
        log(f"{on.mix}: raw baseline ({number}): running")
        baseline = run_baseline(
            db, on.feed_urls, on.workdir, on.publisher_pid, f"{on.mix}-baseline-{number}"
        )
        held = count_rows(db, "SELECT count(*) FROM items")
        log(f"{on.mix}: raw baseline ({number}): {baseline.seconds:.1f} s")
    return baseline, held


def cpu_split(run: ProcessRun) -> str:
    """CPU seconds of the run: its own, the publisher's, and the rest (mostly PostgreSQL)."""
    rest = run.machine_cpu_seconds - run.cpu_seconds - run.publisher_cpu_seconds
    return (
        f"CPU {run.cpu_seconds:.1f} s own, {run.publisher_cpu_seconds:.1f} s publisher, "
        f"{rest:.1f} s PostgreSQL and the rest ({run.machine_cpu_seconds:.1f} s in all)"
    )


def report(
    args: argparse.Namespace, info: dict[str, str], results: list[MixResult], measured: Measured
) -> None:
    """Print the machine, the figures beside their targets, the per-feed rates, the details."""
    print()
    print(f"harvester benchmark: {args.items:,} items over 4 feeds, pages of {args.page_size}")
    for key, value in info.items():
        print(f"  {key:11} {value}")
    for result in results:
        print(f"  {result.mix + ' mix':11} {describe_sizes(result.sizes)}")
    print()
    rows: list[tuple[str, str, str, str]] = []
    for result in results:
        rows += throughput_rows(args.items, result)
    peak = max(pair.harvested.peak_rss_mb for result in results for pair in result.pairs)
    rows.append(("harvester peak RSS (every run)", f"{peak:.0f} MB", "<= 200 MB",
                 verdict(peak <= 200)))  # fmt: skip
    rows += measured_rows(measured)
    print_table(rows)
    print(f"(queries, parent change and visibility on the {measured.mix} mix's database)")
    for result in results:
        print_feed_rates(result)
    print()
    print("details")
    for result in results:
        print(f"  {result.mix} mix")
        for number, pair in enumerate(result.pairs, 1):
            print_pair(number, pair)
        last = result.pairs[-1].harvested
        print("    harvester RSS at 25% / 50% / 75% / 100% of its last run:",
              rss_profile(last.rss_samples), f"(the benchmark's own RSS at its spawn: "
              f"{last.spawner_rss_mb:.0f} MB)")  # fmt: skip
    change, visible = measured.change, measured.visible
    print(f"  parent {change.parent_id}: {change.added} children added through write_page;"
          f" bookable children with the flag on {change.bookable_when_on:,}, off "
          f"{change.bookable_when_off:,}")  # fmt: skip
    print(f"  visibility delays: {', '.join(f'{d:.2f}' for d in visible.delays)} s; the poll "
          f"query took median {ms(visible.poll_query.median)}")  # fmt: skip
    print(f"  the filter query's plan ({FILTER_QUERY}):")
    for line in measured.plan:
        print(f"    {line}")
    print(f"  benchmark wall time: {time.perf_counter() - STARTED:.0f} s;"
          f" load average at the end: {load_average()}")  # fmt: skip


def throughput_rows(items: int, result: MixResult) -> list[tuple[str, str, str, str]]:
    """Baseline and harvester throughput and their ratio for one mix (firehose: the target)."""
    pairs, mix = result.pairs, result.mix
    runs = f" [median of {len(pairs)}]" if len(pairs) > 1 else ""
    rows: list[tuple[str, str, str, str]] = []
    baselines = [pair.baseline for pair in pairs if pair.baseline is not None]
    if baselines:
        seconds = statistics.median(run.seconds for run in baselines)
        rows.append((f"{mix}: raw baseline throughput{runs}",
                     f"{items / seconds:,.0f} items/s ({seconds:.1f} s)", "", ""))  # fmt: skip
    seconds = statistics.median(pair.harvested.seconds for pair in pairs)
    rows.append((f"{mix}: harvester throughput (run --once){runs}",
                 f"{items / seconds:,.0f} items/s ({seconds:.1f} s)", "", ""))  # fmt: skip
    ratios = [pair.ratio for pair in pairs if pair.ratio is not None]
    if ratios:
        ratio = statistics.median(ratios)
        each = f" ({', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
        target, status = "for reference", ""
        if mix == "firehose":  # the target: the shape the harvester meets in production
            target = ">= 1.0x (aim 1.5x)"
            status = verdict(ratio >= 1.0) + (" (aim 1.5x met)" if ratio >= 1.5 else "")
        rows.append((f"{mix}: harvester / baseline{runs}", f"{ratio:.2f}x{each}", target,
                     status))  # fmt: skip
    return rows


def measured_rows(measured: Measured) -> list[tuple[str, str, str, str]]:
    """The query, parent change and visibility rows of the targets table."""
    rows: list[tuple[str, str, str, str]] = []
    for label, timing, count, timed in measured.queries:
        target, ok = "", ""
        if "LIMIT 50" in label:
            target, ok = "median <= 10 ms", two_sided(timing, 0.010)
        if label == NEAR_LABEL:
            target, ok = "median <= 20 ms", two_sided(timing, 0.020)
        rows.append((f"{label} [{count:,} rows, {timed} runs]",
                     f"median {ms(timing.median)}, p95 {ms(timing.p95)}", target, ok))  # fmt: skip
    change, visible = measured.change, measured.visible
    rows.append((f"parent change, {change.children:,} children [{len(change.timing.samples)} runs]",
                 f"median {ms(change.timing.median)}, p95 {ms(change.timing.p95)}",
                 "<= 100 ms", two_sided(change.timing, 0.100)))  # fmt: skip
    worst = max(visible.delays)
    rows.append((f"change on last page visible in bookable_now [{len(visible.delays)} trials]",
                 f"median {statistics.median(visible.delays):.2f} s, max {worst:.2f} s",
                 "<= 10 s (8 s polls)", verdict(worst <= 10.0)))  # fmt: skip
    return rows


def print_feed_rates(result: MixResult) -> None:
    """The per-feed table of one mix: each feed's own pace, baseline beside harvester."""
    runs = f", medians of {len(result.pairs)} pairs" if len(result.pairs) > 1 else ""
    print()
    print(f"per-feed rates, {result.mix} mix{runs}")
    print("(harvester s: its working seconds, less the waits for parent feeds; "
          "ratio: harvester items/s / baseline items/s)")  # fmt: skip
    print_grid(FEED_RATE_HEADERS, feed_rate_rows(result.pairs), right=frozenset(range(1, 10)))


def print_pair(number: int, pair: Pair) -> None:
    """The rows held, wall times and CPU split of one baseline and harvester pair."""
    harvested = pair.harvested
    if pair.baseline is not None:
        baseline = pair.baseline
        print(f"    pair {number}: baseline {baseline.seconds:.1f} s, harvester "
              f"{harvested.seconds:.1f} s, ratio {pair.ratio:.2f}; rows held: baseline "
              f"{pair.held_baseline:,}, harvester {pair.held:,} "
              f"(same: {pair.held_baseline == pair.held})")  # fmt: skip
        totals = orjson.loads(baseline.stdout.strip().splitlines()[-1])
        print(f"      baseline: peak RSS {baseline.peak_rss_mb:.0f} MB, {cpu_split(baseline)}; "
              f"{totals['pages']:,} pages, {totals['items']:,} items")  # fmt: skip
    else:
        print(f"    run {number}: harvester {harvested.seconds:.1f} s, rows held {pair.held:,}")
    print(f"      harvester: peak RSS {harvested.peak_rss_mb:.0f} MB, {cpu_split(harvested)}; "
          f"{harvested.stdout.strip()}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
