"""Migrations: reach head, idempotent, one head, match harvester.schema, and go down and up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from harvester import database, schema

PUBLIC_OBJECTS = ("bookable_now", "opportunity_status")


@pytest.fixture
def empty_engine(empty_db_url: str) -> Iterator[Engine]:
    """An engine on a database with no schema at all."""
    engine = database.make_engine(empty_db_url)
    yield engine
    engine.dispose()


def alembic_config() -> AlembicConfig:
    """The harvester's alembic configuration, as database.migrate builds it."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(database.migrations_path()))
    return config


def current_revision(engine: Engine) -> str | None:
    """The revision stamped in the database."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table_schema": schema.SCHEMA})
        return context.get_current_revision()


def head() -> str:
    """The newest revision in the scripts."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def run_command(engine: Engine, action: Any, revision: str) -> None:
    """Run an alembic command on the engine, as database.migrate does."""
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        action(config, revision)


def schema_differences(engine: Engine) -> list[Any]:
    """What autogenerate would change to make the database match harvester.schema."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "target_metadata": schema.metadata,
                "include_schemas": True,
                "include_name": only_our_schema,
                "compare_type": True,
                "compare_server_default": True,
                "version_table_schema": schema.SCHEMA,
            },
        )
        return compare_metadata(context, schema.metadata)


def only_our_schema(name: str | None, type_: str, _parents: dict[str, str | None]) -> bool:
    """Compare the harvester schema only: `public` is shared with the users' apps."""
    return name == schema.SCHEMA if type_ == "schema" else True


def test_migrate_reaches_head(empty_engine: Engine) -> None:
    assert current_revision(empty_engine) is None
    database.migrate(empty_engine)
    assert current_revision(empty_engine) == head()
    tables = set(inspect(empty_engine).get_table_names(schema=schema.SCHEMA))
    ours = {f"{schema.SCHEMA}.{table}" for table in tables - {"alembic_version"}}
    assert set(schema.metadata.tables) == ours


def test_migrate_twice_is_idempotent(empty_engine: Engine) -> None:
    database.migrate(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(text("INSERT INTO harvester.sources (name) VALUES ('kept')"))
    database.migrate(empty_engine)
    assert current_revision(empty_engine) == head()
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM harvester.sources")).scalars().all() == ["kept"]


def test_single_head() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert len(scripts.get_heads()) == 1
    assert len(scripts.get_bases()) == 1
    # Every revision is reachable from the head: no orphaned branch.
    reachable = list(scripts.iterate_revisions("heads", "base"))
    assert len(list(scripts.walk_revisions())) == len(reachable)


def test_schema_matches_the_code(empty_engine: Engine) -> None:
    database.migrate(empty_engine)
    # No known false positives are filtered: partial indexes (postgresql_where) and the
    # server defaults compare cleanly with this alembic; if one ever appears, filter that
    # exact diff here with the reason, never the whole comparison.
    assert schema_differences(empty_engine) == []


def test_schema_comparison_can_fail(empty_engine: Engine) -> None:
    # The comparison is live: a column added behind the code's back is reported.
    database.migrate(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(text("ALTER TABLE harvester.feeds ADD COLUMN surprise integer"))
        conn.execute(text("DROP INDEX harvester.ix_items_start_date"))
    diffs = schema_differences(empty_engine)
    kinds = {diff[0] if isinstance(diff, tuple) else diff[0][0] for diff in diffs}
    assert {"remove_column", "add_index"} <= kinds


def test_downgrade_to_base_and_up_again(empty_engine: Engine) -> None:
    database.migrate(empty_engine)
    run_command(empty_engine, command.downgrade, "base")
    assert current_revision(empty_engine) is None
    inspector = inspect(empty_engine)
    assert set(inspector.get_table_names(schema=schema.SCHEMA)) <= {"alembic_version"}
    assert not set(PUBLIC_OBJECTS) & set(inspector.get_view_names(schema="public"))
    database.migrate(empty_engine)
    assert current_revision(empty_engine) == head()
    assert schema_differences(empty_engine) == []


def test_public_interface_resolves_with_default_search_path(empty_engine: Engine) -> None:
    database.migrate(empty_engine)
    with empty_engine.connect() as conn:
        # No search_path is set by the harvester's sessions: this is the server default.
        assert conn.execute(text("SHOW search_path")).scalar_one() == '"$user", public'
        assert conn.execute(text("SELECT count(*) FROM bookable_now")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM bookable_at(now())")).scalar_one() == 0
        columns = conn.execute(text("SELECT * FROM bookable_now LIMIT 0")).keys()
        assert conn.execute(text("SELECT count(*) FROM opportunity_status")).scalar_one() == 0
    assert {
        "source", "kind", "id", "identifier", "start_date", "end_date", "parent_id",
        "parent_kind", "bookable_from", "bookable_until", "checkout_url", "data", "parent_data",
    } <= set(columns)  # fmt: skip
