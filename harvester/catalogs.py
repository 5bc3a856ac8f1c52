"""OpenActive data-catalog discovery: catalogs are walked to their dataset sites, and each
site's Dataset is read for its RPDE feeds and attribution (no HTTP here: `get` is given)."""

from __future__ import annotations

import codecs
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Literal, TypeVar
from urllib.parse import urldefrag, urljoin, urlsplit

import orjson

from harvester.config import Catalog
from harvester.errors import HarvesterError

logger = logging.getLogger(__name__)
T = TypeVar("T")

# What a URL was listed as: a catalog (configured, or in hasPart), or a site (in dataset).
Kind = Literal["catalog", "site"]
KIND_NAMES: dict[Kind, str] = {"catalog": "catalog", "site": "dataset site"}
RPDE_FORMAT = "application/vnd.openactive.rpde+json"
JSON_LD_TYPE = "application/ld+json"
WEB_SCHEMES = frozenset({"http", "https"})
# UTF-32 before UTF-16: the UTF-32 LE mark begins with the UTF-16 LE one.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)  # fmt: skip
MAX_NESTING = 8  # lists and @graphs looked into for top-level nodes; deeper is not JSON-LD
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class DiscoveredDataset:
    """One Dataset found on a dataset site: the source it becomes, and its attribution."""

    name: str  # the source name: Dataset @id, else url, else the site URL
    site_url: str  # the dataset site it was read from
    feeds: tuple[str, ...]  # RPDE contentUrls, absolute, in distribution order, no repeats
    attribution_name: str | None  # publisher.name, else the Dataset's name
    attribution_url: str | None  # url, else @id
    license: str | None
    title: str | None  # the Dataset's name


@dataclass(frozen=True)
class DiscoveryFailure:
    """A catalog or dataset site that could not be read or understood, or a bound's cut."""

    url: str
    reason: str  # one line naming the URL and what is wrong
    # "site": a URL listed in a catalog's `dataset` (the rest of the walk is whole);
    # "catalog": a configured or hasPart URL, or a bound's cut (the walk is incomplete).
    kind: Kind = "catalog"

    @property
    def kind_name(self) -> str:
        """What failed, in words: "catalog" or "dataset site"."""
        return KIND_NAMES[self.kind]


@dataclass(frozen=True)
class Discovery:
    """What a walk of the configured catalogs found, and what it could not read."""

    datasets: tuple[DiscoveredDataset, ...]  # unique by name, in walk order
    failures: tuple[DiscoveryFailure, ...]


@dataclass(frozen=True)
class CatalogLinks:
    """What a catalog document lists: more catalogs, and dataset sites (absolute URLs)."""

    catalogs: tuple[str, ...]
    sites: tuple[str, ...]


@dataclass(frozen=True)
class Link:
    """A URL to read, what it was listed as, how many links below its configured catalog."""

    url: str
    kind: Kind
    depth: int
    root: Catalog


Read = DiscoveredDataset | CatalogLinks | DiscoveryFailure  # what reading one link gives


class DocumentError(Exception):
    """A document that was read but is not understood; the message is its failure reason."""


# --- the walk -------------------------------------------------------------------------------


def discover(
    catalogs: Sequence[Catalog],
    get: Callable[[str], bytes],
    *,
    parallel: int = 16,
    max_depth: int = 5,
    max_documents: int = 5000,
) -> Discovery:
    """Walk the catalogs to their Datasets, a level of links at a time, `parallel` GETs at once.

    A configured URL is at depth 0 and a document listed by one at depth d is at d + 1;
    nothing deeper than `max_depth` is read, nor more than `max_documents` documents.
    """
    walk = Walk(max_depth, max_documents)
    level = walk.admit(root_link(catalog) for catalog in catalogs)
    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="catalogs") as pool:
        while level:
            results = list(pool.map(lambda link: read_link(link, get), level))
            level = walk.admit(
                child for link, result in zip(level, results, strict=True)
                for child in walk.take(link, result)
            )  # fmt: skip
    return walk.discovery()


def root_link(catalog: Catalog) -> Link:
    """The configured catalog's own URL, the walk's start."""
    return Link(document_url(catalog.url, catalog.url) or catalog.url, "catalog", 0, catalog)


