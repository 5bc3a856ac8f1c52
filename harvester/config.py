"""The feeds configuration (TOML), parsed by pure functions into frozen values."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harvester.errors import ConfigError

SOURCE_KEYS = frozenset({
    "name", "feeds", "checkout_base_url", "headers", "checkout_route", "broker",
    "bookable_sellers_feed", "attribution_feed",
})  # fmt: skip
# How a booker is sent to checkout (contract, "Checkout sessions"): a URL built from the
# identifier, or a checkout session created by imin's Standalone or Authenticated Checkout.
CHECKOUT_ROUTES = ("guest", "standalone", "authenticated")
BROKER_KEYS = frozenset({"name", "url"})
TOP_LEVEL_KEYS = frozenset({"sources", "catalogs", "harvester"})
CATALOG_KEYS = frozenset({"url", "include", "exclude"})
SETTINGS_PREFIX = "HARVESTER_"  # HARVESTER_<SETTING> overrides [harvester] (12-factor)
# HARVESTER_* variables that are not [harvester] settings: not taken for typos of one.
OTHER_VARIABLES = frozenset({
    "HARVESTER_CONFIG", "HARVESTER_LOG_LEVEL", "HARVESTER_LOG_FORMAT", "HARVESTER_DATA_DIR",
    "HARVESTER_METRICS_PORT", "HARVESTER_METRICS_HOST", "HARVESTER_API_TOKEN",
})  # fmt: skip
# The name is part of every indexed key, beside ids of up to 1,000 bytes (rpde.py).
MAX_SOURCE_NAME_BYTES = 100
ENV_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: one or more tchar
# Trimmed from header values: what a secrets file or a CRLF .env leaves around a key.
HEADER_WHITESPACE = " \t\r\n"
# Visible ASCII, space and tab: httpx encodes values as ASCII and CR/LF/NUL are never allowed.
HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")
LINE_BREAKS_AND_NUL = {
    "\0": "a NUL character", "\r": "a line break (CR)", "\n": "a line break (LF)",
}  # fmt: skip


@dataclass(frozen=True)
class Broker:
    """The organisation booking on the authenticated route, as imin's Checkout is told."""

    name: str
    url: str | None = None


@dataclass(frozen=True)
class Source:
    """One publisher: its feeds, the headers sent to it, and where checkouts go."""

    name: str
    feeds: tuple[str, ...]
    checkout_base_url: str | None = None
    # Header values may hold API keys: kept out of repr so they are never logged.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    checkout_route: str = "guest"
    broker: Broker | None = None
    bookable_sellers_feed: str | None = None  # RPDE: its items are the sellers that can be booked
    attribution_feed: str | None = None  # the Datasets whose attribution the licence requires

    def feed_purposes(self) -> tuple[tuple[str, str], ...]:
        """(url, purpose) of every feed harvested for the source: its opportunity feeds,
        then its bookable sellers feed, if any."""
        feeds = tuple((url, "opportunities") for url in self.feeds)
        if self.bookable_sellers_feed is None:
            return feeds
        return (*feeds, (self.bookable_sellers_feed, "sellers"))


@dataclass(frozen=True)
class Catalog:
    """An OpenActive data catalog (or collection of them) whose datasets become sources."""

    url: str
    include: tuple[str, ...] = ()  # glob patterns over dataset site URLs; empty: all
    exclude: tuple[str, ...] = ()

    def takes(self, site_url: str) -> bool:
        """The dataset site is harvested: included (or no include given), not excluded."""
        included = not self.include or any(fnmatch.fnmatchcase(site_url, p) for p in self.include)
        return included and not any(fnmatch.fnmatchcase(site_url, p) for p in self.exclude)


