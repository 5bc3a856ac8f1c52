"""Data-catalog discovery: a catalog chain served over real sockets, read by the real client."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from catalog_server import CatalogServer, html_page

from harvester.catalogs import (
    CatalogLinks,
    DiscoveredDataset,
    DiscoveryFailure,
    DocumentError,
    decode,
    discover,
    extract_json_ld,
    read_dataset,
    read_document,
)
from harvester.config import Catalog, Settings
from harvester.errors import FeedGone, HarvesterError
from harvester.fetch import Fetcher

ACCEPT = "application/ld+json, application/json;q=0.9, text/html;q=0.8"
RPDE = "application/vnd.openactive.rpde+json; version=1"
CONTEXT = ["https://schema.org/", "https://openactive.io/"]


@pytest.fixture
def server() -> Iterator[CatalogServer]:
    """A started catalog server."""
    with CatalogServer() as started:
        yield started


@pytest.fixture
def get() -> Iterator[Callable[[str], bytes]]:
    """GET through the project's real client, as discovery does (without its retries)."""
    fetcher = Fetcher(Settings())
    yield lambda url: fetcher.get(url, {"Accept": ACCEPT}).body
    fetcher.close()


# --- the documents --------------------------------------------------------------------------


def dataset(**fields: Any) -> dict[str, Any]:
    """A Dataset node with the given fields."""
    return {"@context": CONTEXT, "@type": "Dataset", **fields}


def rpde(content_url: str, name: str = "SessionSeries") -> dict[str, Any]:
    """An RPDE distribution entry."""
    return {
        "@type": "DataDownload",
        "name": name,
        "encodingFormat": RPDE,
        "contentUrl": content_url,
    }


def serve_chain(server: CatalogServer) -> str:
    """Collection → two catalogs → dataset sites, good and bad; the collection's URL."""
    collection = server.json("/collection.jsonld", {
        "@context": CONTEXT, "@type": "DataCatalog", "@id": server.url("/collection.jsonld"),
        # Itself (a cycle), and catalog a twice, as the real collection may.
        "hasPart": ["catalogs/a.jsonld", "/catalogs/b.jsonld", "collection.jsonld",
                    server.url("/catalogs/a.jsonld")],
    })  # fmt: skip
    server.json("/catalogs/a.jsonld", {
        "@type": "DataCatalog",
        "dataset": ["../sites/alpha/", {"@id": "/sites/beta.jsonld"}, "../sites/no-dataset.html",
                    "../sites/bad-json.html", "../sites/missing.html", "../sites/error.html"],
    })  # fmt: skip
    server.json("/catalogs/b.jsonld", {
        "type": "DataCatalog",
        "hasPart": ["../collection.jsonld"],  # its parent: a cycle
        "dataset": [{"url": "/sites/alpha/"}, "../sites/gamma.html#about"],  # alpha again
    })  # fmt: skip
    serve_sites(server)
    return collection


def serve_sites(server: CatalogServer) -> None:
    """The dataset sites of the chain."""
    server.html("/sites/alpha/", {"@context": CONTEXT, "@type": "Organization", "name": "Other"},
                dataset(**ALPHA))  # fmt: skip
    server.json("/sites/beta.jsonld", {"@context": CONTEXT, "@graph": [
        {"@type": "WebPage", "hasPart": ["/elsewhere"]}, BETA,
    ]})  # fmt: skip
    gamma = html_page(dataset(**GAMMA)).replace("GAMMA", "Gamma \xff").encode("latin-1")
    server.raw("/sites/gamma.html", b"\xef\xbb\xbf" + gamma, "text/html")
    server.html("/sites/no-dataset.html", {"@type": "Organization", "name": "No Dataset Ltd"})
    server.html("/sites/bad-json.html", '{"@type": "Dataset", "name": ')
    server.raw("/sites/error.html", b"oops", "text/plain", status=500)


