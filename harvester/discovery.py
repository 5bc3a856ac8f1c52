"""Sources discovered from OpenActive data catalogs, kept in step in the database.

`catalogs` walks the chain; this module registers each Dataset as a source with its
feeds, retires the datasets and feeds a catalog no longer lists (their rows go), and
records what could not be read, for `status` and `run --once`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

from harvester import catalogs, feedstate, pagewrite, parents, sql
from harvester.config import MAX_SOURCE_NAME_BYTES, Catalog, Config, Source
from harvester.fetch import Fetcher, retrying

logger = logging.getLogger(__name__)

# What a catalog or a dataset site is asked for: a JSON-LD document, or an HTML page.
DOCUMENT_ACCEPT = "application/ld+json, application/json;q=0.9, text/html;q=0.8"
# A document that cannot be read is tried again at the next discovery, not at length now.
DOCUMENT_RETRIES = {"retry_attempts": 2, "retry_max_seconds": 30.0}


@dataclass(frozen=True)
class Discovered:
    """What one discovery of every [[catalogs]] entry found: sources, and failures by URL."""

    sources: tuple[Source, ...]
    failures: dict[str, str]  # "catalog <url>" or "dataset site <url>" -> one line


def discover_sources(
    engine: Engine, fetcher: Fetcher, config: Config, stopping: Callable[[], bool] = lambda: False
) -> Discovered:
    """Read each catalog, register what it lists, retire what it no longer lists."""
    get = document_getter(fetcher, config, stopping)
    configured = {source.name for source in config.sources}
    found: list[Source] = []
    failures: dict[str, str] = {}
    for catalog in config.catalogs:
        started = time.monotonic()
        discovery = catalogs.discover([catalog], get)
        with engine.begin() as conn:
            sources = apply_discovery(conn, catalog, discovery, configured | names(found))
        found.extend(sources)
        failures.update(failure_lines(discovery.failures))
        log_discovery(catalog, sources, discovery, time.monotonic() - started)
    return Discovered(tuple(found), failures)


def held_sources(conn: Connection, config: Config) -> list[Source]:
    """The sources held from this config's catalogs, with their feeds: those found by the
    last discovery, and those whose site could not be read since (harvested as they were)."""
    catalog_urls = [catalog.url for catalog in config.catalogs]
    if not catalog_urls:
        return []
    rows = conn.execute(text(sql.HELD_DISCOVERED), {"catalogs": catalog_urls}).all()
    return [Source(name=name, feeds=tuple(urls)) for name, urls in rows]


def document_getter(
    fetcher: Fetcher, config: Config, stopping: Callable[[], bool]
) -> Callable[[str], bytes]:
    """GET a catalog or dataset site through the shared client, with a short retry policy."""
    settings = dataclasses.replace(config.settings, **DOCUMENT_RETRIES)
    headers = {"Accept": DOCUMENT_ACCEPT}

    def get(url: str) -> bytes:
        for attempt in retrying(settings, time.sleep, stopping):
            with attempt:
                return fetcher.get(url, headers).body
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    return get


def apply_discovery(
    conn: Connection, catalog: Catalog, discovery: catalogs.Discovery, taken: set[str]
) -> list[Source]:
    """Register the catalog's datasets (a name already taken stays its owner's); retire
    those it no longer lists, unless part of the chain could not be read; note failures."""
    sources = []
    for dataset in discovery.datasets:
        source = source_of(dataset)
        if source.feeds and source.name not in taken:
            register(conn, catalog, source, dataset)
            sources.append(source)
    kept_sites = {failure.url for failure in discovery.failures}
    if complete(discovery):
        retire_missing(conn, catalog, {source.name for source in sources}, kept_sites)
    record_failures(conn, catalog, discovery.failures)
    return sources


def source_of(dataset: catalogs.DiscoveredDataset) -> Source:
    """The source a Dataset becomes: named by it, its RPDE feeds, no checkout base."""
    return Source(name=source_name(dataset.name), feeds=dataset.feeds)


def source_name(name: str) -> str:
    """A Dataset's name as a source name: as it is, unless over the length a key allows."""
    if len(name.encode()) <= MAX_SOURCE_NAME_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return name.encode()[: MAX_SOURCE_NAME_BYTES - 14].decode(errors="ignore") + "~" + digest


def names(sources: Sequence[Source]) -> set[str]:
    return {source.name for source in sources}


