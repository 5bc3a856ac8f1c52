"""The CLI as operators meet it, as real child processes: `status` wherever a reader can
connect (a read-only role in read-only transactions, as on a hot standby), `status --json`,
`check`, and one clear line (or one JSON object) per fatal error with its exit code."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_harvester, sqlalchemy_url, write_config
from sqlalchemy import create_engine, make_url, text

from harvester import database
from harvester.sample import SamplePublisher

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"


@pytest.fixture
def harvested(db_url: str, tmp_path: Path) -> Iterator[tuple[str, Path, SamplePublisher]]:
    """A database holding one harvest of the sample publisher, and its config."""
    with SamplePublisher(items=300) as publisher:
        config = write_config(tmp_path / "h.toml", publisher.to_config_toml())
        done = run_harvester(db_url, "run", "--once", "--config", str(config))
        assert done.returncode == 0, done.stderr
        yield db_url, config, publisher


@pytest.fixture
def reader_url(harvested: tuple[str, Path, SamplePublisher]) -> Iterator[str]:
    """A role that may only read, whose every transaction is read-only (as on a standby)."""
    db_url = harvested[0]
    role = f"reader_{uuid.uuid4().hex[:8]}"
    admin = create_engine(sqlalchemy_url(db_url), isolation_level="AUTOCOMMIT")
    grants = (
        f"CREATE ROLE {role} LOGIN",
        f"ALTER ROLE {role} SET default_transaction_read_only = on",
        f"GRANT USAGE ON SCHEMA harvester TO {role}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA harvester TO {role}",
        f"GRANT SELECT ON public.bookable_now, public.opportunity_status TO {role}",
    )
    with admin.connect() as conn:
        for statement in grants:
            conn.execute(text(statement))
    try:
        yield make_url(db_url).set(username=role).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        admin.dispose()


def test_status_works_as_a_read_only_role_in_read_only_transactions(reader_url: str) -> None:
    # The role can read the views, and cannot write: what a hot standby allows.
    reader = create_engine(sqlalchemy_url(reader_url))
    with reader.connect() as conn:
        bookable = conn.execute(text("SELECT count(*) FROM bookable_now")).scalar()
        with pytest.raises(Exception, match="read-only transaction"):
            conn.execute(text("CREATE TEMPORARY TABLE t (x int)"))
    reader.dispose()
    assert bookable and bookable > 0
    lines = run_harvester(reader_url, "status")
    assert lines.returncode == 0, lines.stderr
    assert "scheduled-sessions" in lines.stdout and "caught_up" in lines.stdout
    listed = run_harvester(reader_url, "status", "--json")
    assert listed.returncode == 0, listed.stderr
    feeds = json.loads(listed.stdout)
    assert len(feeds) == 4
    for feed in feeds:
        assert {"source", "kind", "url", "items", "state", "last_page_at", "lag_seconds",
                "last_error"} <= set(feed)  # fmt: skip
        assert feed["state"] == "caught_up" and feed["items"] > 0 and feed["lag_seconds"] >= 0
    assert {feed["kind"] for feed in feeds} == {
        "SessionSeries",
        "ScheduledSession",
        "FacilityUse",
        "Slot",
    }


def test_status_says_plainly_that_there_is_no_schema_and_creates_none(empty_db_url: str) -> None:
    result = run_harvester(empty_db_url, "status")
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "harvester: database error: the database has no harvester schema yet:"
        " run `harvester migrate` (or `run`)"
    ]
    engine = create_engine(sqlalchemy_url(empty_db_url))
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT to_regnamespace('harvester')")).scalar()
    engine.dispose()
    assert schema is None


def test_status_says_plainly_that_the_schema_is_behind(db_url: str) -> None:
    engine = create_engine(sqlalchemy_url(db_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE harvester.alembic_version SET version_num = '0006'"))
    engine.dispose()
    result = run_harvester(db_url, "status", "--json")
    assert result.returncode == 3 and result.stdout == ""
    head = database.head_revision()
    assert f"the schema is at revision 0006 and this harvester reads revision {head}" in (
        result.stderr
    )


def test_check_prints_a_line_per_feed_and_fails_on_any_problem(
    harvested: tuple[str, Path, SamplePublisher], tmp_path: Path
) -> None:
    db_url, config, publisher = harvested
    good = run_harvester(db_url, "check", "--config", str(config))
    assert good.returncode == 0, good.stdout + good.stderr
    lines = good.stdout.strip().splitlines()
    assert lines[0].startswith(f"ok   config {config}: 1 sources, 4 feeds")
    assert lines[1] == f"ok   database: reachable, schema at revision {database.head_revision()}"
    assert len(lines) == 6 and all(line.startswith("ok   sample ") for line in lines[2:])
    missing = f"{publisher.base_url}/feeds/no-such-feed"
    toml = publisher.to_config_toml().replace("feeds = [", f'feeds = [\n  "{missing}",')
    bad = run_harvester(db_url, "check", "--config", str(write_config(tmp_path / "b.toml", toml)))
    assert bad.returncode == 1
    failed = [line for line in bad.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == [f"FAIL sample {missing}: HTTP 404: the feed is gone (RPDE: do not retry)"]
    no_database = run_harvester(UNREACHABLE, "check", "--config", str(config))
    assert no_database.returncode == 1
    assert "FAIL database: cannot connect to the database: connection failed" in (
        no_database.stdout
    )


@pytest.mark.parametrize("command", [["status"], ["migrate"], ["run", "--once"]])
def test_an_unreachable_database_is_one_line_and_exit_3(command: list[str], tmp_path: Path) -> None:
    config = write_config(tmp_path / "h.toml", '[[sources]]\nname = "a"\nfeeds = ["http://a/f"]\n')
    args = [*command, *(["--config", str(config)] if command[0] == "run" else [])]
    result = run_harvester(UNREACHABLE, *args)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "harvester: database error: cannot connect to the database: connection failed:"
    ), result.stderr
    as_json = run_harvester(UNREACHABLE, *args, "--log-format", "json")
    assert as_json.returncode == 3
    (entry,) = [json.loads(line) for line in as_json.stderr.strip().splitlines()]
    assert (entry["level"], entry["event"], entry["exit"]) == ("error", "fatal", 3)
    assert entry["message"].startswith("database error: cannot connect to the database")


@pytest.mark.parametrize(
    ("env", "extra", "message"),
    [
        ({"HARVESTER_LOG_LEVEL": "LOUD"}, "",
         "harvester: config error: log level 'LOUD': one of DEBUG, INFO, WARNING, ERROR,"
         " CRITICAL (--log-level, HARVESTER_LOG_LEVEL)"),
        ({"HARVESTER_METRICS_PORT": "abc"}, "",
         "harvester: config error: HARVESTER_METRICS_PORT: expected a port number (1-65535),"
         " got 'abc'"),
        ({"HARVESTER_WORKERS": "abc"}, "",
         "harvester: config error: HARVESTER_WORKERS: expected a number, got 'abc'"),
        ({}, "[harvestr]\nworkers = 2\n",
         "harvester: config error: {config}: harvestr: unknown key (did you mean 'harvester'?)"),
    ],
)  # fmt: skip
def test_a_bad_setting_is_one_line_and_exit_2(
    db_url: str, tmp_path: Path, env: dict[str, str], extra: str, message: str
) -> None:
    config = tmp_path / "h.toml"
    config.write_text('[[sources]]\nname = "a"\nfeeds = ["http://127.0.0.1:1/f"]\n' + extra)
    result = run_harvester(db_url, "run", "--once", "--config", str(config), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [message.format(config=config)]


def test_a_metrics_port_in_use_is_one_line_and_exit_2(db_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "h.toml", '[[sources]]\nname = "a"\nfeeds = ["http://a/f"]\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_harvester(db_url, "run", "--once", "--config", str(config),
                               "--metrics-port", str(port))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"harvester: config error: metrics port {port} on 127.0.0.1 is in use"
    ]