@dataclass
class Walk:
    """The state of one discover() call: URLs seen, datasets found, failures, reads spent."""

    max_depth: int
    max_documents: int
    seen: set[str] = field(default_factory=set)
    datasets: dict[str, DiscoveredDataset] = field(default_factory=dict)
    failures: list[DiscoveryFailure] = field(default_factory=list)
    documents: int = 0

    def admit(self, links: Iterable[Link]) -> list[Link]:
        """The links to read next: unseen, sites the root takes, within both bounds."""
        level: list[Link] = []
        for link in links:
            # An excluded site is not marked seen: another configured catalog may take it.
            if link.url in self.seen or (link.kind == "site" and not link.root.takes(link.url)):
                continue
            self.seen.add(link.url)
            if not is_web_url(link.url):
                self.failures.append(failure(link, f"{link.url}: not an http(s) URL"))
            elif link.depth > self.max_depth:
                self.failures.append(too_deep(link, self.max_depth))
            else:
                level.append(link)
        return self.within_budget(level)

    def within_budget(self, level: list[Link]) -> list[Link]:
        """The level cut to the documents left; one failure per configured catalog cut."""
        room = max(0, self.max_documents - self.documents)
        kept, cut = level[:room], level[room:]
        self.documents += len(kept)
        for root in unique(link.root for link in cut):
            left = [link for link in cut if link.root == root]
            self.failures.append(budget_cut(root, left, self.max_documents))
        return kept

    def take(self, link: Link, result: Read) -> list[Link]:
        """Record what a document was; the links it lists, to read next."""
        if isinstance(result, DiscoveryFailure):
            self.failures.append(result)
            return []
        if isinstance(result, DiscoveredDataset):
            # A catalog URL may prove to be a site: the filter applies to it once it has.
            if link.root.takes(result.site_url):
                self.datasets.setdefault(result.name, result)
            return []
        return children(link, result)

    def discovery(self) -> Discovery:
        """What the walk found."""
        return Discovery(tuple(self.datasets.values()), tuple(self.failures))


def children(link: Link, listed: CatalogLinks) -> list[Link]:
    """The catalogs then the sites a catalog document lists, one level below it."""
    depth = link.depth + 1
    catalogs = [Link(url, "catalog", depth, link.root) for url in listed.catalogs]
    return catalogs + [Link(url, "site", depth, link.root) for url in listed.sites]


def failure(link: Link, reason: str) -> DiscoveryFailure:
    """A failure of the link's document, as one line."""
    return DiscoveryFailure(link.url, one_line(reason, link.url), link.kind)


def too_deep(link: Link, max_depth: int) -> DiscoveryFailure:
    """The depth bound cut the walk at this link."""
    reason = (
        f"{link.url}: not read: {link.depth} links below {link.root.url},"
        f" deeper than the bound of {max_depth}"
    )
    return failure(link, reason)


def budget_cut(root: Catalog, left: Sequence[Link], max_documents: int) -> DiscoveryFailure:
    """The document bound cut the root's walk, leaving `left` unread."""
    reason = (
        f"{root.url}: walk cut at the bound of {max_documents} documents:"
        f" {len(left)} listed documents left unread, {left[0].url} first"
    )
    return DiscoveryFailure(root.url, one_line(reason, root.url), "catalog")


def one_line(reason: str, url: str) -> str:
    """The reason on one line, naming the URL, of bounded length."""
    line = " ".join(reason.split())
    line = line if line.startswith(url) else f"{url}: {line}"
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 1] + "…"


# --- one document ---------------------------------------------------------------------------


def read_link(link: Link, get: Callable[[str], bytes]) -> Read:
    """GET and read one document; whatever goes wrong is this document's failure alone."""
    try:
        body = get(link.url)
    except HarvesterError as exc:
        return failure(link, str(exc))
    except Exception as exc:  # a bug in `get`: still one document's failure, not the walk's
        logger.warning("%s: cannot be read", link.url, exc_info=True)
        return failure(link, f"cannot be read: {type(exc).__name__}: {exc}")
    return parse_link(link, body)


def parse_link(link: Link, body: bytes) -> Read:
    """Read a fetched document; a failure if it is not understood."""
    try:
        return read_document(body, link.url, link.kind)
    except DocumentError as exc:
        return failure(link, str(exc))
    except Exception as exc:  # data no rule foresaw (or a bug): one document fails, not all
        logger.warning("%s: cannot be parsed", link.url, exc_info=True)
        return failure(link, f"cannot be parsed: {type(exc).__name__}: {exc}")


def read_document(
    body: bytes, url: str, kind: Kind = "catalog"
) -> DiscoveredDataset | CatalogLinks:
    """What a document is, by its content: a dataset site's Dataset, or a catalog's links.

    Raises DocumentError (naming the URL) when it is neither, or cannot be parsed.
    """
    values, problems = json_ld_values(decode(body))
    found = read_dataset(values, url) or catalog_links(values, url)
    if found is not None:
        return found
    if problems:
        raise DocumentError(f"{url}: {problems[0]}")
    wanted = "Dataset" if kind == "site" else "DataCatalog or Dataset"
    raise DocumentError(f"{url}: no {wanted} in its JSON-LD")