@dataclass(frozen=True)
class Settings:
    """How the harvester behaves; every field has a default a user may override in [harvester]."""

    min_poll_seconds: float = 8.0  # imin and OpenActive: no more than one poll per 8 s
    max_poll_seconds: float = 300.0  # clamp on a last page's Cache-Control max-age
    overload_retry_seconds: tuple[float, float] = (3600.0, 7200.0)  # RPDE: 503 → 60-120 min
    retry_attempts: int = 6
    retry_max_seconds: float = 600.0
    request_timeout_seconds: float = 30.0  # connect, and each read: a silent publisher
    request_deadline_seconds: float = 120.0  # a whole request, body included: a trickling one
    # Decoded bytes. Real RPDE pages are a few MB. With 4 feeds in flight all at the cap
    # the process peaks near 235 MB (bench/memory.py).
    max_page_bytes: int = 6 * 1024 * 1024
    # Feeds harvested at once by one process, at most max_connections_per_host of one host
    # (worker.Worker): so the threads follow the hosts (hosts x per-host limit), to this cap,
    # which bounds memory (bench/ecosystem.py: ~2.5 MB a feed in flight).
    workers: int = 48
    max_connections_per_host: int = 4
    lease_seconds: float = 15.0  # a dead worker's feeds are taken over after this
    # /healthz fails when no feed has committed a page (a last-page poll counts) for this long.
    unhealthy_after_seconds: float = 900.0
    # A checkout session is asked for while a booker waits: few, short retries.
    checkout_attempts: int = 3
    checkout_retry_seconds: float = 20.0
    attribution_refresh_seconds: float = 3600.0  # how often an attribution feed is read again
    catalog_refresh_hours: float = 24.0  # how often [[catalogs]] are discovered again


SETTING_NAMES = frozenset(field.name for field in dataclasses.fields(Settings))


@dataclass(frozen=True)
class Config:
    """The whole configuration: sources and settings, and the file they came from."""

    sources: tuple[Source, ...]
    settings: Settings = field(default_factory=Settings)
    catalogs: tuple[Catalog, ...] = ()
    path: str = "<config>"
    # For the caller to log: keys not understood (typos?), whitespace trimmed from headers.
    warnings: tuple[str, ...] = ()

    def secrets(self) -> tuple[str, ...]:
        """Every configured header value: any of them may be an API key."""
        return tuple(value for source in self.sources for value in source.headers.values())


def load_config(path: str | Path, environ: Mapping[str, str]) -> Config:
    """Read and validate a TOML config file; ConfigError names file, key and fault."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    return parse_config(text, environ, str(path))


def parse_config(text: str, environ: Mapping[str, str], path: str = "<config>") -> Config:
    """Parse the contract's TOML form into a Config."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    _check_known_keys(document, TOP_LEVEL_KEYS, path, "")
    catalogs = tuple(
        parse_catalog(raw, path, f"catalogs[{index}]")
        for index, raw in enumerate(_optional(document, "catalogs", list, path, "catalogs"))
    )
    sources = _optional(document, "sources", list, path, "sources")
    if not sources and not catalogs:
        raise ConfigError(
            f"{path}: sources: at least one [[sources]] or [[catalogs]] table is needed"
        )
    header_warnings: list[str] = []
    parsed = tuple(
        parse_source(raw, environ, path, f"sources[{index}]", header_warnings)
        for index, raw in enumerate(sources)
    )
    _check_unique_names(parsed, path)
    settings = parse_settings(document.get("harvester", {}), path, environ)
    warnings = (*header_warnings, *unknown_variables(environ))
    return Config(sources=parsed, settings=settings, path=path, warnings=warnings,
                  catalogs=catalogs)  # fmt: skip


def parse_catalog(raw: Any, path: str, key: str) -> Catalog:
    """Validate one [[catalogs]] table."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {key}: expected a table, got {type(raw).__name__}")
    _check_known_keys(raw, CATALOG_KEYS, path, f"{key}.")
    url = _check_feed_url(_require(raw, "url", str, path, f"{key}.url"), path, f"{key}.url")
    patterns = {}
    for name in ("include", "exclude"):
        values = _optional(raw, name, list, path, f"{key}.{name}")
        for index, value in enumerate(values):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path}: {key}.{name}[{index}]: expected a glob pattern")
        patterns[name] = tuple(values)
    return Catalog(url=url, **patterns)


def parse_source(
    raw: Any, environ: Mapping[str, str], path: str, key: str,
    warnings: list[str] | None = None,
) -> Source:  # fmt: skip
    """Validate one [[sources]] table; what was fixed up is appended to `warnings`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {key}: expected a table, got {type(raw).__name__}")
    _check_known_keys(raw, SOURCE_KEYS, path, f"{key}.")
    name = _require(raw, "name", str, path, f"{key}.name").strip()
    if not name:
        raise ConfigError(f"{path}: {key}.name: must not be empty")
    if len(name.encode()) > MAX_SOURCE_NAME_BYTES:
        raise ConfigError(f"{path}: {key}.name: longer than {MAX_SOURCE_NAME_BYTES} bytes")
    feeds = _require(raw, "feeds", list, path, f"{key}.feeds")
    if not feeds:
        raise ConfigError(f"{path}: {key}.feeds: list at least one feed URL")
    urls = tuple(_check_feed_url(feed, path, f"{key}.feeds[{i}]") for i, feed in enumerate(feeds))
    base = raw.get("checkout_base_url")
    if base is not None:
        base = _check_checkout_base(base, path, f"{key}.checkout_base_url")
    headers = _parse_headers(
        raw.get("headers", {}), environ, path, f"{key}.headers",
        warnings if warnings is not None else [],
    )  # fmt: skip
    route = _parse_route(raw, base, path, key)
    sellers = raw.get("bookable_sellers_feed")
    if sellers is not None:
        sellers = _check_feed_url(sellers, path, f"{key}.bookable_sellers_feed")
        if sellers in urls:
            raise ConfigError(f"{path}: {key}.bookable_sellers_feed: also listed in feeds")
    attribution = raw.get("attribution_feed")
    if attribution is not None:
        attribution = _check_feed_url(attribution, path, f"{key}.attribution_feed")
    return Source(
        name=name, feeds=urls, checkout_base_url=base, headers=headers, checkout_route=route,
        broker=_parse_broker(raw.get("broker"), route, path, f"{key}.broker"),
        bookable_sellers_feed=sellers, attribution_feed=attribution,
    )  # fmt: skip


