"""The feeds configuration: the contract's TOML, ${VAR} expansion, and one clear error per fault."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harvester import redact
from harvester.config import Config, Settings, Source, load_config, parse_config
from harvester.errors import ConfigError

PATH = "/etc/harvester/feeds.toml"
API_KEY = "k3y-Very-S3cret-1234"

# The example in the contract, verbatim.
CONTRACT_EXAMPLE = """
[[sources]]
name = "imin"                                # unique; used in SQL and logs
checkout_base_url = "checkout.example.com"   # host, or a full https:// base URL
feeds = [
  "https://firehose.imin.co/firehose/standard/session-series",
  "https://firehose.imin.co/firehose/standard/scheduled-sessions",
  "https://firehose.imin.co/firehose/standard/facility-uses",
  "https://firehose.imin.co/firehose/standard/slots",
]

[sources.headers]
X-API-KEY = "${IMIN_API_KEY}"                # ${VAR} is taken from the environment
"""

MINIMAL = """
[[sources]]
name = "a"
feeds = ["https://a.example/feed"]
"""


def parse(text: str, environ: dict[str, str] | None = None) -> Config:
    """Parse with a fixed path and environment."""
    return parse_config(text, environ if environ is not None else {}, PATH)


def test_contract_example() -> None:
    config = parse(CONTRACT_EXAMPLE, {"IMIN_API_KEY": API_KEY})
    (source,) = config.sources
    assert source.name == "imin"
    assert source.checkout_base_url == "checkout.example.com"
    assert source.feeds == (
        "https://firehose.imin.co/firehose/standard/session-series",
        "https://firehose.imin.co/firehose/standard/scheduled-sessions",
        "https://firehose.imin.co/firehose/standard/facility-uses",
        "https://firehose.imin.co/firehose/standard/slots",
    )
    assert dict(source.headers) == {"X-API-KEY": API_KEY}
    assert config.settings == Settings()
    assert config.path == PATH


def test_minimal_source_has_no_checkout_and_no_headers() -> None:
    (source,) = parse(MINIMAL).sources
    assert source.checkout_base_url is None
    assert dict(source.headers) == {}


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),  # whole value
        ("Bearer ${A}", {"A": "x"}, "Bearer x"),  # inside a value
        ("${A}-${B_2}", {"A": "1", "B_2": "2"}, "1-2"),  # two references
        ("$$", {}, "$"),  # $$ is a literal $
        ("$${A}", {"A": "x"}, "${A}"),  # an escaped reference is not expanded
        ("cost $5", {}, "cost $5"),  # a lone $ not followed by { stays
        ("${A}", {"A": ""}, ""),  # set but empty is allowed
        ("${A}", {"A": "$${B}"}, "$${B}"),  # the value itself is not expanded again
    ],
)
def test_env_expansion(value: str, environ: dict[str, str], expected: str) -> None:
    text = MINIMAL + f'\n[sources.headers]\nAuthorization = "{value}"\n'
    (source,) = parse(text, environ).sources
    assert source.headers["Authorization"] == expected


def test_settings_override() -> None:
    text = MINIMAL + (
        "\n[harvester]\nmin_poll_seconds = 10\nretry_attempts = 3\n"
        "overload_retry_seconds = [60, 120]\nmax_page_bytes = 1024\n"
    )
    settings = parse(text).settings
    assert settings.min_poll_seconds == 10.0 and isinstance(settings.min_poll_seconds, float)
    assert settings.retry_attempts == 3
    assert settings.overload_retry_seconds == (60.0, 120.0)
    assert settings.max_page_bytes == 1024


def test_checkout_base_as_full_url() -> None:
    text = MINIMAL.replace('name = "a"', 'name = "a"\ncheckout_base_url = "https://c.example/x"')
    assert parse(text).sources[0].checkout_base_url == "https://c.example/x"


@pytest.mark.parametrize(
    ("text", "environ", "key"),
    [
        # A header names an environment variable that is not set.
        (
            MINIMAL + '[sources.headers]\nX-API-KEY = "${IMIN_API_KEY}"\n',
            {},
            "sources[0].headers.X-API-KEY",
        ),
        # No [[sources]] at all.
        ("[harvester]\nworkers = 2\n", {}, "sources"),
        # An empty sources list.
        ("sources = []\n", {}, "sources"),
        # sources is not a list of tables.
        ('sources = "imin"\n', {}, "sources"),
        ('sources = ["a"]\n', {}, "sources[0]"),  # a source that is not a table
        # A source with no feeds key, and one with an empty list.
        ('[[sources]]\nname = "a"\n', {}, "sources[0].feeds"),
        ('[[sources]]\nname = "a"\nfeeds = []\n', {}, "sources[0].feeds"),
        # A feed that is not a URL, one that is not http(s), one that is not a string.
        ('[[sources]]\nname = "a"\nfeeds = ["firehose.imin.co/x"]\n', {}, "sources[0].feeds[0]"),
        (
            '[[sources]]\nname = "a"\nfeeds = ["https://a/x", "ftp://a/x"]\n',
            {},
            "sources[0].feeds[1]",
        ),
        ('[[sources]]\nname = "a"\nfeeds = [42]\n', {}, "sources[0].feeds[0]"),
        # feeds given as a string instead of a list.
        ('[[sources]]\nname = "a"\nfeeds = "https://a/x"\n', {}, "sources[0].feeds"),
        # No name, an empty name, a name of the wrong type.
        ('[[sources]]\nfeeds = ["https://a/x"]\n', {}, "sources[0].name"),
        ('[[sources]]\nname = " "\nfeeds = ["https://a/x"]\n', {}, "sources[0].name"),
        ('[[sources]]\nname = 7\nfeeds = ["https://a/x"]\n', {}, "sources[0].name"),
        # A name too long to be part of an indexed key.
        (
            '[[sources]]\nname = "' + "n" * 101 + '"\nfeeds = ["https://a/x"]\n',
            {},
            "sources[0].name",
        ),
        # Two sources with one name.
        (MINIMAL + MINIMAL, {}, "sources[1].name"),
        # A header value that is not a string; headers that are not a table.
        (MINIMAL + "[sources.headers]\nX-API-KEY = 5\n", {}, "sources[0].headers.X-API-KEY"),
        (MINIMAL.replace('name = "a"', 'name = "a"\nheaders = "k"'), {}, "sources[0].headers"),
        # A checkout base of the wrong type or scheme.
        (
            MINIMAL.replace('name = "a"', 'name = "a"\ncheckout_base_url = 5'),
            {},
            "sources[0].checkout_base_url",
        ),
        (
            MINIMAL.replace('name = "a"', 'name = "a"\ncheckout_base_url = "ftp://c"'),
            {},
            "sources[0].checkout_base_url",
        ),
        # [harvester]: unknown setting, wrong type, negative, zero integer, bad pair.
        (MINIMAL + "[harvester]\npoll_seconds = 5\n", {}, "harvester.poll_seconds"),
        (MINIMAL + '[harvester]\nmin_poll_seconds = "8"\n', {}, "harvester.min_poll_seconds"),
        (MINIMAL + "[harvester]\nmin_poll_seconds = true\n", {}, "harvester.min_poll_seconds"),
        (MINIMAL + "[harvester]\nmin_poll_seconds = -1\n", {}, "harvester.min_poll_seconds"),
        (MINIMAL + "[harvester]\nworkers = 0\n", {}, "harvester.workers"),
        (
            MINIMAL + "[harvester]\noverload_retry_seconds = 60\n",
            {},
            "harvester.overload_retry_seconds",
        ),
        (
            MINIMAL + "[harvester]\noverload_retry_seconds = [120, 60]\n",
            {},
            "harvester.overload_retry_seconds",
        ),
        ('harvester = "fast"\n' + MINIMAL, {}, "harvester"),  # not a table
        # Not TOML at all.
        ('[[sources]\nname = "a"\n', {}, "not valid TOML"),
        ('name = "a\n', {}, "not valid TOML"),
    ],
)
def test_config_errors_name_file_and_key(text: str, environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, environ)
    message = str(caught.value)
    assert message.startswith(f"{PATH}: ")
    assert key in message
    assert "\n" not in message


def test_missing_variable_message_names_the_variable() -> None:
    text = MINIMAL + '[sources.headers]\nX-API-KEY = "${IMIN_API_KEY}"\n'
    with pytest.raises(ConfigError, match="IMIN_API_KEY is not set"):
        parse(text, {})


def test_api_key_never_in_repr() -> None:
    config = parse(CONTRACT_EXAMPLE, {"IMIN_API_KEY": API_KEY})
    (source,) = config.sources
    assert API_KEY not in repr(source)
    assert API_KEY not in str(source)
    assert API_KEY not in repr(config)
    assert source.headers["X-API-KEY"] == API_KEY  # still there for the requests


def test_source_is_immutable() -> None:
    source = Source(name="a", feeds=("https://a/x",))
    with pytest.raises(AttributeError):
        source.name = "b"  # type: ignore[misc]


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "feeds.toml"
    path.write_text(CONTRACT_EXAMPLE, encoding="utf-8")
    config = load_config(path, {"IMIN_API_KEY": API_KEY})
    assert config.path == str(path)
    assert config.sources[0].headers["X-API-KEY"] == API_KEY


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(path) in str(caught.value)


# --- the real command line ---------------------------------------------------------------


def run_cli(
    args: list[str], tmp_path: Path, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m harvester` with no config or database in the environment (plus `extra`)."""
    environ = {
        name: value for name, value in os.environ.items()
        if not name.startswith("HARVESTER_") and name not in ("DATABASE_URL", "IMIN_API_KEY")
    }  # fmt: skip
    # Should the config check ever come after the database, nothing real is touched.
    environ["HARVESTER_DATA_DIR"] = str(tmp_path / "pgdata")
    environ.update(extra or {})
    return subprocess.run(
        [sys.executable, "-m", "harvester", *args],
        capture_output=True, text=True, timeout=60, env=environ, cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[[sources]]\nname = "a"\nfeeds = ["not a url"]\n', "sources[0].feeds[0]"),  # bad feed
        (CONTRACT_EXAMPLE, "sources[0].headers.X-API-KEY"),  # IMIN_API_KEY is not set
        ("[[sources]\n", "not valid TOML"),  # broken TOML
    ],
)
def test_cli_bad_config_exits_2(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    result = run_cli(["run", "--once", "--config", str(path)], tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert key in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pgdata").exists()  # refused before any database was started


def test_cli_without_config_exits_2(tmp_path: Path) -> None:
    result = run_cli(["run", "--once"], tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--config" in lines[0] and "HARVESTER_CONFIG" in lines[0]


def test_cli_missing_config_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    result = run_cli(["run", "--once", "--config", str(path)], tmp_path)
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr


# --- header names and values: what can be sent, and never the value in a message -----------

KEY_HEADER = MINIMAL + '[sources.headers]\nX-API-KEY = "${IMIN_API_KEY}"\n'


@pytest.mark.parametrize(
    ("value", "warning"),
    [
        (API_KEY + "\n", "trailing whitespace"),  # a secrets file read with $(cat ...)
        (API_KEY + "\r\n", "trailing whitespace"),  # a .env with CRLF line ends
        (API_KEY + " \t", "trailing whitespace"),
        ("  " + API_KEY, "leading whitespace"),
    ],
)
def test_header_value_whitespace_is_trimmed_with_a_warning(value: str, warning: str) -> None:
    config = parse(KEY_HEADER, {"IMIN_API_KEY": value})
    assert config.sources[0].headers["X-API-KEY"] == API_KEY
    (message,) = config.warnings
    assert message.startswith(f"{PATH}: sources[0].headers.X-API-KEY: {warning}")
    assert API_KEY not in message
    assert "\n" not in message


def test_header_value_whitespace_both_sides_gives_two_warnings() -> None:
    config = parse(KEY_HEADER, {"IMIN_API_KEY": f"\t{API_KEY}\r\n"})
    assert config.sources[0].headers["X-API-KEY"] == API_KEY
    assert len(config.warnings) == 2
    assert all("sources[0].headers.X-API-KEY" in message for message in config.warnings)
    assert not any(API_KEY in message for message in config.warnings)


def test_clean_header_value_gives_no_warning() -> None:
    config = parse(KEY_HEADER, {"IMIN_API_KEY": API_KEY})
    assert config.warnings == ()
    # Spaces inside a value are fine (e.g. "Bearer TOKEN").
    config = parse(KEY_HEADER, {"IMIN_API_KEY": f"Bearer {API_KEY}"})
    assert config.sources[0].headers["X-API-KEY"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        (API_KEY[:8] + "\n" + API_KEY[8:], "line break (LF)"),
        (API_KEY[:8] + "\r" + API_KEY[8:], "line break (CR)"),
        (API_KEY[:8] + "\r\n" + API_KEY[8:], "line break (CR)"),
        (API_KEY[:8] + "\0" + API_KEY[8:], "NUL"),
        (API_KEY[:8] + "\x1b" + API_KEY[8:], "control character (U+001B)"),
        (API_KEY[:8] + "\x7f" + API_KEY[8:], "control character (U+007F)"),
        (API_KEY[:8] + "\u00e9" + API_KEY[8:], "non-ASCII"),
        (API_KEY + "\f", "control character (U+000C)"),  # not trimmed: not a space or line end
    ],
)
def test_unsendable_header_value_is_an_error_without_the_value(value: str, fault: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(KEY_HEADER, {"IMIN_API_KEY": value})
    message = str(caught.value)
    assert message.startswith(f"{PATH}: sources[0].headers.X-API-KEY: ")
    assert fault in message
    for part in (value, API_KEY, API_KEY[:8], API_KEY[8:]):
        assert part not in message
    assert "\n" not in message and "\r" not in message


def test_unsendable_literal_header_value_is_an_error_too() -> None:
    text = MINIMAL + f'[sources.headers]\nX-API-KEY = "{API_KEY[:8]}\\u0007{API_KEY[8:]}"\n'
    with pytest.raises(ConfigError, match="U\\+0007") as caught:
        parse(text)
    assert API_KEY[:8] not in str(caught.value)


@pytest.mark.parametrize("name", ["X API KEY", "X-API-KEY:", "Bad\\nName", "", "Ключ", "a(b)"])
def test_bad_header_name_is_an_error(name: str) -> None:
    text = MINIMAL + f'[sources.headers]\n"{name}" = "x"\n'
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith(f"{PATH}: sources[0].headers.")
    assert "not a valid header name" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["X-API-KEY", "Authorization", "x_key.v2", "!#$%&'*+-.^_`|~"])
def test_token_header_names_are_accepted(name: str) -> None:
    text = MINIMAL + f'[sources.headers]\n"{name}" = "x"\n'  # tchars need no TOML escape
    assert dict(parse(text).sources[0].headers) == {name: "x"}


def test_secrets_lists_every_header_value() -> None:
    text = CONTRACT_EXAMPLE + '\n[[sources]]\nname = "b"\nfeeds = ["https://b.example/f"]\n'
    text += '[sources.headers]\nAuthorization = "Bearer ${B_TOKEN}"\nX-Other = "v"\n'
    config = parse(text, {"IMIN_API_KEY": API_KEY + "\n", "B_TOKEN": "tok-123456"})
    assert sorted(config.secrets()) == sorted([API_KEY, "Bearer tok-123456", "v"])


def test_parsing_registers_no_secrets() -> None:
    before = redact.registered_secrets()
    parse(CONTRACT_EXAMPLE, {"IMIN_API_KEY": "never-registered-by-parse"})
    assert redact.registered_secrets() == before


def test_cli_bad_header_value_exits_2_without_the_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(CONTRACT_EXAMPLE, encoding="utf-8")
    key = f"{API_KEY[:8]}\n{API_KEY[8:]}"
    result = run_cli(["run", "--once", "--config", str(path)], tmp_path, {"IMIN_API_KEY": key})
    assert result.returncode == 2, result.stderr
    assert "sources[0].headers.X-API-KEY" in result.stderr
    assert API_KEY[:8] not in result.stderr and API_KEY[8:] not in result.stderr
    assert not (tmp_path / "pgdata").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "[harvestr]\nworkers = 2\n",
         "harvestr: unknown key (did you mean 'harvester'?)"),
        (MINIMAL.replace("[[sources]]", "[[source]]"),
         "source: unknown key (did you mean 'sources'?)"),
        (MINIMAL.replace('name = "a"', 'name = "a"\nfeed = []'),
         "sources[0].feed: unknown key (did you mean 'feeds'?)"),
        (MINIMAL + "[harvester]\nworker = 2\n",
         "harvester.worker: unknown key (did you mean 'workers'?)"),
        (MINIMAL + "[harvester]\nzzz = 2\n", "harvester.zzz: unknown key"),
    ],
)  # fmt: skip
def test_unknown_keys_are_errors_everywhere_with_a_suggestion(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {}, "h.toml")
    assert str(caught.value) == f"h.toml: {message}"


