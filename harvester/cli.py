"""The `harvester` command: migrate, run, backfill, status, checkout, serve and demo."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from harvester import (
    __version__,
    allocator,
    attribution,
    bookability,
    database,
    discovery,
    feedstate,
    metrics,
    redact,
    report,
)
from harvester.config import Config, Source, load_config
from harvester.errors import (
    CheckoutFailed,
    ConfigError,
    DatabaseError,
    HarvesterError,
    NoSuchOpportunity,
    NotBookable,
)
from harvester.fetch import Fetcher
from harvester.logs import setup_logging
from harvester.pipeline import Harvester
from harvester.worker import Refresh, RunReport, Worker, new_owner

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED_FEEDS, EXIT_USAGE, EXIT_DATABASE = 0, 1, 2, 3
# Each page allocates ~100,000 objects (JSON in, rows out) that die with it. At Python's
# default first threshold (700) the collector runs ~150 times a page and its older
# generations keep rescanning long-lived state: 10-15 % of a harvest's CPU.
GC_THRESHOLDS = (50_000, 20, 100)
# How a fatal error is told and what the process exits with: the first class that matches.
FAILURES: tuple[tuple[type[HarvesterError], str, int], ...] = (
    (ConfigError, "config error: ", EXIT_USAGE),
    (DatabaseError, "database error: ", EXIT_DATABASE),
    (NotBookable, "not bookable: ", EXIT_FAILED_FEEDS),
    (CheckoutFailed, "checkout failed: ", EXIT_FAILED_FEEDS),
    (HarvesterError, "", EXIT_FAILED_FEEDS),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m harvester`."""
    args = build_parser().parse_args(argv)
    allocator.limit_arenas()  # before any thread starts
    exit_on_signals()
    try:
        setup_logging(args.log_level, args.log_format)
        return int(args.handler(args, os.environ))
    except HarvesterError as exc:
        return report_fatal(exc, json_logs=args.log_format == "json")
    except SQLAlchemyError as exc:  # the database failed outside any command's own handling
        error = database.as_database_error(exc, f"{args.command} failed")
        return report_fatal(error, json_logs=args.log_format == "json")


def report_fatal(error: HarvesterError, *, json_logs: bool) -> int:
    """One line on stderr (one JSON object under --log-format json); the exit code."""
    what, code = next((what, code) for kind, what, code in FAILURES if isinstance(error, kind))
    message = " ".join(redact.scrub(str(error)).split())  # one line, whatever it held
    if json_logs:
        entry = {
            "time": datetime.now(UTC).isoformat(), "level": "error", "event": "fatal",
            "error": type(error).__name__, "message": f"{what}{message}", "exit": code,
        }  # fmt: skip
        print(json.dumps(entry), file=sys.stderr)
    else:
        print(f"harvester: {what}{message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every option names its environment variable."""
    parser = argparse.ArgumentParser(prog="harvester", description=__doc__)
    parser.add_argument("--version", action="version", version=f"harvester {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", help="PostgreSQL URL (env: DATABASE_URL); "
                        "none: an embedded PostgreSQL in HARVESTER_DATA_DIR")  # fmt: skip
    common.add_argument("--config", help="feeds config TOML (env: HARVESTER_CONFIG)")
    common.add_argument("--log-level", default=os.environ.get("HARVESTER_LOG_LEVEL", "INFO"),
                        help="DEBUG, INFO, WARNING... (env: HARVESTER_LOG_LEVEL)")  # fmt: skip
    common.add_argument("--log-format", choices=("text", "json"),
                        default=os.environ.get("HARVESTER_LOG_FORMAT", "text"),
                        help="text or json lines (env: HARVESTER_LOG_FORMAT)")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    add = _command_adder(commands, common)
    add("migrate", command_migrate, "bring the schema to the newest migration")
    run = add("run", command_run, "harvest every feed, forever (or --once)")
    run.add_argument("--once", action="store_true", help="exit when every feed is caught up")
    run.add_argument(
        "--metrics-port",
        type=port_number,
        help="serve /metrics and /healthz on this port (env: HARVESTER_METRICS_PORT)",
    )
    run.add_argument("--metrics-host", help="address for the metrics port, default 127.0.0.1"
                     " (env: HARVESTER_METRICS_HOST)")  # fmt: skip
    backfill = add("backfill", command_backfill, "harvest feeds again from their first page")
    backfill.add_argument("--source", action="append", help="only this source (repeatable)")
    backfill.add_argument("--feed", action="append", help="only this feed URL (repeatable)")
    status = add("status", command_status, "one line per feed (never writes: works on a replica)")
    status.add_argument("--json", action="store_true", help="a JSON array, one object per feed")
    status.add_argument("--summary", action="store_true",
                        help="one line per source: feeds, items, worst state")  # fmt: skip
    add("check", command_check, "validate the config, the database and each feed's first page")
    checkout = add("checkout", command_checkout, "a checkout URL for one bookable opportunity")
    checkout.add_argument("id", help="the opportunity's @id (or, with --source, its identifier)")
    checkout.add_argument("--source", help="the source holding it")
    checkout.add_argument(
        "--customer",
        metavar="FILE",
        help="JSON customer details for the authenticated route (- for stdin)",
    )
    checkout.add_argument("--json", action="store_true", help='print {"url": ..., "route": ...}')
    serve = add("serve", command_serve,
                "HTTP API for checkout sessions (needs HARVESTER_API_TOKEN)")  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="default 8080")
    demo = add("demo", command_demo, "sample publisher + embedded PostgreSQL, end to end")
    demo.add_argument("--items", type=int, default=2_000, help="sample items to publish")
    demo.add_argument("--keep-running", action="store_true",
                      help="keep harvesting after the first pass, for exploring")  # fmt: skip
    return parser