def _parse_route(raw: dict[str, Any], base: str | None, path: str, key: str) -> str:
    route = raw.get("checkout_route", "guest")
    if route not in CHECKOUT_ROUTES:
        raise ConfigError(f"{path}: {key}.checkout_route: one of {', '.join(CHECKOUT_ROUTES)}")
    if route != "guest" and base is None:
        raise ConfigError(f"{path}: {key}.checkout_route: {route} needs checkout_base_url")
    return str(route)


def _parse_broker(raw: Any, route: str, path: str, key: str) -> Broker | None:
    if raw is None:
        if route == "authenticated":
            raise ConfigError(f"{path}: {key}: the authenticated route sends a broker: missing")
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {key}: expected a table with name and url")
    unknown = sorted(set(raw) - BROKER_KEYS)
    if unknown:
        raise ConfigError(f"{path}: {key}.{unknown[0]}: unknown key (name, url)")
    name = _require(raw, "name", str, path, f"{key}.name").strip()
    if not name:
        raise ConfigError(f"{path}: {key}.name: must not be empty")
    url = raw.get("url")
    if url is not None:
        url = _check_feed_url(url, path, f"{key}.url")
    return Broker(name=name, url=url)


def parse_settings(raw: Any, path: str, environ: Mapping[str, str] | None = None) -> Settings:
    """Validate the optional [harvester] table over the defaults, then HARVESTER_<NAME>
    environment variables over both (validated alike)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: harvester: expected a table")
    _check_known_keys(raw, SETTING_NAMES, path, "harvester.")
    defaults = Settings()
    values = {
        name: _coerce_setting(getattr(defaults, name), value, f"{path}: harvester.{name}")
        for name, value in raw.items()
    }  # fmt: skip
    for name in SETTING_NAMES:
        text = (environ or {}).get(SETTINGS_PREFIX + name.upper())
        if text is not None:
            variable = SETTINGS_PREFIX + name.upper()
            default = getattr(defaults, name)
            values[name] = _coerce_setting(default, _env_value(default, text, variable), variable)
    return Settings(**values)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Warnings for HARVESTER_* variables that are no setting (a typo of one, say)."""
    known = {SETTINGS_PREFIX + name.upper() for name in SETTING_NAMES} | OTHER_VARIABLES
    return [
        f"environment: {variable}: not a harvester setting, ignored{_suggestion(variable, known)}"
        for variable in sorted(environ)
        if variable.startswith(SETTINGS_PREFIX) and variable not in known
    ]  # fmt: skip


def _env_value(default: Any, text: str, variable: str) -> Any:
    """A setting's value from its variable's text: a number, or `low,high` for a pair."""
    parts = [part.strip() for part in text.strip().strip("[]").split(",")]
    try:
        numbers = [float(part) if "." in part or "e" in part.lower() else int(part)
                   for part in parts]  # fmt: skip
    except ValueError:
        raise ConfigError(f"{variable}: expected a number, got {text!r}") from None
    if isinstance(default, tuple):
        return numbers
    if len(numbers) != 1:
        raise ConfigError(f"{variable}: expected one number, got {text!r}")
    return numbers[0]