ALPHA = {
    "@id": "/sites/alpha/", "name": "Alpha Leisure", "url": "https://alpha.example/",
    "license": "https://creativecommons.org/licenses/by/4.0/",
    "publisher": {"@type": "Organization", "name": "Alpha Trust"},
    "distribution": [
        rpde("feeds/session-series"),
        {"@type": "DataDownload", "encodingFormat": "text/csv", "contentUrl": "/report.csv"},
        rpde("/feeds/alpha/scheduled-sessions", "ScheduledSession"),
        rpde("feeds/session-series"),  # listed twice: one feed
    ],
}  # fmt: skip
BETA = {
    "type": ["schema:Dataset"], "id": "https://beta.example/dataset", "name": "Beta Pools",
    "publisher": [{"@type": "Organization"}, {"@type": "Organization", "name": "Beta Council"}],
    "distribution": {"encodingFormat": "application/vnd.openactive.rpde+json",
                     "contentUrl": "/feeds/beta"},
}  # fmt: skip
GAMMA = {
    "name": "GAMMA", "url": "/gamma/",
    "distribution": [rpde("javascript:alert(1)"), rpde("ftp://files.example/feed"),
                     rpde("https://gamma.example/api/feeds/facility-uses", "FacilityUse")],
}  # fmt: skip


def names(datasets: tuple[DiscoveredDataset, ...]) -> list[str]:
    """The datasets' names, in order."""
    return [d.name for d in datasets]


def failed(failures: tuple[DiscoveryFailure, ...]) -> dict[str, DiscoveryFailure]:
    """The failures by URL."""
    return {f.url: f for f in failures}


# --- the walk, over HTTP --------------------------------------------------------------------


def test_a_chain_is_walked_to_its_datasets(server: CatalogServer, get: Any) -> None:
    found = discover([Catalog(serve_chain(server))], get)

    u = server.url
    assert names(found.datasets) == [u("/sites/alpha/"), BETA["id"], u("/gamma/")]
    alpha, beta, gamma = found.datasets
    assert alpha == DiscoveredDataset(
        name=u("/sites/alpha/"), site_url=u("/sites/alpha/"),
        feeds=(u("/sites/alpha/feeds/session-series"), u("/feeds/alpha/scheduled-sessions")),
        attribution_name="Alpha Trust", attribution_url="https://alpha.example/",
        license="https://creativecommons.org/licenses/by/4.0/", title="Alpha Leisure",
    )  # fmt: skip
    assert (beta.site_url, beta.feeds) == (u("/sites/beta.jsonld"), (u("/feeds/beta"),))
    assert (beta.attribution_name, beta.attribution_url) == ("Beta Council", BETA["id"])
    assert beta.license is None
    # The fragment is not part of the site's URL; bad bytes are replaced, the BOM dropped.
    assert gamma.site_url == u("/sites/gamma.html")
    assert gamma.feeds == ("https://gamma.example/api/feeds/facility-uses",)
    assert gamma.title == gamma.attribution_name == "Gamma \ufffd"


def test_broken_sites_are_named_failures(server: CatalogServer, get: Any) -> None:
    found = discover([Catalog(serve_chain(server))], get)

    u = server.url
    sites = ["no-dataset.html", "bad-json.html", "missing.html", "error.html"]
    assert [f.url for f in found.failures] == [u(f"/sites/{site}") for site in sites]
    assert {f.kind_name for f in found.failures} == {"dataset site"}
    reasons = [f.reason for f in found.failures]
    assert reasons[0] == f"{u('/sites/no-dataset.html')}: no Dataset in its JSON-LD"
    assert reasons[1].startswith(f"{u('/sites/bad-json.html')}: invalid JSON in a JSON-LD script")
    assert reasons[2].startswith(f"{u('/sites/missing.html')}: HTTP 404")
    assert reasons[3] == f"{u('/sites/error.html')}: HTTP 500"
    assert all("\n" not in reason for reason in reasons)


def test_each_url_is_fetched_once(server: CatalogServer, get: Any) -> None:
    discover([Catalog(serve_chain(server))], get)

    assert set(server.hits.values()) == {1}
    assert len(server.hits) == 10  # the collection, 2 catalogs, 7 sites


