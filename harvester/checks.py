"""`harvester check`: the config, the database and each feed's first page, once each;
what a person runs before deploying. Nothing is written anywhere."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from harvester import attribution, catalogs, database, discovery, rpde
from harvester.config import Catalog, Config, Source
from harvester.errors import DatabaseError, HarvesterError, SchemaNotReady
from harvester.fetch import Fetcher

FEEDS_AT_ONCE = 32  # first pages asked for at once; the client keeps each host within its limit


class Check(NamedTuple):
    """One thing checked: what, whether it is fine, and what was found."""

    subject: str
    ok: bool
    detail: str

    def line(self) -> str:
        """`ok   subject: detail`, or `FAIL subject: detail`."""
        return f"{'ok  ' if self.ok else 'FAIL'} {self.subject}: {' '.join(self.detail.split())}"


def run_checks(engine: Engine, config: Config) -> list[Check]:
    """The config (already valid when this runs), the database, then every feed."""
    checks = [Check(f"config {config.path}", True, describe_config(config)), check_database(engine)]
    fetcher = Fetcher(config.settings)
    try:
        for source in config.sources:
            checks += check_source(fetcher, source)
        for catalog in config.catalogs:
            checks += check_catalog(fetcher, config, catalog)
    finally:
        fetcher.close()
    return checks


def describe_config(config: Config) -> str:
    """What the config holds, and any warning it gave."""
    feeds = sum(len(source.feed_purposes()) for source in config.sources)
    summary = f"{len(config.sources)} sources, {feeds} feeds, {len(config.catalogs)} catalogs"
    return "; ".join([summary, *config.warnings])


def check_database(engine: Engine) -> Check:
    """The database answers; where its schema stands against this harvester's."""
    try:
        with engine.connect() as conn:
            database.check_schema(conn)
            detail = f"reachable, schema at revision {database.head_revision()}"
    except SchemaNotReady as exc:
        return Check("database", True, f"reachable; {exc} (`run` migrates it)")
    except DatabaseError as exc:
        return Check("database", False, str(exc))
    except SQLAlchemyError as exc:
        return Check("database", False, str(database.as_database_error(exc, "check")))
    return Check("database", True, detail)


def check_source(fetcher: Fetcher, source: Source) -> list[Check]:
    """Each of the source's feeds' first page, and its attribution feed."""

    def get(url: str) -> bytes:
        return fetcher.get(url, source.headers).body

    checks = [check_feed(source.name, url, get) for url, _ in source.feed_purposes()]
    if source.attribution_feed is not None:
        checks.append(check_attribution(source.name, source.attribution_feed, get))
    return checks


def check_catalog(fetcher: Fetcher, config: Config, catalog: Catalog) -> list[Check]:
    """The catalog's chain walked as `run` discovers it, then each dataset's feeds' first
    pages (side by side: hundreds of feeds, each host within its limit)."""
    found = catalogs.discover([catalog], discovery.document_getter(fetcher, config, lambda: False))
    feeds = sum(len(dataset.feeds) for dataset in found.datasets)
    checks = [
        Check(f"catalog {catalog.url}", True, f"{len(found.datasets)} datasets, {feeds} feeds")
    ]
    checks += [Check(f"{failure.kind_name} {failure.url}", False,
                     failure.reason.removeprefix(f"{failure.url}: "))
               for failure in found.failures]  # fmt: skip

    def get(url: str) -> bytes:
        return fetcher.get(url, {}).body

    pairs = [(discovery.source_name(d.name), url) for d in found.datasets for url in d.feeds]
    with ThreadPoolExecutor(FEEDS_AT_ONCE) as pool:
        checks += pool.map(lambda pair: check_feed(pair[0], pair[1], get), pairs)
    return checks


def check_feed(source: str, url: str, get: Callable[[str], bytes]) -> Check:
    """One RPDE first page, fetched once and checked as the harvester would read it."""
    try:
        page = rpde.parse_page(url, get(url))
        rpde.check_origin(url, page.next_url)
    except HarvesterError as exc:  # its message starts with the URL, which the line gives
        return Check(f"{source} {url}", False, str(exc).removeprefix(f"{url}: "))
    rejected = f", {len(page.rejected)} set aside" if page.rejected else ""
    end = "its last page" if page.is_last else f"next {page.next_url}"
    return Check(f"{source} {url}", True, f"{len(page.items)} items{rejected}; {end}")


def check_attribution(source: str, url: str, get: Callable[[str], bytes]) -> Check:
    """The attribution feed read whole, as the harvester refreshes it."""
    try:
        datasets = attribution.read_feed(url, get)
    except (HarvesterError, orjson.JSONDecodeError) as exc:
        return Check(f"{source} attribution {url}", False, str(exc).removeprefix(f"{url}: "))
    return Check(f"{source} attribution {url}", True, f"{len(datasets)} datasets")