def _check_known_keys(table: dict[str, Any], known: frozenset[str], path: str, key: str) -> None:
    for name in table:
        if name not in known:
            hint = _suggestion(name, known)
            raise ConfigError(f"{path}: {key}{name}: unknown key{hint}")


def _suggestion(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def expand_env(value: str, environ: Mapping[str, str], path: str, key: str) -> str:
    """Replace ${VAR} with the environment's value ($$ is a literal $)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"{path}: {key}: environment variable {name} is not set")
        return environ[name]

    return ENV_REFERENCE.sub(replace, value)


def _parse_headers(
    raw: Any, environ: Mapping[str, str], path: str, key: str, warnings: list[str]
) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {key}: expected a table of header names to values")
    headers = {}
    for name, value in raw.items():
        if not HEADER_NAME.fullmatch(name):
            shown = name if name.isprintable() else repr(name)  # the error stays one line
            raise ConfigError(
                f"{path}: {key}.{shown}: not a valid header name"
                " (letters, digits and !#$%&'*+-.^_`|~ only; no spaces)"
            )
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key}.{name}: expected a string")
        expanded = expand_env(value, environ, path, f"{key}.{name}")
        headers[name] = _check_header_value(expanded, path, f"{key}.{name}", warnings)
    return headers


def _check_header_value(value: str, path: str, key: str, warnings: list[str]) -> str:
    # Messages name the header and the fault, never the value: it is usually an API key.
    trimmed = value.rstrip(HEADER_WHITESPACE)
    if trimmed != value:
        warnings.append(f"{path}: {key}: trailing whitespace (a newline?) removed from the value")
    stripped = trimmed.lstrip(HEADER_WHITESPACE)
    if stripped != trimmed:
        warnings.append(f"{path}: {key}: leading whitespace removed from the value")
    if not HEADER_VALUE.fullmatch(stripped):
        raise ConfigError(f"{path}: {key}: {_describe_bad_character(stripped)}")
    return stripped


def _describe_bad_character(value: str) -> str:
    # The first character no header may carry; named by its kind, never shown with the value.
    position, char = next((i, c) for i, c in enumerate(value) if not HEADER_VALUE.fullmatch(c))
    if char in LINE_BREAKS_AND_NUL:
        fault = LINE_BREAKS_AND_NUL[char]
    elif ord(char) < 0x20 or ord(char) == 0x7F:
        fault = f"a control character (U+{ord(char):04X})"
    else:  # a printable character may be part of the secret: not shown
        fault = "a non-ASCII character (header values must be ASCII)"
    return f"the value holds {fault} at character {position + 1}; it cannot be sent"


def _check_feed_url(value: Any, path: str, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {key}: expected a URL string, got {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{path}: {key}: not an absolute http(s) URL: {value!r}")
    return value


def _check_checkout_base(value: Any, path: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: {key}: expected a host name or an https:// URL")
    value = value.strip()
    if "://" in value and urlsplit(value).scheme not in ("http", "https"):
        raise ConfigError(f"{path}: {key}: only http(s) URLs are allowed: {value!r}")
    return value


def _check_unique_names(sources: tuple[Source, ...], path: str) -> None:
    seen: set[str] = set()
    for index, source in enumerate(sources):
        if source.name in seen:
            raise ConfigError(f"{path}: sources[{index}].name: {source.name!r} is used twice")
        seen.add(source.name)


def _coerce_setting(default: Any, value: Any, key: str) -> Any:
    if isinstance(default, tuple):
        if not (isinstance(value, list) and len(value) == 2):
            raise ConfigError(f"{key}: expected a list of two numbers [low, high]")
        low, high = (_coerce_setting(0.0, item, key) for item in value)
        if low > high:
            raise ConfigError(f"{key}: low {low} is above high {high}")
        return (low, high)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if value < 0 or (isinstance(default, int) and value < 1):
        raise ConfigError(f"{key}: must be positive, got {value!r}")
    return type(default)(value)


def _optional(table: dict[str, Any], name: str, kind: type, path: str, key: str) -> Any:
    """The value if given (checked like `_require`), else an empty one of its kind."""
    return _require(table, name, kind, path, key) if name in table else kind()


def _require(table: dict[str, Any], name: str, kind: type, path: str, key: str) -> Any:
    if name not in table:
        raise ConfigError(f"{path}: {key}: missing")
    value = table[name]
    if not isinstance(value, kind):
        raise ConfigError(f"{path}: {key}: expected {kind.__name__}, got {type(value).__name__}")
    return value