def test_include_and_exclude_filter_the_sites(server: CatalogServer, get: Any) -> None:
    collection = serve_chain(server)
    catalog = Catalog(collection, include=(server.url("/sites/*"),), exclude=("*/gamma.html",
                      "*/error.html", "*/missing.html", "*/*-*.html"))  # fmt: skip

    found = discover([catalog], get)

    assert names(found.datasets) == [server.url("/sites/alpha/"), BETA["id"]]
    assert found.failures == ()
    assert server.hits["/sites/gamma.html"] == server.hits["/sites/error.html"] == 0


def test_the_filter_applies_to_sites_not_catalogs(server: CatalogServer, get: Any) -> None:
    found = discover([Catalog(serve_chain(server), include=("*/beta.*",))], get)

    assert names(found.datasets) == [BETA["id"]]
    assert server.hits["/catalogs/a.jsonld"] == server.hits["/catalogs/b.jsonld"] == 1
    assert sorted(server.hits) == ["/catalogs/a.jsonld", "/catalogs/b.jsonld",
                                   "/collection.jsonld", "/sites/beta.jsonld"]  # fmt: skip


def test_a_catalog_url_may_be_a_dataset_site(server: CatalogServer, get: Any) -> None:
    serve_sites(server)
    html_site, json_site = server.url("/sites/alpha/"), server.url("/sites/beta.jsonld")

    found = discover([Catalog(html_site), Catalog(json_site)], get)

    assert names(found.datasets) == [html_site, BETA["id"]]
    assert found.failures == ()
    assert discover([Catalog(html_site, exclude=("*alpha*",))], get) == discover([], get)


def test_the_depth_bound_cuts_the_walk(server: CatalogServer, get: Any) -> None:
    top = server.json("/deep/0.jsonld", {"@type": "DataCatalog", "hasPart": ["1.jsonld"]})
    server.json("/deep/1.jsonld", {"@type": "DataCatalog", "hasPart": ["2.jsonld"]})
    server.json("/deep/2.jsonld", {"@type": "DataCatalog", "dataset": ["site.jsonld"]})
    site = server.json("/deep/site.jsonld", dataset(**BETA))

    assert names(discover([Catalog(top)], get, max_depth=3).datasets) == [BETA["id"]]
    cut = discover([Catalog(top)], get, max_depth=2)
    assert cut.datasets == ()
    [failure] = cut.failures
    assert (failure.url, failure.kind) == (site, "site")
    assert failure.reason == f"{site}: not read: 3 links below {top}, deeper than the bound of 2"
    assert server.hits["/deep/site.jsonld"] == 1  # by the first walk only
    [shallow] = discover([Catalog(top)], get, max_depth=1).failures
    assert (shallow.url, shallow.kind) == (server.url("/deep/2.jsonld"), "catalog")


def test_the_document_bound_cuts_the_walk(server: CatalogServer, get: Any) -> None:
    collection = serve_chain(server)

    found = discover([Catalog(collection)], get, max_documents=3)

    assert found.datasets == ()
    [failure] = found.failures
    assert (failure.url, failure.kind) == (collection, "catalog")
    assert failure.reason == (
        f"{collection}: walk cut at the bound of 3 documents: 7 listed documents left unread,"
        f" {server.url('/sites/alpha/')} first"
    )
    assert sum(server.hits.values()) == 3


def test_cycles_end(server: CatalogServer, get: Any) -> None:
    loop = server.json("/loop.jsonld", {"@type": "DataCatalog", "hasPart": ["loop.jsonld"]})
    ping = server.json("/ping.jsonld", {"@type": "DataCatalog", "hasPart": ["pong.jsonld"]})
    server.json("/pong.jsonld", {"@type": "DataCatalog", "hasPart": ["ping.jsonld"],
                                 "dataset": ["ping.jsonld"]})  # fmt: skip

    found = discover([Catalog(loop), Catalog(ping)], get, max_depth=50)

    assert found == discover([], get)
    assert server.hits == Counter({"/loop.jsonld": 1, "/ping.jsonld": 1, "/pong.jsonld": 1})


