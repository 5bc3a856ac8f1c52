"""A source's attribution feed (imin's datasets endpoint): the Datasets whose publisher,
URL and licence each bookable row carries, as the data's licence requires.

The feed is an RPDE feed of Datasets, or a plain JSON-LD list of them; either way it is
read whole and replaces the source's datasets in one transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from harvester import bookability, rpde, sql
from harvester.config import Config, Source
from harvester.errors import HarvesterError, InvalidPage
from harvester.fetch import Fetcher

logger = logging.getLogger(__name__)

MAX_PAGES = 200  # an attribution feed holds a few hundred datasets, not pages of them
# Where a JSON-LD document lists its datasets: a DataCatalog's `dataset`, a graph, a list.
LIST_KEYS = ("dataset", "@graph", "itemListElement", "hasPart", "items")


class Dataset(NamedTuple):
    """What attribution shows of one dataset."""

    identifier: str
    name: str | None
    url: str | None
    license: str | None
    publisher_name: str | None


def read_dataset(node: Any) -> Dataset | None:
    """A Dataset record's attribution fields; None without an identifier to join on."""
    if not isinstance(node, dict):
        return None
    identifier = bookability.identifier_of(node.get("identifier"))
    if identifier is None:
        return None
    publisher = node.get("publisher")
    publisher_name = publisher.get("name") if isinstance(publisher, dict) else None
    url = bookability.id_of(node) or node.get("url")
    return Dataset(identifier, _text(node.get("name")), _text(url),
                   _text(node.get("license")), _text(publisher_name))  # fmt: skip


def datasets_in(document: Any) -> Iterator[Any]:
    """The records of a JSON-LD list of datasets (a list, or an object listing them)."""
    if isinstance(document, list):
        for entry in document:
            yield entry.get("item", entry) if isinstance(entry, dict) else entry
        return
    if not isinstance(document, dict):
        return
    for key in LIST_KEYS:
        if isinstance(document.get(key), list):
            yield from datasets_in(document[key])
            return
    yield document  # a single Dataset


def read_feed(url: str, get: Callable[[str], bytes]) -> list[Dataset]:
    """Every dataset of the feed at `url`: an RPDE feed read to its last page (deleted
    items dropped), or one JSON-LD document."""
    body = get(url)
    document = rpde.decode_json(url, body)[0]
    if not (isinstance(document, dict) and isinstance(document.get("items"), list)):
        return [found for node in datasets_in(document) if (found := read_dataset(node))]
    held: dict[str, Dataset] = {}
    for _ in range(MAX_PAGES):
        page = rpde.parse_page(url, body)
        for item in page.items:
            found = read_dataset(item.data) if item.data is not None else None
            held.pop(item.id, None)
            if found is not None:
                held[item.id] = found
        if page.next_url == url or not page.items:
            return list(held.values())
        rpde.check_origin(url, page.next_url)
        url, body = page.next_url, get(page.next_url)
    raise InvalidPage(f"{url}: attribution feed longer than {MAX_PAGES} pages", url=url)


def store_datasets(conn: Connection, source: str, datasets: list[Dataset]) -> None:
    """Replace the source's datasets (the caller commits)."""
    conn.execute(text(sql.DELETE_DATASETS), {"source": source})
    unique = {dataset.identifier: dataset for dataset in datasets}
    if unique:
        rows = [{"source": source, **dataset._asdict()} for dataset in unique.values()]
        conn.execute(text(sql.INSERT_DATASET), rows)


def refresh_source(engine: Engine, fetcher: Fetcher, source: Source) -> int:
    """Read the source's attribution feed and store it; how many datasets it holds."""
    assert source.attribution_feed is not None
    datasets = read_feed(source.attribution_feed,
                         lambda url: fetcher.get(url, source.headers).body)  # fmt: skip
    with engine.begin() as conn:
        store_datasets(conn, source.name, datasets)
    return len(datasets)


def refresh_all(engine: Engine, fetcher: Fetcher, config: Config) -> None:
    """Refresh every source's attribution feed; one that fails is logged, never fatal."""
    for source in config.sources:
        if source.attribution_feed is None:
            continue
        try:
            count = refresh_source(engine, fetcher, source)
        except (HarvesterError, SQLAlchemyError, orjson.JSONDecodeError) as exc:
            logger.warning(
                "%s: attribution feed %s not read: %s", source.name, source.attribution_feed,
                " ".join(str(exc).split())[:300], extra={"event": "attribution_failed"},
            )  # fmt: skip
            continue
        logger.info(
            "%s: %d datasets from %s", source.name, count, source.attribution_feed,
            extra={"event": "attribution_refreshed", "source": source.name},
        )  # fmt: skip


def keep_fresh(
    engine: Engine, fetcher: Fetcher, config: Config, stop: threading.Event
) -> threading.Thread | None:
    """Refresh now, then every attribution_refresh_seconds until `stop`, in a thread."""
    if not any(source.attribution_feed for source in config.sources):
        return None
    refresh_all(engine, fetcher, config)
    seconds = config.settings.attribution_refresh_seconds

    def loop() -> None:
        while not stop.wait(seconds):
            refresh_all(engine, fetcher, config)

    thread = threading.Thread(target=loop, name="attribution", daemon=True)
    thread.start()
    return thread


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None
