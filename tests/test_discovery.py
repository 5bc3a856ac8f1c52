"""Discovery from OpenActive data catalogs, end to end: a catalog chain and its feeds served
over real HTTP, harvested by real `harvester run --once` processes into the real store."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from catalog_server import CatalogServer
from helpers import run_harvester, start_harvester, wait_for, write_config
from sqlalchemy import Engine, text

from harvester.sample.ecosystem import Ecosystem

RPDE = "application/vnd.openactive.rpde+json; version=1"
LICENSE = "https://creativecommons.org/licenses/by/4.0/"


@pytest.fixture(scope="module")
def ecosystem() -> Iterator[Ecosystem]:
    """Four publishers' feeds on two hosts (some sending `next` relative to the page)."""
    with Ecosystem(datasets=4, hosts=2, items=1_600, page_size=100, latency=(0.0, 0.002),
                   seed=3) as started:  # fmt: skip
        yield started


@pytest.fixture
def catalogs() -> Iterator[CatalogServer]:
    with CatalogServer() as started:
        yield started


def feeds_by_dataset(ecosystem: Ecosystem) -> list[list[str]]:
    """Each simulated dataset's feed URLs, datasets in a fixed order."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for feed in ecosystem.feeds:
        grouped[feed.dataset_url].append(feed.url)
    return [grouped[url] for url in sorted(grouped)]


def dataset(server: CatalogServer, number: int, feeds: list[str]) -> dict[str, Any]:
    """A Dataset whose distribution is `feeds`, beside a CSV download that is not RPDE."""
    site = server.url(f"/site-{number}")
    return {
        "@context": ["https://schema.org/", "https://openactive.io/"], "@type": "Dataset",
        "@id": site, "url": site, "name": f"Dataset {number}", "license": LICENSE,
        "publisher": {"@type": "Organization", "name": f"Publisher {number}"},
        "distribution": [
            *({"@type": "DataDownload", "encodingFormat": RPDE, "contentUrl": url}
              for url in feeds),
            {"@type": "DataDownload", "encodingFormat": "text/csv", "contentUrl": "/all.csv"},
        ],
    }  # fmt: skip


def serve_chain(server: CatalogServer, feeds: list[list[str]], cat_2: list[str]) -> str:
    """collection -> two catalogs (relative links) -> sites: 0 and 2 as HTML, 1 and 3 as
    JSON-LD, 1 listed twice, a site with no Dataset and a missing one. Its URL."""
    for number, urls in enumerate(feeds):
        document = dataset(server, number, urls)
        if number % 2 == 0:
            server.html(f"/site-{number}", document)
        else:
            server.json(f"/site-{number}", document)
    server.html("/broken", {"@type": "WebPage", "name": "no Dataset here"})
    cat_1 = ["site-0", "site-1", "broken", "missing"]
    server.json("/cat-1.jsonld", {"@type": "DataCatalog", "dataset": cat_1})
    server.json("/cat-2.jsonld", {"@type": "DataCatalog", "dataset": cat_2})
    parts = ["cat-1.jsonld", "/cat-2.jsonld"]
    return server.json("/collection.jsonld", {"@type": "DataCatalog", "hasPart": parts})


def harvest_once(db_url: str, tmp_path: Path, collection: str) -> tuple[int, str]:
    """`harvester run --once` with one [[catalogs]] entry: its exit code and stderr."""
    config = write_config(tmp_path / "catalogs.toml", f'[[catalogs]]\nurl = "{collection}"\n')
    result = run_harvester(db_url, "run", "--once", "--config", str(config))
    return result.returncode, result.stderr


def held(engine: Engine) -> dict[str, Any]:
    """Per discovered source: its catalog, feeds, items; and the feeds' states."""
    query = """
        SELECT s.name, s.catalog, count(DISTINCT f.id) AS feeds,
               array_agg(DISTINCT f.state) AS states,
               (SELECT count(*) FROM harvester.items AS i WHERE i.source = s.name) AS items
        FROM harvester.sources AS s JOIN harvester.feeds AS f ON f.source = s.name
        GROUP BY s.name, s.catalog"""
    with engine.connect() as conn:
        return {row.name.rsplit("/", 1)[-1]: row for row in conn.execute(text(query))}


