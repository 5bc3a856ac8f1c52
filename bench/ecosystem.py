"""The ecosystem benchmark: one catch-up of a simulated open OpenActive ecosystem.

``python bench/ecosystem.py [--datasets 170] [--hosts 20] [--items 2000000]
[--latency 0.1,0.3] [--page-size 500] [--baseline-items 200000] [--database-url URL]``

1. the raw CPU-bound rate: ``bench/baseline.py`` against the single-host sample publisher
   (``python -m harvester.sample --mix firehose``, no latency), ``--baseline-items`` items,
   into a fresh database: items/s;
2. starts the simulated ecosystem in its own process (``python -m
   harvester.sample.ecosystem``): a data catalog collection, 4 catalogs, ``--datasets``
   dataset sites over ``--hosts`` hosts, ~2.7 RPDE feeds each, every page answered after a
   latency drawn from ``--latency``;
3. runs ``harvester run --once`` (the real CLI) with a config naming only the collection
   (``[[catalogs]]``) into a fresh database: its wall time (the catch-up), its own peak RSS
   (``wait4``) and CPU, and the simulator's CPU beside it;
4. reads the simulator's counters (``/_stats``): peak feeds and requests in flight, per
   host and in all, pages and items served.

The report sets the catch-up beside the ideal: the larger of the latency-bound ideal (each
host's pages at ``max_connections_per_host`` at a time, each feed's pages one after
another: ``harvester.sample.ecosystem``'s docstring has the formula) and the CPU-bound
ideal (the items at the raw baseline's rate). Databases ``bench_ecobaseline_<pid>`` and
``bench_ecosystem_<pid>`` are created on the server (``--database-url``, else
TEST_DATABASE_URL or DATABASE_URL, else an embedded PostgreSQL) and dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

# bench/ is this script's directory, so bench/run.py imports as `run`: its helpers are ours.
from run import (
    FEEDS,
    ProcessRun,
    count_rows,
    cpu_split,
    harvested_records,
    log,
    machine,
    print_grid,
    print_table,
    publisher_process,
    rss_mb,
    rss_profile,
    run_baseline,
    run_harvester_once,
    scratch_database,
    server_url,
    settle,
    stop_process,
    verdict,
)

from harvester.config import Settings, parse_config
from harvester.sample.ecosystem import (
    DEFAULT_DATASETS,
    DEFAULT_HOSTS,
    DEFAULT_ITEMS,
    DEFAULT_LATENCY,
    DEFAULT_PAGE_SIZE,
    Plan,
    make_plan,
    parse_latency,
)
from harvester.sample.server import toml_string

RATIO_TARGET = 1.5  # catch-up within 1.5 x the ideal
RSS_TARGET_MB = 300.0
BASELINE_MIX = "firehose"


# --- the simulator in its own process ----------------------------------------------------------


@dataclass(frozen=True)
class Simulator:
    """The running ecosystem process: its collection URL, counters URL and pid."""

    collection_url: str
    stats_url: str
    pid: int


@contextmanager
def simulator_process(args: argparse.Namespace, workdir: Path) -> Iterator[Simulator]:
    """``python -m harvester.sample.ecosystem`` in its own process, until the block ends."""
    low, high = args.latency
    command = [sys.executable, "-m", "harvester.sample.ecosystem",
               "--datasets", str(args.datasets), "--hosts", str(args.hosts),
               "--items", str(args.items), "--page-size", str(args.page_size),
               "--latency", f"{low},{high}", "--seed", str(args.seed)]  # fmt: skip
    with open(workdir / "ecosystem.err", "wb") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("READY "):
            detail = (workdir / "ecosystem.err").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the ecosystem did not start: {line!r}\n{detail}")
        collection = line.split(" ", 1)[1]
        yield Simulator(collection, collection.rsplit("/", 1)[0] + "/_stats", process.pid)
    finally:
        stop_process(process)


def read_stats(simulator: Simulator) -> dict[str, Any]:
    """The simulator's counters (``/_stats``)."""
    response = httpx.get(simulator.stats_url, timeout=30)
    response.raise_for_status()
    return orjson.loads(response.content)