def register(
    conn: Connection, catalog: Catalog, source: Source, dataset: catalogs.DiscoveredDataset
) -> None:
    """Upsert the source, its feeds and its Dataset's attribution; drop feeds it lost."""
    feedstate.sync_source(conn, source, None)
    conn.execute(text(sql.MARK_DISCOVERED), {
        "name": source.name, "catalog": catalog.url, "site_url": dataset.site_url,
        "attribution_name": dataset.attribution_name, "attribution_url": dataset.attribution_url,
        "license": dataset.license,
    })  # fmt: skip
    listed = set(source.feeds)
    for feed_id, url in conn.execute(text(sql.FEEDS_OF_SOURCE), {"source": source.name}):
        if url not in listed:
            retire_feed(conn, source.name, feed_id, url)


def complete(discovery: catalogs.Discovery) -> bool:
    """Every catalog of the chain was read: what is not listed is really gone."""
    return all(failure.kind == "site" for failure in discovery.failures)


def retire_missing(conn: Connection, catalog: Catalog, listed: set[str], sites: set[str]) -> None:
    """Retire the sources this catalog found before and lists no more (a site that could
    not be read this time keeps its source: it is tried again next time)."""
    held = conn.execute(text(sql.DISCOVERED_SOURCES), {"catalog": catalog.url}).all()
    for name, site_url in held:
        if name not in listed and site_url not in sites:
            retire_source(conn, name)


def retire_source(conn: Connection, name: str) -> None:
    """A source no longer listed: its rows, feeds and the source itself go."""
    pagewrite.lock_source(conn, name, exclusive=True)
    for statement in sql.RETIRE_SOURCE[:2]:  # its feeds first: no page lands after this
        conn.execute(text(statement), {"source": name})
    removed = conn.execute(text(sql.RETIRE_SOURCE_ITEMS), {"source": name}).scalar_one()
    for statement in sql.RETIRE_SOURCE[2:]:
        conn.execute(text(statement), {"source": name})
    logger.warning(
        "%s: no longer listed by its data catalog: stopped, %d rows removed", name, removed,
        extra={"event": "source_retired", "source": name, "removed": removed},
    )  # fmt: skip


def retire_feed(conn: Connection, source: str, feed_id: int, url: str) -> None:
    """A feed its Dataset no longer lists: its rows go (children of its parents re-join)."""
    pagewrite.lock_source(conn, source, exclusive=True)
    for statement in sql.RETIRE_FEED:
        conn.execute(text(statement), {"feed_id": feed_id})
    deleted = conn.execute(text(sql.RETIRE_FEED_ITEMS), {"feed_id": feed_id}).all()
    parents.refresh_parents(conn, source, parents.deleted_parents(deleted))
    logger.warning(
        "%s: no longer in its Dataset's distribution: stopped, %d rows removed", url, len(deleted),
        extra={"event": "feed_retired", "source": source, "feed": url, "removed": len(deleted)},
    )  # fmt: skip


def record_failures(
    conn: Connection, catalog: Catalog, failures: Sequence[catalogs.DiscoveryFailure]
) -> None:
    """Replace this catalog's recorded failures with this discovery's."""
    conn.execute(text(sql.CLEAR_DISCOVERY_FAILURES), {"catalog": catalog.url})
    for failure in failures:
        params = {"catalog": catalog.url, "url": failure.url, "kind": failure.kind_name,
                  "reason": failure.reason}  # fmt: skip
        conn.execute(text(sql.ADD_DISCOVERY_FAILURE), params)


def failure_lines(failures: Sequence[catalogs.DiscoveryFailure]) -> dict[str, str]:
    """Failures as `run --once` names them: what could not be read, and why."""
    return {f"{failure.kind_name} {failure.url}": failure.reason for failure in failures}


def log_discovery(
    catalog: Catalog, sources: Sequence[Source], discovery: catalogs.Discovery, seconds: float
) -> None:
    """One record per discovery, and one per document that could not be read."""
    feeds = sum(len(source.feeds) for source in sources)
    logger.info(
        "%s: %d datasets, %d feeds, %d failures in %.1f s", catalog.url, len(sources), feeds,
        len(discovery.failures), seconds,
        extra={"event": "catalog_discovered", "catalog": catalog.url, "datasets": len(sources),
               "feeds": feeds, "failures": len(discovery.failures)},
    )  # fmt: skip
    for failure in discovery.failures:
        logger.error(
            "%s", failure.reason,
            extra={"event": "discovery_failed", "catalog": catalog.url, "url": failure.url},
        )  # fmt: skip
