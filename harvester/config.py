"""The feeds configuration (TOML), parsed by pure functions into frozen values."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harvester.errors import ConfigError

SOURCE_KEYS = frozenset({"name", "feeds", "checkout_base_url", "headers"})
ENV_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Source:
    """One publisher: its feeds, the headers sent to it, and where checkouts go."""

    name: str
    feeds: tuple[str, ...]
    checkout_base_url: str | None = None
    # Header values may hold API keys: kept out of repr so they are never logged.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Settings:
    """How the harvester behaves; every field has a default a user may override in [harvester]."""

    min_poll_seconds: float = 8.0  # imin and OpenActive: no more than one poll per 8 s
    max_poll_seconds: float = 300.0  # clamp on a last page's Cache-Control max-age
    overload_retry_seconds: tuple[float, float] = (3600.0, 7200.0)  # RPDE: 503 → 60-120 min
    retry_attempts: int = 6
    retry_max_seconds: float = 600.0
    request_timeout_seconds: float = 30.0
    max_page_bytes: int = 64 * 1024 * 1024
    workers: int = 4  # feeds harvested at once by one process
    max_connections_per_host: int = 4
    lease_seconds: float = 15.0  # a dead worker's feeds are taken over after this


@dataclass(frozen=True)
class Config:
    """The whole configuration: sources and settings, and the file they came from."""

    sources: tuple[Source, ...]
    settings: Settings = field(default_factory=Settings)
    path: str = "<config>"
    warnings: tuple[str, ...] = ()  # keys not understood (typos?), for the caller to log


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
    sources = _require(document, "sources", list, path, "sources")
    if not sources:
        raise ConfigError(f"{path}: sources: at least one [[sources]] table is needed")
    parsed = tuple(
        parse_source(raw, environ, path, f"sources[{index}]")
        for index, raw in enumerate(sources)
    )
    _check_unique_names(parsed, path)
    settings = parse_settings(document.get("harvester", {}), path)
    warnings = tuple(
        f"{path}: sources[{index}].{name}: unknown key, ignored"
        for index, raw in enumerate(sources) if isinstance(raw, dict)
        for name in raw if name not in SOURCE_KEYS
    )  # fmt: skip
    return Config(sources=parsed, settings=settings, path=path, warnings=warnings)


def parse_source(raw: Any, environ: Mapping[str, str], path: str, key: str) -> Source:
    """Validate one [[sources]] table."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {key}: expected a table, got {type(raw).__name__}")
    name = _require(raw, "name", str, path, f"{key}.name").strip()
    if not name:
        raise ConfigError(f"{path}: {key}.name: must not be empty")
    feeds = _require(raw, "feeds", list, path, f"{key}.feeds")
    if not feeds:
        raise ConfigError(f"{path}: {key}.feeds: list at least one feed URL")
    urls = tuple(
        _check_feed_url(feed, path, f"{key}.feeds[{i}]") for i, feed in enumerate(feeds)
    )
    base = raw.get("checkout_base_url")
    if base is not None:
        base = _check_checkout_base(base, path, f"{key}.checkout_base_url")
    headers = _parse_headers(raw.get("headers", {}), environ, path, f"{key}.headers")
    return Source(name=name, feeds=urls, checkout_base_url=base, headers=headers)


def parse_settings(raw: Any, path: str) -> Settings:
    """Validate the optional [harvester] table over the defaults."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: harvester: expected a table")
    defaults = Settings()
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if not hasattr(defaults, name):
            raise ConfigError(f"{path}: harvester.{name}: unknown setting")
        values[name] = _coerce_setting(getattr(defaults, name), value, path, name)
    return Settings(**values)


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
    raw: Any, environ: Mapping[str, str], path: str, key: str
) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {key}: expected a table of header names to values")
    headers = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key}.{name}: expected a string")
        headers[name] = expand_env(value, environ, path, f"{key}.{name}")
    return headers


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


def _coerce_setting(default: Any, value: Any, path: str, name: str) -> Any:
    key = f"{path}: harvester.{name}"
    if isinstance(default, tuple):
        if not (isinstance(value, list) and len(value) == 2):
            raise ConfigError(f"{key}: expected a list of two numbers [low, high]")
        low, high = (_coerce_setting(0.0, item, path, name) for item in value)
        if low > high:
            raise ConfigError(f"{key}: low {low} is above high {high}")
        return (low, high)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if value < 0 or (isinstance(default, int) and value < 1):
        raise ConfigError(f"{key}: must be positive, got {value!r}")
    return type(default)(value)


def _require(table: dict[str, Any], name: str, kind: type, path: str, key: str) -> Any:
    if name not in table:
        raise ConfigError(f"{path}: {key}: missing")
    value = table[name]
    if not isinstance(value, kind):
        raise ConfigError(
            f"{path}: {key}: expected {kind.__name__}, got {type(value).__name__}"
        )
    return value