def check_plan(simulator: Simulator, plan: Plan) -> None:
    """The simulator serves the layout this process computed (same options, same seed)."""
    served = read_stats(simulator)["plan"]
    if served != plan.summary():
        raise RuntimeError(f"the ecosystem serves {served}, expected {plan.summary()}")


# --- the config -----------------------------------------------------------------------------


def write_catalog_config(
    path: Path, collection_url: str, per_host_limit: int, workers: int | None
) -> Path:
    """A harvester config naming only the collection; [harvester] only for non-defaults."""
    lines = ["[[catalogs]]", f"url = {toml_string(collection_url)}"]
    settings: dict[str, int] = {}
    if per_host_limit != Settings().max_connections_per_host:
        settings["max_connections_per_host"] = per_host_limit
    if workers is not None:
        settings["workers"] = workers
    if settings:
        lines += ["", "[harvester]", *(f"{name} = {value}" for name, value in settings.items())]
    text = "\n".join(lines) + "\n"
    parse_config(text, {}, str(path))  # fail here, not minutes into the run
    path.write_text(text, encoding="utf-8")
    return path


# --- the phases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """The raw baseline's run against the single-host sample publisher."""

    items: int
    run: ProcessRun

    @property
    def rate(self) -> float:
        """Items per second, over its wall time (as bench/run.py counts it)."""
        return self.items / self.run.seconds


def measure_baseline(server: str, items: int, page_size: int, workdir: Path) -> Baseline:
    """bench/baseline.py over ``items`` items of the Firehose mix, into a scratch database."""
    with ExitStack() as stack:
        base, pid = stack.enter_context(publisher_process(items, page_size, BASELINE_MIX))
        db = stack.enter_context(scratch_database(server, f"bench_ecobaseline_{os.getpid()}"))
        settle(server)
        log(f"raw baseline: {items:,} items from the sample publisher at {base}: running")
        result = run_baseline(db, [f"{base}/feeds/{feed}" for feed in FEEDS], workdir, pid,
                              "baseline")  # fmt: skip
    baseline = Baseline(items, result)
    log(f"raw baseline: {result.seconds:.1f} s, {baseline.rate:,.0f} items/s")
    return baseline


@dataclass(frozen=True)
class Harvest:
    """The harvester's catch-up, the simulator's counters, and what the database holds."""

    run: ProcessRun
    stats: dict[str, Any]
    held: int
    feeds: dict[str, int | None]  # rows, sources and caught-up feeds in harvester.feeds
    logged: dict[str, int]  # feeds, pages and items from the feed_harvested records
    simulator_rss_mb: float | None


def measure_harvest(server: str, simulator: Simulator, config: Path, workdir: Path) -> Harvest:
    """``harvester run --once`` on a fresh database against the ecosystem."""
    with scratch_database(server, f"bench_ecosystem_{os.getpid()}") as db:
        settle(server)
        log("harvester run --once against the ecosystem: running")
        # The simulator is the "publisher" whose CPU run_measured reports beside the run's.
        result = run_harvester_once(db, config, workdir, simulator.pid, "ecosystem-harvester")
        log(f"harvester run --once: {result.seconds:.1f} s")
        stats = read_stats(simulator)
        held = count_rows(db, "SELECT count(*) FROM harvester.items")
        feeds = feed_counts(db)
    return Harvest(result, stats, held, feeds, logged_totals(result.stderr),
                   rss_mb(simulator.pid, "VmHWM"))  # fmt: skip


def feed_counts(db: str) -> dict[str, int | None]:
    """Feeds, sources and caught-up feeds in harvester.feeds (None if the schema differs)."""
    sql = ("SELECT count(*), count(DISTINCT source), count(*) FILTER (WHERE caught_up_at IS"
           " NOT NULL) FROM harvester.feeds")  # fmt: skip
    try:
        with psycopg.connect(db) as conn:
            row = conn.execute(sql).fetchone()
    except psycopg.Error:
        return {"feeds": None, "sources": None, "caught_up": None}
    assert row is not None
    return {"feeds": row[0], "sources": row[1], "caught_up": row[2]}