def _command_adder(
    commands: Any, common: argparse.ArgumentParser
) -> Callable[..., argparse.ArgumentParser]:
    def add(name: str, handler: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    return add


def command_migrate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`harvester migrate`."""
    with open_database(args, environ) as engine:
        database.migrate(engine)
    print("harvester: schema is at the newest migration")
    return EXIT_OK


def command_run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`harvester run [--once]`."""
    config = read_config(args, environ)
    port = args.metrics_port
    if port is None and environ.get("HARVESTER_METRICS_PORT", "").strip():
        port = port_number(environ["HARVESTER_METRICS_PORT"], "HARVESTER_METRICS_PORT")
    if port is not None:
        host = args.metrics_host or environ.get("HARVESTER_METRICS_HOST") or "127.0.0.1"
        metrics.serve_metrics(host, port)
    metrics.HEALTH.configure(config.settings.unhealthy_after_seconds)
    with open_database(args, environ) as engine:
        database.migrate(engine)
        metrics.CAUGHT_UP.bind(engine)
        outcome = harvest(engine, config, once=args.once, progress=progress_mode(args))
    return finish_run(outcome, args.once, json_logs=args.log_format == "json")


def progress_mode(args: argparse.Namespace) -> str:
    """A live table on a terminal; log records off one, and always under JSON logs."""
    return "live" if sys.stderr.isatty() and args.log_format != "json" else "log"


def command_backfill(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`harvester backfill [--source NAME] [--feed URL]`."""
    config = read_config(args, environ)
    with open_database(args, environ) as engine:
        database.migrate(engine)
        with engine.begin() as conn:
            sync_sources(conn, config)
            # The feeds of the sources the config's catalogs found, as the last run held them.
            pairs = config_pairs(config) + held_pairs(discovery.held_sources(conn, config))
            feeds = select_feeds(feedstate.load_feeds(conn, pairs), args)
            feeds = [feedstate.start_backfill(conn, feed.id) for feed in feeds]
        for feed in feeds:
            logger.info("backfilling %s", feed.url, extra={"event": "backfill_started"})
        outcome = harvest(engine, config, once=True, feeds=feeds, progress=progress_mode(args))
    return finish_run(outcome, once=True, json_logs=args.log_format == "json")


def command_status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`harvester status [--json]`: reads only, so a read-only role or a replica will do."""
    with open_database(args, environ, writes=False) as engine, engine.connect() as conn:
        database.check_schema(conn)
        rows = feedstate.feed_status(conn)
        if args.json:
            objects = report.summary_objects(rows) if args.summary else report.status_objects(rows)
            print(json.dumps(objects, indent=2))
            return EXIT_OK
        if args.summary:
            report.print_summary(rows, sys.stdout)
            return EXIT_OK
        report.print_status(rows, sys.stdout)
        report.print_reasons(feedstate.not_bookable_reasons(conn), sys.stdout)
    return EXIT_OK


def command_check(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`harvester check`: what a person runs before deploying; exit 1 on any problem."""
    from harvester import checks

    config = read_config(args, environ)
    with open_database(args, environ, writes=False) as engine:
        results = checks.run_checks(engine, config)
    for result in results:
        print(result.line())
    return EXIT_OK if all(result.ok for result in results) else EXIT_FAILED_FEEDS


def command_checkout(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`harvester checkout ID [--source NAME] [--customer FILE|-] [--json]`."""
    from harvester.checkout import Checkout

    config = read_config(args, environ)
    customer = read_customer(args.customer)
    with open_database(args, environ) as engine:
        database.migrate(engine)
        checkout = Checkout(engine, config)
        try:
            session = create_by_id_or_identifier(checkout, args.id, args.source, customer)
        finally:
            checkout.close()
    if args.json:
        print(json.dumps({"url": session.url, "route": session.route}))
    else:
        print(session.url)
    return EXIT_OK


def create_by_id_or_identifier(
    checkout: Any, key: str, source: str | None, customer: dict[str, Any] | None
) -> Any:
    """By @id; with a source, by identifier when no @id matches."""
    try:
        return checkout.create(id=key, source=source, customer=customer)
    except NoSuchOpportunity:
        if source is None:
            raise
    return checkout.create(source=source, identifier=key, customer=customer)


def read_customer(path: str | None) -> dict[str, Any] | None:
    """The customer object from a JSON file or stdin; its content is never shown."""
    if path is None:
        return None
    try:
        raw = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        customer = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--customer {path}: not a readable JSON file ({type(exc).__name__})"
        ) from None
    if not isinstance(customer, dict):
        raise ConfigError(f"--customer {path}: expected a JSON object")
    return customer


def command_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`harvester serve [--host 127.0.0.1] [--port 8080]`."""
    from harvester import api
    from harvester.checkout import Checkout

    token = environ.get("HARVESTER_API_TOKEN", "").strip()
    if not token:
        raise ConfigError("HARVESTER_API_TOKEN is not set: the HTTP API will not start without it")
    redact.register_secrets([token])
    config = read_config(args, environ)
    with open_database(args, environ) as engine:
        database.migrate(engine)
        checkout = Checkout(engine, config)
        try:
            api.serve(checkout, token, engine, host=args.host, port=args.port)
        finally:
            checkout.close()
    return EXIT_OK


def command_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`harvester demo`: everything local, nothing to set up."""
    from harvester import demo

    return demo.run_demo(args, environ, harvest)


def harvest(
    engine: Engine,
    config: Config,
    *,
    once: bool,
    feeds: list[feedstate.FeedRow] | None = None,
    progress: str | None = None,
) -> RunReport:
    """Sync sources (and discover those of data catalogs), then run the worker until done
    or stopped by a signal."""
    gc.set_threshold(*GC_THRESHOLDS)
    stop = threading.Event()
    fetcher = Fetcher(config.settings)
    harvester = Harvester(
        engine=engine, fetcher=fetcher, settings=config.settings,
        sources={source.name: source for source in config.sources},
        owner=new_owner(), stop=stop,
    )  # fmt: skip
    try:
        with stop_on_signals(stop), report.progress_display(harvester, progress):
            failures: dict[str, str] = {}
            if feeds is None:
                feeds = find_feeds(harvester, config, failures)
            else:  # a backfill's: its discovered sources are those held
                with engine.begin() as conn:
                    held = discovery.held_sources(conn, config)
                harvester.sources.update({source.name: source for source in held})
            attribution.keep_fresh(engine, fetcher, config, stop)
            refresh = None
            if config.catalogs and not once:
                hours = config.settings.catalog_refresh_hours
                refresh = Refresh(lambda: find_feeds(harvester, config, {}), hours * 3600)
            outcome = Worker(harvester, feeds, once=once, refresh=refresh).run()
            outcome.failures.update(failures)
            return outcome
    finally:
        stop.set()  # the attribution thread, if any, ends with the run
        fetcher.close()


def find_feeds(
    harvester: Harvester, config: Config, failures: dict[str, str]
) -> list[feedstate.FeedRow]:
    """Register the configured sources, discover the catalogs' (their failures go into
    `failures`), and load every feed to harvest: configured or discovered."""
    with harvester.engine.begin() as conn:
        sync_sources(conn, config)
    if config.catalogs:
        found = discovery.discover_sources(harvester.engine, harvester.fetcher, config,
                                           harvester.stopping)  # fmt: skip
        failures.update(found.failures)
    with harvester.engine.begin() as conn:
        held = discovery.held_sources(conn, config)
        harvester.sources.update({source.name: source for source in held})
        return feedstate.load_feeds(conn, config_pairs(config) + held_pairs(held))


def finish_run(
    outcome: RunReport, once: bool, out: TextIO = sys.stdout, *, json_logs: bool = False
) -> int:
    """Print the summary; non-zero when any feed failed (with --once)."""
    print(f"harvester: {outcome.pages} pages, {outcome.items} items written", file=out)
    for raw_feed, raw_reason in sorted(outcome.failures.items()):
        # A failure's text may quote a header value (an API key): scrubbed before it is shown.
        feed, reason = redact.scrub(raw_feed), redact.scrub(raw_reason)
        if json_logs:  # stderr stays one JSON object per line
            logger.error("FAILED %s: %s", feed, reason,
                         extra={"event": "run_failed", "feed": feed, "reason": reason})  # fmt: skip
        else:
            print(f"harvester: FAILED {feed}: {reason}", file=sys.stderr)
    return EXIT_FAILED_FEEDS if once and outcome.failures else EXIT_OK


def sync_sources(conn: Any, config: Config) -> None:
    """Register every configured source and feed."""
    for source in config.sources:
        feedstate.sync_source(conn, source, bookability.checkout_prefix(source.checkout_base_url))


def config_pairs(config: Config) -> list[tuple[str, str]]:
    """(source, feed URL) of every configured feed."""
    return [(source.name, url) for source in config.sources for url, _ in source.feed_purposes()]


def held_pairs(sources: list[Source]) -> list[tuple[str, str]]:
    """(source, feed URL) of every feed of these (discovered) sources."""
    return [(source.name, url) for source in sources for url in source.feeds]


def select_feeds(
    feeds: list[feedstate.FeedRow], args: argparse.Namespace
) -> list[feedstate.FeedRow]:
    """The feeds a backfill names (all when none is named)."""
    chosen = [
        feed for feed in feeds
        if (not args.source or feed.source in args.source)
        and (not args.feed or feed.url in args.feed)
    ]  # fmt: skip
    if not chosen:
        raise ConfigError("backfill: no configured feed matches --source/--feed")
    return chosen


def read_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """The config named by --config or HARVESTER_CONFIG."""
    path = args.config or environ.get("HARVESTER_CONFIG")
    if not path:
        raise ConfigError("no feeds config: give --config PATH or set HARVESTER_CONFIG")
    config = load_config(path, environ)
    # Before anything can log or store a text that quotes a header value (an API key).
    redact.register_secrets(config.secrets())
    for warning in config.warnings:
        logger.warning("%s", warning, extra={"event": "config_warning"})
    return config


@contextmanager
def open_database(
    args: argparse.Namespace, environ: Mapping[str, str], *, writes: bool = True
) -> Iterator[Engine]:
    """An engine on the given database, or on the embedded one; disposed on exit.

    A reading command's engine (`writes=False`) creates nothing on connecting.
    """
    url = database.environ_database_url(args.database_url, environ)
    with database.resolve_database(url, environ) as resolved:
        if not url:
            print(f"harvester: embedded PostgreSQL in {database.default_data_dir(environ)}",
                  file=sys.stderr)  # fmt: skip
        engine = database.make_engine(resolved, staging=writes)
        try:
            yield engine
        finally:
            engine.dispose()


def exit_on_signals() -> None:
    """Until harvesting starts (migrations, start-up), SIGTERM/SIGINT just exit cleanly."""

    def leave(signum: int, _frame: Any) -> None:
        raise SystemExit(EXIT_OK)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, leave)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT ask for a clean stop: the page in hand is committed first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, _frame: Any) -> None:
        logger.info("stopping on %s", signal.Signals(signum).name, extra={"event": "stopping"})
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def port_number(text: str, name: str = "--metrics-port") -> int:
    """A TCP port from its text; ConfigError (an argparse error for an option) if not one."""
    value = text.strip()
    if not value.isdigit() or not 0 < int(value) < 65536:
        message = f"{name}: expected a port number (1-65535), got {text!r}"
        if name.startswith("--"):
            raise argparse.ArgumentTypeError(message)
        raise ConfigError(message)
    return int(value)
