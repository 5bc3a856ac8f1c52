"""Operations: metrics and health port, JSON logs, the read-only role, the deploy files."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from helpers import (
    feed_rows,
    held_items,
    run_harvester,
    start_harvester,
    wait_for,
    write_config,
    written_counts,
)
from prometheus_client.parser import text_string_to_metric_families
from psycopg import errors
from sqlalchemy import Engine, make_url

from harvester.metrics import HEALTHY_WITHIN_SECONDS, health_problem
from harvester.sample import FEED_NAMES, Fault, SamplePublisher

ROOT = Path(__file__).resolve().parent.parent
FAST = {"min_poll_seconds": 1, "retry_attempts": 3, "retry_max_seconds": 10, "lease_seconds": 3}


@pytest.fixture
def publisher() -> Iterator[SamplePublisher]:
    """400 items in pages of 50; last pages cacheable for 8 s, so polls are rare."""
    with SamplePublisher(items=400, page_size=50) as started:
        yield started


# --- /metrics and /healthz ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tick_age", "database_ok", "progress_age", "problem"),
    [
        (0.0, True, 10.0, None),  # a feed committed a page (or polled its last) lately
        (0.0, True, 900.0, "no feed has made progress for 900 s (limit 900 s)"),
        (0.0, False, 0.0, "the database is unavailable"),
        (HEALTHY_WITHIN_SECONDS, True, 0.0, "the worker loop has not run for 60 s"),
    ],
)
def test_the_health_rule(
    tick_age: float, database_ok: bool, progress_age: float, problem: str | None
) -> None:
    now = 10_000.0
    found = health_problem(now, now - tick_age, database_ok, now - progress_age, 900.0)
    assert found == problem or (problem is not None and found.startswith(problem))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def metric(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    """One sample's value, None when absent."""
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_and_health_port_reports_each_feed(
    publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    publisher.inject("facility-uses", Fault(status=404))  # one feed fails: gone
    config = write_config(tmp_path / "harvester.toml", publisher.to_config_toml(), FAST)
    port = free_port()
    args = ("run", "--config", str(config), "--metrics-port", str(port),
            "--metrics-host", "127.0.0.1")  # fmt: skip
    healthy = ["session-series", "scheduled-sessions", "slots"]

    wanted = {publisher.feed_url(feed): "caught_up" for feed in healthy}
    wanted[publisher.feed_url("facility-uses")] = "gone"

    def settled() -> bool:
        states = {url: row.state for url, row in feed_rows(engine).items()}
        return states == wanted

    with start_harvester(db_url, *args) as worker:
        assert wait_for(settled, 30)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        samples = scrape(port)
        rows = feed_rows(engine)
        missing = httpx.get(f"http://127.0.0.1:{port}/nothing", timeout=5)
        assert worker.stop() == 0
    assert (health.status_code, health.text) == (200, "ok\n")
    assert missing.status_code == 404
    kinds = {"session-series": "SessionSeries", "scheduled-sessions": "ScheduledSession",
             "slots": "Slot"}  # fmt: skip
    for feed in healthy:
        url = publisher.feed_url(feed)
        counted = {"source": "sample", "kind": kinds[feed]}  # counters: no URL
        labels = {**counted, "url": url}
        assert metric(samples, "harvester_pages_total", **counted) == rows[url].pages
        assert metric(samples, "harvester_items_total", **counted) == rows[url].items_written
        assert rows[url].items_written == len(list(publisher.items(feed)))
        lag = metric(samples, "harvester_feed_lag_seconds", **labels)
        assert lag is not None and 0 <= lag < 30
        for state in ("caught_up", "harvesting", "gone", "error"):
            expected = 1.0 if state == "caught_up" else 0.0
            assert metric(samples, "harvester_feed_state", **labels, state=state) == expected
        assert held_items(engine, url) == publisher.held(feed)
    gone = {"source": "sample", "kind": "facility-uses", "url": publisher.feed_url("facility-uses")}
    assert metric(samples, "harvester_feed_state", **gone, state="gone") == 1.0
    errors = {"source": "sample", "kind": "facility-uses", "state": "gone"}
    assert metric(samples, "harvester_feed_errors_total", **errors) == 1.0
    assert metric(samples, "harvester_feed_lag_seconds", **gone) is None  # never caught up


def test_health_fails_when_no_feed_progresses_and_caught_up_times_come_from_the_database(
    publisher: SamplePublisher, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    """After a restart against a publisher that is away: 503 with the reason, and each
    feed's last caught-up time as stored, so a lag alert still fires."""
    config = write_config(tmp_path / "harvester.toml", publisher.to_config_toml(), FAST)
    assert run_harvester(db_url, "run", "--once", "--config", str(config)).returncode == 0
    caught_up = {url: row.caught_up_at.timestamp() for url, row in feed_rows(engine).items()}
    for feed in FEED_NAMES:  # the publisher now fails every request
        publisher.inject(feed, Fault(status=500, times=1_000))
    slow = write_config(tmp_path / "slow.toml", publisher.to_config_toml(),
                        {**FAST, "unhealthy_after_seconds": 2})  # fmt: skip
    port = free_port()
    args = ("run", "--config", str(slow), "--metrics-port", str(port),
            "--metrics-host", "127.0.0.1")  # fmt: skip
    with start_harvester(db_url, *args) as worker:
        assert wait_for(lambda: _healthz(port).status_code == 503, 30), worker.output()[1]
        health = _healthz(port)
        samples = scrape(port)
        assert worker.stop() == 0
    assert "no feed has made progress" in health.text and "limit 2 s" in health.text
    for url, moment in caught_up.items():
        kind = url.rstrip("/").rsplit("/", 1)[-1]  # no page seen since the restart: the URL's
        labels = {"source": "sample", "kind": kind, "url": url}
        stored = metric(samples, "harvester_feed_last_caught_up_timestamp_seconds", **labels)
        assert stored == pytest.approx(moment, abs=1e-3)


def _healthz(port: int) -> httpx.Response:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    except httpx.TransportError:
        return httpx.Response(0)  # not listening yet


# --- JSON logs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "level",
    [
        "INFO",  # the default: every record is the harvester's own, each with its event
        "DEBUG",  # every record, libraries' included, is still one JSON object per line
    ],
)
def test_json_logs_are_one_object_per_line_with_an_event(
    level: str, publisher: SamplePublisher, db_url: str, tmp_path: Path
) -> None:
    publisher.inject("slots", Fault(status=500))  # a retry
    publisher.inject("facility-uses", Fault(status=410))  # a failed feed, and its summary
    config = write_config(tmp_path / "harvester.toml", publisher.to_config_toml(), FAST)
    result = run_harvester(db_url, "run", "--once", "--config", str(config),
                           "--log-format", "json", "--log-level", level)  # fmt: skip
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert all(isinstance(record, dict) and "event" in record for record in records)
    events = [record["event"] for record in records]
    assert {"fetch_retry", "feed_failed", "run_failed"} <= set(events)
    if level == "INFO":
        assert all(isinstance(event, str) and event for event in events)
    else:
        assert "page_stored" in events
    failed = next(record for record in records if record["event"] == "run_failed")
    assert publisher.feed_url("facility-uses") in failed["message"]
    others = [feed for feed in FEED_NAMES if feed != "facility-uses"]
    assert written_counts(result.stdout)[1] == sum(len(list(publisher.items(f))) for f in others)


# --- the read-only role --------------------------------------------------------------


def libpq_url(url: str, user: str | None = None) -> str:
    """A psycopg (libpq) URL for a SQLAlchemy URL, optionally as another user."""
    parsed = make_url(url).set(drivername="postgresql")
    if user is not None:
        parsed = parsed.set(username=user, password=None)
    return parsed.render_as_string(hide_password=False)


@pytest.fixture
def reader_login(db_url: str) -> Iterator[str]:
    """deploy/readonly-role.sql applied, and a fresh login in harvester_reader."""
    script = (ROOT / "deploy" / "readonly-role.sql").read_text()
    name = f"reader_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        conn.execute(script)
        conn.execute(script)  # idempotent: a second run changes nothing and does not fail
        conn.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE harvester_reader')
    try:
        yield libpq_url(db_url, user=name)
    finally:
        with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{name}"')
            conn.execute(f'DROP ROLE "{name}"')


@pytest.mark.parametrize(
    "query",
    [
        "SELECT count(*) FROM bookable_now",  # the view, by the default search_path
        "SELECT count(*) FROM bookable_at(now() + interval '1 day')",  # the function
        "SELECT count(*) FROM opportunity_status",  # why the rest is not bookable
        "SELECT count(*) FROM harvester.items",  # the tables, for reporting
        "SELECT count(*) FROM harvester.feeds",
    ],
)
def test_reader_role_can_read(reader_login: str, query: str) -> None:
    with psycopg.connect(reader_login, autocommit=True) as conn:
        assert conn.execute(query).fetchone() == (0,)


@pytest.mark.parametrize(
    "statement",
    [
        # writing the tables behind the views
        "INSERT INTO harvester.sources (name) VALUES ('intruder')",
        "UPDATE harvester.feeds SET state = 'gone'",
        "DELETE FROM harvester.items",
        "DELETE FROM harvester.parent_refs",
        "TRUNCATE harvester.rejected_items",
        # changing the schema or the views
        "CREATE TABLE harvester.extra (x int)",
        "DROP VIEW bookable_now",
    ],
)
def test_reader_role_cannot_write(reader_login: str, statement: str) -> None:
    with (
        psycopg.connect(reader_login, autocommit=True) as conn,
        pytest.raises((errors.InsufficientPrivilege, errors.UndefinedObject)),
    ):
        conn.execute(statement)


# --- the deploy files ----------------------------------------------------------------


def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_runs_postgres_and_a_harvester_worker() -> None:
    services = compose()["services"]
    assert str(services["postgres"]["image"]).startswith("postgres")
    harvester = services["harvester"]
    command = harvester.get("command") or []
    command = command.split() if isinstance(command, str) else command
    assert command[0] == "run"
    environment = harvester["environment"]
    database_url = environment["DATABASE_URL"]
    assert make_url(database_url).host == "postgres"  # the compose service, by name
    config_path = environment["HARVESTER_CONFIG"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in harvester["volumes"]}
    assert config_path in mounts  # the config is mounted where HARVESTER_CONFIG points
    assert (ROOT / mounts[config_path]).is_file()
    assert "postgres" in harvester["depends_on"]


def test_compose_config_keeps_the_key_in_the_environment() -> None:
    environment = compose()["services"]["harvester"]["environment"]
    mounted = (ROOT / "deploy" / "harvester.toml").read_text()
    assert "${IMIN_API_KEY}" in mounted  # the file names the variable, never a key
    assert "IMIN_API_KEY" in environment


def test_dockerfile_installs_the_package_and_runs_the_harvester() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    keywords = [parts[0].upper() for parts in instructions]
    assert keywords[0] == "FROM" and "python" in instructions[0][1]
    runs = " ".join(parts[1] for parts in instructions if parts[0].upper() == "RUN")
    assert "pip install" in runs
    copied = " ".join(parts[1] for parts in instructions if parts[0].upper() == "COPY")
    for needed in ("pyproject.toml", "harvester", "migrations"):
        assert needed in copied
    entrypoint = next(parts[1] for parts in instructions if parts[0].upper() == "ENTRYPOINT")
    assert "harvester" in entrypoint