def status_json(db_url: str) -> list[dict[str, Any]]:
    result = run_harvester(db_url, "status", "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_a_catalog_chain_is_discovered_harvested_and_kept_current(
    ecosystem: Ecosystem, catalogs: CatalogServer, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    feeds = feeds_by_dataset(ecosystem)
    collection = serve_chain(catalogs, feeds, ["site-1", "/site-2", "site-3"])
    code, stderr = harvest_once(db_url, tmp_path, collection)
    # Every readable dataset harvested; the two unreadable sites named, so exit 1.
    assert code == 1
    assert f"dataset site {catalogs.url('/broken')}" in stderr and "no Dataset" in stderr
    assert f"dataset site {catalogs.url('/missing')}" in stderr and "404" in stderr
    sources = held(engine)
    assert sorted(sources) == ["site-0", "site-1", "site-2", "site-3"]  # site-1 once
    for number, urls in enumerate(feeds):
        source = sources[f"site-{number}"]
        assert (source.catalog, source.feeds, source.states) == (collection, len(urls),
                                                                 ["caught_up"])  # fmt: skip
        assert source.items > 0
    # Relative `next` was followed to each feed's end: every item the publisher served.
    assert ecosystem.stats()["feeds_walked"] == len(ecosystem.feeds)
    query = """SELECT attribution_name, attribution_url, license, checkout_url FROM bookable_now
               WHERE source = :source LIMIT 1"""
    with engine.connect() as conn:
        row = conn.execute(text(query), {"source": catalogs.url("/site-2")}).one()
    assert tuple(row) == ("Publisher 2", catalogs.url("/site-2"), LICENSE, None)
    failures = [feed for feed in status_json(db_url) if feed["source"] == "(discovery)"]
    assert sorted((f["url"], f["kind"], f["state"]) for f in failures) == [
        (catalogs.url("/broken"), "dataset site", "error"),
        (catalogs.url("/missing"), "dataset site", "error"),
    ]

    # Next discovery: site-3 is no longer listed, site-0 drops a feed, the broken site mends.
    catalogs.json("/cat-2.jsonld", {"@type": "DataCatalog", "dataset": ["site-1", "site-2"]})
    catalogs.html("/site-0", dataset(catalogs, 0, feeds[0][1:]))
    catalogs.html("/broken", dataset(catalogs, 9, []))  # a Dataset with no RPDE feed
    code, stderr = harvest_once(db_url, tmp_path, collection)
    assert code == 1 and "missing" in stderr and "broken" not in stderr
    sources = held(engine)
    assert sorted(sources) == ["site-0", "site-1", "site-2"]
    assert sources["site-0"].feeds == len(feeds[0]) - 1
    with engine.connect() as conn:
        orphans = conn.execute(text(
            "SELECT count(*) FROM harvester.items WHERE source = :gone"
            " OR feed_id NOT IN (SELECT id FROM harvester.feeds)"),
            {"gone": catalogs.url("/site-3")}).scalar_one()  # fmt: skip
    assert orphans == 0
    assert [f["url"] for f in status_json(db_url) if f["source"] == "(discovery)"] == [
        catalogs.url("/missing")
    ]

    # A catalog that cannot be read: nothing is taken as gone, the rest is harvested.
    catalogs.raw("/cat-2.jsonld", b"oops", "text/plain", status=500)
    code, stderr = harvest_once(db_url, tmp_path, collection)
    assert code == 1 and f"catalog {catalogs.url('/cat-2.jsonld')}" in stderr
    assert sorted(held(engine)) == ["site-0", "site-1", "site-2"]


def test_many_slow_feeds_are_harvested_side_by_side_within_the_per_host_limit(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # 12 datasets' ~40 feeds on 3 hosts, every answer slow: with at most 2 requests per host
    # the harvester should keep 6 feeds in flight (more than the 4 it once ran at a time).
    with Ecosystem(datasets=12, hosts=3, items=2_400, page_size=40, latency=(0.1, 0.15),
                   seed=5) as slow:  # fmt: skip
        entry = f'[[catalogs]]\nurl = "{slow.collection_url}"\n'
        config = write_config(tmp_path / "slow.toml", entry, {"max_connections_per_host": 2})
        result = run_harvester(db_url, "run", "--once", "--config", str(config))
        stats = slow.stats()
    assert result.returncode == 0, result.stderr[-2000:]
    assert stats["feeds_walked"] == len(slow.feeds)
    assert max(host["peak_in_flight"] for host in stats["hosts"]) == 2  # never more per host
    assert stats["peak_feeds_in_flight"] >= 5  # side by side across hosts
    with engine.connect() as conn:
        states = conn.execute(text("SELECT DISTINCT state FROM harvester.feeds")).scalars().all()
    assert states == ["caught_up"]


def test_run_discovers_again_every_catalog_refresh_hours(
    ecosystem: Ecosystem, catalogs: CatalogServer, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    feeds = feeds_by_dataset(ecosystem)
    collection = serve_chain(catalogs, feeds, ["site-1"])
    entry = f'[[catalogs]]\nurl = "{collection}"\n'
    config = write_config(tmp_path / "refresh.toml", entry, {"catalog_refresh_hours": 0.0005})
    with start_harvester(db_url, "run", "--config", str(config)) as running:
        assert wait_for(lambda: sorted(held(engine)) == ["site-0", "site-1"], timeout=60)
        # Listed while `run` runs: found at the next discovery (every 1.8 s here), harvested.
        catalogs.json("/cat-2.jsonld", {"@type": "DataCatalog", "dataset": ["site-1", "site-2"]})
        catalogs.json("/cat-1.jsonld", {"@type": "DataCatalog", "dataset": ["site-0"]})
        assert wait_for(lambda: sorted(held(engine)) == ["site-0", "site-1", "site-2"], 60)
        source = held(engine)["site-2"]
        assert wait_for(lambda: held(engine)["site-2"].states == ["caught_up"], 60), source
        assert running.stop() == 0


def test_status_summary_and_check_cover_discovered_sources(
    ecosystem: Ecosystem, catalogs: CatalogServer, db_url: str, tmp_path: Path
) -> None:
    feeds = feeds_by_dataset(ecosystem)
    collection = serve_chain(catalogs, feeds, ["site-1"])
    config = write_config(tmp_path / "check.toml", f'[[catalogs]]\nurl = "{collection}"\n')
    checked = run_harvester(db_url, "check", "--config", str(config))
    assert checked.returncode == 1  # the broken and the missing site
    lines = checked.stdout.splitlines()
    assert f"ok   catalog {collection}: 2 datasets, {len(feeds[0]) + len(feeds[1])} feeds" in lines
    assert any(line.startswith(f"FAIL dataset site {catalogs.url('/missing')}") for line in lines)
    assert sum(line.startswith(f"ok   {catalogs.url('/site-0')} ") for line in lines) == len(
        feeds[0])  # fmt: skip
    harvest_once(db_url, tmp_path, collection)
    summary = run_harvester(db_url, "status", "--summary", "--json")
    by_source = {row["source"]: row for row in json.loads(summary.stdout)}
    assert by_source[catalogs.url("/site-0")]["feeds"] == len(feeds[0])
    assert by_source[catalogs.url("/site-0")]["state"] == "caught_up"
    assert by_source["(discovery)"]["state"] == "error"
    assert by_source["(discovery)"]["feeds"] == 2
    text_lines = run_harvester(db_url, "status", "--summary").stdout.splitlines()
    assert text_lines[0].split() == ["SOURCE", "FEEDS", "ITEMS", "REJECTED", "WORST", "STATE",
                                     "MAX", "LAG"]  # fmt: skip
    assert len(text_lines) == 1 + 3


def test_a_discovered_source_can_be_backfilled(
    ecosystem: Ecosystem, catalogs: CatalogServer, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    feeds = feeds_by_dataset(ecosystem)
    collection = serve_chain(catalogs, feeds, ["site-1"])
    harvest_once(db_url, tmp_path, collection)
    before = held(engine)["site-0"].items
    config = tmp_path / "catalogs.toml"
    source = catalogs.url("/site-0")
    result = run_harvester(db_url, "backfill", "--source", source, "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    after = held(engine)["site-0"]
    assert (after.items, after.states) == (before, ["caught_up"])
    with engine.connect() as conn:
        generations = conn.execute(text(
            "SELECT DISTINCT generation FROM harvester.feeds WHERE source = :source"),
            {"source": source}).scalars().all()  # fmt: skip
    assert generations == [1]  # each of its feeds harvested again from its first page
