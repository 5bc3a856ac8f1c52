"""A real PostgreSQL for every SQL test, and a fresh database per test.

Where the server comes from, in order: TEST_DATABASE_URL or DATABASE_URL; else a
testcontainers PostgreSQL when a Docker engine answers; else the embedded server
(pgserver) in a temporary directory. The schema is migrated once into a template
database; each test gets `CREATE DATABASE ... TEMPLATE`, which takes milliseconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, make_url, text

from harvester import database

# Tests must not pick up the developer's own settings.
for _name in list(os.environ):
    if _name.startswith("HARVESTER_"):
        del os.environ[_name]

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "real-rpde"  # copies, with provenance
TEMPLATE = f"harvester_template_{os.getpid()}"


@contextmanager
def _server_url() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        yield database.normalise_url(url)
        return
    with ExitStack() as stack:
        container = _docker_postgres(stack)
        if container:
            yield container
            return
        data_dir = tempfile.mkdtemp(prefix="harvester-test-pg-")
        stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        yield stack.enter_context(database.embedded_database(Path(data_dir)))


def _docker_postgres(stack: ExitStack) -> str | None:
    try:
        import docker
        from testcontainers.postgres import PostgresContainer

        docker.from_env().ping()
    except Exception:
        return None
    container = stack.enter_context(PostgresContainer("postgres:16-alpine", driver="psycopg"))
    return database.normalise_url(container.get_connection_url())


def _admin(server_url: str) -> Engine:
    admin_url = make_url(server_url).set(database="postgres")
    return database.make_engine(
        admin_url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The server URL (its maintenance database)."""
    with _server_url() as url:
        yield url


@pytest.fixture(scope="session")
def template_url(pg_server: str) -> Iterator[str]:
    """A migrated template database, made once per test session."""
    admin = _admin(pg_server)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{TEMPLATE}"'))
    url = make_url(pg_server).set(database=TEMPLATE).render_as_string(hide_password=False)
    engine = database.make_engine(url)
    database.migrate(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def _scratch_database(pg_server: str, prefix: str, template: str | None) -> Iterator[str]:
    """Create a uniquely named database (from `template`, if given); drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    admin = _admin(pg_server)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
    try:
        yield make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def db_url(pg_server: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    with _scratch_database(pg_server, "harvester_test", TEMPLATE) as url:
        yield url


@pytest.fixture
def empty_db_url(pg_server: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    with _scratch_database(pg_server, "harvester_empty", None) as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on the test's database."""
    engine = database.make_engine(db_url)
    yield engine
    engine.dispose()
