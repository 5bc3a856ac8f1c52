"""`harvester demo`: the bundled sample publisher, an embedded PostgreSQL, one full harvest."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from sqlalchemy import make_url, text

from harvester import database, feedstate, report
from harvester.checkout import Checkout
from harvester.config import Broker, Config, parse_config
from harvester.errors import CheckoutError
from harvester.sample import SamplePublisher
from harvester.sample.checkout import SampleCheckout

DEMO_DATABASE = "harvester_demo"
DEMO_CHECKOUT_KEY = "sample-checkout-key"  # the sample checkout server's default
DEMO_CUSTOMER = {"type": "Person", "email": "booker@example.com", "givenName": "Sam"}


def run_demo(
    args: argparse.Namespace, environ: Mapping[str, str], harvest: Callable[..., Any]
) -> int:
    """Publish sample feeds on 127.0.0.1, harvest them, print what is bookable now."""
    with demo_database(args.database_url, environ) as url:
        engine = database.make_engine(url)
        try:
            database.migrate(engine)
            with SamplePublisher(items=args.items) as publisher, SampleCheckout() as checkout:
                config = parse_config(publisher.to_config_toml(), environ, "<demo>")
                harvest_once(engine, config, harvest)
                show_results(engine)
                show_checkout_sessions(engine, config, checkout.base_url)
                if args.keep_running:
                    print(
                        f"\nharvesting until Ctrl-C; query it meanwhile:\n"
                        f"  psql '{libpq_url(url)}' -c 'SELECT * FROM bookable_now'"
                    )
                    harvest(engine, config, once=False)
                else:
                    print("\n`harvester demo --keep-running` keeps it up to query with psql")
        finally:
            engine.dispose()
    return 0


def harvest_once(engine: Any, config: Config, harvest: Callable[..., Any]) -> None:
    """One pass over every sample feed, timed."""
    started = time.perf_counter()
    outcome = harvest(engine, config, once=True)
    seconds = time.perf_counter() - started
    rate = outcome.items / seconds if seconds else 0.0
    print(f"harvested {outcome.items} items in {outcome.pages} pages, {seconds:.2f}s "
          f"({rate:,.0f} items/s)")  # fmt: skip
    for feed, reason in outcome.failures.items():
        print(f"FAILED {feed}: {reason}", file=sys.stderr)


def show_checkout_sessions(engine: Any, config: Config, checkout_base: str) -> None:
    """The soonest bookable opportunity taken to the sample checkout server (at
    `checkout_base`, with its API key) by both checkout session routes."""
    with engine.connect() as conn:
        soonest = feedstate.bookable_now(conn, 1)
    if not soonest:
        return
    opportunity = soonest[0].id
    source = replace(config.sources[0], checkout_base_url=checkout_base,
                     headers={"X-API-KEY": DEMO_CHECKOUT_KEY})  # fmt: skip
    routes = {
        "standalone": replace(source, checkout_route="standalone"),
        "authenticated": replace(source, checkout_route="authenticated",
                                 broker=Broker("Demo Broker", "https://broker.example")),
    }  # fmt: skip
    print(f"\ncheckout sessions for {opportunity}:")
    for route, routed in routes.items():
        checkout = Checkout(engine, replace(config, sources=(routed,)))
        try:
            session = checkout.create(id=opportunity, customer=DEMO_CUSTOMER)
        except CheckoutError as exc:
            print(f"  {route:<13} failed: {exc.reason}")
            continue
        finally:
            checkout.close()
        print(f"  {route:<13} {session.url}")


def show_results(engine: Any) -> None:
    """What is bookable now, and why the rest is not."""
    with engine.connect() as conn:
        total = feedstate.count_bookable_now(conn)
        report.print_bookable(feedstate.bookable_now(conn, 15), total, sys.stdout)
        report.print_reasons(feedstate.not_bookable_reasons(conn), sys.stdout)


@contextmanager
def demo_database(url: str | None, environ: Mapping[str, str]) -> Iterator[str]:
    """The given database, or a fresh `harvester_demo` database on the embedded server."""
    if url:
        yield database.normalise_url(url)
        return
    data_dir = database.default_data_dir(environ)
    with database.embedded_database(data_dir) as server_url:
        print(f"embedded PostgreSQL in {data_dir}")
        yield recreate_database(server_url, DEMO_DATABASE)


def recreate_database(server_url: str, name: str) -> str:
    """Drop and create `name` on the server; return its URL."""
    engine = database.make_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The libpq form of a SQLAlchemy URL, for psql (a password is never printed)."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=bool(parsed.password))