def logged_totals(stderr: str) -> dict[str, int]:
    """Distinct feeds, pages and items over the run's ``feed_harvested`` records."""
    feeds: set[str] = set()
    pages = items = 0
    for record in harvested_records(stderr):
        feeds.add(str(record["feed"]))
        pages += int(record.get("pages", 0))
        items += int(record.get("items", 0))
    return {"feeds": len(feeds), "pages": pages, "items": items}


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ideal:
    """The two floors under a catch-up, and the larger."""

    latency_bound: float
    cpu_bound: float | None

    @property
    def seconds(self) -> float:
        """The ideal: the larger floor."""
        return max(self.latency_bound, self.cpu_bound or 0.0)


def report(
    args: argparse.Namespace,
    info: dict[str, str],
    plan: Plan,
    baseline: Baseline | None,
    harvest: Harvest,
) -> None:
    """Print the machine, the figures beside their targets, and the details."""
    mean = sum(args.latency) / 2
    ideal = Ideal(plan.ideal_seconds(args.per_host_limit, mean),
                  None if baseline is None else plan.items / baseline.rate)  # fmt: skip
    print()
    print(f"ecosystem benchmark: {len(plan.datasets)} datasets on {plan.hosts} hosts, "
          f"{len(plan.feeds)} feeds, {plan.items:,} items in pages of {plan.page_size}, "
          f"latency {args.latency[0]:g}-{args.latency[1]:g} s")  # fmt: skip
    for key, value in info.items():
        print(f"  {key:11} {value}")
    print()
    print_table(target_rows(args, plan, ideal, baseline, harvest))
    print()
    print_details(args, plan, baseline, harvest)


def target_rows(
    args: argparse.Namespace, plan: Plan, ideal: Ideal, baseline: Baseline | None,
    harvest: Harvest,
) -> list[tuple[str, str, str, str]]:  # fmt: skip
    """The measure / result / target / status rows."""
    run, stats, limit = harvest.run, harvest.stats, args.per_host_limit
    ratio = run.seconds / ideal.seconds
    per_host = int(stats["peak_in_flight_per_host"])
    cpu_bound = "n/a (--baseline-items 0)"
    if baseline is not None and ideal.cpu_bound is not None:
        cpu_bound = f"{ideal.cpu_bound:.1f} s ({baseline.rate:,.0f} items/s raw baseline)"
    return [
        ("datasets / hosts / feeds", f"{len(plan.datasets)} / {plan.hosts} / "
         f"{len(plan.feeds)}", "", ""),
        ("items", f"{plan.items:,}", "", ""),
        ("catch-up (harvester run --once)", f"{run.seconds:.1f} s", "", ""),
        ("latency-bound ideal", f"{ideal.latency_bound:.1f} s ({limit} per host)", "", ""),
        ("CPU-bound ideal", cpu_bound, "", ""),
        ("ideal (the larger)", f"{ideal.seconds:.1f} s", "", ""),
        ("catch-up / ideal", f"{ratio:.2f}x", f"<= {RATIO_TARGET}x",
         verdict(ratio <= RATIO_TARGET)),
        ("harvester throughput", f"{plan.items / run.seconds:,.0f} items/s", "", ""),
        ("harvester peak RSS", f"{run.peak_rss_mb:.0f} MB", f"<= {RSS_TARGET_MB:.0f} MB",
         verdict(run.peak_rss_mb <= RSS_TARGET_MB)),
        ("peak feeds in flight", f"{stats['peak_feeds_in_flight']}", "", ""),
        ("peak requests in flight per host", f"{per_host}", f"<= {limit}",
         verdict(per_host <= limit)),
        ("rows in harvester.items at the end", f"{harvest.held:,}", "", ""),
    ]  # fmt: skip