def test_every_setting_can_come_from_the_environment() -> None:
    environ = {"HARVESTER_WORKERS": "8", "HARVESTER_MIN_POLL_SECONDS": "12.5",
               "HARVESTER_OVERLOAD_RETRY_SECONDS": "60, 120"}  # fmt: skip
    text = MINIMAL + "[harvester]\nworkers = 2\nretry_attempts = 3\n"
    settings = parse_config(text, environ).settings
    # The environment beats the file; the file beats the defaults.
    assert (settings.workers, settings.min_poll_seconds, settings.retry_attempts) == (8, 12.5, 3)
    assert settings.overload_retry_seconds == (60.0, 120.0)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HARVESTER_WORKERS": "abc"}, "HARVESTER_WORKERS: expected a number, got 'abc'"),
        ({"HARVESTER_WORKERS": "0"}, "HARVESTER_WORKERS: must be positive, got 0"),
        ({"HARVESTER_OVERLOAD_RETRY_SECONDS": "60"},
         "HARVESTER_OVERLOAD_RETRY_SECONDS: expected a list of two numbers [low, high]"),
        ({"HARVESTER_WORKERS": "2, 3"}, "HARVESTER_WORKERS: expected one number, got '2, 3'"),
    ],
)  # fmt: skip
def test_settings_from_the_environment_are_validated(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL, environ)
    assert str(caught.value) == message