def test_broken_catalogs_are_named_failures(server: CatalogServer, get: Any) -> None:
    top = server.json("/broken.jsonld", {"@type": "DataCatalog", "hasPart": [
        "empty.jsonld", "garbage.jsonld", "page.html", "nothing.jsonld", "gone.jsonld",
        "down.jsonld", "mailto:someone@example.com",
    ], "dataset": ["/sites/beta.jsonld"]})  # fmt: skip
    server.json("/empty.jsonld", {"@type": "DataCatalog", "name": "Nothing listed"})
    server.raw("/garbage.jsonld", b'{"@type": "DataCatalog", hasPart', "application/ld+json")
    server.raw("/page.html", b"<html><body>Hello</body></html>", "text/html")
    server.json("/nothing.jsonld", {"@type": "Organization"})
    server.raw("/down.jsonld", b"", "text/plain", status=503)
    serve_sites(server)

    found = discover([Catalog(top)], get)

    assert names(found.datasets) == [BETA["id"]]
    u = server.url
    reasons = {f.url: f.reason for f in found.failures}
    garbage = reasons.pop(u("/garbage.jsonld"))
    assert garbage.startswith(f"{u('/garbage.jsonld')}: not valid JSON (") and "line 1" in garbage
    assert reasons == {
        u("/empty.jsonld"): f"{u('/empty.jsonld')}: a DataCatalog listing neither hasPart"
        " nor dataset",
        u("/page.html"): f"{u('/page.html')}: no JSON-LD script in the page",
        u("/nothing.jsonld"): f"{u('/nothing.jsonld')}: no DataCatalog or Dataset in its JSON-LD",
        u("/gone.jsonld"): f"{u('/gone.jsonld')}: HTTP 404: the feed is gone (RPDE: do not retry)",
        u("/down.jsonld"): f"{u('/down.jsonld')}: HTTP 503: publisher overloaded",
    }  # fmt: skip
    assert {f.kind for f in found.failures} == {"catalog"}


def test_an_unreadable_configured_catalog_is_a_failure(server: CatalogServer, get: Any) -> None:
    serve_sites(server)
    missing = server.url("/no-such-catalog.jsonld")

    found = discover([Catalog(missing), Catalog(server.url("/sites/alpha/"))], get)

    assert names(found.datasets) == [server.url("/sites/alpha/")]
    [failure] = found.failures
    assert (failure.url, failure.kind_name) == (missing, "catalog")
    assert failure.reason.startswith(f"{missing}: HTTP 404")


def test_documents_are_fetched_concurrently(server: CatalogServer, get: Any) -> None:
    sites = [server.json(f"/slow/{n}.jsonld", dataset(**{"@id": f"/d/{n}"}), delay=0.2)
             for n in range(8)]  # fmt: skip
    top = server.json("/slow.jsonld", {"@type": "DataCatalog", "dataset": sites})

    found = discover([Catalog(top)], get, parallel=8)

    assert names(found.datasets) == [server.url(f"/d/{n}") for n in range(8)]
    assert server.most_in_flight >= 2  # Settings() allows 4 connections per host


# --- the walk, with `get` failing in other ways ---------------------------------------------


def test_any_error_of_get_is_one_documents_failure() -> None:
    documents = {
        "https://cat.example/": json.dumps({"dataset": ["/a", "/b", "/c", "/d"]}).encode(),
        "https://cat.example/d": json.dumps(dataset(name="D")).encode(),
    }

    def fake_get(url: str) -> bytes:
        if url.endswith("/a"):
            raise RuntimeError("a bug")
        if url.endswith("/b"):
            raise HarvesterError("no URL in this message\nand two lines")
        if url.endswith("/c"):
            raise FeedGone(f"{url}: HTTP 410", url=url)
        return documents[url]

    found = discover([Catalog("https://cat.example/")], fake_get)

    assert [d.title for d in found.datasets] == ["D"]
    assert [f.reason for f in found.failures] == [
        "https://cat.example/a: cannot be read: RuntimeError: a bug",
        "https://cat.example/b: no URL in this message and two lines",
        "https://cat.example/c: HTTP 410",
    ]


