"""An API key read with its trailing newline reaches the publisher, trimmed, and nothing else.

A real `harvester run --once` against the sample publisher, the key given as
`${TEST_API_KEY}` with a newline after it: the run harvests everything, the publisher
receives the trimmed key on every request, and the key is in no output (stdout,
stderr in either log format, `harvester status`) and nowhere in the database.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    FAST_SETTINGS,
    assert_holds_exactly,
    libpq_url,
    parse_status,
    run_harvester,
    write_config,
)
from sqlalchemy import Engine, text

from harvester import cli, redact
from harvester.sample import SamplePublisher
from harvester.sample.server import PublisherHandler
from harvester.worker import RunReport

KEY = "s3cr3t-key-value"
ENVIRONMENT_KEY = KEY + "\n"  # as `export TEST_API_KEY="$(cat key.txt)"` may leave it
HEADERS_TOML = '\n[sources.headers]\nX-API-KEY = "${TEST_API_KEY}"\n'
TRIMMED_WARNING = "sources[0].headers.X-API-KEY: trailing whitespace"


@pytest.fixture
def publisher() -> Iterator[SamplePublisher]:
    """A sample publisher of 400 items in pages of 50, last pages not cached."""
    with SamplePublisher(items=400, page_size=50, last_page_max_age=0) as started:
        yield started


def record_api_keys(publisher: SamplePublisher) -> list[list[str]]:
    """The X-API-KEY values of every request the started publisher answers from now on."""
    seen: list[list[str]] = []

    # SamplePublisher keeps paths only; its server builds one handler per connection from
    # RequestHandlerClass, so a subclass that notes the header sees every request.
    class RecordingHandler(PublisherHandler):
        def do_GET(self) -> None:
            """Note the header, then answer as the publisher does."""
            seen.append(self.headers.get_all("X-API-KEY") or [])
            super().do_GET()

    assert publisher.server is not None
    publisher.server.RequestHandlerClass = RecordingHandler
    return seen


def dump_database(db_url: str, engine: Engine) -> str:
    """pg_dump of the whole database (if one of the server's version is installed) and
    every row of every table outside the system schemas."""
    parts = []
    if shutil.which("pg_dump"):
        dumped = subprocess.run(
            ["pg_dump", "--no-owner", "--dbname", libpq_url(db_url)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        # An older pg_dump refuses a newer server (the embedded one): the rows still are read.
        assert dumped.returncode == 0 or "version mismatch" in dumped.stderr, dumped.stderr
        parts.append(dumped.stdout)
    query = (
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_type = 'BASE TABLE'"
        " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
    )
    with engine.connect() as conn:
        tables = conn.execute(text(query)).all()
        for schema, table in tables:
            rows = conn.execute(text(f'SELECT row_to_json(t)::text FROM "{schema}"."{table}" t'))
            parts += rows.scalars().all()
    assert tables and parts
    return "\n".join(parts)


def assert_no_key(where: str, output: str) -> None:
    """Neither the key nor a recognisable part of it is in `output`."""
    assert KEY not in output, where
    assert "s3cr3t" not in output, where


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_key_with_newline_reaches_only_the_publisher(
    db_url: str, engine: Engine, publisher: SamplePublisher, tmp_path: Path, log_format: str
) -> None:
    sent = record_api_keys(publisher)
    config = write_config(
        tmp_path / "h.toml", publisher.to_config_toml() + HEADERS_TOML, FAST_SETTINGS
    )
    result = run_harvester(
        db_url, "run", "--once", "--config", str(config), "--log-format", log_format,
        env={"TEST_API_KEY": ENVIRONMENT_KEY},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_holds_exactly(engine, publisher)

    # The publisher got the key on every request, without the newline.
    assert sent, "the publisher saw no request"
    assert all(values == [KEY] for values in sent), {tuple(values) for values in sent}

    # The trimming was reported, by header name.
    assert TRIMMED_WARNING in result.stderr
    if log_format == "json":
        lines = [json.loads(line) for line in result.stderr.splitlines()]
        assert any(TRIMMED_WARNING in line["message"] for line in lines)

    status = run_harvester(db_url, "status")
    assert status.returncode == 0, status.stderr
    assert len(parse_status(status.stdout).lines) == len(publisher.feed_urls)
    for where, output in [
        ("run stdout", result.stdout), ("run stderr", result.stderr),
        ("status stdout", status.stdout), ("status stderr", status.stderr),
        ("database", dump_database(db_url, engine)),
    ]:  # fmt: skip
        assert_no_key(where, output)


# --- the --once summary ------------------------------------------------------------------


@pytest.fixture
def key_registered() -> Iterator[None]:
    """KEY in the secrets registry for the test only."""
    before = redact.registered_secrets()
    redact.register_secrets([KEY])
    yield
    redact.clear_secrets()
    redact.register_secrets(before)


@pytest.mark.usefixtures("key_registered")
def test_summary_failures_are_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    reason = f"https://a.example/feed: LocalProtocolError: Illegal header value b'{KEY}\\n'"
    outcome = RunReport(failures={"https://a.example/feed": reason}, pages=3, items=7)
    out = io.StringIO()
    assert cli.finish_run(outcome, once=True, out=out) == cli.EXIT_FAILED_FEEDS
    printed = out.getvalue() + capsys.readouterr().err
    assert "FAILED https://a.example/feed" in printed
    assert "Illegal header value b'[redacted]\\n'" in printed
    assert_no_key("summary", printed)


@pytest.mark.usefixtures("key_registered")
def test_json_summary_failures_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    reason = f"Illegal header value b'{KEY}\\n'"
    outcome = RunReport(failures={"https://a.example/feed": reason})
    cli.finish_run(outcome, once=True, out=io.StringIO(), json_logs=True)
    # caplog sees the record before any handler's formatter: what finish_run itself gave.
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "run_failed"]
    assert_no_key("message", record.getMessage())
    assert_no_key("reason field", record.reason)  # type: ignore[attr-defined]
    assert record.reason == "Illegal header value b'[redacted]\\n'"  # type: ignore[attr-defined]
