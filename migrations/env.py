"""Alembic environment: runs on the connection the harvester hands it (see harvester.database)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from harvester import schema

config = context.config


def run_migrations_online() -> None:
    """Migrate on the caller's connection, inside the caller's transaction."""
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `harvester migrate`: it supplies the database")
    # The version table lives in our schema, so the schema must exist before alembic looks.
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema.SCHEMA}"))
    context.configure(
        connection=connection,
        target_metadata=schema.metadata,
        version_table_schema=schema.SCHEMA,
        include_schemas=True,
        include_name=_include_name,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _include_name(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
    # Compare only our own schema: `public` belongs to the users' apps too.
    if type_ == "schema":
        return name == schema.SCHEMA
    return True


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