def decode(body: bytes) -> str:
    """The body as text: by its byte order mark if it has one, else UTF-8 (bad bytes replaced)."""
    for bom, encoding in BOMS:
        if body.startswith(bom):
            return body[len(bom) :].decode(encoding, errors="replace")
    return body.decode("utf-8", errors="replace")


def json_ld_values(text: str) -> tuple[list[Any], list[str]]:
    """A document's JSON-LD values (itself, or its pages' scripts), and what did not parse."""
    stripped = text.strip()
    if not stripped:
        return [], ["empty document"]
    if stripped[0] in "{[":
        return parse_json_texts([stripped], "not valid JSON")
    scripts = json_ld_scripts(text)
    if not scripts:
        return [], ["no JSON-LD script in the page"]
    return parse_json_texts(scripts, "invalid JSON in a JSON-LD script")


def parse_json_texts(texts: Iterable[str], problem: str) -> tuple[list[Any], list[str]]:
    """Each text's JSON value; a line for each text that is not JSON."""
    values: list[Any] = []
    problems: list[str] = []
    for text in texts:
        try:
            values.append(orjson.loads(text))
        except orjson.JSONDecodeError as exc:
            problems.append(f"{problem} ({exc})")
    return values, problems


# --- HTML -----------------------------------------------------------------------------------


class JsonLdScripts(HTMLParser):
    """Collects the text of every <script type="application/ld+json"> element."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.current: list[str] | None = None  # the text so far, inside a JSON-LD script

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """A JSON-LD script starts."""
        if tag == "script" and is_json_ld_type(dict(attrs).get("type")):
            self.current = []

    def handle_data(self, data: str) -> None:
        """Script text (the parser passes it raw: no entities are decoded in a script)."""
        if self.current is not None:
            self.current.append(data)

    def handle_endtag(self, tag: str) -> None:
        """A script ends."""
        if tag == "script":
            self.finish_script()

    def close(self) -> None:
        """The page ends; a script left open still counts."""
        super().close()
        if self.current is not None:
            # Python before 3.13 keeps an unclosed script's text unparsed in rawdata.
            self.current.append(self.rawdata)
        self.finish_script()

    def finish_script(self) -> None:
        """Keep the script being read, if any."""
        if self.current is not None:
            self.scripts.append(script_json("".join(self.current)))
            self.current = None


def is_json_ld_type(value: str | None) -> bool:
    """A script type of JSON-LD: case aside, parameters (`; charset=utf-8`) allowed."""
    return value is not None and value.split(";")[0].strip().lower() == JSON_LD_TYPE


def script_json(text: str) -> str:
    """A script's text without the HTML comment some pages wrap it in."""
    text = text.strip()
    if text.startswith("<!--") and text.endswith("-->"):
        return text[4:-3].strip()
    return text


def json_ld_scripts(html: str) -> list[str]:
    """The text of every non-empty JSON-LD script in the page, in page order."""
    parser = JsonLdScripts()
    parser.feed(html)
    parser.close()
    return [script for script in parser.scripts if script]


def extract_json_ld(html: str) -> list[Any]:
    """Every JSON-LD script's parsed value, in page order; scripts that are not JSON left out."""
    return parse_json_texts(json_ld_scripts(html), "")[0]


# --- JSON-LD nodes --------------------------------------------------------------------------


def json_ld_nodes(value: Any, nesting: int = 0) -> Iterator[dict[str, Any]]:
    """The top-level nodes of a JSON-LD value: an object (and its @graph's), or a list's."""
    if nesting > MAX_NESTING:
        return
    if isinstance(value, list):
        for item in value:
            yield from json_ld_nodes(item, nesting + 1)
    elif isinstance(value, dict):
        yield value
        yield from json_ld_nodes(value.get("@graph"), nesting + 1)


def types_of(node: dict[str, Any]) -> set[str]:
    """The node's types by local name: `Dataset` for `schema:Dataset` or a schema.org URL."""
    terms = as_list(first(node, "@type", "type"))
    return {local_name(term) for term in terms if isinstance(term, str)}


def local_name(term: str) -> str:
    """A type's name without prefix or namespace."""
    for separator in "/#:":
        term = term.rpartition(separator)[2]
    return term.strip()


def first(node: dict[str, Any], *keys: str) -> Any:
    """The value of the first key present and not null (`@id` before `id`, say)."""
    return next((node[key] for key in keys if node.get(key) is not None), None)