def test_a_dataset_found_on_two_sites_is_one_source() -> None:
    documents = {
        "https://cat.example/": json.dumps({"dataset": ["/one", "/two"]}).encode(),
        "https://cat.example/one": json.dumps(dataset(url="https://pub.example/")).encode(),
        "https://cat.example/two": html_page(dataset(url="https://pub.example/")).encode(),
    }

    found = discover([Catalog("https://cat.example/")], documents.__getitem__)

    [only] = found.datasets
    assert (only.name, only.site_url) == ("https://pub.example/", "https://cat.example/one")


# --- documents, as data ---------------------------------------------------------------------


def test_extract_json_ld_reads_every_json_ld_script() -> None:
    page = (
        '<html><head><SCRIPT TYPE="Application/LD+JSON; charset=utf-8">{"a": "&amp; <b>"}'
        '</SCRIPT><script type="text/javascript">{"not": "json-ld"}</script>'
        '<script>{"no": "type"}</script><script type="application/ld+json">[1, 2]</script>'
        '<script type="application/ld+json">{broken</script>'
        '<script type="application/ld+json"><!-- {"wrapped": true} --></script>'
        '<script type="application/ld+json">  </script></head>'
        '<body><script type="application/ld+json">{"@graph": []}'
    )

    assert extract_json_ld(page) == [{"a": "&amp; <b>"}, [1, 2], {"wrapped": True}, {"@graph": []}]
    assert extract_json_ld("<p>no scripts</p>") == []
    assert extract_json_ld("") == []


SITE = "https://site.example/openactive/"


@pytest.mark.parametrize(
    "document",
    [
        {"@context": CONTEXT, "@graph": [{"@type": "WebPage"}, dataset(name="X")]},
        [{"@type": "Organization"}, {"@type": "schema:Dataset", "name": "X"}],
        [[{"@type": "https://schema.org/Dataset", "name": "X"}]],
        {"type": ["DataFeed", "Dataset"], "name": "X"},
        {"@type": "http://schema.org/#Dataset", "name": ["X", "Y"]},
    ],
    ids=["graph", "list", "nested-list-iri", "type-list", "hash-iri"],
)
def test_read_dataset_finds_the_dataset_node(document: Any) -> None:
    found = read_dataset(document, SITE)

    assert found is not None
    assert (found.name, found.title, found.attribution_name) == (SITE, "X", "X")


@pytest.mark.parametrize(
    "document",
    [{"@type": "DataCatalog", "dataset": []}, {"name": "untyped"}, [], "Dataset", 3, None,
     {"@type": "Datasets"}, {"@graph": {"@type": "Organization"}}],
)  # fmt: skip
def test_read_dataset_without_a_dataset_is_none(document: Any) -> None:
    assert read_dataset(document, SITE) is None


@pytest.mark.parametrize(
    ("fields", "name", "attribution_url"),
    [
        ({"@id": "https://a.example/d", "url": "https://a.example/"}, "https://a.example/d",
         "https://a.example/"),
        ({"id": "https://a.example/d"}, "https://a.example/d", "https://a.example/d"),
        ({"@id": "#dataset"}, SITE + "#dataset", SITE + "#dataset"),
        ({"@id": "urn:uuid:1234", "url": "../home"}, "https://site.example/home",
         "https://site.example/home"),
        ({}, SITE, None),
    ],
    ids=["id-and-url", "id-spelling", "relative-id", "not-web-id", "neither"],
)  # fmt: skip
def test_read_dataset_names(fields: dict[str, Any], name: str, attribution_url: Any) -> None:
    found = read_dataset(dataset(**fields), SITE)

    assert found is not None
    assert (found.name, found.attribution_url, found.site_url) == (name, attribution_url, SITE)


