"""Which database: a given URL in either form, or an embedded PostgreSQL; and migrations."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from harvester import fastpath
from harvester.errors import DatabaseError, SchemaNotReady

logger = logging.getLogger(__name__)

MIGRATION_LOCK = 7_310_413_001  # advisory lock key: one migrator at a time
CONNECT_TIMEOUT_SECONDS = 10
# Every statement of a harvester session has a deadline, so nothing waits forever on a lock
# another process holds, a runaway query, or a transaction left open by a stalled client.
SESSION_TIMEOUTS = {
    "lock_timeout": "30s",
    "statement_timeout": "300s",  # the longest is a backfill's sweep of a large feed
    "idle_in_transaction_session_timeout": "60s",
}
# A migration may rebuild an index of millions of rows, and waits its turn behind another.
MIGRATION_TIMEOUTS = {"statement_timeout": "0", "lock_timeout": "10min"}


def normalise_url(url: str) -> str:
    """Accept libpq (`postgresql://`, `postgres://`) and SQLAlchemy forms; use psycopg 3."""
    try:
        parsed = make_url(url.strip())
    except Exception as exc:
        raise DatabaseError(f"not a database URL: {redact(url)}") from exc
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise DatabaseError(f"only PostgreSQL is supported, got {parsed.get_backend_name()}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """Where the embedded PostgreSQL keeps its data: HARVESTER_DATA_DIR or the user data dir."""
    if environ.get("HARVESTER_DATA_DIR"):
        return Path(environ["HARVESTER_DATA_DIR"]).expanduser()
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "harvester" / "pgdata"


@contextmanager
def embedded_database(data_dir: Path) -> Iterator[str]:
    """Start (or join) an embedded PostgreSQL in `data_dir`; stop it when the last user leaves."""
    import pgserver  # imported here: only the zero-setup path needs it

    data_dir.mkdir(parents=True, exist_ok=True)
    logger.info(
        "embedded PostgreSQL in %s", data_dir, extra={"event": "embedded_db", "path": str(data_dir)}
    )
    try:
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
    except Exception as exc:
        raise DatabaseError(f"cannot start the embedded PostgreSQL in {data_dir}: {exc}") from exc
    try:
        yield normalise_url(server.get_uri())
    finally:
        server.cleanup()


@contextmanager
def resolve_database(url: str | None, environ: Mapping[str, str]) -> Iterator[str]:
    """The given URL, or the embedded server's when none is given."""
    if url:
        yield normalise_url(url)
        return
    with embedded_database(default_data_dir(environ)) as embedded:
        yield embedded


def make_engine(url: str, *, staging: bool = True, **options: Any) -> Engine:
    """An engine whose sessions speak UTC and say who they are.

    With `staging`, each new connection gets the page writes' temporary table; reading
    commands do without, so they run on a hot standby and as a read-only role.
    """
    # synchronous_commit=off: a page and its cursor commit together, so a commit lost in a
    # server crash rewinds both and the page is fetched again (RPDE replay is idempotent).
    settings = {"timezone": "UTC", "synchronous_commit": "off", **SESSION_TIMEOUTS}
    connect_args = {
        "application_name": "harvester",
        "options": " ".join(f"-c {name}={value}" for name, value in settings.items()),
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
    }
    engine = create_engine(
        normalise_url(url),
        pool_pre_ping=True,
        hide_parameters=True,  # parameters hold feed data: never in an error message or log
        pool_size=options.pop("pool_size", 8),
        max_overflow=options.pop("max_overflow", 8),
        connect_args=connect_args,
        **options,
    )
    return fastpath.prepare_engine(engine) if staging else engine


def migrations_path() -> Path:
    """The alembic scripts, shipped inside the package as harvester.migrations."""
    return Path(str(resources.files("harvester.migrations")))


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe when several workers start at once."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations_path()))
    try:
        with engine.begin() as connection:
            for name, value in MIGRATION_TIMEOUTS.items():
                connection.execute(text("SELECT set_config(:name, :value, true)"),
                                   {"name": name, "value": value})  # fmt: skip
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        from harvester import refill  # it reads the rows the schema just described

        refill.refill_facts(engine)
    except SQLAlchemyError as exc:
        raise as_database_error(exc, "migration failed") from exc


def as_database_error(error: SQLAlchemyError, doing: str) -> DatabaseError:
    """One line: a connection that failed says so; anything else says what was being done."""
    original = getattr(error, "orig", None) or error
    first = (str(original).strip().splitlines() or [type(original).__name__])[0]
    if getattr(error, "statement", "") is None or getattr(error, "connection_invalidated", False):
        return DatabaseError(f"cannot connect to the database: {first}")
    return DatabaseError(f"{doing}: {first}")


def head_revision() -> str:
    """The newest migration this harvester carries."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations_path()))
    return str(ScriptDirectory.from_config(config).get_current_head())


def check_schema(conn: Connection) -> None:
    """A reading command's check, writing nothing: the schema is there and not behind."""
    present = conn.execute(text("SELECT to_regclass('harvester.alembic_version')")).scalar()
    if present is None:
        raise SchemaNotReady(
            "the database has no harvester schema yet: run `harvester migrate` (or `run`)"
        )
    found = conn.execute(text("SELECT version_num FROM harvester.alembic_version")).scalar()
    head = head_revision()
    if found is not None and found < head:  # revisions are numbered 0001, 0002...
        raise SchemaNotReady(
            f"the schema is at revision {found} and this harvester reads revision {head}:"
            " run `harvester migrate` (a writer's job), or use the harvester of that revision"
        )


def environ_database_url(
    cli_value: str | None, environ: Mapping[str, str] = os.environ
) -> str | None:
    """--database-url wins over DATABASE_URL."""
    return cli_value or environ.get("DATABASE_URL") or None