def as_list(value: Any) -> list[Any]:
    """A JSON-LD value as a list: null is none, a single value is one."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def unique(items: Iterable[T]) -> list[T]:
    """The items without repeats, in first-seen order."""
    return list(dict.fromkeys(items))


def text_of(value: Any) -> str | None:
    """A plain text value on one line: a string, a value object's @value, or a list's first."""
    for item in as_list(value):
        if isinstance(item, dict):
            item = item.get("@value")
        if isinstance(item, str) and item.strip():
            return " ".join(item.split())
    return None


def web_url(value: Any, base: str) -> str | None:
    """The value resolved against `base`, if it is a string naming an http(s) URL."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        url = urljoin(base, value.strip())
    except ValueError:  # say, an unclosed IPv6 bracket
        return None
    return url if is_web_url(url) else None


def is_web_url(url: str) -> bool:
    """An absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in WEB_SCHEMES and bool(parts.hostname)


def document_url(value: Any, base: str) -> str | None:
    """A listed document's URL: resolved, http(s), without the fragment no GET sends."""
    url = web_url(value, base)
    return urldefrag(url).url if url is not None else None


# --- Datasets -------------------------------------------------------------------------------


def read_dataset(document: Any, site_url: str) -> DiscoveredDataset | None:
    """The first Dataset node of a JSON-LD document, as a source; None if it has none."""
    node = next((n for n in json_ld_nodes(document) if "Dataset" in types_of(n)), None)
    return dataset_of(node, site_url) if node is not None else None


def dataset_of(node: dict[str, Any], site_url: str) -> DiscoveredDataset:
    """A Dataset node as a source; its relative URLs resolved against the site's."""
    node_id = web_url(first(node, "@id", "id"), site_url)
    url = web_url(node.get("url"), site_url)
    title = text_of(node.get("name"))
    return DiscoveredDataset(
        name=node_id or url or site_url,
        site_url=site_url,
        feeds=rpde_feeds(node, site_url),
        attribution_name=publisher_name(node.get("publisher")) or title,
        attribution_url=url or node_id,
        license=license_of(node.get("license")),
        title=title,
    )


def rpde_feeds(node: dict[str, Any], site_url: str) -> tuple[str, ...]:
    """The contentUrls of the Dataset's RPDE distributions, absolute, in order, once each."""
    entries = [entry for entry in as_list(node.get("distribution")) if is_rpde(entry)]
    urls = (web_url(url, site_url) for entry in entries for url in as_list(entry.get("contentUrl")))
    return tuple(unique(url for url in urls if url is not None))


def is_rpde(entry: Any) -> bool:
    """A distribution entry whose encodingFormat is RPDE (any version parameter)."""
    if not isinstance(entry, dict):
        return False
    formats = as_list(entry.get("encodingFormat"))
    return any(isinstance(f, str) and f.strip().lower().startswith(RPDE_FORMAT) for f in formats)


def publisher_name(publisher: Any) -> str | None:
    """The name of the first publisher (an object, or a list of them) that has one."""
    names = (text_of(p.get("name")) for p in as_list(publisher) if isinstance(p, dict))
    return next((name for name in names if name), None)


def license_of(value: Any) -> str | None:
    """The licence as given: a string (a URL, usually), or a node's @id or url."""
    for item in as_list(value):
        if isinstance(item, dict):
            item = first(item, "@id", "id", "url")
        if isinstance(item, str) and item.strip():
            return item.strip()
    return None


# --- catalogs -------------------------------------------------------------------------------


def catalog_links(document: Any, url: str) -> CatalogLinks | None:
    """The links of the document's catalog node (a DataCatalog, or an untyped node listing
    hasPart or dataset); None if it has none. Raises DocumentError for an empty DataCatalog."""
    nodes = list(json_ld_nodes(document))
    listing = next((node for node in nodes if is_catalog(node)), None)
    if listing is not None:
        parts, sites = listing.get("hasPart"), listing.get("dataset")
        return CatalogLinks(linked(parts, url), linked(sites, url))
    if any("DataCatalog" in types_of(node) for node in nodes):
        raise DocumentError(f"{url}: a DataCatalog listing neither hasPart nor dataset")
    return None


def is_catalog(node: dict[str, Any]) -> bool:
    """A node that lists catalogs or sites: typed DataCatalog, or untyped (a WebPage's
    hasPart is not a catalog's)."""
    types = types_of(node)
    lists = "hasPart" in node or "dataset" in node
    return lists and (not types or "DataCatalog" in types)


def linked(entries: Any, base: str) -> tuple[str, ...]:
    """The document URLs of hasPart or dataset entries (URL strings, or nodes with @id or
    url), once each; entries naming no http(s) URL are left out."""
    urls = (document_url(entry_reference(entry), base) for entry in as_list(entries))
    return tuple(unique(url for url in urls if url is not None))


def entry_reference(entry: Any) -> Any:
    """What an entry points at: itself if a string, else its @id, id or url."""
    return first(entry, "@id", "id", "url") if isinstance(entry, dict) else entry