@pytest.mark.parametrize(
    ("publisher", "expected"),
    [
        ({"name": "  Alpha\n Trust "}, "Alpha Trust"),
        ([{"@type": "Organization"}, "https://p.example/", {"name": "Second"}], "Second"),
        ("https://p.example/", "Title"),
        ({"name": {"@value": "Valued", "@language": "en"}}, "Valued"),
        (None, "Title"),
    ],
    ids=["object", "list", "string", "value-object", "none"],
)
def test_read_dataset_attribution_name(publisher: Any, expected: str) -> None:
    found = read_dataset(dataset(name="Title", publisher=publisher), SITE)

    assert found is not None and found.attribution_name == expected


def test_read_dataset_feeds() -> None:
    distribution = [
        rpde("feeds/a"),
        {"encodingFormat": "APPLICATION/VND.OPENACTIVE.RPDE+JSON; version=1", "contentUrl": "/b"},
        {"encodingFormat": ["text/html", RPDE], "contentUrl": ["c", "feeds/a"]},
        {"encodingFormat": "application/json", "contentUrl": "/not-rpde"},
        {"encodingFormat": RPDE},  # nowhere to read it
        {"encodingFormat": RPDE, "contentUrl": "mailto:x@example.com"},
        {"encodingFormat": RPDE, "contentUrl": 42},
        "https://a.example/string-entry",
        rpde(SITE + "feeds/a#fragment"),
    ]

    found = read_dataset(dataset(distribution=distribution), SITE)

    assert found is not None
    assert found.feeds == (
        SITE + "feeds/a", "https://site.example/b", SITE + "c", SITE + "feeds/a#fragment",
    )  # fmt: skip


def test_read_dataset_without_rpde_has_no_feeds() -> None:
    found = read_dataset(dataset(name="Static", distribution=[{"contentUrl": "/x.csv"}]), SITE)

    assert found is not None and found.feeds == ()
    assert read_dataset(dataset(), SITE) == DiscoveredDataset(
        SITE, SITE, (), None, None, None, None
    )


@pytest.mark.parametrize(
    ("licence", "expected"),
    [(" https://l.example/ ", "https://l.example/"), ({"@id": "https://l.example/"},
     "https://l.example/"), (["", "CC-BY-4.0"], "CC-BY-4.0"), ({}, None), (7, None)],
)  # fmt: skip
def test_read_dataset_license(licence: Any, expected: str | None) -> None:
    found = read_dataset(dataset(license=licence), SITE)

    assert found is not None and found.license == expected


def test_read_document_decides_by_content() -> None:
    listing = {"@type": "DataCatalog", "hasPart": ["a", {"id": "b"}, {"url": "c#x"}, 5, None,
                                                   "ftp://x/"], "dataset": "/s"}  # fmt: skip

    assert read_document(json.dumps(listing).encode(), SITE) == CatalogLinks(
        catalogs=(SITE + "a", SITE + "b", SITE + "c"), sites=("https://site.example/s",)
    )
    page = html_page({"@type": "WebPage", "hasPart": ["x"]}, dataset(name="In a page"))
    found = read_document(page.encode("utf-16"), SITE, "site")
    assert isinstance(found, DiscoveredDataset) and found.title == "In a page"


def test_a_web_pages_parts_are_not_a_catalog() -> None:
    page = html_page({"@type": ["WebPage"], "hasPart": ["x"], "dataset": ["y"]})

    with pytest.raises(DocumentError, match=r"^https://site.example/openactive/: no Dataset in"):
        read_document(page.encode(), SITE, "site")
    untyped = read_document(json.dumps({"dataset": ["y"]}).encode(), SITE, "site")
    assert untyped == CatalogLinks(catalogs=(), sites=(SITE + "y",))


def test_decode_honours_a_bom_and_replaces_bad_bytes() -> None:
    assert decode(b"\xef\xbb\xbf{}") == "{}"
    assert decode("{é}".encode("utf-16-le")) != "{é}"
    assert decode(b"\xff\xfe" + "{é}".encode("utf-16-le")) == "{é}"
    assert decode(b"\xfe\xff" + "{é}".encode("utf-16-be")) == "{é}"
    assert decode(b"caf\xe9 \xc3\xa9") == "caf\ufffd é"