def print_details(
    args: argparse.Namespace, plan: Plan, baseline: Baseline | None, harvest: Harvest
) -> None:
    """What lies under the figures: CPU, counters, feeds, RSS over the run."""
    run, stats = harvest.run, harvest.stats
    print("details")
    print(f"  harvester: {cpu_split(run)}; RSS at 25% / 50% / 75% / 100%: "
          f"{rss_profile(run.rss_samples)} (this process's RSS at the spawn: "
          f"{run.spawner_rss_mb:.0f} MB)")  # fmt: skip
    rss = "n/a" if harvest.simulator_rss_mb is None else f"{harvest.simulator_rss_mb:.0f} MB"
    print(f"  simulator: CPU {run.publisher_cpu_seconds:.1f} s during the run, peak RSS {rss}; "
          f"served {stats['pages']:,} pages ({plan.pages:,} walk every feed once) and "
          f"{stats['items']:,} items; every feed walked to its last page "
          f"{stats['all_walked_seconds']} s after the first request "
          f"({stats['feeds_walked']} of {len(plan.feeds)} feeds)")  # fmt: skip
    print(f"  requests: {stats['requests']:,} ({format_kinds(stats['requests_by_kind'])}); "
          f"peak in flight {stats['peak_in_flight']} in all; the CSV distributions are no "
          f"feeds: {stats['requests_by_kind'].get('csv', 0)} fetched")  # fmt: skip
    feeds, logged = harvest.feeds, harvest.logged
    print(f"  harvester.feeds: {feeds['feeds']} feeds ({len(plan.feeds)} published), "
          f"{feeds['sources']} sources ({len(plan.datasets)} datasets, some listed twice), "
          f"{feeds['caught_up']} caught up; feed_harvested records: {logged['feeds']} feeds, "
          f"{logged['pages']:,} pages, {logged['items']:,} items")  # fmt: skip
    if baseline is not None:
        print(f"  raw baseline: {baseline.items:,} items ({BASELINE_MIX} mix, one host, no "
              f"latency) in {baseline.run.seconds:.1f} s; {cpu_split(baseline.run)}")  # fmt: skip
    print("  busiest hosts (requests, peak in flight):")
    hosts = sorted(stats["hosts"], key=lambda host: -int(host["requests"]))[:5]
    print_grid(("host", "requests", "peak in flight"),
               [(host["url"], f"{host['requests']:,}", str(host["peak_in_flight"]))
                for host in hosts], right=frozenset({1, 2}))  # fmt: skip


def format_kinds(kinds: dict[str, int]) -> str:
    """Requests by kind, largest first."""
    ordered = sorted(kinds.items(), key=lambda pair: -pair[1])
    return ", ".join(f"{count:,} {kind}" for kind, count in ordered)


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=DEFAULT_DATASETS, help="default 170")
    parser.add_argument("--hosts", type=int, default=DEFAULT_HOSTS, help="default 20")
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS, help="default 2,000,000")
    parser.add_argument("--latency", type=parse_latency, default=DEFAULT_LATENCY,
                        help="LOW,HIGH seconds per page (default 0.1,0.3)")  # fmt: skip
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="default 500")
    parser.add_argument(
        "--baseline-items",
        type=int,
        default=200_000,
        help="items for the raw CPU-bound rate (default 200,000; 0 skips it)",
    )
    parser.add_argument("--database-url", help="a PostgreSQL server (default: TEST_DATABASE_URL"
                        ", DATABASE_URL, else an embedded pgserver)")  # fmt: skip
    parser.add_argument("--per-host-limit", type=int,
                        default=Settings().max_connections_per_host,
                        help="the harvester's max_connections_per_host, for the ideal and the "
                        "check (default: the harvester's default; written to the config only "
                        "when different)")  # fmt: skip
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="[harvester] workers for the config (default: not written)",
    )
    parser.add_argument("--seed", type=int, default=1, help="the ecosystem's seed (default 1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the baseline and the catch-up, and print the report."""
    args = parse_args(argv)
    plan = make_plan(datasets=args.datasets, hosts=args.hosts, items=args.items,
                     page_size=args.page_size, seed=args.seed)  # fmt: skip
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="harvester-eco-")))
        server = stack.enter_context(server_url(args.database_url))
        info = machine(server)
        baseline = None
        if args.baseline_items > 0:
            baseline = measure_baseline(server, args.baseline_items, args.page_size, workdir)
        simulator = stack.enter_context(simulator_process(args, workdir))
        check_plan(simulator, plan)
        log(f"ecosystem: {len(plan.feeds)} feeds, {plan.items:,} items at "
            f"{simulator.collection_url}")  # fmt: skip
        config = write_catalog_config(workdir / "ecosystem.toml", simulator.collection_url,
                                      args.per_host_limit, args.workers)  # fmt: skip
        harvest = measure_harvest(server, simulator, config, workdir)
        report(args, info, plan, baseline, harvest)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