def test_a_mistyped_setting_variable_is_a_warning_with_a_suggestion() -> None:
    config = parse_config(MINIMAL, {"HARVESTER_WORKER": "8", "HARVESTER_CONFIG": "x.toml"})
    assert config.settings.workers == Settings().workers
    assert config.warnings == (
        "environment: HARVESTER_WORKER: not a harvester setting, ignored"
        " (did you mean 'HARVESTER_WORKERS'?)",
    )


CATALOG = """
[[catalogs]]
url = "https://openactive.io/data-catalogs/data-catalog-collection.jsonld"
include = ["https://*.leisurecloud.live/*"]
exclude = ["*/test/*"]
"""


def test_a_catalog_alone_is_a_whole_config() -> None:
    config = parse(CATALOG)
    assert config.sources == ()
    (catalog,) = config.catalogs
    assert catalog.url.endswith("data-catalog-collection.jsonld")
    assert catalog.takes("https://a.leisurecloud.live/openactive")
    assert not catalog.takes("https://a.leisurecloud.live/test/openactive")  # excluded
    assert not catalog.takes("https://other.example/openactive")  # not included
    assert parse(CATALOG.split("include")[0]).catalogs[0].takes("https://any.example/")
    assert config.settings.catalog_refresh_hours == 24.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[catalogs]]\nurl = 'ftp://x.example/c'\n", "catalogs[0].url: not an absolute http(s)"),
        ("[[catalogs]]\ninclude = []\n", "catalogs[0].url: missing"),
        ("[[catalogs]]\nurl = 'https://x.example/c'\ninclude = 'a*'\n",
         "catalogs[0].include: expected list"),
        ("[[catalogs]]\nurl = 'https://x.example/c'\nexclude = [3]\n",
         "catalogs[0].exclude[0]: expected a glob pattern"),
        ("[[catalogs]]\nurl = 'https://x.example/c'\nincludes = []\n",
         "catalogs[0].includes: unknown key (did you mean 'include'?)"),
        ("[[catalog]]\nurl = 'https://x.example/c'\n", "catalog: unknown key (did you mean"),
        ("[harvester]\nworkers = 2\n", "at least one [[sources]] or [[catalogs]] table"),
        ("catalogs = 'https://x.example/c'\n", "catalogs: expected list"),
    ],
)  # fmt: skip
def test_a_bad_catalog_entry_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(text)
    assert message in str(raised.value)
    assert str(raised.value).startswith(PATH)
